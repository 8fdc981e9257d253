"""Generation throughput: transformers `generate` vs platter-qwen25vl, same model and inputs, one run.

    cargo build --release -p platter-qwen25vl --example bench_generate
    /root/venvs/oracle/bin/python scripts/oracle/qwen25vl/bench_generate.py \
        [--model models/qwen25vl/tests/fixtures/tiny] [--binary target/release/examples/bench_generate]

Both sides: batch 8 copies of the fixture prompt with the 224x224 image, greedy, exactly 64 new
tokens (HF: `min_new_tokens=64`, eos disabled), one thread each (torch.set_num_threads(1),
RAYON_NUM_THREADS=1), best of N wall times including vision and prefill. The Rust side is run in
two modes: `distinct` (8 independent prompts: 8 vision encodings + prefills, what HF does) and
`group` (one prompt sampled 8 times: one encoding + prefill, what GRPO rollouts do). Prints one
JSON line per measurement and the tokens/s ratios.
"""

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>Which item on the plate has the most protein?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def build_wide(out: Path, tiny: Path) -> str:
    """3B widths (text 2048/11008, 16 heads, 2 kv heads; vision 1280/3420, 16 heads, out 2048) with
    2 text layers and 2 vision blocks (block 1 full attention). The vocabulary stays the tiny
    tokenizer's 640 rows so the run measures the transformer layers, not a 151k-row head."""
    if (out / "model.safetensors").exists():
        return str(out)
    import shutil

    from transformers import Qwen2_5_VLConfig

    cfg = json.loads((tiny / "config.json").read_text())
    cfg["text_config"].update(hidden_size=2048, intermediate_size=11008, num_hidden_layers=2,
                              num_attention_heads=16, num_key_value_heads=2,
                              rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
    cfg["vision_config"].update(depth=2, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                                fullatt_block_indexes=[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**cfg)).eval()
    model.save_pretrained(out)
    for f in tiny.iterdir():
        if f.name not in ("config.json", "model.safetensors", "config_v4.json", "generation_config.json"):
            shutil.copy(f, out / f.name)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "models/qwen25vl/tests/fixtures/tiny"))
    ap.add_argument("--image", default=str(ROOT / "models/qwen25vl/tests/fixtures/images/img0.png"))
    ap.add_argument("--binary", default=str(ROOT / "target/release/examples/bench_generate"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--wide", metavar="DIR", help="build (if absent) and use a random model with Qwen2.5-VL-3B "
                    "widths but 2 text layers and 2 vision blocks in DIR (not committed; about 1 GB)")
    a = ap.parse_args()
    if a.wide:
        a.model = build_wide(Path(a.wide), Path(a.model))

    torch.set_num_threads(1)
    processor = AutoProcessor.from_pretrained(a.model)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(a.model, dtype=torch.float32).eval()
    image = Image.open(a.image).convert("RGB")
    inputs = processor(text=[PROMPT] * a.batch, images=[image] * a.batch, padding=True, return_tensors="pt")
    pad = processor.tokenizer.pad_token_id
    best = float("inf")
    with torch.inference_mode():
        for _ in range(a.repeats):
            t = time.perf_counter()
            out = model.generate(**inputs, do_sample=False, max_new_tokens=a.new_tokens,
                                 min_new_tokens=a.new_tokens, eos_token_id=None, pad_token_id=pad)
            best = min(best, time.perf_counter() - t)
    assert out.shape[1] - inputs["input_ids"].shape[1] == a.new_tokens
    hf_tps = a.batch * a.new_tokens / best
    print(json.dumps({"impl": "hf", "best_s": round(best, 6), "tokens_per_s": round(hf_tps, 1),
                      "prompt_len": inputs["input_ids"].shape[1]}))

    env = dict(os.environ, RAYON_NUM_THREADS="1")
    for mode in ("distinct", "group"):
        res = subprocess.run([a.binary, a.model, a.image, str(a.batch), str(a.new_tokens), str(a.repeats), mode],
                             env=env, check=True, capture_output=True, text=True)
        ours = json.loads(res.stdout.strip().splitlines()[-1])
        ours["impl"] = "platter"
        print(json.dumps(ours))
        print(f"ratio platter/hf ({mode}): {ours['tokens_per_s'] / hf_tps:.2f}x")


if __name__ == "__main__":
    main()
