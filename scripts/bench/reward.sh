#!/usr/bin/env bash
# Reward scoring throughput: platter-rl (release) vs the Python/numpy/scipy reference
# (scripts/oracle/reward_reference.py), same cases, same run, best of N repeats each, one thread.
# Usage: scripts/bench/reward.sh [N_CASES] [REPEATS]   (needs the oracle venv: scripts/oracle/requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-/root/venvs/oracle/bin/python}
N=${1:-3000}
REPEATS=${2:-5}
CASES=$(mktemp --suffix .jsonl)
trap 'rm -f "$CASES"' EXIT
"$PY" scripts/oracle/reward_reference.py make-cases "$CASES" "$N"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
cargo bench -q -p platter-rl --bench reward --no-run
# Alternate the two implementations over ROUNDS rounds so that load on a shared machine hits
# both alike; each side keeps its best round.
ROUNDS=${ROUNDS:-3}
results=()
for _ in $(seq "$ROUNDS"); do
  results+=("$(cargo bench -q -p platter-rl --bench reward -- "$CASES" "$REPEATS" | tail -n 1)")
  results+=("$("$PY" scripts/oracle/reward_reference.py bench "$CASES" "$REPEATS")")
done
printf '%s\n' "${results[@]}" | "$PY" -c '
import json, sys
best = {}
for line in sys.stdin:
    r = json.loads(line)
    best[r["impl"]] = max(best.get(r["impl"], 0.0), r["responses_per_second"])
rust, py = best["platter-rl"], best["python-numpy-scipy"]
print(f"platter-rl:       {rust:12.0f} responses/s")
print(f"python reference: {py:12.0f} responses/s")
print(f"ratio (platter-rl / python reference): {rust / py:.1f}x")
'

