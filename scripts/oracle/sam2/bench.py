"""Benchmark platter-sam2 against Meta's PyTorch SAM2ImagePredictor on the same weights, same run.

    cargo build --release -p platter-sam2 --example bench_sam2
    /root/venvs/oracle/bin/python scripts/oracle/sam2/bench.py \
        --rust target/release/examples/bench_sam2 [--config sam2.1_hiera_t] [--threads 2]

Builds the official config with seeded random weights (timing does not depend on the values) at
1024 px into a temporary directory, times `set_image`, `predict` with one box+point prompt and
with 16 prompts (8 responses x 2 objects, batched), multimask output, best of N, then runs the
Rust example on the same files and prints both and the ratios (PyTorch time / Rust time, so > 1
means Rust is faster). Run it on an idle machine; pin threads with --threads for both sides.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import save_file

if os.path.isdir("sam2"):
    sys.exit("run this from a directory without a sam2/ subfolder (Meta's import guard)")

import sam2  # noqa: E402
from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402


def best_of(n, f):
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rust", required=True, help="path of the built bench_sam2 example")
    ap.add_argument("--config", default="sam2.1_hiera_t")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = OmegaConf.load(os.path.join(sam2.__path__[0], "configs", "sam2.1", args.config + ".yaml"))
    cfg.model.sam_mask_decoder_extra_args = {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    }
    model = instantiate(cfg.model, _recursive_=True).eval()
    pred = SAM2ImagePredictor(model)
    h = w = 1024
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 3 + y * 5 + c * 85) % 256 for c in range(3)], -1).astype(np.uint8)
    boxes, points = [], []
    for i in range(16):
        fx, fy = (i % 4) / 4, (i // 4) / 4
        b = [fx * w, fy * h, (fx + 0.25) * w - 1, (fy + 0.25) * h - 1]
        boxes.append(b)
        points.append([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]])
    boxes = np.array(boxes, np.float32)
    points = np.array(points, np.float32)
    labels = np.ones((16, 1), np.int32)

    with torch.no_grad():
        pred.set_image(img)
        t_set = best_of(args.repeats, lambda: pred.set_image(img))
        t_p1 = best_of(args.repeats, lambda: pred.predict(point_coords=points[0], point_labels=labels[0], box=boxes[0], multimask_output=True))
        t_p16 = best_of(args.repeats, lambda: pred.predict(point_coords=points, point_labels=labels, box=boxes, multimask_output=True))
    torch_res = {"set_image_s": t_set, "predict_1_s": t_p1, "predict_16_s": t_p16}

    with tempfile.TemporaryDirectory() as d:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(d, "weights.safetensors"))
        with open(os.path.join(d, "model_config.yaml"), "w") as f:
            f.write(OmegaConf.to_yaml(cfg))
        Image.fromarray(img).save(os.path.join(d, "image.png"))
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
        out = subprocess.run(
            [args.rust, os.path.join(d, "weights.safetensors"), os.path.join(d, "model_config.yaml"), os.path.join(d, "image.png"), str(args.repeats)],
            check=True, capture_output=True, text=True, env=env,
        ).stdout
    rust_res = json.loads(out.strip().splitlines()[-1])
    print("torch:", json.dumps({k: round(v, 4) for k, v in torch_res.items()}))
    print("rust: ", json.dumps(rust_res))
    for k in torch_res:
        print(f"{k}: torch/rust = {torch_res[k] / rust_res[k]:.2f}x")
    print(f"rust masks 16 vs 1 (set_image + predict + resize): {rust_res['masks_16_s'] / rust_res['masks_1_s']:.2f}x")
    print(f"torch set_image+predict 16 vs 1: {(t_set + t_p16) / (t_set + t_p1):.2f}x")


if __name__ == "__main__":
    main()
