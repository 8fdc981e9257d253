"""Build the tiny random-weight Qwen2.5-VL base model that `platter sft` starts from.

Run (offline, CPU, deterministic, a few seconds):

    platter data synth --seed 1 --n 300 --policy-size 224 --out /tmp/sft-synth
    HF_HUB_OFFLINE=1 /root/venvs/oracle/bin/python scripts/sft/build_tiny_base.py \
        --synth /tmp/sft-synth --out assets/tiny-base

Pinned versions: `scripts/oracle/requirements.txt` (transformers 5.24.0, torch 2.15.0).

The architecture is Qwen2.5-VL's (same code path as the 3B model) with tiny sizes: text hidden
128, 2 layers, 4 heads / 2 KV heads, M-RoPE sections [4, 6, 6], untied head; vision depth 2,
hidden 64, full attention in block 1, 2x2 merger. About 0.8 M parameters (3 MB in f32).

The tokenizer is a byte-level BPE trained with Qwen2's pipeline (NFC, Qwen split regex,
ByteLevel) on the synthetic world's text: the METHOD §1 prompts of the manifest's questions,
sentences built from `knowledge.json` (the words the SFT reasoning uses), answer JSON with
every coordinate digit, then the 22 Qwen2.5 special tokens appended in their real order plus
the chat template. Any text still tokenises (the byte alphabet is always in the vocabulary).
"""

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

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
# Qwen2.5-VL's chat template (as shipped with the hub model).
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
# `platter_rl::prompt::DEFAULT_ANSWER_EXAMPLE` and `user_prompt` (METHOD §1).
EXAMPLE = '[{"bbox_2d": [10,100,200,210], "point_2d": [30,110]}, {"bbox_2d": [225,296,706,786], "point_2d": [302,410]}]'


def user_prompt(question: str) -> str:
    q = question.strip().rstrip('."?! \t\n').lower()
    return (
        f'Please find "{q}" with bboxs and points.'
        "Compare the difference between object(s) and find the most closely matched object(s)."
        "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
        "Output the bbox(es) and point(s) inside the interested object(s) in JSON format."
        f"i.e., <think> thinking process here </think><answer>{EXAMPLE}</answer>"
    )


def corpus(synth: Path) -> list[str]:
    lines = ["You are a helpful assistant."]
    with open(synth / "manifest.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            lines.append(user_prompt(rec["question"]))
            items = rec.get("objects", {}).get("items", [])
            ans = ", ".join(
                '{"bbox_2d": [%d,%d,%d,%d], "point_2d": [%d,%d]}' % (*o["bbox_2d"], *o["point_2d"]) for o in items
            )
            lines.append(f"<think>{' and '.join(rec.get('target_names', []))}</think><answer>[{ans}]</answer>")
    # The vocabulary of the SFT reasoning sentences (learner/src/sft.rs `reasoning`).
    knowledge = json.loads((synth / "knowledge.json").read_text())
    foods = knowledge["foods"] if isinstance(knowledge, dict) and "foods" in knowledge else knowledge
    for food in foods:
        names = [food["name"]] + ([food["plural"]] if food.get("plural") else [])
        for n in names:
            lines.append(
                f"the {n} is {food['method']} {food['group']} from {food['cuisine']} cuisine, a {food['course']} dish, "
                f"with {round(food['protein'])} g of protein, {round(food['fat'])} g of fat, "
                f"{round(food['sugar'])} g of sugar and {round(food['fibre'])} g of fibre per 100 g, "
                f"so it matches; it contains {', '.join(food['allergens']) or 'no allergens'}, the largest item."
            )
    lines.append(" ".join(str(i) for i in range(1000)))
    return lines


def build_tokenizer(lines: list[str], vocab_size: int) -> Tokenizer:
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
        vocab_size=vocab_size - len(SPECIALS), min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(lines, trainer=trainer)
    tok.add_special_tokens(SPECIALS)
    return tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synth", type=Path, required=True, help="output of `platter data synth`")
    ap.add_argument("--out", type=Path, required=True, help="model directory to write")
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--image-size", type=int, default=224, help="policy input side (multiple of 28)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    tok = build_tokenizer(corpus(args.synth), args.vocab_size)
    assert tok.get_vocab_size() <= args.vocab_size, tok.get_vocab_size()
    sid = {s: tok.token_to_id(s) for s in SPECIALS}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=args.vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 6, 6]},
            bos_token_id=sid["<|endoftext|>"], eos_token_id=sid["<|im_end|>"],
            pad_token_id=sid["<|endoftext|>"], tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128,
            patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=112,
            fullatt_block_indexes=[1], tokens_per_second=2, hidden_act="silu",
        ),
        image_token_id=sid["<|image_pad|>"], video_token_id=sid["<|video_pad|>"],
        vision_start_token_id=sid["<|vision_start|>"], vision_end_token_id=sid["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left",
    )
    # min = max = image_size²: the policy input (already resized to image_size × image_size) is
    # kept as it is.
    px = args.image_size * args.image_size
    improc = Qwen2VLImageProcessor(size={"shortest_edge": px, "longest_edge": px})
    processor = Qwen2_5_VLProcessor(
        image_processor=improc, tokenizer=fast, video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE
    )
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    processor.save_pretrained(args.out)
    with open(args.out / "preprocessor_config.json", "w") as f:
        json.dump({
            "min_pixels": px, "max_pixels": px,
            "patch_size": improc.patch_size, "temporal_patch_size": improc.temporal_patch_size,
            "merge_size": improc.merge_size, "image_mean": list(improc.image_mean),
            "image_std": list(improc.image_std), "rescale_factor": improc.rescale_factor, "resample": 3,
            "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
        }, f, indent=2)
    n = sum(p.numel() for p in model.parameters())
    ex = user_prompt("Which item on the plate is the dessert?")
    print(f"wrote {args.out}: {n} parameters, vocab {tok.get_vocab_size()}/{args.vocab_size}, "
          f"example prompt {len(tok.encode(ex).ids)} tokens")


if __name__ == "__main__":
    main()
