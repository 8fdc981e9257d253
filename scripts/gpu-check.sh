#!/usr/bin/env bash
# GPU check of the learner's CUDA and NCCL code, for a machine with NVIDIA GPUs, the CUDA
# toolkit (a real nvcc) and NCCL. It builds platter-learner with `--features cuda` (the test
# binary and the `learner` binary), runs learner/tests/nccl_cuda.rs (tests that need more GPUs
# than are visible print `SKIP:` and pass), measures the all-reduce bandwidth of a 64 MiB
# buffer over every visible GPU, and prints a summary. Exit status: 0 when the build and every
# test passed.
#
# Budget: about 10 minutes on a fresh machine with 16 cores, most of it the build (candle's
# CUDA kernels are compiled by nvcc). Each stage has its own time limit (seconds):
#   GPU_CHECK_BUILD_LIMIT (default 480), GPU_CHECK_TEST_LIMIT (180), GPU_CHECK_BENCH_LIMIT (60).
# Logs go to $GPU_CHECK_LOG_DIR (default target/gpu-check).
#
# Usage: scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

BUILD_LIMIT="${GPU_CHECK_BUILD_LIMIT:-480}"
TEST_LIMIT="${GPU_CHECK_TEST_LIMIT:-180}"
BENCH_LIMIT="${GPU_CHECK_BENCH_LIMIT:-60}"
LOG_DIR="${GPU_CHECK_LOG_DIR:-target/gpu-check}"
mkdir -p "$LOG_DIR"
started=$(date +%s)
say() { echo "gpu-check: $*"; }
elapsed() { echo $(($(date +%s) - started)); }

# --- Toolkit, GPUs, NCCL -------------------------------------------------------------------
if ! command -v nvcc >/dev/null; then
  for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda /opt/cuda; do
    if [[ -n "$d" && -x "$d/bin/nvcc" ]]; then export PATH="$d/bin:$PATH"; break; fi
  done
fi
if ! command -v nvcc >/dev/null; then
  say "FAIL: no nvcc on PATH or in CUDA_HOME, /usr/local/cuda, /opt/cuda (install the CUDA toolkit)"
  exit 2
fi
nvcc_version=$(nvcc --version 2>&1)
if [[ "$nvcc_version" == *"stub for type-checking"* ]]; then
  say "FAIL: the nvcc on PATH is scripts/ci/stub-nvcc (type-checking only); put the real one first"
  exit 2
fi
CUDA_ROOT="${CUDA_ROOT:-$(dirname "$(dirname "$(command -v nvcc)")")}"
export CUDA_ROOT
say "nvcc: $(grep -o 'release [0-9.]*' <<<"$nvcc_version") at $CUDA_ROOT"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=index,name,memory.total,compute_cap --format=csv,noheader | sed 's/^/gpu-check: GPU /'
  if [[ -z "${CUDA_COMPUTE_CAP:-}" ]]; then
    cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
    [[ -n "$cap" ]] && export CUDA_COMPUTE_CAP="$cap"
  fi
else
  say "warning: no nvidia-smi; the tests will report how many GPUs the driver sees"
fi
say "CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-unset (candle detects it)}"

# libnccl: the build links `-lnccl` (candle's cudarc with dynamic linking). Look in the
# toolkit, the system library path and a pip `nvidia-nccl` wheel; a wheel has only
# libnccl.so.2, so an unversioned link name is made in the log directory.
nccl_dir=""
for d in "${NCCL_HOME:+$NCCL_HOME/lib}" "$CUDA_ROOT/lib64" "$CUDA_ROOT/lib" /usr/lib/x86_64-linux-gnu \
  /usr/lib/aarch64-linux-gnu /usr/local/lib /usr/lib64; do
  if [[ -n "$d" ]] && compgen -G "$d/libnccl.so*" >/dev/null; then nccl_dir="$d"; break; fi
done
if [[ -z "$nccl_dir" ]] && command -v python3 >/dev/null; then
  nccl_dir=$(python3 - <<'EOF' 2>/dev/null
import glob, os, site
for p in site.getsitepackages() + [site.getusersitepackages()]:
    hits = glob.glob(os.path.join(p, "nvidia", "nccl", "lib", "libnccl.so*"))
    if hits:
        print(os.path.dirname(hits[0]))
        break
EOF
)
fi
if [[ -z "$nccl_dir" ]]; then
  say "FAIL: libnccl.so not found (set NCCL_HOME, install libnccl-dev, or pip install nvidia-nccl-cu12)"
  exit 2
