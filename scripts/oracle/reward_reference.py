#!/usr/bin/env python3
"""Independent Python reference of the reward terms of METHOD §3 (numpy + scipy).

Written from the spec (and in the style of the published Seg-Zero / VisionReasoner reward code,
with METHOD's decisions where they differ: numbers must be JSON numbers, at most `max_objects`
answer objects are read, a K x N Hungarian match via scipy's linear_sum_assignment).

Used three ways:
  * `python reward_reference.py make-cases OUT.jsonl` writes the parity fixture
    rl/tests/fixtures/reward_cases.jsonl: generated and mutated responses with the expected terms.
  * `python reward_reference.py score CASES.jsonl` prints one JSON line per case, with the same
    keys as `platter debug score`.
  * `python reward_reference.py bench CASES.jsonl REPEATS` prints responses/s (benchmark reference).
"""
import json
import math
import random
import re
import sys
import time

import numpy as np
from scipy.optimize import linear_sum_assignment

THINK_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)

MAX_OBJECTS = 120
DUP_THRESHOLD = 2


def is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def numbers(v, n):
    return isinstance(v, list) and len(v) == n and all(is_number(x) for x in v)


def finite(v):
    try:
        return all(math.isfinite(float(x)) for x in v)
    except OverflowError:
        return False


def non_repeat(text):
    seen = set()
    repeats = 0
    for s in text.split("."):
        s = s.strip()
        if not s:
            continue
        if s in seen:
            repeats += 1
            if repeats >= DUP_THRESHOLD:
                return 0.0
        seen.add(s)
    return 1.0


def seg_terms(items, gt):
    k, n = len(items), len(gt)
    if k == 0 or n == 0:
        return 0.0, 0.0, 0.0
    for it in items:
        if not (isinstance(it, dict) and numbers(it.get("bbox_2d"), 4) and numbers(it.get("point_2d"), 2)):
            return 0.0, 0.0, 0.0
        if not (finite(it["bbox_2d"]) and finite(it["point_2d"])):
            return 0.0, 0.0, 0.0
    pb = np.array([[float(x) for x in it["bbox_2d"]] for it in items])
    pp = np.array([[float(x) for x in it["point_2d"]] for it in items])
    gb = np.array([g["bbox_2d"] for g in gt], dtype=np.float64)
    gp = np.array([g["point_2d"] for g in gt], dtype=np.float64)
    x1 = np.maximum(pb[:, None, 0], gb[None, :, 0])
    y1 = np.maximum(pb[:, None, 1], gb[None, :, 1])
    x2 = np.minimum(pb[:, None, 2], gb[None, :, 2])
    y2 = np.minimum(pb[:, None, 3], gb[None, :, 3])
    inter = np.maximum(0, x2 - x1 + 1) * np.maximum(0, y2 - y1 + 1)
    area_p = (pb[:, 2] - pb[:, 0] + 1) * (pb[:, 3] - pb[:, 1] + 1)
    area_g = (gb[:, 2] - gb[:, 0] + 1) * (gb[:, 3] - gb[:, 1] + 1)
    union = area_p[:, None] + area_g[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    iou_hit = (iou > 0.5).astype(np.float64)
    l1 = np.abs(pb[:, None, :] - gb[None, :, :]).sum(axis=2) / 4.0
    l1_hit = (l1 < 10).astype(np.float64)
    dist = np.sqrt(((pp[:, None, :] - gp[None, :, :]) ** 2).sum(axis=2))
    inside = (pp[:, 0] >= pb[:, 0]) & (pp[:, 0] <= pb[:, 2]) & (pp[:, 1] >= pb[:, 1]) & (pp[:, 1] <= pb[:, 3])
    pt_hit = ((dist < 30) & inside[:, None]).astype(np.float64)
    cost = 3.0 - (iou_hit + l1_hit + pt_hit)
    rows, cols = linear_sum_assignment(cost)
    denom = float(max(k, n))
    return (
        iou_hit[rows, cols].sum() / denom,
        l1_hit[rows, cols].sum() / denom,
        pt_hit[rows, cols].sum() / denom,
    )


def score(response, gt):
    think_format = 1.0 if THINK_FORMAT.fullmatch(response) else 0.0
    items = []
    m = ANSWER.search(response)
    if m:
        try:
            data = json.loads(m.group(1))
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, list):
            items = data[:MAX_OBJECTS]
    answer_format = 0.0
    if items:
        for it in items:
            if isinstance(it, dict):
                answer_format += float(numbers(it.get("bbox_2d"), 4)) + float(numbers(it.get("point_2d"), 2))
        answer_format /= len(items)
    t = THINK.search(response)
    nr = non_repeat(t.group(1) if t else response)
    si, sl, sp = seg_terms(items, gt)
    seg = si + sl + sp
    return {
        "think_format": think_format,
        "answer_format": answer_format,
        "non_repeat": nr,
        "seg_iou": si,
        "seg_l1": sl,
        "seg_point": sp,
        "seg": seg,
        "total": think_format + answer_format + nr + seg,
    }


