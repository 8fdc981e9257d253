"""Build SAM2.1 parity fixtures for `platter-sam2` with Meta's `sam2` package (offline, CPU, seeded).

Run from a directory that has no `sam2/` subfolder (Meta's import guard), e.g. the repo root:

    /root/venvs/oracle/bin/python scripts/oracle/sam2/build_fixtures.py [--out models/sam2/tests/fixtures/micro_256]

What it does:
- builds a reduced random-weight SAM2.1 model ("micro": Hiera embed 16, stages [1,1,3,1], global
  block 3, neck d_model 64) from Meta's `sam2.1_hiera_t.yaml` with the three decoder args that
  `build_sam2` adds; every parameter that Meta initialises to a constant (pos embeds, LayerNorms,
  biases) gets small seeded noise so that every path contributes to the outputs;
- saves the weights as `weights.safetensors` and Meta-style `weights.pt` (`{"model": state_dict}`),
  and the model YAML (`model_config.yaml`, Meta's format);
- writes a deterministic non-square `image.png` (H=160, W=296), so resizing to the model size and
  post-processing back to the original size are both exercised;
- runs `SAM2ImagePredictor` (with `_bb_feat_sizes` patched for the reduced image size) and saves the
  preprocessed input, trunk stage outputs, neck features and position encodings, image embedding,
  high-res features, and for each prompt case the low-res logits, IoU scores, object score logits
  and mask logits at original resolution into `io.safetensors`; prompts go to `prompts.json`.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
from omegaconf import OmegaConf
from hydra.utils import instantiate
from PIL import Image
from safetensors.torch import save_file

if os.path.isdir("sam2"):
    sys.exit("run this from a directory without a sam2/ subfolder (Meta's import guard)")

import sam2  # noqa: E402
from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402

IMAGE_SIZE = 256
ORIG_H, ORIG_W = 160, 296


def micro_config(image_size: int):
    base = os.path.join(sam2.__path__[0], "configs", "sam2.1", "sam2.1_hiera_t.yaml")
    cfg = OmegaConf.load(base)
    m = cfg.model
    m.image_size = image_size
    t = m.image_encoder.trunk
    t.embed_dim = 16
    t.num_heads = 1
    t.stages = [1, 1, 3, 1]
    t.global_att_blocks = [3]
    t.window_pos_embed_bkg_spatial_size = [7, 7]
    n = m.image_encoder.neck
    n.d_model = 64
    n.backbone_channel_list = [128, 64, 32, 16]
    n.position_encoding.num_pos_feats = 64
    ma = m.memory_attention
    ma.d_model = 64
    ma.num_layers = 1
    ma.layer.d_model = 64
    ma.layer.dim_feedforward = 128
    for att in (ma.layer.self_attention, ma.layer.cross_attention):
        att.embedding_dim = 64
        att.feat_sizes = [image_size // 16, image_size // 16]
    ma.layer.cross_attention.kv_in_dim = 16
    me = m.memory_encoder
    me.out_dim = 16
    me.position_encoding.num_pos_feats = 16
    me.fuser.layer.dim = 64
    me.fuser.num_layers = 1
    # What build_sam2(apply_postprocessing=True) adds.
    m.sam_mask_decoder_extra_args = {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    }
    return cfg


def make_image() -> np.ndarray:
    y, x = np.mgrid[0:ORIG_H, 0:ORIG_W]
    img = np.zeros((ORIG_H, ORIG_W, 3), dtype=np.int64)
    for c in range(3):
        img[..., c] = (x * 3 + y * 5 + c * 85 + (x // 32) * (y // 32) * 37) % 256
    # Two flat "objects" so the image has regions, not only texture.
    disc = (x - 90) ** 2 + (y - 100) ** 2 < 45**2
    img[disc] = [230, 180, 40]
    rect = (x > 180) & (x < 290) & (y > 30) & (y < 120)
    img[rect] = [60, 140, 200]
    return img.astype(np.uint8)


# Prompt cases in original-image pixels. Each is one `predictor.predict` call.
CASES = [
    {"name": "box_point", "box": [[40, 50, 150, 150]], "points": [[[90, 100]]], "labels": [[1]], "multimask": True},
    {"name": "box_only", "box": [[175, 25, 290, 125]], "multimask": True},
    {"name": "points_neg", "points": [[[230, 70], [90, 100], [20, 20]]], "labels": [[1, 0, 0]], "multimask": True},
    {
        "name": "batched",
        "box": [[40, 50, 150, 150], [175, 25, 290, 125], [0, 0, 295, 159]],
        "points": [[[90, 100]], [[230, 70]], [[150, 80]]],
        "labels": [[1], [1], [1]],
        "multimask": True,
    },
    {"name": "single_box_point", "box": [[40, 50, 150, 150]], "points": [[[90, 100]]], "labels": [[1]], "multimask": False},
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models/sam2/tests/fixtures/micro_256")
    ap.add_argument("--no-pt", action="store_true", help="skip the Meta-style .pt copy")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    cfg = micro_config(IMAGE_SIZE)
    model = instantiate(cfg.model, _recursive_=True)
    # Meta initialises pos embeds to zero and norms to 1/0; perturb every parameter a little so a
    # mixed-up weight/bias or a skipped pos-embed shows up in the parity numbers.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    model.eval()

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(args.out, "weights.safetensors"))
    if not args.no_pt:
        torch.save({"model": state}, os.path.join(args.out, "weights.pt"))
    yaml_cfg = OmegaConf.to_yaml(cfg)
    with open(os.path.join(args.out, "model_config.yaml"), "w") as f:
        f.write("# @package _global_\n# Reduced SAM2.1 'micro' config written by scripts/oracle/sam2/build_fixtures.py\n")
        f.write(yaml_cfg)
    n_params = sum(v.numel() for v in state.values())
    print(f"params {n_params}")

    img = make_image()
    Image.fromarray(img).save(os.path.join(args.out, "image.png"))

    pred = SAM2ImagePredictor(model)
    s = IMAGE_SIZE
    pred._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]

    captured = {}
    enc = model.image_encoder

    def hook_trunk(_m, inp, out):
        captured["input"] = inp[0].detach().clone()
        for i, o in enumerate(out):
            captured[f"trunk.{i}"] = o.detach().clone()

    def hook_neck(_m, _inp, out):
        feats, pos = out
        # Levels 0 and 1 are checked through the high-res features (conv_s0/conv_s1 of them);
        # the sine encoding only at one level, to keep the fixture small.
        for i in (2, 3):
            captured[f"neck.{i}"] = feats[i].detach().clone()
        captured["neck_pos.2"] = pos[2].detach().clone()

    h1 = enc.trunk.register_forward_hook(hook_trunk)
    h2 = enc.neck.register_forward_hook(hook_neck)
    with torch.no_grad():
        pred.set_image(img)
    h1.remove()
    h2.remove()
    out = dict(captured)
    out["image_embed"] = pred._features["image_embed"].clone()
    out["high_res_feats.0"] = pred._features["high_res_feats"][0].clone()
    out["high_res_feats.1"] = pred._features["high_res_feats"][1].clone()
    out["dense_pe"] = model.sam_prompt_encoder.get_dense_pe().clone()

    dec_out = {}

    def hook_dec(_m, _inp, o):
        dec_out["obj"] = o[3].detach().clone()

    h3 = model.sam_mask_decoder.register_forward_hook(hook_dec)
    prompts = []
    for case in CASES:
        kw = {}
        if "box" in case:
            kw["box"] = np.array(case["box"], dtype=np.float32)
        if "points" in case:
            kw["point_coords"] = np.array(case["points"], dtype=np.float32)
            kw["point_labels"] = np.array(case["labels"], dtype=np.int32)
        if len(case.get("box", [])) == 1 and "point_coords" in kw and kw["point_coords"].shape[0] == 1:
            kw["point_coords"] = kw["point_coords"][0]
            kw["point_labels"] = kw["point_labels"][0]
        if "box" not in case and kw["point_coords"].shape[0] == 1:
            kw["point_coords"] = kw["point_coords"][0]
            kw["point_labels"] = kw["point_labels"][0]
        with torch.no_grad():
            masks, iou, low = pred.predict(multimask_output=case["multimask"], return_logits=True, **kw)
        masks, iou, low = (torch.from_numpy(np.asarray(a)).float() for a in (masks, iou, low))
        if masks.dim() == 3:  # single prompt: predictor squeezes the batch dim
            masks, iou, low = masks[None], iou[None], low[None]
        name = case["name"]
        out[f"{name}.masks"] = masks.contiguous()
        out[f"{name}.iou"] = iou.contiguous()
        out[f"{name}.low_res"] = low.contiguous()
        out[f"{name}.obj_score"] = dec_out["obj"].float().contiguous()
        prompts.append({k: v for k, v in case.items()})
        print(name, tuple(masks.shape), iou.numpy().round(4).tolist())
    h3.remove()

    out = {k: v.float().contiguous() for k, v in out.items()}
    save_file(out, os.path.join(args.out, "io.safetensors"))
    with open(os.path.join(args.out, "prompts.json"), "w") as f:
        json.dump({"image_size": IMAGE_SIZE, "orig_hw": [ORIG_H, ORIG_W], "cases": prompts}, f, indent=1)
    for k in sorted(out):
        print(k, tuple(out[k].shape))


if __name__ == "__main__":
    main()
