"""Pretrain the tiny base model's vision tower on the synthetic food world's label maps.

The real Qwen2.5-VL starts RL from a ViT that already sees objects and knows where they are.
A random-weight tiny tower does not, and language-model supervision alone (`platter sft`) never
taught one to localise on a 2-core budget (docs/sft.md). This step stands in for the pretrained
ViT: it trains only the vision tower (patch embed, blocks, 2x2 merger) so that each merged
image token's output says what lies under it and where it is, with two linear probes that are
thrown away afterwards:

* class mix: per merged token (28x28 input pixels), the fraction of each label (background,
  the 30 foods, sauce = label 103, cutlery = label 255) in that cell, learnt with a soft
  cross-entropy;
* position: the token's (row, column) in the merged grid, regressed (mean squared error, in
  cells), because the tower's 2-D rotary attention alone carries no absolute position.

The language model, the tokenizer and every other file are copied unchanged. Run (offline, CPU,
deterministic for a given torch build and thread count):

    HF_HUB_OFFLINE=1 /root/venvs/oracle/bin/python scripts/sft/pretrain_vision.py \
        --base runs/tiny-base --synth runs/data/w3 --out runs/tiny-base-v --steps 1500

Pinned versions: `scripts/oracle/requirements.txt`. Trains on the train split; reports on 64
val images. Measured figures and what SFT made of it: docs/sft.md.
"""

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor  # noqa: E402

FOODS = 30
SAUCE, CUTLERY = 103, 255
CLASSES = FOODS + 3  # 0 background, 1..30 foods, 31 sauce, 32 cutlery


def class_index(label_map: np.ndarray, path: Path) -> np.ndarray:
    out = np.full(label_map.shape, -1, dtype=np.int64)
    food = (label_map >= 1) & (label_map <= FOODS)
    out[label_map == 0] = 0
    out[food] = label_map[food]
    out[label_map == SAUCE] = FOODS + 1
    out[label_map == CUTLERY] = FOODS + 2
    if (out < 0).any():
        bad = sorted(set(np.unique(label_map[out < 0]).tolist()))
        raise SystemExit(f"{path}: label map has ids outside the synthetic world's classes: {bad}")
    return out


def split_images(synth: Path, split: str, limit: int) -> list[tuple[Path, Path]]:
    """(image, label map) paths of a split of `platter data synth`'s layout, in index order."""
    img_dir = synth / "Images" / "img_dir" / split
    ann_dir = synth / "Images" / "ann_dir" / split
    if not img_dir.is_dir():
        raise SystemExit(f"{img_dir}: missing; generate the world with `platter data synth`")
    images = sorted((p for p in img_dir.iterdir() if p.suffix in (".jpg", ".jpeg", ".png")), key=lambda p: p.stem)
    if limit:
        images = images[:limit]
    return [(p, ann_dir / f"{p.stem}.png") for p in images]


