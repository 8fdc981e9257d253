"""Learner throughput: one DAPO update (forward + backward + grad-norm clip + AdamW) in PyTorch vs
platter-learner, same model and inputs, one run.

    cargo build --release -p platter-learner --example bench_train
    /root/venvs/oracle/bin/python scripts/oracle/learner/bench_train.py            # tiny fixture model
    /root/venvs/oracle/bin/python scripts/oracle/learner/bench_train.py --mid /tmp/mid --repeats 3

Both sides: BATCH copies of the fixture prompt with the 224x224 image (prompt length 104, 64 image
tokens), each followed by RESPONSE_LEN response tokens with ids `10 + (7 i + 13 j) mod 490`; one
micro-batch; the DAPO clipped token-mean loss (clip 0.2/0.28, advantage 1, old log-probs computed
before timing); global grad-norm clip 1.0; AdamW (lr 1e-5, betas 0.9/0.999, eps 1e-8, weight decay
0.01, PyTorch's default CPU implementation); every weight trainable (vision tower included); f32;
one thread each (torch.set_num_threads(1), RAYON_NUM_THREADS=1); best of N timed updates after one
warm-up. PyTorch computes logits only where they are needed (`logits_to_keep`), as the learner
does. tokens/s counts all BATCH x (prompt + response) positions. Prints one JSON line per side and
the ratio. Each side also reports one forward (`forward_s`, the old log-probs, no graph) and the
best forward + backward without the optimizer (`forward_backward_s`), to split the time.
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


def build_mid(out: Path, tiny: Path) -> str:
    """Qwen2.5-0.5B text widths (896/4864, 14 heads, 2 kv heads) with 2 layers; vision tower with
    Qwen2.5-VL widths (1280/3420, 16 heads) and 2 blocks (block 1 full attention). The vocabulary
    stays the tiny tokenizer's 640 rows. Random weights, about 400 MB, not committed."""
    if (out / "model.safetensors").exists():
        return str(out)
    import shutil

    from transformers import Qwen2_5_VLConfig

    cfg = json.loads((tiny / "config.json").read_text())
    cfg["text_config"].update(hidden_size=896, intermediate_size=4864, num_hidden_layers=2,
                              num_attention_heads=14, num_key_value_heads=2,
                              rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]})
    cfg["vision_config"].update(depth=2, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=896,
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
    ap.add_argument("--binary", default=str(ROOT / "target/release/examples/bench_train"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--response-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mid", metavar="DIR", help="build (if absent) and use the mid-size random model in DIR")
    a = ap.parse_args()
    if a.mid:
        a.model = build_mid(Path(a.mid), Path(a.model))

    torch.set_num_threads(1)
    processor = AutoProcessor.from_pretrained(a.model)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(a.model, dtype=torch.float32)
    model.train()
    image = Image.open(a.image).convert("RGB")
    inputs = processor(text=[PROMPT] * a.batch, images=[image] * a.batch, padding=True, return_tensors="pt")
    b, p = inputs["input_ids"].shape
    r = a.response_len
    resp = torch.tensor([[10 + (7 * i + 13 * j) % 490 for j in range(r)] for i in range(b)])
    inputs["input_ids"] = torch.cat([inputs["input_ids"], resp], 1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(resp)], 1)
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(resp)], 1)

    def logp() -> torch.Tensor:
        # The last r + 1 positions; position P-1+j predicts response token j.
        logits = model(**inputs, logits_to_keep=r + 1).logits[:, :-1].float()
        return torch.log_softmax(logits, -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)

    t = time.perf_counter()
    with torch.no_grad():
        old = logp()
    forward_s = time.perf_counter() - t
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    adv = 1.0

    def update() -> None:
        opt.zero_grad(set_to_none=True)
        ratio = torch.exp(logp() - old)
        pg = -torch.minimum(ratio * adv, ratio.clamp(1 - 0.2, 1 + 0.28) * adv)
        loss = pg.sum() / pg.numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    # Forward + backward alone (no optimizer), to split the update's time.
    fwd_bwd_s = float("inf")
    for _ in range(min(a.repeats, 2)):
        t = time.perf_counter()
        logp().sum().backward()
        fwd_bwd_s = min(fwd_bwd_s, time.perf_counter() - t)
    best = float("inf")
    for k in range(a.repeats + 1):
        t = time.perf_counter()
        update()
        if k > 0:
            best = min(best, time.perf_counter() - t)
    tokens = b * (p + r)
    torch_tps = tokens / best
    params = sum(x.numel() for x in model.parameters())
    print(json.dumps({"impl": "pytorch", "best_s": round(best, 6), "tokens_per_s": round(torch_tps, 1),
                      "tokens": tokens, "prompt_len": p, "params": params,
                      "forward_s": round(forward_s, 6), "forward_backward_s": round(fwd_bwd_s, 6)}))

    env = dict(os.environ, RAYON_NUM_THREADS="1")
    # `distinct`: the same work as PyTorch (every prompt encoded and prefilled). `group`: the
    # batch is one prompt's responses (a GRPO group), whose prompt the learner runs once; tokens/s
    # still counts every position of every sequence, as above.
    for mode in ("distinct", "group"):
        res = subprocess.run([a.binary, a.model, a.image, str(a.batch), str(r), str(a.repeats), mode],
                             env=env, check=True, capture_output=True, text=True)
        ours = json.loads(res.stdout.strip().splitlines()[-1])
        ours["impl"] = f"platter-{mode}"
        print(json.dumps(ours))
        assert ours["tokens"] == tokens and ours["params"] == params, "the two sides ran different configs"
        print(f"ratio platter-{mode}/pytorch: {ours['tokens_per_s'] / torch_tps:.2f}x")


if __name__ == "__main__":
    main()
