"""Grounding pretraining of the tiny base: "find the <food>" -> its boxes and points.

The real Qwen2.5-VL is pretrained on grounding (it answers `bbox_2d` for a named object before any
RL). This step stands in for that stage on the tiny model, after `pretrain_vision.py`: the prompt
is METHOD §1's with the question "the <food>" (or, for `--generic-fraction` of the samples, "one
food in the picture"), and the response is
`<think>the <food> is in the picture, so it matches</think><answer>[{"bbox_2d": [...], "point_2d": [...]}, ...]</answer>`
with one object per connected region of that food in the label map (policy pixels); with
`--sft-style` the generic samples' reasoning is a knowledge clause shaped like `platter sft`'s
("the steak has 26 g of protein per 100 g"). It does not see the synthetic questions: choosing
*which* food answers a question is left to SFT and RL. The vision tower is frozen (its
pretraining is kept); the language model trains. Not used by the committed assets: what it
measured, and why it is not enough yet, is in docs/sft.md.

    HF_HUB_OFFLINE=1 /root/venvs/oracle/bin/python scripts/sft/pretrain_grounding.py \
        --base runs/tiny-base-v --synth runs/data/w3 --out runs/tiny-base-g --steps 2000 \
        --generic-fraction 0

Reports, on val samples, teacher-forced: the share of the first box's x1, y1, x2, y2 within 8 px
of the GT, and of its first x alone (the one coordinate not continued from others), each against
a fixed guess. `--corner-weight` scales the loss of each box's first two coordinates. Pinned versions: `scripts/oracle/requirements.txt`.
"""

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402
from transformers import (  # noqa: E402
    PreTrainedTokenizerFast,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessor,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_tiny_base import user_prompt  # noqa: E402
from pretrain_vision import split_images  # noqa: E402

FOODS = 30
GENERIC_QUESTION = "one food in the picture"


def names_of(synth: Path) -> dict[int, str]:
    out = {}
    for line in (synth / "category_id.txt").read_text().splitlines():
        parts = line.split("\t") if "\t" in line else line.split(None, 1)
        if len(parts) == 2 and parts[0].strip().isdigit():
            out[int(parts[0])] = parts[1].strip()
    return out


def objects(mask: np.ndarray, min_pixels: int = 12) -> list[tuple[int, ...]]:
    comps, n = ndimage.label(mask)
    objs = []
    for k in range(1, n + 1):
        ys, xs = np.nonzero(comps == k)
        if len(xs) < min_pixels:
            continue
        cx, cy = xs.mean(), ys.mean()
        i = int(np.argmin((xs - cx) ** 2 + (ys - cy) ** 2))
        objs.append((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()), int(xs[i]), int(ys[i])))
    return sorted(objs, key=lambda o: (o[1], o[0]))


def samples(synth: Path, split: str, size: int, processor, names, limit: int):
    out = []
    for img_path, ann_path in split_images(synth, split, limit):
        image = Image.open(img_path).convert("RGB").resize((size, size), Image.BICUBIC)
        labels = np.array(Image.open(ann_path).resize((size, size), Image.NEAREST))
        pix = processor(images=[image], return_tensors="pt")["pixel_values"]
        for cls in sorted(int(c) for c in np.unique(labels) if 1 <= c <= FOODS):
            objs = objects(labels == cls)
            if objs and cls in names:
                out.append((pix, names[cls], objs))
    return out


def fact(food: dict, rng) -> str:
    """One clause shaped like `platter sft`'s reasoning (learner/src/sft/data.rs `reasoning`)."""
    name = food["name"]
    kinds = ["nutrient", "cuisine", "method", "largest", "group", "course"] + (["allergen"] if food["allergens"] else [])
    kind = kinds[rng.integers(len(kinds))]
    if kind == "nutrient":
        n = ["protein", "fat", "sugar", "fibre"][rng.integers(4)]
        return f"the {name} has {round(food[n])} g of {n} per 100 g"
    if kind == "allergen":
        return f"the {name} contains {food['allergens'][rng.integers(len(food['allergens']))]}"
    if kind == "cuisine":
        return f"the {name} is from {food['cuisine']} cuisine"
    if kind == "method":
        return f"the {name} is {food['method']}"
    if kind == "largest":
        return f"the {name} is the largest item"
    if kind == "group":
        return f"the {name} is {food['group']}"
    return f"the {name} is a {food['course']} dish"


