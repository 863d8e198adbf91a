"""Stage 2: the synthesizer's per-layer weights, then every agent, on top of
the two frozen pre-trained encoders.

1. Synthesizer: other sequences (STIR, Dixon, post-contrast, PD) through both
   encoders, mixed per layer; trained with a symmetric CLIP loss between the
   pooled series embedding and the frozen report-text embedding.
2. Features of every series stack are computed once (encoders frozen): the
   method's routing (T1 -> T1 encoder, T2 -> T2 encoder, others ->
   synthesizer) and, for the ablation, others through the T2 encoder alone.
3. Agents in two stages. A: the slice agents (segmentation of anatomy,
   lesion and level; recognition) on random slices of every training
   series. B: with the slice agents frozen, their outputs are reduced once
   per series, and the rest (pooling with slice selection, patient
   embedding, retrieval, condition classifiers, graded task) trains jointly
   for thousands of cheap steps. (The earlier single joint loop ran ~200
   steps of 12 studies in 10 minutes, dominated by the segmentation head:
   anatomy Dice 0.15, lesion Dice 0, conditions near their position prior.)

    python training/train_agents.py --cache work/cache.pt --t1 work/enc_t1.pt --t2 work/enc_t2.pt --out work/agents.pt
    # reuse an earlier run's synthesizer and features (same encoders):
    ... --out work/agents_v2.pt --reuse work/agents.pt
"""

import argparse
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from spinefm import labels as L
from spinefm.data import covered_positions, finding_targets
from spinefm.model import Encoder, GatedAttentionPool, Synthesizer, TextProjection, clip_loss
from spinefm.pipeline import Agents, combine, series_stats


def load_encoder(path):
    e = Encoder()
    e.load_state_dict(torch.load(path)["encoder"])
    e.eval()
    return e


def family_onehot(family, n):
    v = torch.zeros(n, len(L.SYNTH_FAMILIES))
    v[:, L.SYNTH_FAMILIES.index(family)] = 1
    return v


def pixels(series, idx=None):
    x = torch.from_numpy(series["pixels"] if idx is None else series["pixels"][idx]).float()
    return x.unsqueeze(1).expand(-1, 3, -1, -1)


