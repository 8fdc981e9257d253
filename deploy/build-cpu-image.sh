#!/usr/bin/env bash
# Builds the CPU images of deploy/Dockerfile.cpu from binaries already built on this machine:
# nothing is pulled and nothing is compiled inside Docker.
#
#   cargo build --bins -p platter-coordinator -p platter-reward -p platter-learner \
#       -p platter-rollout -p platter                       # or --release
#   deploy/build-cpu-image.sh [--profile debug|release] [--tag platter:cpu]
#                             [--prometheus-tag platter-prometheus:cpu] [--no-prometheus]
#
# The binaries come from ${CARGO_TARGET_DIR:-target}/<profile>/, are stripped of debug info, and
# travel with exactly the shared libraries `ldd` resolves for them on this machine. The
# Prometheus image takes /usr/bin/prometheus from Debian's `prometheus` package (installed with
# apt-get when missing and apt-get is available).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
profile=debug
tag=platter:cpu
prom_tag=platter-prometheus:cpu
with_prometheus=1
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --prometheus-tag) prom_tag="$2"; shift 2 ;;
    --no-prometheus) with_prometheus=0; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "build-cpu-image: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$profile" in
  debug|release) ;;
  *) echo "build-cpu-image: --profile must be debug or release, found '$profile'" >&2; exit 2 ;;
esac

target_dir="${CARGO_TARGET_DIR:-$repo/target}"
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
bin_dir="$target_dir/$profile"
binaries=(coordinator learner reward-server rollout-worker platter)
missing=()
for b in "${binaries[@]}"; do
  [ -x "$bin_dir/$b" ] || missing+=("$b")
done
if [ ${#missing[@]} -gt 0 ]; then
  flag=""
  [ "$profile" = release ] && flag=" --release"
  echo "build-cpu-image: missing in $bin_dir: ${missing[*]}" >&2
  echo "  build them first: cargo build$flag --bins -p platter-coordinator -p platter-reward -p platter-learner -p platter-rollout -p platter" >&2
  exit 1
fi

stage="$(mktemp -d "${TMPDIR:-/tmp}/platter-cpu-image.XXXXXX")"
trap 'rm -rf "$stage"' EXIT

# Copies a file to the same absolute path under a root, following symlinks (a library is
# copied under the name the loader asks for).
copy_at_path() {
  local root="$1" path="$2"
  mkdir -p "$root$(dirname "$path")"
  cp -L "$path" "$root$path"
}

# Copies every library `ldd` resolves for a binary, and the dynamic loader.
copy_libraries() {
  local root="$1" binary="$2" line lib
  if ! ldd "$binary" >/dev/null 2>&1; then
    return 0 # statically linked: nothing to copy
  fi
  while IFS= read -r line; do
    case "$line" in
      *"not found"*) echo "build-cpu-image: $binary: $line" >&2; exit 1 ;;
    esac
    lib="$(printf '%s\n' "$line" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) { print $i; exit } }')"
    [ -n "$lib" ] && copy_at_path "$root" "$lib"
  done < <(ldd "$binary")
}

rootfs="$stage/platter-rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/opt/platter/assets" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
for b in "${binaries[@]}"; do
  cp "$bin_dir/$b" "$rootfs/usr/local/bin/$b"
  strip --strip-debug "$rootfs/usr/local/bin/$b" 2>/dev/null || true
  copy_libraries "$rootfs" "$bin_dir/$b"
done
cp -r "$repo/assets/tiny-sft" "$rootfs/opt/platter/assets/tiny-sft"
mkdir -p "$stage/platter-state/store" "$stage/platter-state/checkpoints"

if [ "$with_prometheus" = 1 ]; then
  if [ ! -x /usr/bin/prometheus ]; then
    if command -v apt-get >/dev/null 2>&1; then
      echo "build-cpu-image: installing Debian's prometheus package for its binary" >&2
      "$repo/scripts/ci/install-prometheus.sh"
    else
      echo "build-cpu-image: /usr/bin/prometheus is missing and apt-get is unavailable; use --no-prometheus" >&2
      exit 1
    fi
  fi
  prom="$stage/prometheus-rootfs"
  mkdir -p "$prom/bin" "$prom/etc/prometheus" "$stage/prometheus-data"
  cp /usr/bin/prometheus "$prom/bin/prometheus"
  copy_libraries "$prom" /usr/bin/prometheus
  if [ -d /usr/share/prometheus/web ]; then
    mkdir -p "$prom/usr/share/prometheus"
    cp -r /usr/share/prometheus/web "$prom/usr/share/prometheus/web"
  fi
fi

# The legacy builder when BuildKit (buildx) is not installed: the Dockerfile works with both.
if ! docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=0
fi
echo "build-cpu-image: $profile binaries from $bin_dir -> $tag ($(du -sh "$stage/platter-rootfs" | cut -f1))" >&2
docker build --quiet -f "$repo/deploy/Dockerfile.cpu" --target platter -t "$tag" "$stage" >/dev/null
if [ "$with_prometheus" = 1 ]; then
  echo "build-cpu-image: Debian's prometheus $(/usr/bin/prometheus --version 2>&1 | awk 'NR == 1 {print $3}') -> $prom_tag" >&2
  docker build --quiet -f "$repo/deploy/Dockerfile.cpu" --target prometheus -t "$prom_tag" "$stage" >/dev/null
fi
if [ "$with_prometheus" = 1 ]; then
  echo "build-cpu-image: built $tag and $prom_tag" >&2
else
  echo "build-cpu-image: built $tag" >&2
fi
