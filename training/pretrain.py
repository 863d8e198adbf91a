"""Self-supervised pre-training of one encoder (T1 or T2) on its own
sequence's slices: DINO self-distillation on the class token plus a
masked-patch term (iBOT: the student sees masked patches and predicts the
teacher's patch prototypes). Teacher = exponential moving average.

    python training/pretrain.py --cache work/cache.pt --family t2 --out work/enc_t2.pt --minutes 8
"""

import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from spinefm.model import GRID, IMAGE, WIDTH, Encoder


class Head(nn.Module):
    """DINO projection head: MLP -> bottleneck -> normalized prototypes."""

    def __init__(self, dim=WIDTH, hidden=256, bottleneck=64, prototypes=1024):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, bottleneck))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, prototypes, bias=False))

    def forward(self, x):
        return self.last(F.normalize(self.mlp(x), dim=-1))


def augment(x, scale=(0.45, 1.0)):
    """Random resized crop (affine resampling), flips, intensity and noise on
    a batch of normalized single-channel slices [B,1,H,W] -> [B,3,H,W]."""
    b = x.shape[0]
    s = torch.empty(b).uniform_(*scale).sqrt()
    tx = (torch.rand(b) * 2 - 1) * (1 - s)
    ty = (torch.rand(b) * 2 - 1) * (1 - s)
    flip = torch.where(torch.rand(b) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = s * flip
    theta[:, 1, 1] = s
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, (b, 1, IMAGE, IMAGE), align_corners=False)
    y = F.grid_sample(x, grid, align_corners=False, padding_mode="border")
    gain = torch.empty(b, 1, 1, 1).uniform_(0.7, 1.3)
    bias = torch.empty(b, 1, 1, 1).uniform_(-0.3, 0.3)
    y = y * gain + bias + torch.randn_like(y) * torch.empty(b, 1, 1, 1).uniform_(0, 0.15)
    return y.expand(-1, 3, -1, -1)


def random_masks(b, ratio=(0.1, 0.5)):
    n = GRID * GRID
    r = torch.empty(b, 1).uniform_(*ratio)
    return torch.rand(b, n) < r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--family", required=True, choices=["t1", "t2"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=8)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)

    cache = torch.load(args.cache, weights_only=False)
    slices = torch.cat(
        [
            torch.from_numpy(s["pixels"]).float()
            for st in cache["train"]
            for s in st["series"]
            if s["family"] == args.family
        ]
    ).unsqueeze(1)
    print(f"{args.family}: {len(slices)} training slices", flush=True)

    student, teacher = Encoder(), Encoder()
    s_head, t_head = Head(), Head()
    s_phead, t_phead = Head(), Head()
    teacher.load_state_dict(student.state_dict())
    t_head.load_state_dict(s_head.state_dict())
    t_phead.load_state_dict(s_phead.state_dict())
    for p in list(teacher.parameters()) + list(t_head.parameters()) + list(t_phead.parameters()):
        p.requires_grad_(False)
    params = list(student.parameters()) + list(s_head.parameters()) + list(s_phead.parameters())
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.04)
    center = torch.zeros(1, 1024)
    pcenter = torch.zeros(1, 1024)

    deadline = time.time() + args.minutes * 60
    step, started = 0, time.time()
    # The schedule runs on elapsed time, so a slower machine trains less, not longer.
    while time.time() < deadline:
        frac = (time.time() - started) / (deadline - started)
        lr = 5e-4 * min(1.0, frac * 10) * (0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        momentum = 1 - (1 - 0.99) * (0.5 * (1 + math.cos(math.pi * frac)))
        idx = torch.randint(len(slices), (args.batch,))
        x = slices[idx]
        views = [augment(x), augment(x)]
        masks = [random_masks(args.batch), random_masks(args.batch)]
        with torch.no_grad():
            t_out = [teacher(v) for v in views]
            t_cls = [F.softmax((t_head(c) - center) / 0.04, dim=-1) for c, _ in t_out]
            t_patch = [F.softmax((t_phead(p) - pcenter) / 0.04, dim=-1) for _, p in t_out]
        loss_cls, loss_patch = 0.0, 0.0
        for i, v in enumerate(views):
            cls, patches = student(v, mask=masks[i])
            s_cls = F.log_softmax(s_head(cls) / 0.1, dim=-1)
            # DINO: each student view against the teacher's other view.
            loss_cls = loss_cls + (-(t_cls[1 - i] * s_cls).sum(-1)).mean()
            # iBOT: masked patches against the teacher's same view, unmasked.
            s_p = F.log_softmax(s_phead(patches) / 0.1, dim=-1)
            m = masks[i].float()
            loss_patch = loss_patch + ((-(t_patch[i] * s_p).sum(-1)) * m).sum() / m.sum().clamp(min=1)
        loss = (loss_cls + loss_patch) / 2
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        opt.step()
        with torch.no_grad():
            for ms, mt in (
                (student, teacher),
                (s_head, t_head),
                (s_phead, t_phead),
            ):
                for ps, pt in zip(ms.parameters(), mt.parameters()):
                    pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)
            batch_center = torch.cat([t_head(c) for c, _ in t_out]).mean(0, keepdim=True)
            center = center * 0.9 + batch_center * 0.1
            batch_pcenter = torch.cat([t_phead(p).flatten(0, 1) for _, p in t_out]).mean(0, keepdim=True)
            pcenter = pcenter * 0.9 + batch_pcenter * 0.1
        step += 1
        if step % 20 == 0:
            print(
                f"step {step} {time.time() - started:.0f}s loss {loss.item():.3f} "
                f"(cls {loss_cls.item() / 2:.3f}, patch {loss_patch.item() / 2:.3f}) lr {lr:.2e}",
                flush=True,
            )
    torch.save({"encoder": teacher.state_dict(), "steps": step, "family": args.family}, args.out)
    print(f"saved {args.out} after {step} steps", flush=True)


if __name__ == "__main__":
    main()
