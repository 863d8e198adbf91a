"""Dense supervised adaptation of a self-supervised encoder: after DINO/iBOT
pre-training (pretrain.py), each encoder is fine-tuned on its own sequence's
slices to predict the phantom's anatomy, lesion and level labels per patch.

Why: the published encoders learn from ~4.5 M slices; twenty minutes of
self-distillation on ~10 k phantom slices gives patch tokens too weak for
the frozen-encoder agents (measured: anatomy Dice 0.08, mean AUROC 0.67).
Dense labels stand in for scale. This departs from the method, which keeps
the encoders purely self-supervised; EVALUATION.md reports both.

    python training/finetune.py --cache work/cache.pt --family t2 --encoder work/enc_t2.pt --out work/enc_t2_ft.pt --minutes 15
"""

import argparse
import math
import time

import torch
import torch.nn.functional as F

from spinefm import labels as L
from spinefm.model import Encoder, SliceAgents

LESION_WEIGHT = torch.ones(len(L.LESION))
LESION_WEIGHT[0] = 0.2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--family", required=True, choices=["t1", "t2"])
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=15)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = torch.load(args.cache, weights_only=False)
    series = [s for st in cache["train"] for s in st["series"] if s["family"] == args.family]
    x = torch.cat([torch.from_numpy(s["pixels"]).float() for s in series]).unsqueeze(1)
    a = torch.cat([torch.from_numpy(s["anatomy32"]).long() for s in series])
    le = torch.cat([torch.from_numpy(s["lesion32"]).long() for s in series])
    lv = torch.cat([torch.from_numpy(s["level32"]).long() for s in series])
    print(f"{args.family}: {len(x)} labelled training slices", flush=True)
    enc = Encoder()
    enc.load_state_dict(torch.load(args.encoder)["encoder"])
    head = SliceAgents()
    opt = torch.optim.AdamW(
        [{"params": enc.parameters(), "lr": 3e-4}, {"params": head.parameters(), "lr": 1e-3}], weight_decay=0.02
    )
    base = [g["lr"] for g in opt.param_groups]
    started, step = time.time(), 0
    deadline = started + args.minutes * 60
    while time.time() < deadline:
        frac = (time.time() - started) / (deadline - started)
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * min(1.0, frac * 20) * 0.5 * (1 + math.cos(math.pi * frac))
        idx = torch.randint(len(x), (args.batch,))
        xb = x[idx]
        # Intensity augmentation only: labels stay aligned.
        xb = xb * torch.empty(len(idx), 1, 1, 1).uniform_(0.8, 1.2) + torch.empty(len(idx), 1, 1, 1).uniform_(-0.2, 0.2)
        xb = (xb + torch.randn_like(xb) * 0.05).expand(-1, 3, -1, -1)
        cls, patches = enc(xb)
        seg, _ = head(cls, patches)
        sa, sl, sv = head.split_seg(seg)
        loss = (
            F.cross_entropy(sa, a[idx]) + F.cross_entropy(sl, le[idx], weight=LESION_WEIGHT) + F.cross_entropy(sv, lv[idx])
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(enc.parameters()) + list(head.parameters()), 3.0)
        opt.step()
        step += 1
        if step % 25 == 0:
            print(f"step {step} {time.time() - started:.0f}s loss {loss.item():.3f}", flush=True)
    torch.save({"encoder": enc.state_dict(), "steps": step, "family": args.family, "finetuned": True}, args.out)
    print(f"saved {args.out} after {step} steps", flush=True)


if __name__ == "__main__":
    main()