def train_synthesizer(synth, studies, minutes):
    pool = GatedAttentionPool(128)
    img_proj = torch.nn.Linear(128, 64)
    txt = TextProjection()
    scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = [synth.weights, scale] + list(pool.parameters()) + list(img_proj.parameters()) + list(txt.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    pairs = [(s, st) for st in studies for s in st["series"] if s["family"] in L.SYNTH_FAMILIES]
    deadline, step = time.time() + minutes * 60, 0
    while time.time() < deadline:
        batch = {}
        for s, st in random.sample(pairs, min(len(pairs), 24)):
            batch.setdefault(st["name"], (s, st))  # one series per study in a batch
        if len(batch) < 4:
            continue
        embs, texts = [], []
        for s, st in batch.values():
            idx = np.sort(np.random.choice(len(s["pixels"]), min(6, len(s["pixels"])), replace=False))
            x = pixels(s, idx)
            cls, patches = synth(x, family_onehot(s["family"], len(idx)))
            feat = torch.cat([cls, patches.mean(1)], -1)[:, :128] + cls
            e, _ = pool(feat.unsqueeze(0))
            embs.append(F.normalize(img_proj(e[0]), dim=-1))
            texts.append(torch.from_numpy(st["text"]))
        loss = clip_loss(torch.stack(embs), txt(torch.stack(texts)), scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 10 == 0:
            w = torch.sigmoid(synth.weights).detach()
            print(f"synth step {step} loss {loss.item():.3f} T1 share per layer (stir) {w[0].numpy().round(2)}", flush=True)
    return step


@torch.no_grad()
def features(t1, t2, synth, study):
    """Per series stack: the routed features (T1 -> T1 encoder, T2 -> T2
    encoder, others -> synthesizer), the ablation's (others through the T2
    encoder alone) and the T2 encoder's class token for recognition."""
    routed, ablation = [], []
    for s in study["series"]:
        x = pixels(s)
        path = L.encoder_of(s["family"])
        c2, p2 = t2(x)
        if path == "t1":
            cls, patches = t1(x)
        elif path == "t2":
            cls, patches = c2, p2
        else:
            cls, patches = synth(x, family_onehot(s["family"], len(x)))
        common = {
            "rec_cls": c2.half(),
            "slot": s["slot"],
            "family": s["family"],
            "plane": s["plane"],
            "number": s["number"],
            "slice_index": s["slice_index"],
            "anatomy32": torch.from_numpy(s["anatomy32"]).long(),
            "lesion32": torch.from_numpy(s["lesion32"]).long(),
            "level32": torch.from_numpy(s["level32"]).long(),
        }
        routed.append(dict(common, cls=cls.half(), patches=patches.half()))
        if path == "synthesizer":
            ablation.append(dict(common, cls=c2.half(), patches=p2.half()))
        else:
            ablation.append(routed[-1])
    return routed, ablation


def visible_slices(truth, number, slice_index):
    """Positions in the stack (tensor order) where any finding is visible."""
    seen = set()
    for f in truth["findings"]:
        for v in f["visible_in"]:
            if v["series_number"] == number:
                seen.update(v["slices"])
    return [k for k, i in enumerate(slice_index) if int(i) in seen]


def as_float(items):
    return [
        dict(it, cls=it["cls"].float(), patches=it["patches"].float(), rec_cls=it["rec_cls"].float()) for it in items
    ]


LESION_WEIGHT = torch.ones(len(L.LESION))
LESION_WEIGHT[0] = 0.2
GRADE_WEIGHT = torch.tensor([1.0, 2.0, 4.0])  # RSNA: normal/mild 1, moderate 2, severe 4


def condition_losses(agents, outs, studies):
    lf = torch.stack([o["level_features"] for o in outs])
    sm = torch.stack([o["slot_mask"] for o in outs])
    presence, side, severity, graded = agents.conditions(lf, sm)
    tp, ts, tv, tg, cov = [], [], [], [], []
    for st in studies:
        p, s, v, g = finding_targets(st["truth"])
        tp.append(p), ts.append(s), tv.append(v), tg.append(g), cov.append(covered_positions(st))
    tp, ts, tv, tg = (torch.from_numpy(np.stack(a)) for a in (tp, ts, tv, tg))
    valid = torch.tensor([L.valid_positions(c) for c in L.CONDITIONS]).T.float()  # [P, C]
    cov = torch.from_numpy(np.stack(cov)).float()[:, :, None] * valid  # covered and the right kind
    bce = F.binary_cross_entropy_with_logits(presence, tp, pos_weight=torch.tensor(20.0), reduction="none")
    loss = (bce * cov).sum() / cov.sum().clamp(min=1)
    m = ts >= 0
    if m.any():
        loss = loss + F.cross_entropy(side[m], ts[m])
    m = tv >= 0
    if m.any():
        loss = loss + F.cross_entropy(severity[m], tv[m])
    m = tg >= 0
    if m.any():
        loss = loss + F.cross_entropy(graded[m], tg[m], weight=GRADE_WEIGHT)
    return loss


def cosine_lr(opt, base, frac, warmup=0.05):
    f = min(frac, 1.0)
    scale = min(1.0, f / warmup) * 0.5 * (1 + math.cos(math.pi * f))
    for g in opt.param_groups:
        g["lr"] = base * max(scale, 0.02)


def train_slice_agents(agents, train, feats, minutes, batch=96, lr=2e-3, label=""):
    """Stage A: segmentation (anatomy, lesion, level) and recognition, per
    slice, on random slices of every training series (all families, routed
    features). The joint loop used to give this head ~200 steps of 12
    studies with the loss shared with everything else: anatomy Dice 0.15."""
    P, C, R, A, LE, LV, FA, PL, RG = [], [], [], [], [], [], [], [], []
    for st, items in zip(train, feats):
        region = L.REGIONS.index(st["truth"]["region"])
        for it in items:
            n = len(it["patches"])
            P.append(it["patches"]), C.append(it["cls"]), R.append(it["rec_cls"])
            A.append(it["anatomy32"]), LE.append(it["lesion32"]), LV.append(it["level32"])
            FA.append(torch.full((n,), L.FAMILIES.index(it["family"])))
            PL.append(torch.full((n,), L.PLANES.index(it["plane"])))
            RG.append(torch.full((n,), region))
    P, C, R = torch.cat(P), torch.cat(C), torch.cat(R)
    A, LE, LV, FA, PL, RG = (torch.cat(t) for t in (A, LE, LV, FA, PL, RG))
    print(f"{label} slice agents: {len(P)} training slices", flush=True)
    params = list(agents.slice.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    deadline, started, step = time.time() + minutes * 60, time.time(), 0
    while time.time() < deadline:
        cosine_lr(opt, lr, (time.time() - started) / (minutes * 60))
        idx = torch.randint(len(P), (batch,))
        seg, rec = agents.slice(C[idx].float(), P[idx].float())
        a, les, lev = agents.slice.split_seg(seg)
        seg_loss = F.cross_entropy(a, A[idx]) + F.cross_entropy(lev, LV[idx])
        seg_loss = seg_loss + F.cross_entropy(les, LE[idx], weight=LESION_WEIGHT)
        fam, plane, reg = agents.slice.split_recognition(agents.slice.recognize(R[idx].float()))
        rec_loss = F.cross_entropy(fam, FA[idx]) + F.cross_entropy(plane, PL[idx]) + F.cross_entropy(reg, RG[idx])
        loss = seg_loss + 0.5 * rec_loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            print(
                f"{label} slice step {step} {time.time() - started:.0f}s seg {seg_loss.item():.3f} rec {rec_loss.item():.3f}",
                flush=True,
            )
    return step


@torch.no_grad()
def study_stats(agents, studies, feats):
    """Stage B input: per study, per series the (frozen) slice agents'
    outputs reduced to what the trainable rest needs."""
    out = []
    for st, items in zip(studies, feats):
        stats = []
        for it in as_float(items):
            _, _, s = series_stats(agents, it)
            vis = visible_slices(st["truth"], it["number"], it["slice_index"])
            s["visible"] = vis if vis and len(vis) < len(it["slice_index"]) else None
            stats.append(s)
        out.append(stats)
    return out


def train_study_agents(agents, train, stats, minutes, batch=24, lr=1e-3, label=""):
    """Stage B: series pooling with slice selection, patient embedding,
    retrieval and the condition agents on the frozen slice agents' outputs
    (cheap per step, so thousands of steps fit)."""
    params = [p for n, p in agents.named_parameters() if not n.startswith("slice.")]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    deadline, started, step = time.time() + minutes * 60, time.time(), 0
    while time.time() < deadline:
        cosine_lr(opt, lr, (time.time() - started) / (minutes * 60))
        chosen = random.sample(range(len(train)), min(batch, len(train)))
        outs, att, n_att = [], 0.0, 0
        for i in chosen:
            attns, o = combine(agents, stats[i])
            outs.append(o)
            for s, a in zip(stats[i], attns):
                if s["visible"]:
                    att = att - torch.log(a[s["visible"]].sum() + 1e-6)
                    n_att += 1
        cond = condition_losses(agents, outs, [train[i] for i in chosen])
        texts = agents.text(torch.stack([torch.from_numpy(train[i]["text"]) for i in chosen]))
        clip = clip_loss(torch.stack([o["retrieval"] for o in outs]), texts, agents.logit_scale)
        att = att / max(n_att, 1)
        loss = cond + clip + 0.3 * att
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            print(
                f"{label} study step {step} {time.time() - started:.0f}s loss {loss.item():.3f} cond {cond.item():.3f} "
                f"clip {clip.item():.3f} attn {float(att):.3f}",
                flush=True,
            )
    return step


def train_agents(agents, train, feats, slice_minutes, study_minutes, label=""):
    s1 = train_slice_agents(agents, train, feats, slice_minutes, label=label)
    started = time.time()
    stats = study_stats(agents, train, feats)
    print(f"{label} series stats in {time.time() - started:.0f}s", flush=True)
    s2 = train_study_agents(agents, train, stats, study_minutes, label=label)
    return {"slice": s1, "study": s2}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--t1", required=True)
    ap.add_argument("--t2", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--synth-minutes", type=float, default=3)
    ap.add_argument("--slice-minutes", type=float, default=8, help="stage A: segmentation and recognition")
    ap.add_argument("--study-minutes", type=float, default=4, help="stage B: pooling, conditions, retrieval")
    ap.add_argument("--ablation-slice-minutes", type=float, default=None, help="default: --slice-minutes")
    ap.add_argument("--ablation-study-minutes", type=float, default=None, help="default: --study-minutes")
    ap.add_argument(
        "--reuse", help="an earlier checkpoint on the same encoders: take its synthesizer weights and features"
    )
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)

    cache = torch.load(args.cache, weights_only=False)
    t1, t2 = load_encoder(args.t1), load_encoder(args.t2)
    synth = Synthesizer(t1, t2)
    if args.reuse:
        prev = torch.load(args.reuse, weights_only=False)
        assert (prev["t1"], prev["t2"]) == (args.t1, args.t2), "reused features come from other encoders"
        synth.weights.data.copy_(prev["synthesizer"])
        synth_steps = prev["steps"]["synthesizer"]
        fs = torch.load(args.reuse + ".features", weights_only=False)
        feats, ablation = fs["routed"], fs["ablation"]
        print(f"reused synthesizer and features of {args.reuse}", flush=True)
    else:
        synth_steps = train_synthesizer(synth, cache["train"], args.synth_minutes)
        started = time.time()
        feats, ablation = {}, {}
        for split, studies in cache.items():
            both = [features(t1, t2, synth, st) for st in studies]
            feats[split] = [b[0] for b in both]
            ablation[split] = [b[1] for b in both]
        print(f"features in {time.time() - started:.0f}s", flush=True)

    agents = Agents()
    steps = train_agents(agents, cache["train"], feats["train"], args.slice_minutes, args.study_minutes, label="agents")
    agents_ablation = Agents()
    ab_steps = train_agents(
        agents_ablation, cache["train"], ablation["train"],
        args.ablation_slice_minutes if args.ablation_slice_minutes is not None else args.slice_minutes,
        args.ablation_study_minutes if args.ablation_study_minutes is not None else args.study_minutes,
        label="ablation",
    )  # fmt: skip
    torch.save(
        {
            "synthesizer": synth.weights.detach(),
            "agents": agents.state_dict(),
            "agents_ablation": agents_ablation.state_dict(),
            "steps": {"synthesizer": synth_steps, "agents": steps, "ablation": ab_steps},
            "t1": args.t1,
            "t2": args.t2,
        },
        args.out,
    )
    if args.reuse:
        if not os.path.exists(args.out + ".features"):
            os.symlink(os.path.abspath(args.reuse + ".features"), args.out + ".features")
    else:
        torch.save({"routed": feats, "ablation": ablation}, args.out + ".features")
    print(f"saved {args.out}", flush=True)


if __name__ == "__main__":
    main()
