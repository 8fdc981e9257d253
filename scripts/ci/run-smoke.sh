#!/usr/bin/env bash
# A shortened `platter run` (the README's first command) from a clean clone: the built-in
# config with 2 steps and a small evaluation, checking that the run directory holds what the
# README promises. The full run (docs/benchmarks.md) is too long for CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cargo build --quiet -p platter
timeout 900 target/debug/platter run --steps 2 --eval-samples 4 --eval-every 1 --out "$out"
dir=$(find "$out" -mindepth 1 -maxdepth 1 -type d | head -1)
for f in summary.json metrics.jsonl evals.jsonl eval_report.md plot.png config.toml final/model.safetensors best/config.json; do
  [[ -s "$dir/$f" ]] || { echo "run-smoke: $dir/$f is missing or empty" >&2; exit 1; }
done
python3 - "$dir/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
assert s["algo"] == "dapo" and s["steps"] == 2 and s["outcome"] == "succeeded", s
for k in ("eval_before", "eval_after"):
    for m in ("giou", "ciou", "parse_rate"):
        v = s[k][m]
        assert 0.0 <= v <= 1.0, (k, m, v)
print("run-smoke: ok", s["run_id"], "gIoU", s["eval_before"]["giou"], "->", s["eval_after"]["giou"])
PY
[[ $(wc -l < "$dir/metrics.jsonl") -eq 2 ]] || { echo "run-smoke: expected 2 steps in metrics.jsonl" >&2; exit 1; }