fi
link_dir="$PWD/$LOG_DIR/lib"
mkdir -p "$link_dir"
if [[ ! -e "$nccl_dir/libnccl.so" ]]; then
  ln -sf "$(ls "$nccl_dir"/libnccl.so.* | head -1)" "$link_dir/libnccl.so"
fi
export LIBRARY_PATH="$link_dir:$nccl_dir:$CUDA_ROOT/lib64:${LIBRARY_PATH:-}"
export LD_LIBRARY_PATH="$nccl_dir:$CUDA_ROOT/lib64:${LD_LIBRARY_PATH:-}"
say "NCCL library: $nccl_dir"

# --- Build ---------------------------------------------------------------------------------
CARGO=(cargo)
FEAT=(-p platter-learner --features cuda)
say "building (limit ${BUILD_LIMIT}s; log $LOG_DIR/build.log)"
build_started=$(date +%s)
if ! timeout "$BUILD_LIMIT" "${CARGO[@]}" test "${FEAT[@]}" --test nccl_cuda --no-run >"$LOG_DIR/build.log" 2>&1 \
  || ! timeout "$BUILD_LIMIT" "${CARGO[@]}" build "${FEAT[@]}" --bin learner >>"$LOG_DIR/build.log" 2>&1; then
  tail -40 "$LOG_DIR/build.log"
  say "FAIL: build (see $LOG_DIR/build.log) after $(elapsed)s"
  exit 1
fi
build_secs=$(($(date +%s) - build_started))
say "build ok in ${build_secs}s"

# --- Tests ---------------------------------------------------------------------------------
say "running learner/tests/nccl_cuda.rs (limit ${TEST_LIMIT}s; log $LOG_DIR/tests.log)"
NCCL_DEBUG="${NCCL_DEBUG:-WARN}" timeout "$TEST_LIMIT" "${CARGO[@]}" test "${FEAT[@]}" --test nccl_cuda \
  -- --test-threads=1 --nocapture >"$LOG_DIR/tests.log" 2>&1
test_rc=$?
# With --nocapture a test's own lines can follow "test NAME ... " on the same line.
grep -E '^test |SKIP:|(init|peer) (timeout|abort):|: loss cpu|: max \|w_gpu' "$LOG_DIR/tests.log" \
  | sed 's/^/gpu-check:   /'
[[ $test_rc -eq 124 ]] && say "tests hit the ${TEST_LIMIT}s limit"

# --- Bandwidth -----------------------------------------------------------------------------
say "all-reduce bandwidth, 64 MiB (limit ${BENCH_LIMIT}s; log $LOG_DIR/bandwidth.log)"
NCCL_DEBUG="${NCCL_DEBUG:-WARN}" timeout "$BENCH_LIMIT" "${CARGO[@]}" test "${FEAT[@]}" --test nccl_cuda \
  -- --ignored --exact all_reduce_bandwidth_64mib --nocapture >"$LOG_DIR/bandwidth.log" 2>&1
bench_rc=$?
bandwidth=$(grep -oE '(BANDWIDTH|SKIP): .*' "$LOG_DIR/bandwidth.log" | head -1)

# --- Summary -------------------------------------------------------------------------------
result=$(grep -E '^test result:' "$LOG_DIR/tests.log" | tail -1)
passed=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$result")
failed=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$result")
skipped=$(grep -o 'SKIP:' "$LOG_DIR/tests.log" | wc -l)
echo
say "summary after $(elapsed)s"
say "  build:     ok (${build_secs}s)"
say "  tests:     ${passed:-?} passed (${skipped} of them skipped for want of GPUs), ${failed:-?} failed, exit $test_rc"
say "  bandwidth: ${bandwidth:-none measured (exit $bench_rc, see $LOG_DIR/bandwidth.log)}"
if [[ $test_rc -ne 0 ]]; then
  grep -A20 -E '^---- .* stdout ----' "$LOG_DIR/tests.log" | head -80
  say "FAIL"
  exit 1
fi
[[ $bench_rc -ne 0 ]] && say "warning: the bandwidth run failed (exit $bench_rc)"
say "OK"