def encode(tok, name, objs, image_tokens, generic, reason=None):
    # generic: the question names no food, so the answer must ground the food the reasoning
    # names (as after SFT, where the question asks about a property and the reasoning names the
    # food); otherwise the question names it.
    question = GENERIC_QUESTION if generic else "the " + name
    prompt = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|>{'<|image_pad|>' * image_tokens}<|vision_end|>{user_prompt(question)}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ans = ", ".join('{"bbox_2d": [%d,%d,%d,%d], "point_2d": [%d,%d]}' % o for o in objs)
    reason = reason or f"the {name} is in the picture"
    response = f"<think>{reason}, so it matches</think><answer>[{ans}]</answer><|im_end|>"
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    return p, r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--synth", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-images", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument(
        "--corner-weight", type=float, default=1.0,
        help="loss weight of each box's first two coordinates (the rest of the response: 1)",
    )
    ap.add_argument(
        "--sft-style", action="store_true",
        help="generic questions' reasoning states a knowledge fact about the food, as SFT's does",
    )
    ap.add_argument(
        "--generic-fraction", type=float, default=0.5,
        help="share of samples whose question names no food (the reasoning names it)",
    )
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.base, torch_dtype=torch.float32)
    processor = Qwen2VLImageProcessor.from_pretrained(args.base)
    tok = PreTrainedTokenizerFast.from_pretrained(args.base)
    names = names_of(args.synth)
    grid = args.image_size // 14
    image_tokens = (grid // 2) ** 2
    thw = torch.tensor([[1, grid, grid]])
    t0 = time.time()
    train = samples(args.synth, "train", args.image_size, processor, names, args.max_images)
    val = samples(args.synth, "val", args.image_size, processor, names, 100)[:128]
    print(f"{len(train)} train / {len(val)} val grounding samples in {time.time() - t0:.0f}s", flush=True)
    pick = np.random.default_rng(args.seed)
    foods = {f["name"]: f for f in json.loads((args.synth / "knowledge.json").read_text())}
    enc_train = []
    for _, n, o in train:
        generic = pick.random() < args.generic_fraction
        # Generic questions get a reasoning clause in SFT's style about the named food.
        reason = fact(foods[n], pick) if generic and args.sft_style and n in foods else None
        enc_train.append(encode(tok, n, o, image_tokens, generic, reason))
    enc_val = [encode(tok, n, o, image_tokens, i % 2 == 1) for i, (_, n, o) in enumerate(val)]
    numbers = {}
    for tid in range(len(tok)):
        s = tok.convert_ids_to_tokens(tid)
        if s.isascii() and s.isdigit() and str(int(s)) == s:
            numbers[tid] = int(s)
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    bbox_token = tok.convert_tokens_to_ids("bbox")
    underscore = tok.convert_tokens_to_ids("_")

    for p in model.model.visual.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))),
    )

    def batch(items, encs):
        seqs = [p + r for p, r in encs]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad)
        att = torch.zeros((len(seqs), width), dtype=torch.long)
        labels = torch.full((len(seqs), width), -100)
        for i, ((p, r), s) in enumerate(zip(encs, seqs)):
            ids[i, : len(s)] = torch.tensor(s)
            att[i, : len(s)] = 1
            labels[i, len(p) : len(s)] = torch.tensor(r)
        pix = torch.cat([it[0] for it in items])
        return ids, att, labels, pix, thw.repeat(len(items), 1)

    def evaluate():
        model.eval()
        hits, const_hits, total, first, first_const = 0, 0, 0, 0, 0
        with torch.no_grad():
            for i in range(0, len(val), 16):
                ids, att, labels, pix, g = batch(val[i : i + 16], enc_val[i : i + 16])
                logits = model(input_ids=ids, attention_mask=att, pixel_values=pix, image_grid_thw=g).logits
                pred = logits[:, :-1].argmax(-1)
                tgt = labels[:, 1:]
                for b in range(ids.shape[0]):
                    # numbers of the response, less the "2" of each "bbox_2d" / "point_2d" key
                    coords = [
                        (j, numbers[int(tgt[b, j])])
                        for j in range(tgt.shape[1])
                        if int(tgt[b, j]) in numbers and int(tgt[b, j - 1]) != underscore
                    ][:4]
                    for k, (j, v) in enumerate(coords):
                        pv = numbers.get(int(pred[b, j]), -1000)
                        hits += abs(pv - v) <= 8
                        const_hits += abs([60, 60, 160, 160][k] - v) <= 8
                        total += 1
                        if k == 0:
                            first += abs(pv - v) <= 8
                            first_const += abs(60 - v) <= 8
        model.train()
        n = len(val)
        return hits / max(total, 1), const_hits / max(total, 1), first / n, first_const / n

    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    for step in range(args.steps):
        idx = torch.randint(len(train), (args.batch,), generator=gen).tolist()
        ids, att, labels, pix, g = batch([train[i] for i in idx], [enc_train[i] for i in idx])
        logits = model(input_ids=ids, attention_mask=att, pixel_values=pix, image_grid_thw=g).logits[:, :-1]
        tgt = labels[:, 1:]
        weight = (tgt != -100).float()
        if args.corner_weight != 1.0:
            # the first two numbers after each "bbox" token: the box's top-left corner, the
            # coordinates that must be found in the image rather than continued from others
            for b_, row in enumerate(tgt.tolist()):
                left = 0
                for j, t in enumerate(row):
                    if t == bbox_token:
                        left = 2
                    elif left and t in numbers and row[j - 1] != underscore:
                        weight[b_, j] = args.corner_weight
                        left -= 1
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tgt.clamp(min=0).reshape(-1), reduction="none"
        ).reshape(tgt.shape)
        loss = (ce * weight).sum() / weight.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps - 1:
            acc, const, fx, fx_const = evaluate()
            print(
                f"step {step:5d} loss {loss.item():.3f}  val box coords within 8 px {acc:.3f} (a fixed box: {const:.3f}), "
                f"first x {fx:.3f} (fixed: {fx_const:.3f})  ({time.time() - t0:.0f}s)",
                flush=True,
            )

    acc, const, fx, fx_const = evaluate()
    report = {
        "steps": args.steps, "batch": args.batch, "lr": args.lr, "train_samples": len(train),
        "corner_weight": args.corner_weight,
        "val_coord_within_8px": round(acc, 3), "fixed_box_within_8px": round(const, 3),
        "val_first_x_within_8px": round(fx, 3), "fixed_first_x_within_8px": round(fx_const, 3),
    }
    print(json.dumps(report), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.out.resolve() != args.base.resolve():
        for f in args.base.iterdir():
            if f.is_file() and not f.name.startswith("model"):
                shutil.copy2(f, args.out / f.name)
    model.save_pretrained(args.out, safe_serialization=True)
    (args.out / "grounding_pretrain.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
