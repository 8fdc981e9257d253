#!/usr/bin/env bash
# Rebuild the tiny built-in policies under assets/ (docs/sft.md):
#   assets/tiny-base/  random-weight Qwen2.5-VL-architecture base model + tokenizer
#   assets/tiny-sft/   the same after `platter sft --config configs/sft-tiny.toml`
# CPU only; about 10 minutes on a 2-core machine (most of it the SFT run).
# Needs the oracle venv (scripts/oracle/requirements.txt) and a built `platter` binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
PLATTER=${PLATTER:-target/debug/platter}
PY=${PY:-/root/venvs/oracle/bin/python}
DATA=runs/data/synth-sft

# The world the config trains on (its [data] table: seed 1, 300 images, objects in 224 px).
[ -f "$DATA/manifest.jsonl" ] || "$PLATTER" data synth --seed 1 --n 300 --policy-size 224 --out "$DATA"
# The committed assets use the builder's first tokenizer and sizes: one token per digit, a
# 1024-row vocabulary, number rows initialised like the rest (these flags rebuild
# assets/tiny-base byte for byte; the builder's defaults now differ, see docs/sft.md).
HF_HUB_OFFLINE=1 "$PY" scripts/sft/build_tiny_base.py --synth "$DATA" --out assets/tiny-base \
    --numbers digits --vocab-size 1024 --number-scale 0
"$PLATTER" sft --config configs/sft-tiny.toml --data "$DATA" --out runs/sft-tiny | tee runs/sft-tiny.log
rm -rf assets/tiny-sft
mkdir -p assets/tiny-sft
cp runs/sft-tiny/best/* assets/tiny-sft/   # weights of the best validation eval
cp runs/sft-tiny/report.json assets/tiny-sft/sft_report.json
cp runs/sft-tiny.log assets/tiny-sft/sft.log
