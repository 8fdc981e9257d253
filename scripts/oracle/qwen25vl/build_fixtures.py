"""Build tiny random-weight Qwen2.5-VL models and parity fixtures for `platter-qwen25vl`.

Run (offline, CPU, deterministic):

    HF_HUB_OFFLINE=1 /root/venvs/oracle/bin/python scripts/oracle/qwen25vl/build_fixtures.py

Pinned versions: `scripts/oracle/requirements.txt`. Writes under `models/qwen25vl/tests/fixtures/`:

- `tiny/`: an HF model directory (v5 nested `config.json`, `model.safetensors` with hub key names,
  `tokenizer.json`, `tokenizer_config.json`, `processor_config.json` and the hub-style
  `preprocessor_config.json`, `chat_template.jinja`) plus
  `config_v4.json`, the same model described in the hub's flat v4 layout.
- `tiny_tied/`: the same shape with `tie_word_embeddings=true` (no `lm_head.weight`).
- `images/*.png`: generated inputs (28-multiples, so the processor does not resize) plus one image
  that HF resizes (bicubic) to check the resize tolerance.
- `cases.json`: prompt texts, response texts, greedy length.
- `parity.safetensors`: processor outputs, logits, greedy ids, response log-probs, entropy and
  gradients of a scalar loss with respect to selected weights (hub key names).
- `parity_tied.safetensors`: logits of the tied model on the same inputs.
- `resize.safetensors`: HF pixel values of the resized image.

The tokenizer is a byte-level BPE trained here on a small corpus with Qwen2's exact pipeline
(NFC, Qwen split regex, ByteLevel) and the 22 Qwen2.5 special tokens appended in their real order.
"""

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[3]
OUT = ROOT / "models/qwen25vl/tests/fixtures"

QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "You are a helpful assistant.",
    "Which item on the plate has the most protein? Think step by step, then answer with boxes and points.",
    "<think>The plate holds rice, grilled chicken and broccoli. Chicken is the protein.</think>",
    '{"bbox_2d": [112, 40, 300, 210], "point_2d": [205, 120], "label": "chicken"}',
    "Segment the food that is highest in fibre. Answer in JSON.",
    "A bowl of ramen with an egg, noodles, spring onion and two slices of pork.",
    "Find the sweetest item: a slice of cake, an apple and a cup of coffee.",
    "Numbers 0123456789, punctuation .,;:!?()[]{}<>\"' and whitespace\n\n  tabs\t end.",
    "Sushi, salad, bread, cheese, tomato, banana, orange, soup, steak, fries, pizza, pasta.",
    "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, na\u00efve jalape\u00f1o, \u6c34\u679c\u548c\u852c\u83dc, emoji \U0001f35c\U0001f370.",
]


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=540, min_frequency=1, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.add_special_tokens(SPECIALS)
    return tok


def make_image(h: int, w: int, seed: int) -> Image.Image:
    """A smooth, non-trivial RGB pattern (gradients + blobs), deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        fx, fy, ph = rng.uniform(0.01, 0.08), rng.uniform(0.01, 0.08), rng.uniform(0, 6.28)
        img[..., c] = 127 + 100 * np.sin(fx * xx + fy * yy + ph)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(8, 30)
        col = rng.uniform(0, 255, 3)
        m = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
        img[m] = col
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def tiny_config(tied: bool, vocab_size: int) -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
            bos_token_id=SPECIAL_ID["<|endoftext|>"], eos_token_id=SPECIAL_ID["<|im_end|>"],
            pad_token_id=SPECIAL_ID["<|endoftext|>"], tie_word_embeddings=tied,
        ),
        vision_config=dict(
            depth=3, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128,
            patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=112,
            fullatt_block_indexes=[1], tokens_per_second=2, hidden_act="silu",
        ),
        image_token_id=SPECIAL_ID["<|image_pad|>"], video_token_id=SPECIAL_ID["<|video_pad|>"],
        vision_start_token_id=SPECIAL_ID["<|vision_start|>"], vision_end_token_id=SPECIAL_ID["<|vision_end|>"],
        tie_word_embeddings=tied,
    )


def v4_flat_config(cfg: Qwen2_5_VLConfig) -> dict:
    """The same model in the hub's flat v4 layout (as in Qwen/Qwen2.5-VL-3B-Instruct's config.json)."""
    t, v = cfg.text_config, cfg.vision_config
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0, "bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id,
        "vision_start_token_id": cfg.vision_start_token_id, "vision_end_token_id": cfg.vision_end_token_id,
        "vision_token_id": SPECIAL_ID["<|vision_pad|>"], "image_token_id": cfg.image_token_id,
        "video_token_id": cfg.video_token_id, "hidden_act": "silu", "hidden_size": t.hidden_size,
        "initializer_range": 0.02, "intermediate_size": t.intermediate_size,
        "max_position_embeddings": t.max_position_embeddings, "max_window_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads, "num_hidden_layers": t.num_hidden_layers,
        "num_key_value_heads": t.num_key_value_heads, "rms_norm_eps": t.rms_norm_eps, "rope_theta": 1e6,
        "sliding_window": 32768, "tie_word_embeddings": cfg.tie_word_embeddings, "torch_dtype": "float32",
        "transformers_version": "4.41.2", "use_cache": True, "use_sliding_window": False,
        "vision_config": {
            "depth": v.depth, "hidden_act": "silu", "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size, "num_heads": v.num_heads, "in_chans": 3,
            "out_hidden_size": v.out_hidden_size, "patch_size": v.patch_size,
            "spatial_merge_size": v.spatial_merge_size, "spatial_patch_size": v.patch_size,
            "window_size": v.window_size, "fullatt_block_indexes": list(v.fullatt_block_indexes),
            "tokens_per_second": v.tokens_per_second, "temporal_patch_size": v.temporal_patch_size,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},
        "vocab_size": t.vocab_size,
    }


def hub_key(name: str) -> str:
    """In-memory v5 parameter names -> checkpoint (hub) key names."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    if name.startswith("model.visual."):
        return name[len("model."):]
    return name


