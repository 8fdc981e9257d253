#!/usr/bin/env python3
"""PyTorch reference for the DAPO and GRPO losses (METHOD §4), written the way verl's
`compute_policy_loss_vanilla` / `agg_loss` / `kl_penalty("low_var_kl")` compute them.

Writes rl/tests/fixtures/loss_cases.safetensors: for each case `c{i}`, the f32 inputs
(`logp`, `old_logp`, `ref_logp`, `entropy`, `advantages`, `mask`) and the float64 results
(`loss`, `grad_logp` = d loss / d logp), plus a JSON header listing each case's settings.
Run: /root/venvs/oracle/bin/python scripts/oracle/loss_fixture.py rl/tests/fixtures/loss_cases.safetensors
"""
import json
import sys

import torch
from safetensors.torch import save_file


def dapo(logp, old, adv, mask, ent, clip_low, clip_high, dual_clip, entropy_coef, token_norm):
    log_ratio = torch.clamp(logp - old, -20.0, 20.0)
    ratio = torch.exp(log_ratio)
    a = adv[:, None]
    pg1 = -a * ratio
    pg2 = -a * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    pg = torch.maximum(pg1, pg2)
    if dual_clip is not None:
        pg3 = -a * dual_clip
        pg = torch.where(a < 0, torch.minimum(pg3, pg), pg)
    loss = (pg * mask).sum() / token_norm
    if entropy_coef != 0.0:
        loss = loss - entropy_coef * (ent * mask).sum() / token_norm
    return loss


def grpo(logp, old, ref, adv, mask, ent, clip_eps, kl_coef, entropy_coef, seq_norm):
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    a = adv[:, None]
    pg = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps))
    d = ref - logp
    kl = torch.clamp(torch.exp(d) - d - 1, -10.0, 10.0)
    lens = mask.sum(1).clamp(min=1)

    def seq_mean(x):
        return ((x * mask).sum(1) / lens).sum() / seq_norm

    loss = seq_mean(pg) + kl_coef * seq_mean(kl)
    if entropy_coef != 0.0:
        loss = loss - entropy_coef * seq_mean(ent)
    return loss


def make_inputs(gen, b, t, lengths):
    logp = -torch.rand(b, t, generator=gen, dtype=torch.float64) * 3.0
    # Spread the ratio over ~[0.5, 2] so both clips and the unclipped region occur.
    old = logp + torch.randn(b, t, generator=gen, dtype=torch.float64) * 0.35
    old[0, :3] = logp[0, :3]  # exactly on-policy tokens (ratio 1)
    ref = logp + torch.randn(b, t, generator=gen, dtype=torch.float64) * 0.5
    ent = torch.rand(b, t, generator=gen, dtype=torch.float64) * 2.0
    adv = torch.randn(b, generator=gen, dtype=torch.float64)
    adv[-1] = 0.0
    mask = torch.zeros(b, t, dtype=torch.float64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1.0
    # Padding holds garbage that must not matter.
    pad = mask == 0
    logp[pad] = -50.0
    old[pad] = 3.0
    ref[pad] = 7.0
    ent[pad] = 99.0
    # Round to f32 first: Rust reads f32, so the reference must start from the same values.
    return [x.float().double() for x in (logp, old, ref, ent, adv)] + [mask]


def main(out):
    gen = torch.Generator().manual_seed(1234)
    cases = [
        dict(algo="dapo", clip_low=0.2, clip_high=0.28, dual_clip=None, entropy_coef=0.0),
        dict(algo="dapo", clip_low=0.2, clip_high=0.28, dual_clip=3.0, entropy_coef=0.001),
        dict(algo="dapo", clip_low=0.1, clip_high=0.1, dual_clip=1.5, entropy_coef=0.0),
        dict(algo="grpo", clip_eps=0.2, kl_coef=0.01, entropy_coef=0.0),
        dict(algo="grpo", clip_eps=0.2, kl_coef=0.5, entropy_coef=0.01),
    ]
    tensors, meta = {}, []
    for i, c in enumerate(cases):
        b, t = 6, 12
        lengths = [12, 7, 3, 1, 12, 5]
        logp, old, ref, ent, adv, mask = make_inputs(gen, b, t, lengths)
        logp.requires_grad_(True)
        if c["algo"] == "dapo":
            # The global batch is larger than this micro-batch: normaliser = 2x its tokens.
            c["normaliser"] = float(mask.sum()) * 2.0
            loss = dapo(logp, old, adv, mask, ent, c["clip_low"], c["clip_high"], c["dual_clip"],
                        c["entropy_coef"], c["normaliser"])
        else:
            c["normaliser"] = float(b) * 2.0
            loss = grpo(logp, old, ref, adv, mask, ent, c["clip_eps"], c["kl_coef"],
                        c["entropy_coef"], c["normaliser"])
        loss.backward()
        p = f"c{i}."
        for name, x in dict(logp=logp, old_logp=old, ref_logp=ref, entropy=ent, advantages=adv,
                            mask=mask).items():
            tensors[p + name] = x.detach().float().contiguous()
        tensors[p + "loss"] = loss.detach().reshape(1)
        tensors[p + "grad_logp"] = logp.grad.detach().contiguous()
        meta.append(c)
    save_file(tensors, out, metadata={"cases": json.dumps(meta), "script": "scripts/oracle/loss_fixture.py"})
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