def load_split(synth: Path, split: str, size: int, processor, limit: int):
    """Pixel values per image (as the processor makes them) and per-cell class mixes."""
    cell = 28
    grid = size // cell
    pixels, mixes = [], []
    for img_path, ann_path in split_images(synth, split, limit):
        image = Image.open(img_path).convert("RGB").resize((size, size), Image.BICUBIC)
        labels = Image.open(ann_path)
        if labels.mode not in ("L", "P"):
            raise SystemExit(f"{ann_path}: label map must be 8-bit grayscale, got mode {labels.mode}")
        labels = np.array(labels.resize((size, size), Image.NEAREST))
        idx = class_index(labels, ann_path)
        onehot = np.eye(CLASSES, dtype=np.float32)[idx]  # [H, W, C]
        mix = onehot.reshape(grid, cell, grid, cell, CLASSES).mean(axis=(1, 3)).reshape(-1, CLASSES)
        enc = processor(images=[image], return_tensors="pt")
        thw = enc["image_grid_thw"][0].tolist()
        if thw != [1, grid * 2, grid * 2]:
            raise SystemExit(f"{img_path}: processor grid {thw}, expected [1, {grid * 2}, {grid * 2}]")
        pixels.append(enc["pixel_values"])
        mixes.append(torch.from_numpy(mix))
    return pixels, torch.stack(mixes), grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="HF model directory (tiny base)")
    ap.add_argument("--synth", type=Path, required=True, help="synthetic world (platter data synth)")
    ap.add_argument("--out", type=Path, required=True, help="output model directory (may be --base)")
    ap.add_argument("--image-size", type=int, default=224, help="policy input side (multiple of 28)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16, help="images per step")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--position-weight", type=float, default=1.0)
    ap.add_argument("--max-images", type=int, default=0, help="0 = the whole train split")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.image_size % 28:
        raise SystemExit(f"--image-size {args.image_size} is not a multiple of 28")

    torch.manual_seed(args.seed)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.base, torch_dtype=torch.float32)
    processor = Qwen2VLImageProcessor.from_pretrained(args.base)
    visual = model.model.visual
    t0 = time.time()
    pixels, mixes, grid = load_split(args.synth, "train", args.image_size, processor, args.max_images)
    vpix, vmix, _ = load_split(args.synth, "val", args.image_size, processor, 64)
    print(f"loaded {len(pixels)} train / {len(vpix)} val images in {time.time() - t0:.1f}s", flush=True)

    width = model.config.vision_config.out_hidden_size
    cls_head = torch.nn.Linear(width, CLASSES)
    pos_head = torch.nn.Linear(width, 2)
    rows = torch.arange(grid).repeat_interleave(grid).float()
    cols = torch.arange(grid).repeat(grid).float()
    pos_target = torch.stack([rows, cols], dim=1)  # merged tokens come out in raster order
    params = list(visual.parameters()) + list(cls_head.parameters()) + list(pos_head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)),
    )
    thw = torch.tensor([[1, grid * 2, grid * 2]])

    def forward(pix_list, mix):
        n = len(pix_list)
        out = visual(torch.cat(pix_list), grid_thw=thw.repeat(n, 1)).pooler_output  # [n*g*g, width]
        logits = cls_head(out)
        target = mix.reshape(-1, CLASSES)
        cls_loss = -(target * torch.log_softmax(logits, -1)).sum(-1).mean()
        pos = pos_head(out)
        pos_err = (pos - pos_target.repeat(n, 1)).pow(2).sum(-1)
        # accuracy of the majority class over cells that are mostly one food
        major = target.argmax(-1)
        food_cells = (major >= 1) & (major <= FOODS) & (target.max(-1).values >= 0.5)
        acc = (logits.argmax(-1)[food_cells] == major[food_cells]).float().mean()
        return cls_loss, pos_err.mean(), pos_err.sqrt().mean(), acc

    gen = torch.Generator().manual_seed(args.seed)
    visual.train()
    for step in range(args.steps):
        idx = torch.randint(len(pixels), (args.batch,), generator=gen).tolist()
        cls_loss, pos_loss, _, _ = forward([pixels[i] for i in idx], mixes[idx])
        loss = cls_loss + args.position_weight * pos_loss / grid
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            with torch.no_grad():
                v = forward(vpix, vmix)
            print(
                f"step {step:5d}  train class {cls_loss.item():.3f} pos {pos_loss.item():.3f}  "
                f"val class {v[0].item():.3f} position error {v[2].item():.2f} cells "
                f"food-cell accuracy {v[3].item():.2f}  ({time.time() - t0:.0f}s)",
                flush=True,
            )

    with torch.no_grad():
        v = forward(vpix, vmix)
    report = {
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "train_images": len(pixels),
        "val_class_loss": round(v[0].item(), 4),
        "val_position_error_cells": round(v[2].item(), 3),
        "val_food_cell_accuracy": round(v[3].item(), 3),
    }
    print(json.dumps(report), flush=True)
    out = args.out
    if out.resolve() != args.base.resolve():
        out.mkdir(parents=True, exist_ok=True)
        for f in args.base.iterdir():
            if f.is_file() and not f.name.startswith("model"):
                shutil.copy2(f, out / f.name)
    model.save_pretrained(out, safe_serialization=True)
    (out / "vision_pretrain.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