TOK = build_tokenizer()
SPECIAL_ID = {s: TOK.token_to_id(s) for s in SPECIALS}


def main() -> None:
    torch.manual_seed(0)
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "images").mkdir(parents=True)
    vocab_size = 640
    assert TOK.get_vocab_size() <= vocab_size

    fast = PreTrainedTokenizerFast(
        tokenizer_object=TOK, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left",
    )
    improc = Qwen2VLImageProcessor(size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280})
    processor = Qwen2_5_VLProcessor(
        image_processor=improc, tokenizer=fast, video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE
    )

    images = [make_image(224, 224, 1), make_image(112, 168, 2)]
    for i, im in enumerate(images):
        im.save(OUT / "images" / f"img{i}.png")
    resize_img = make_image(150, 205, 3)
    resize_img.save(OUT / "images" / "resize.png")

    questions = [
        "Which item on the plate has the most protein?",
        "Segment the sweetest food.",
    ]
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True, tokenize=False,
        )
        for q in questions
    ]
    responses = [
        "<think>Chicken is the protein.</think>{\"bbox_2d\": [112, 40, 300, 210]}",
        "<think>cake</think>",
    ]
    inputs = processor(text=prompts, images=images, padding=True, return_tensors="pt")
    ids, attn = inputs["input_ids"], inputs["attention_mask"]
    pv, grid, mm = inputs["pixel_values"], inputs["image_grid_thw"], inputs["mm_token_type_ids"]

    for tied in (False, True):
        cfg = tiny_config(tied, vocab_size)
        cfg._attn_implementation = "eager"
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
        d = OUT / ("tiny_tied" if tied else "tiny")
        model.save_pretrained(d, safe_serialization=True)
        processor.save_pretrained(d)
        with open(d / "config_v4.json", "w") as f:
            json.dump(v4_flat_config(cfg), f, indent=2)
        # The hub ships the image processor as preprocessor_config.json (v4 layout); v5 nests it in
        # processor_config.json. Write both so loaders of either layout can be tested.
        ip = improc
        with open(d / "preprocessor_config.json", "w") as f:
            json.dump({
                "min_pixels": ip.size["shortest_edge"], "max_pixels": ip.size["longest_edge"],
                "patch_size": ip.patch_size, "temporal_patch_size": ip.temporal_patch_size,
                "merge_size": ip.merge_size, "image_mean": list(ip.image_mean), "image_std": list(ip.image_std),
                "rescale_factor": ip.rescale_factor, "resample": 3,
                "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
            }, f, indent=2)
        if tied:
            with torch.no_grad():
                out = model(input_ids=ids, attention_mask=attn, pixel_values=pv, image_grid_thw=grid,
                            mm_token_type_ids=mm)
            save_file({"logits": out.logits.contiguous()}, OUT / "parity_tied.safetensors")
            continue
        untied = model

    model = untied
    cfg = model.config
    with torch.no_grad():
        position_ids, rope_deltas = model.model.get_rope_index(
            ids, mm_token_type_ids=mm, image_grid_thw=grid, attention_mask=attn
        )
        vis = model.model.get_image_features(pv, grid)
        image_embeds = torch.cat(vis.pooler_output, dim=0)
        logits = model(input_ids=ids, attention_mask=attn, pixel_values=pv, image_grid_thw=grid,
                       mm_token_type_ids=mm).logits

        # Greedy continuation: HF generate with KV cache, no early stop (min_new_tokens, eos disabled).
        n_greedy = 40
        greedy = model.generate(
            input_ids=ids, attention_mask=attn, pixel_values=pv, image_grid_thw=grid, mm_token_type_ids=mm,
            do_sample=False, max_new_tokens=n_greedy, min_new_tokens=n_greedy, eos_token_id=None,
            pad_token_id=SPECIAL_ID["<|endoftext|>"],
        )[:, ids.shape[1]:].contiguous()
        # Cross-check with a full recompute per step; it can only run while no generated token is
        # <|image_pad|> (HF would then count it as an image placeholder).
        cur_ids, cur_attn, cur_mm = ids.clone(), attn.clone(), mm.clone()
        for step in range(n_greedy):
            if (greedy[:, :step] == cfg.image_token_id).any():
                print(f"no-cache cross-check stopped at step {step} (generated <|image_pad|>)")
                break
            lg = model(input_ids=cur_ids, attention_mask=cur_attn, pixel_values=pv, image_grid_thw=grid,
                       mm_token_type_ids=cur_mm).logits[:, -1]
            assert (lg.argmax(-1) == greedy[:, step]).all(), f"generate() and no-cache loop differ at {step}"
            nxt = greedy[:, step: step + 1]
            cur_ids = torch.cat([cur_ids, nxt], 1)
            cur_attn = torch.cat([cur_attn, torch.ones_like(nxt)], 1)
            cur_mm = torch.cat([cur_mm, torch.zeros_like(nxt)], 1)

    # Teacher-forced response log-probs: prompt left-padded, response right-padded (verl layout).
    resp_ids = [TOK.encode(r, add_special_tokens=False).ids + [SPECIAL_ID["<|im_end|>"]] for r in responses]
    r_len = max(len(r) for r in resp_ids)
    pad = SPECIAL_ID["<|endoftext|>"]
    resp = torch.tensor([r + [pad] * (r_len - len(r)) for r in resp_ids])
    resp_mask = torch.tensor([[1] * len(r) + [0] * (r_len - len(r)) for r in resp_ids])
    full_ids = torch.cat([ids, resp], 1)
    full_attn = torch.cat([attn, resp_mask], 1)
    full_mm = torch.cat([mm, torch.zeros_like(resp)], 1)
    model.zero_grad()
    out = model(input_ids=full_ids, attention_mask=full_attn, pixel_values=pv, image_grid_thw=grid,
                mm_token_type_ids=full_mm)
    p = ids.shape[1]
    lg = out.logits[:, p - 1: p - 1 + r_len].float()
    logp_all = torch.log_softmax(lg, -1)
    logp = logp_all.gather(-1, resp.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    m = resp_mask.float()
    # Scalar loss: masked mean NLL plus a small entropy term, so both paths carry gradient.
    loss = -(logp * m).sum() / m.sum() - 0.01 * (entropy * m).sum() / m.sum()
    loss.backward()
    grad_names = [
        "visual.patch_embed.proj.weight", "visual.blocks.0.attn.qkv.weight", "visual.blocks.0.norm1.weight",
        "visual.blocks.1.mlp.gate_proj.weight", "visual.blocks.2.attn.proj.bias", "visual.merger.ln_q.weight",
        "visual.merger.mlp.0.weight", "visual.merger.mlp.2.bias", "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.bias",
        "model.layers.1.mlp.down_proj.weight", "model.layers.1.input_layernorm.weight", "model.norm.weight",
        "lm_head.weight",
    ]
    grads = {}
    for name, prm in model.named_parameters():
        if hub_key(name) in grad_names:
            grads["grad." + hub_key(name)] = prm.grad.detach().clone()
    assert len(grads) == len(grad_names), sorted(grads)

    tensors = {
        "pixel_values": pv.contiguous(), "image_grid_thw": grid, "input_ids": ids, "attention_mask": attn,
        "mm_token_type_ids": mm.long(), "position_ids": position_ids.contiguous(), "rope_deltas": rope_deltas,
        "image_embeds": image_embeds.contiguous(), "logits": logits.contiguous(), "greedy": greedy,
        "response_ids": resp, "response_mask": resp_mask, "response_logp": logp.detach().contiguous(),
        "response_entropy": entropy.detach().contiguous(), "loss": loss.detach().reshape(1),
        **grads,
    }
    save_file(tensors, OUT / "parity.safetensors")

    resized = processor.image_processor(images=[resize_img], return_tensors="pt")
    save_file({"pixel_values": resized["pixel_values"].contiguous(), "image_grid_thw": resized["image_grid_thw"]},
              OUT / "resize.safetensors")

    with open(OUT / "cases.json", "w") as f:
        json.dump({"questions": questions, "prompts": prompts, "responses": responses, "images": ["images/img0.png", "images/img1.png"],
                   "resize_image": "images/resize.png", "greedy_tokens": n_greedy}, f, indent=2, ensure_ascii=False)
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"loss {loss.item():.6f}; seq len {ids.shape[1]}; grid {grid.tolist()}; fixtures {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
