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
import math
import os
import re
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
# Runs of up to three digits stay together (as in GPT-4's and Llama 3's splits) so that
# `--numbers whole` can give every coordinate 0..999 one token.
NUMBER_SPLIT = QWEN_SPLIT.replace(r"|\p{N}|", r"|\p{N}{1,3}|")
NUMBER_TOKENS = 1000
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


def _pre_tokenizer(split: str):
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def build_tokenizer(lines: list[str], vocab_size: int, numbers: str) -> Tokenizer:
    """Byte-level BPE on `lines`; with `numbers == "whole"` every integer 0..999 is one token."""
    split = QWEN_SPLIT if numbers == "digits" else NUMBER_SPLIT
    reserve = len(SPECIALS) + (NUMBER_TOKENS if numbers == "whole" else 0)
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _pre_tokenizer(split)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - reserve, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(lines, trainer=trainer)
    if numbers == "whole":
        tok = _with_whole_numbers(tok)
    tok.add_special_tokens(SPECIALS)
    return tok


def _with_whole_numbers(tok: Tokenizer) -> Tokenizer:
    """Replace whatever digit merges the trainer learned by a fixed set that makes every integer
    0..999 exactly one token: "a b" -> "ab" for each two-digit number, then "ab c" and "a bc"
    -> "abc".
    The split regex isolates runs of at most three digits, so these merges never touch other text.
    """
    spec = json.loads(tok.to_str())
    model = spec["model"]
    digit = re.compile(r"^[0-9]+$")
    merges = [m if isinstance(m, list) else m.split(" ") for m in model["merges"]]
    merges = [m for m in merges if not (digit.match(m[0]) and digit.match(m[1]))]
    kept = sorted((i, t) for t, i in model["vocab"].items() if not (len(t) > 1 and digit.match(t)))
    vocab = {t: n for n, (_, t) in enumerate(kept)}
    # BPE applies the lowest-ranked pair first, so "210" may start as "2" "10" or "21" "0":
    # a three-digit number gets both second merges.
    # "00".."09" are tokens too: they are the tails of 100, 101, ...
    pairs = [f"{v:02d}" for v in range(100)]
    for p in pairs:
        merges.append([p[0], p[1]])
    for v in range(100, 1000):
        s = str(v)
        merges.append([s[:2], s[2]])
        merges.append([s[0], s[1:]])
    for t in pairs + [str(v) for v in range(100, 1000)]:
        vocab[t] = len(vocab)
    model["vocab"], model["merges"] = vocab, merges
    out = Tokenizer.from_str(json.dumps(spec))
    for v in range(1000):
        got = out.encode(f"[{v},{v}]").tokens
        assert got[1] == str(v) and got[3] == str(v), got
    return out


def ordinal_number_rows(model, tok: Tokenizer, hidden: int, scale: float) -> None:
    """Start the rows of the number tokens 0..999 (input embedding and output head) on a
    sinusoidal code of their value, so that nearby numbers start out similar.

    A random table knows nothing of order: each coordinate would be 1000 unrelated classes that
    the policy must tell apart from data alone. With the code, a hidden state that encodes a
    position already scores the numbers near it highest (the inner product of two codes is a
    smooth kernel of the difference), which is what a pretrained model brings.
    """
    v = torch.arange(1000, dtype=torch.float32)[:, None]
    freqs = torch.exp(torch.linspace(math.log(2 * math.pi / 4000), math.log(2 * math.pi / 8), hidden // 2))
    code = torch.cat([torch.cos(v * freqs), torch.sin(v * freqs)], dim=1)
    code = code * (scale / math.sqrt(hidden // 2))
    ids = torch.tensor([tok.token_to_id(str(i)) for i in range(1000)])
    with torch.no_grad():
        model.model.language_model.embed_tokens.weight[ids, : code.shape[1]] = code
        model.lm_head.weight[ids, : code.shape[1]] = code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synth", type=Path, required=True, help="output of `platter data synth`")
    ap.add_argument("--out", type=Path, required=True, help="model directory to write")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument(
        "--numbers", choices=["whole", "digits"], default="whole",
        help="whole: every integer 0..999 is one token (a coordinate is one prediction); "
        "digits: one token per digit, as Qwen2.5's own tokenizer",
    )
    ap.add_argument(
        "--number-scale", type=float, default=4.0,
        help="norm of the sinusoidal code the number-token rows start on (0: random like the rest)",
    )
    ap.add_argument("--image-size", type=int, default=224, help="policy input side (multiple of 28)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=128, help="text hidden size")
    ap.add_argument("--intermediate", type=int, default=256, help="text MLP size")
    ap.add_argument("--layers", type=int, default=2, help="text decoder layers")
    ap.add_argument("--heads", type=int, default=4, help="text attention heads")
    ap.add_argument("--kv-heads", type=int, default=2, help="text KV heads")
    ap.add_argument("--rope-theta", type=float, default=1e4, help="text M-RoPE base")
    ap.add_argument("--mrope-section", type=str, default="4,6,6", help="t,h,w rotary pairs")
    ap.add_argument("--vision-depth", type=int, default=2)
    ap.add_argument("--vision-hidden", type=int, default=64)
    ap.add_argument("--vision-intermediate", type=int, default=128)
    ap.add_argument("--vision-heads", type=int, default=4)
    ap.add_argument("--fullatt", type=str, default="1", help="vision full-attention block indexes")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    tok = build_tokenizer(corpus(args.synth), args.vocab_size, args.numbers)
    assert tok.get_vocab_size() <= args.vocab_size, tok.get_vocab_size()
    sid = {s: tok.token_to_id(s) for s in SPECIALS}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=args.vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
            num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
            rms_norm_eps=1e-6, max_position_embeddings=1024,
            rope_parameters={
                "rope_type": "default", "rope_theta": args.rope_theta,
                "mrope_section": [int(v) for v in args.mrope_section.split(",")],
            },
            bos_token_id=sid["<|endoftext|>"], eos_token_id=sid["<|im_end|>"],
            pad_token_id=sid["<|endoftext|>"], tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=args.vision_depth, hidden_size=args.vision_hidden,
            intermediate_size=args.vision_intermediate, num_heads=args.vision_heads, out_hidden_size=args.hidden,
            patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=112,
            fullatt_block_indexes=[int(v) for v in args.fullatt.split(",")], tokens_per_second=2, hidden_act="silu",
        ),
        image_token_id=sid["<|image_pad|>"], video_token_id=sid["<|video_pad|>"],
        vision_start_token_id=sid["<|vision_start|>"], vision_end_token_id=sid["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    if args.numbers == "whole" and args.number_scale > 0:
        ordinal_number_rows(model, tok, args.hidden, args.number_scale)
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
