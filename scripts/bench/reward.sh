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
rust=$(cargo bench -q -p platter-rl --bench reward -- "$CASES" "$REPEATS" | tail -n 1)
py=$("$PY" scripts/oracle/reward_reference.py bench "$CASES" "$REPEATS")
echo "rust:   $rust"
echo "python: $py"
"$PY" - "$rust" "$py" <<'PYEOF'
import json, sys
r, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"ratio (platter-rl / python reference): {r['responses_per_second'] / p['responses_per_second']:.1f}x "
      f"on {r['responses']} responses")
PYEOF
