"""Loads a learner checkpoint directory in HF transformers and compares its logits.

Usage (from the repo root):

    cargo run -p platter-learner --example write_checkpoint -- \
        models/qwen25vl/tests/fixtures/tiny models/qwen25vl/tests/fixtures /tmp/learner_ckpt
    /root/venvs/oracle/bin/python scripts/oracle/learner/check_hf_load.py /tmp/learner_ckpt

The example trains the tiny fixture policy for two DAPO steps, writes a checkpoint through the
learner's `CheckpointStore` (`OUT/step-00000002/`) and the trained policy's logits on the fixture
prompts (`OUT/rust_logits.safetensors`). This script

1. loads `OUT/step-*/` with `Qwen2_5_VLForConditionalGeneration.from_pretrained` (no missing or
   unexpected weights allowed) and `AutoProcessor.from_pretrained` (tokenizer, image processor and
   chat template copied into the checkpoint);
2. re-processes the fixture prompts and images with that processor and checks the input ids equal
   those of `models/qwen25vl/tests/fixtures/parity.safetensors` and of the Rust side;
3. compares HF logits with the Rust logits (tolerance 1e-4 max abs over unpadded positions, the
   policy's own parity tolerance) and reports how far both are from the untrained fixture's logits
   (they must differ: the trained weights, not the fixture's, were loaded).

Exits non-zero on any failure.
"""

import json
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "models/qwen25vl/tests/fixtures"
TOL = 1e-4


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    steps = sorted(p for p in out.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    if not steps:
        sys.exit(f"no step-* checkpoint directory under {out}")
    ckpt = steps[-1]
    rust = load_file(str(out / "rust_logits.safetensors"))
    parity = load_file(str(FIXTURES / "parity.safetensors"))

    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        ckpt, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    model.eval()
    problems = {k: v for k, v in info.items() if v}
    if problems:
        sys.exit(f"FAIL: loading {ckpt} reported {problems}")
    processor = AutoProcessor.from_pretrained(ckpt)

    cases = json.loads((FIXTURES / "cases.json").read_text())
    images = [Image.open(FIXTURES / p).convert("RGB") for p in cases["images"]]
    inputs = processor(text=cases["prompts"], images=images, padding=True, return_tensors="pt")
    ids = inputs["input_ids"]
    if not torch.equal(ids, parity["input_ids"]):
        sys.exit("FAIL: the checkpoint's processor gives different input ids than the fixture")
    if not torch.equal(ids, rust["input_ids"]):
        sys.exit("FAIL: the Rust processor laid out different input ids than HF")

    with torch.no_grad():
        logits = model(**inputs).logits
    mask = inputs["attention_mask"].bool()
    d_rust = (logits - rust["logits"])[mask].abs().max().item()
    d_fixture = (logits - parity["logits"])[mask].abs().max().item()
    print(f"checkpoint: {ckpt}")
    print(f"HF logits vs Rust (trained) logits: max abs diff {d_rust:.3e} (tolerance {TOL:.0e})")
    print(f"HF logits vs untrained fixture logits: max abs diff {d_fixture:.3e} (must exceed {TOL:.0e})")
    if d_rust > TOL:
        sys.exit("FAIL: HF and Rust logits differ")
    if d_fixture <= TOL:
        sys.exit("FAIL: the checkpoint's logits equal the untrained fixture's")
    print("OK")


if __name__ == "__main__":
    main()