# ---------------------------------------------------------------------------------------------
# Case generation: plausible, sloppy and broken responses, as a sampled policy emits them.

def random_gt(rng):
    objs = []
    for _ in range(rng.randint(1, 4)):
        x1, y1 = rng.randint(0, 700), rng.randint(0, 700)
        x2, y2 = x1 + rng.randint(5, 140), y1 + rng.randint(5, 140)
        objs.append({"bbox_2d": [x1, y1, x2, y2], "point_2d": [(x1 + x2) // 2, (y1 + y2) // 2]})
    return objs


def jitter(obj, rng, scale):
    b = [v + rng.randint(-scale, scale) for v in obj["bbox_2d"]]
    p = [v + rng.randint(-scale, scale) for v in obj["point_2d"]]
    return {"bbox_2d": b, "point_2d": p}


SENTENCES = ["The plate holds rice", "The fried item is crisp", "Nuts are an allergen",
             "The dessert is sweet", "It is on the left", "Protein is highest in the egg"]


def random_response(rng, gt):
    preds = []
    for g in gt:
        if rng.random() < 0.8:
            preds.append(jitter(g, rng, rng.choice([0, 3, 8, 20, 60])))
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        preds.append(jitter(random_gt(rng)[0], rng, 0))
    rng.shuffle(preds)
    think = ". ".join(rng.choice(SENTENCES) for _ in range(rng.randint(0, 5)))
    answer = json.dumps(preds, separators=rng.choice([(",", ":"), (", ", ": ")]))
    kind = rng.random()
    if kind < 0.5:
        return f"<think>{think}</think><answer>{answer}</answer>"
    if kind < 0.6:
        return f"<think>{think}</think>\n <answer> {answer} </answer>"
    if kind < 0.7:  # truncated
        s = f"<think>{think}</think><answer>{answer}</answer>"
        return s[: rng.randint(0, len(s))]
    if kind < 0.75:  # trailing text
        return f"<think>{think}</think><answer>{answer}</answer> done"
    if kind < 0.8:  # wrong types
        bad = [dict(p) for p in preds] or [{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3]}]
        bad[0]["bbox_2d"] = [str(v) for v in bad[0]["bbox_2d"]] if rng.random() < 0.5 else bad[0]["bbox_2d"][:3]
        return f"<think>{think}</think><answer>{json.dumps(bad)}</answer>"
    if kind < 0.85:  # NaN / Infinity / huge numbers
        lit = rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "123456789012345678901234567890"])
        return f"<think>{think}</think><answer>[{{\"bbox_2d\": [{lit}, 1, 2, 3], \"point_2d\": [1, 2]}}]</answer>"
    if kind < 0.9:  # repeated sentences
        rep = ". ".join([rng.choice(SENTENCES)] * rng.randint(1, 4))
        return f"<think>{rep}.</think><answer>{answer}</answer>"
    if kind < 0.95:  # not a list
        return f"<think>{think}</think><answer>{json.dumps(preds[0] if preds else {})}</answer>"
    # point outside its own box
    p = [dict(x) for x in preds] or [jitter(gt[0], rng, 0)]
    b = p[0]["bbox_2d"]
    p[0]["point_2d"] = [b[2] + 5, b[3] + 5]
    return f"<think>{think}</think><answer>{json.dumps(p)}</answer>"


def make_cases(path, n=600, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            gt = random_gt(rng)
            resp = random_response(rng, gt)
            f.write(json.dumps({"response": resp, "ground_truth": gt, "expected": score(resp, gt)}) + "\n")


def main():
    cmd = sys.argv[1]
    if cmd == "make-cases":
        make_cases(sys.argv[2], n=int(sys.argv[3]) if len(sys.argv) > 3 else 600)
    elif cmd == "score":
        for line in open(sys.argv[2]):
            c = json.loads(line)
            print(json.dumps(score(c["response"], c["ground_truth"])))
    elif cmd == "bench":
        cases = [json.loads(line) for line in open(sys.argv[2])]
        repeats = int(sys.argv[3])
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for c in cases:
                score(c["response"], c["ground_truth"])
            best = min(best, time.perf_counter() - t0)
        print(json.dumps({"impl": "python-numpy-scipy", "responses": len(cases), "best_seconds": best,
                          "responses_per_second": len(cases) / best}))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
