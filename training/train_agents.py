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
import hashlib
import json
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from spinefm import labels as L
from spinefm.crossref import placement_of
from spinefm.data import covered_positions, finding_targets
from spinefm.model import ConditionRetrieval, Encoder, GatedAttentionPool, Synthesizer, TextProjection, clip_loss
from spinefm.pipeline import Agents, combine, load_agents, study_series_stats


def load_encoder(path):
    e = Encoder()
    e.load_state_dict(torch.load(path)["encoder"])
    e.eval()
    return e


def checkpoint_encoders(ck):
    """The frozen encoders a checkpoint's agents were trained on (the paths
    it recorded) and its synthesizer over them."""
    t1, t2 = load_encoder(ck["t1"]), load_encoder(ck["t2"])
    synth = Synthesizer(t1, t2)
    synth.weights.data.copy_(ck["synthesizer"])
    return t1, t2, synth


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


def attach_pixels(studies, feats):
    """The slice agents read the pixels too (their convolutional stem): put
    each series stack's pixels (channel 0, float16) beside its cached
    features. Features were computed in `study["series"]` order."""
    for st, items in zip(studies, feats):
        assert len(st["series"]) == len(items), st["name"]
        for s, it in zip(st["series"], items):
            it["pixels"] = torch.from_numpy(s["pixels"]).unsqueeze(1)
    return feats


def in_vendor_studies(path, t1, t2, synth):
    """The studies of a prepare.py cache (another dataset than the main
    one) in the vendor styles the agents train on, its held-out vendor's
    left out so the cross-vendor numbers stay cross-vendor, and their routed
    features with the pixels attached (about 0.5 s a study on 2 cores)."""
    cache = torch.load(path, weights_only=False)
    studies = [st for split, sts in cache.items() if split != "test_heldout_vendor" for st in sts]
    return studies, attach_pixels(studies, [features(t1, t2, synth, st)[0] for st in studies])


def usable_entries(index, truth):
    """The entries of `spineagent preprocess`'s index.json that `load_study`
    keeps (series of a family and plane the agents know), in its order."""
    by_uid = {s["series_instance_uid"]: s for s in truth["series"]}
    return [e for e in index if (t := by_uid.get(e["series_instance_uid"])) is not None
            and t["family"] in L.FAMILIES and t["plane"] in L.PLANES]  # fmt: skip


def load_placements(cache, prep):
    """{study name: [placement per usable stack]} from the DICOM headers of
    the files `spineagent preprocess` listed (prep/<study>/index.json),
    kept in prep/placements.pt after the first time (about a minute)."""
    path = os.path.join(prep, "placements.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=False)
    out = {}
    for studies in cache.values():
        for st in studies:
            index = json.loads(open(os.path.join(prep, st["name"], "index.json")).read())
            out[st["name"]] = [placement_of(e["files"]) for e in usable_entries(index, st["truth"])]
    torch.save(out, path)
    return out


def attach_placements(studies, feats, placements):
    """Each stack's placement beside its cached features (the stacks of
    `load_study`, in index order), for the cross-reference of axial levels."""
    for st, items in zip(studies, feats):
        pls = placements[st["name"]]
        assert len(pls) == len(items), st["name"]
        for pl, it in zip(pls, items):
            it["placement"] = pl


def as_float(items):
    return [
        dict(
            it, cls=it["cls"].float(), patches=it["patches"].float(), rec_cls=it["rec_cls"].float(),
            pixels=it["pixels"].float(),
        )
        for it in items
    ]  # fmt: skip


GRADE_WEIGHT = torch.tensor([1.0, 2.0, 4.0])  # RSNA: normal/mild 1, moderate 2, severe 4


def condition_targets(studies):
    """Per study: presence, side, severity, graded targets and the loss mask
    (positions a usable series shows, of the kind the condition takes)."""
    tp, ts, tv, tg, cov = [], [], [], [], []
    for st in studies:
        p, s, v, g = finding_targets(st["truth"])
        tp.append(p), ts.append(s), tv.append(v), tg.append(g), cov.append(covered_positions(st))
    tp, ts, tv, tg = (torch.from_numpy(np.stack(a)) for a in (tp, ts, tv, tg))
    valid = torch.tensor([L.valid_positions(c) for c in L.CONDITIONS]).T.float()  # [P, C]
    cov = torch.from_numpy(np.stack(cov)).float()[:, :, None] * valid  # covered and the right kind
    return {"presence": tp, "side": ts, "severity": tv, "graded": tg, "mask": cov}


def condition_losses(agents, level_features, slot_mask, t):
    """level_features [B,SLOTS,LV,D], slot_mask [B,SLOTS]; t: condition_targets rows of the batch.
    -> {part: loss} for the parts of B1 that have their own parameters
    (B1_PARTS): presence (the linear evidence model and prior), the side
    of conditions whose lesion has one (its linear model), and the rest
    (the MLP: side of the others, severity, graded task)."""
    presence, side, severity, graded = agents.conditions(level_features, slot_mask)
    bce = F.binary_cross_entropy_with_logits(presence, t["presence"], pos_weight=torch.tensor(20.0), reduction="none")
    presence_loss = (bce * t["mask"]).sum() / t["mask"].sum().clamp(min=1)
    zero = presence_loss * 0
    lateral = agents.conditions.has_side.bool()[None, None, :].expand_as(t["side"])
    side_loss, rest = zero, zero
    m = (t["side"] >= 0) & lateral
    if m.any():
        side_loss = F.cross_entropy(side[m], t["side"][m])
    m = (t["side"] >= 0) & ~lateral
    if m.any():
        rest = rest + F.cross_entropy(side[m], t["side"][m])
    m = t["severity"] >= 0
    if m.any():
        rest = rest + F.cross_entropy(severity[m], t["severity"][m])
    m = t["graded"] >= 0
    if m.any():
        rest = rest + F.cross_entropy(graded[m], t["graded"][m], weight=GRADE_WEIGHT)
    return {"presence": presence_loss, "side": side_loss, "rest": rest}


# B1's parts with their own parameters (ConditionAgents), each kept at its
# own best validation state; "rest" is every other B1 parameter (the MLP
# and the patch feature compression).
B1_PARTS = {
    "presence": ("conditions.evidence_weight", "conditions.prior"),
    "side": ("conditions.side_weight", "conditions.side_bias"),
}


def b1_part_of(name):
    return next((part for part, prefixes in B1_PARTS.items() if name.startswith(prefixes)), "rest")


# Weight of `prior_deviation` in stage B1's training loss (0 up to 0.7.0,
# 0.3 in 0.8.0, 3 from 0.9.0: equal validation presence loss, 0.265
# against 0.266, and 0.3 still left herniation's L4-L5 prior 0.29 logits
# under L5-S1's with 3 to 10 training positives per position).
PRIOR_SHRINK = 3.0


def prior_deviation(conditions, valid):
    """Mean squared distance of each condition's per-position prior from
    that condition's mean prior over the positions it can occur at. The
    phantom (like the published cohorts' disc findings) spreads a
    condition evenly over a region's candidate levels, so a position's own
    prior should only carry what its evidence cannot; unpenalized, the
    herniation prior at L4-L5 ended 0.48 logits below L5-S1 in 0.7.0 and
    an L4-L5 fragment read as L5-S1. `valid` [P, C]: where each condition
    can occur."""
    mean = (conditions.prior * valid).sum(0) / valid.sum(0).clamp(min=1)
    return (((conditions.prior - mean) ** 2) * valid).sum() / valid.sum().clamp(min=1)


def slot_sums(stats):
    """The parameter-free part of the study's level features: per slot the
    level-mass-weighted sums of patch features and lesion evidence, and
    the mass (`combine` divides the first two by the third)."""
    d, e = stats[0]["pf"].shape[-1], stats[0]["lesion"].shape[-1]
    sp = torch.zeros(len(L.SLOTS), len(L.LEVELS), d)
    sl = torch.zeros(len(L.SLOTS), len(L.LEVELS), e)
    sm = torch.zeros(len(L.SLOTS), len(L.LEVELS))
    for st in stats:
        m = st["mass"]
        sp[st["slot"]] += m.unsqueeze(-1) * st["pf"]
        sl[st["slot"]] += m.unsqueeze(-1) * st["lesion"]
        sm[st["slot"]] += m
    return sp, sl, sm


def level_features_of(agents, sp, sl, sm):
    """Batched [B,SLOTS,LV,*] slot sums -> level features and slot mask, as
    `combine` computes them (the compression is linear, so it distributes
    over the mass-weighted sum)."""
    lin = agents.series.compress
    denom = sm.unsqueeze(-1) + 1e-3
    feats = (F.linear(sp, lin.weight) + sm.unsqueeze(-1) * lin.bias) / denom
    return torch.cat([feats, sl / denom], dim=-1), (sm.sum(-1) > 0).float()


def optimizer_step(opt, loss, params, max_norm=3.0):
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()


def cosine_lr(opt, base, frac, warmup=0.05):
    f = min(frac, 1.0)
    scale = min(1.0, f / warmup) * 0.5 * (1 + math.cos(math.pi * f))
    for g in opt.param_groups:
        g["lr"] = base * max(scale, 0.02)


def class_weights(labels, n, cap):
    """Inverse square-root frequency, background 1, capped: small classes
    (a lesion covers ~0.1 % of a slice) are not drowned by background."""
    counts = torch.bincount(labels.flatten().long(), minlength=n).double() + 1
    w = (counts[0] / counts).sqrt().clamp(max=cap)
    return w.float()


def soft_dice_loss(logits, target, n):
    """1 - mean soft Dice over the foreground classes present in the batch."""
    p = logits.softmax(dim=1)[:, 1:]
    t = F.one_hot(target.long(), n).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (p * t).sum(dim=(0, 2, 3))
    denom = p.sum(dim=(0, 2, 3)) + t.sum(dim=(0, 2, 3))
    present = t.sum(dim=(0, 2, 3)) > 0
    if not present.any():
        return logits.sum() * 0
    return 1 - (2 * inter[present] / (denom[present] + 1)).mean()


def segmentation_loss(agents, logits, a_t, le_t, lv_t, wa, wl):
    """Cross-entropy with class weights plus soft Dice (anatomy, lesion),
    cross-entropy for the level map."""
    na, nl = len(L.ANATOMY), len(L.LESION)
    a, les, lev = agents.slice.split_seg(logits)
    loss = F.cross_entropy(a, a_t, weight=wa) + soft_dice_loss(a, a_t, na)
    loss = loss + F.cross_entropy(les, le_t, weight=wl) + soft_dice_loss(les, le_t, nl)
    return loss + F.cross_entropy(lev, lv_t)


CROP = 64  # side of the full-resolution region trained per step


# Cap of the lesion classes' cross-entropy weights in stage A. Up to 0.7.0
# it was 30: with a quarter of every batch from slices that show a lesion,
# the segmentation then marked the normal lumbosacral disc's back as
# herniation in most studies (all three sagittal sequences of the strict
# test's seed 880001 did, while T2 missed the true L4-L5 fragment), and
# that false peak outranked the true finding. 0.8.0 continued stage A at 10.
LESION_WEIGHT_CAP = 10.0


def coarse_labels(t):
    """Labels at 128 x 128 [B,H,W] -> at the coarse logits' 64 x 64."""
    return t[:, ::2, ::2]


# Hard negatives (`--hard-negatives`, from 0.9.0): every HARD_EVERY steps
# stage A runs the lesion head on HARD_CANDIDATES random slices and keeps
# the HARD_TOP with the most cells it marks as lesion where the truth has
# none (0.8.0 still marked the back of the normal lumbosacral disc) in a
# pool of the newest HARD_POOL, from which a quarter of every batch is then
# drawn. About half of all slices have some such cell at 64 x 64 under
# 0.8.0, so only the worst are kept. Mining costs one forward pass over
# four batches, without gradients.
HARD_EVERY, HARD_CANDIDATES, HARD_TOP, HARD_POOL = 10, 128, 16, 256


@torch.no_grad()
def mine_false_lesions(agents, P, X, LE, pool):
    """`pool` plus the HARD_TOP random candidates on which the lesion head
    calls the most cells lesion (probability above 0.5) that the truth at
    64 x 64 does not, the newest HARD_POOL kept. Candidates are drawn with
    replacement, so a slice drawn twice in one round can enter twice."""
    cand = torch.randint(len(P), (HARD_CANDIDATES,))
    counts = []
    for c in cand.split(32):
        _, coarse = agents.slice.coarse(P[c].float(), X[c].float())
        lesion_p = agents.slice.split_seg(coarse)[1].softmax(dim=1)[:, 1:].sum(dim=1)
        counts.append(((lesion_p > 0.5) & (coarse_labels(LE[c]) == 0)).flatten(1).sum(dim=1))
    counts = torch.cat(counts)
    top = counts.argsort(descending=True)[:HARD_TOP]
    new = cand[top[counts[top] > 0]]
    kept = torch.cat([pool[~torch.isin(pool, new)], new])
    return kept[-HARD_POOL:]


def train_slice_agents(
    agents, train, feats, minutes, batch=32, lr=2e-3, label="", lesion_cap=LESION_WEIGHT_CAP, hard_negatives=False
):
    """Stage A: segmentation (anatomy, lesion, level) and recognition, per
    slice, on random slices of every training series (all families, routed
    features). The 64 x 64 logits are trained on the whole slice against
    the labels at 64 x 64; with the full-resolution refinement its logits
    are trained as well, on one random CROP x CROP region per step against
    the labels at 128 x 128 (the whole slice at full resolution costs about
    five times as much per step)."""
    P, C, R, X, A, LE, LV, FA, PL, RG = [], [], [], [], [], [], [], [], [], []
    for st, items in zip(train, feats):
        region = L.REGIONS.index(st["truth"]["region"])
        for s, it in zip(st["series"], items):
            n = len(it["patches"])
            P.append(it["patches"]), C.append(it["cls"]), R.append(it["rec_cls"]), X.append(it["pixels"])
            A.append(torch.from_numpy(s["anatomy"]))
            LE.append(torch.from_numpy(s["lesion"]))
            LV.append(torch.from_numpy(s["level"]))
            FA.append(torch.full((n,), L.FAMILIES.index(it["family"])))
            PL.append(torch.full((n,), L.PLANES.index(it["plane"])))
            RG.append(torch.full((n,), region))
    P, C, R, X = torch.cat(P), torch.cat(C), torch.cat(R), torch.cat(X)
    A, LE, LV, FA, PL, RG = (torch.cat(t) for t in (A, LE, LV, FA, PL, RG))
    na, nl = len(L.ANATOMY), len(L.LESION)
    wa, wl = class_weights(A, na, 10.0), class_weights(LE, nl, lesion_cap)
    full = agents.slice.full_res
    print(f"{label} slice agents: {len(P)} training slices; full resolution {full}; "
          f"lesion class weights {wl.numpy().round(1)}", flush=True)  # fmt: skip
    with_lesion = torch.nonzero(LE.flatten(1).amax(dim=1) > 0).flatten()
    params = list(agents.slice.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    deadline, started, step = time.time() + minutes * 60, time.time(), 0
    side = A.shape[-1]
    hard = torch.empty(0, dtype=torch.long)
    while time.time() < deadline:
        cosine_lr(opt, lr, (time.time() - started) / (minutes * 60))
        if hard_negatives and step % HARD_EVERY == 0:
            hard = mine_false_lesions(agents, P, X, LE, hard)
        # A quarter of the batch from slices that show a lesion, so the
        # lesion head sees some every step (most slices show none), and a
        # quarter from the hard negatives when mined.
        k = batch // 4 if len(with_lesion) else 0
        h = batch // 4 if len(hard) else 0
        idx = torch.cat(
            [
                with_lesion[torch.randint(len(with_lesion), (k,))],
                hard[torch.randint(len(hard), (h,))],
                torch.randint(len(P), (batch - k - h,)),
            ]
        )
        a_t, le_t, lv_t = A[idx].long(), LE[idx].long(), LV[idx].long()
        px = X[idx].float()
        hidden, coarse = agents.slice.coarse(P[idx].float(), px)
        seg_loss = segmentation_loss(
            agents, coarse, coarse_labels(a_t), coarse_labels(le_t), coarse_labels(lv_t), wa, wl
        )
        if full:
            y0, x0 = (2 * int(v) for v in torch.randint((side - CROP) // 2 + 1, (2,)))
            fine = agents.slice.refine_region(hidden, coarse, px, y0, x0, CROP)
            cut = lambda t: t[:, y0 : y0 + CROP, x0 : x0 + CROP]  # noqa: E731
            seg_loss = seg_loss + segmentation_loss(agents, fine, cut(a_t), cut(le_t), cut(lv_t), wa, wl)
        fam, plane, reg = agents.slice.split_recognition(agents.slice.recognize(R[idx].float()))
        rec_loss = F.cross_entropy(fam, FA[idx]) + F.cross_entropy(plane, PL[idx]) + F.cross_entropy(reg, RG[idx])
        loss = seg_loss + 0.5 * rec_loss
        optimizer_step(opt, loss, params)
        step += 1
        if step % 50 == 0:
            print(
                f"{label} slice step {step} {time.time() - started:.0f}s seg {seg_loss.item():.3f} rec {rec_loss.item():.3f}"
                + (f" hard negatives {len(hard)}" if hard_negatives else ""),
                flush=True,
            )
    return step


@torch.no_grad()
def study_stats(agents, studies, feats):
    """Stage B input: per study, per series the (frozen) slice agents'
    outputs reduced to what the trainable rest needs."""
    out = []
    for st, items in zip(studies, feats):
        items = as_float(items)
        _, _, stats = study_series_stats(agents, items)
        for it, s in zip(items, stats):
            vis = visible_slices(st["truth"], it["number"], it["slice_index"])
            s["visible"] = vis if vis and len(vis) < len(it["slice_index"]) else None
        out.append(stats)
    return out


def train_condition_agents(
    agents, train, stats, val, val_stats, minutes, batch=32, lr=1e-3, label="", prior_shrink=PRIOR_SHRINK
):
    """Stage B1: the condition agents (and the patch feature compression)
    on precomputed slot sums: milliseconds per step, so tens of thousands
    of study samples fit in minutes. Checked on validation every 100 steps,
    each part keeps its own best state (B1_PARTS): the presence model
    (linear, 40 weights per condition) the one with the lowest validation
    presence loss, the side model of lateral conditions (linear) the one
    with the lowest validation loss of those sides, the MLP (other sides,
    severity, graded task) the one with the lowest validation loss of
    those. Up to 0.5.0 one state was kept for the sum; the MLP overfits
    within a few hundred steps, so presence stopped there too, barely
    trained (probabilities bunched near 0.5). `prior_shrink` weighs
    `prior_deviation` in the training loss (not in the validation loss that
    picks the state)."""
    sums = [torch.stack(t) for t in zip(*(slot_sums(s) for s in stats))]
    vsums = [torch.stack(t) for t in zip(*(slot_sums(s) for s in val_stats))]
    targets, vtargets = condition_targets(train), condition_targets(val)
    valid = torch.tensor([L.valid_positions(c) for c in L.CONDITIONS]).T.float()  # [P, C]
    params = list(agents.conditions.parameters()) + list(agents.series.compress.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    best = {part: (float("inf"), None, 0) for part in (*B1_PARTS, "rest")}
    deadline, started, step = time.time() + minutes * 60, time.time(), 0
    while time.time() < deadline:
        cosine_lr(opt, lr, (time.time() - started) / (minutes * 60))
        idx = torch.randint(len(train), (batch,))
        lf, sm = level_features_of(agents, *(x[idx] for x in sums))
        losses = condition_losses(agents, lf, sm, {k: v[idx] for k, v in targets.items()})
        shrink = prior_shrink * prior_deviation(agents.conditions, valid) if prior_shrink else 0
        optimizer_step(opt, sum(losses.values()) + shrink, params)
        step += 1
        if step % 100 == 0:
            agents.conditions.eval()  # no dropout
            with torch.no_grad():
                val = {k: v.item() for k, v in condition_losses(agents, *level_features_of(agents, *vsums), vtargets).items()}
            agents.conditions.train()
            for part, value in val.items():
                if value < best[part][0]:
                    state = {k: v.clone() for k, v in agents.state_dict().items()
                             if k.startswith(("conditions.", "series.compress.")) and b1_part_of(k) == part}  # fmt: skip
                    best[part] = (value, state, step)
            if step % 1000 == 0:
                print(
                    f"{label} condition step {step} {time.time() - started:.0f}s validation "
                    + ", ".join(f"{p} {val[p]:.3f} (best {best[p][0]:.3f} at {best[p][2]})" for p in best),
                    flush=True,
                )
    for _, state, _ in best.values():
        if state is not None:
            agents.load_state_dict(state, strict=False)
    return step


def train_study_agents(agents, train, stats, minutes, batch=24, lr=1e-3, label=""):
    """Stage B2: series pooling with slice selection, patient embedding and
    retrieval on the frozen slice agents' outputs."""
    params = [
        p for n, p in agents.named_parameters()
        if not n.startswith(("slice.", "conditions.", "series.compress.", "retrieval"))
    ]  # fmt: skip
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
        texts = agents.text(torch.stack([torch.from_numpy(train[i]["text"]) for i in chosen]))
        clip = clip_loss(torch.stack([o["retrieval"] for o in outs]), texts, agents.logit_scale)
        att = att / max(n_att, 1)
        loss = clip + 0.3 * att
        optimizer_step(opt, loss, params)
        step += 1
        if step % 100 == 0:
            print(
                f"{label} study step {step} {time.time() - started:.0f}s loss {loss.item():.3f} "
                f"clip {clip.item():.3f} attn {float(att):.3f}",
                flush=True,
            )
    return step


def retrieval_recall(img, txt, k=5):
    """Mean of Recall@k in both directions among matched rows (unit vectors)."""
    sim = img @ txt.t()
    diag = sim.diagonal()
    i2t = (sim > diag[:, None]).sum(1) < k
    t2i = (sim.t() > diag[:, None]).sum(1) < k
    return (i2t.float().mean() + t2i.float().mean()).item() / 2


def train_retrieval(agents, train, stats, val, val_stats, minutes, batch=32, lr=1e-3, label=""):
    """Stage B3: the retrieval head over the (frozen) condition agents'
    answers, and its text projection, with the symmetric CLIP loss. The
    answers are computed once per study; the state with the best validation
    Recall@5 (both directions, checked every 25 steps) is kept, as 144
    training studies are learned by heart long before the time is up."""
    if not agents.condition_retrieval:
        return 0

    @torch.no_grad()
    def answers(st):
        sums = [torch.stack(t) for t in zip(*(slot_sums(s) for s in st))]
        agents.conditions.eval()
        return ConditionRetrieval.inputs(*agents.conditions(*level_features_of(agents, *sums)))

    x, vx = answers(stats), answers(val_stats)
    texts = torch.from_numpy(np.stack([st["text"] for st in train]))
    vtexts = torch.from_numpy(np.stack([st["text"] for st in val]))
    net = agents.retrieval.net
    params = list(net.parameters()) + list(agents.retrieval_text.parameters()) + [agents.retrieval_scale]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    best, best_state = -1.0, None
    deadline, started, step = time.time() + minutes * 60, time.time(), 0
    while time.time() < deadline:
        cosine_lr(opt, lr, (time.time() - started) / (minutes * 60))
        idx = torch.randperm(len(train))[:batch]
        net.train()
        img = F.normalize(net(x[idx]), dim=-1)
        loss = clip_loss(img, agents.retrieval_text(texts[idx]), agents.retrieval_scale)
        optimizer_step(opt, loss, params)
        step += 1
        if step % 25 == 0:
            net.eval()
            with torch.no_grad():
                r = retrieval_recall(F.normalize(net(vx), dim=-1), agents.retrieval_text(vtexts))
            if r > best:
                best = r
                best_state = {k: v.clone() for k, v in agents.state_dict().items() if k.startswith("retrieval")}
            if step % 500 == 0:
                print(f"{label} retrieval step {step} loss {loss.item():.3f} validation R@5 {r:.3f} (best {best:.3f})",
                      flush=True)  # fmt: skip
    if best_state is not None:
        agents.load_state_dict(best_state, strict=False)
    net.eval()
    return step


def stats_cache_file(directory, agents_state, label):
    """Where the series stats of the slice agents in `agents_state` (an
    agents state dict) on `label`'s features ("agents" or "ablation") are
    cached in `directory` (one directory per feature set). Named by a
    digest of the slice agents' weights, so every checkpoint that holds
    them (a B1-only rerun, text_projection.py, the checkpoint after it)
    finds them; named after the checkpoint file up to 0.9.0, whose recipe
    needed a link per new name."""
    digest = hashlib.sha256()
    for name in sorted(k for k in agents_state if k.startswith("slice.")):
        digest.update(name.encode())
        digest.update(agents_state[name].detach().cpu().contiguous().numpy().tobytes())
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, f"slice-{digest.hexdigest()[:16]}.{label}.stats.pt")


def train_agents(
    agents, train, feats, val, val_feats, slice_minutes, condition_minutes, study_minutes, label="", earlier=None,
    slice_continue=False, retrieval_minutes=2, stats_dir=None, prior_shrink=PRIOR_SHRINK,
    lesion_cap=LESION_WEIGHT_CAP, hard_negatives=False, slice_extra=((), ()),
):
    """Stage A, then B1 and B2. `earlier`: an earlier run's agents (same
    features) whose slice agents are taken instead of stage A (or, with
    `slice_continue`, are where stage A starts), and whose pooling, patient
    and retrieval weights are the start of B2 (kept as they are with
    `study_minutes` 0). `slice_extra`: (studies, their features) that stage
    A trains on besides `train`; the later stages see `train` alone."""
    slice_train = list(train) + list(slice_extra[0])
    slice_feats = list(feats) + list(slice_extra[1])
    if earlier is not None:
        own = agents.state_dict()
        taken = {k: v for k, v in earlier.items() if k in own and own[k].shape == v.shape and not k.startswith("conditions.")}
        agents.load_state_dict(taken, strict=False)
        s1 = 0
        print(f"{label}: slice agents, pooling and retrieval taken from an earlier run ({len(taken)} tensors)", flush=True)
        if slice_continue:
            s1 = train_slice_agents(
                agents, slice_train, slice_feats, slice_minutes, lr=1e-3, label=label, lesion_cap=lesion_cap,
                hard_negatives=hard_negatives,
            )  # fmt: skip
    else:
        s1 = train_slice_agents(
            agents, slice_train, slice_feats, slice_minutes, label=label, lesion_cap=lesion_cap,
            hard_negatives=hard_negatives,
        )
    started = time.time()
    # Stats depend on the slice agents only: cached in `stats_dir` under a
    # digest of their weights, so a later run on the same slice agents (a
    # B1-only rerun, text_projection.py) reads them.
    stats_cache = stats_dir and stats_cache_file(stats_dir, agents.state_dict(), label)
    cached = stats_cache and os.path.exists(stats_cache)
    if cached:
        stats, val_stats = torch.load(stats_cache, weights_only=False)
    else:
        stats = study_stats(agents, train, feats)
        val_stats = study_stats(agents, val, val_feats)
        if stats_cache:
            torch.save((stats, val_stats), stats_cache)
    print(f"{label} series stats in {time.time() - started:.0f}s{' (cached)' if cached else ''}", flush=True)
    s2 = train_condition_agents(agents, train, stats, val, val_stats, condition_minutes, label=label, prior_shrink=prior_shrink)
    s3 = train_study_agents(agents, train, stats, study_minutes, label=label)
    s4 = train_retrieval(agents, train, stats, val, val_stats, retrieval_minutes, label=label)
    return {"slice": s1, "conditions": s2, "study": s3, "retrieval": s4}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--t1", required=True)
    ap.add_argument("--t2", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--synth-minutes", type=float, default=3)
    ap.add_argument("--slice-minutes", type=float, default=8, help="stage A: segmentation and recognition")
    ap.add_argument("--condition-minutes", type=float, default=3, help="stage B1: condition agents")
    ap.add_argument("--study-minutes", type=float, default=4, help="stage B2: pooling, slice selection, retrieval")
    ap.add_argument("--retrieval-minutes", type=float, default=2, help="stage B3: retrieval over the condition answers")
    ap.add_argument("--ablation-slice-minutes", type=float, default=None, help="default: --slice-minutes")
    ap.add_argument("--ablation-condition-minutes", type=float, default=None, help="default: --condition-minutes")
    ap.add_argument("--ablation-study-minutes", type=float, default=None, help="default: --study-minutes")
    ap.add_argument(
        "--reuse", help="an earlier checkpoint on the same encoders: take its synthesizer weights and features"
    )
    ap.add_argument(
        "--slice-from", help="an earlier checkpoint on the same features: take its slice agents (no stage A) and start B2 from it"
    )
    ap.add_argument(
        "--slice-continue", action="store_true",
        help="with --slice-from: continue stage A from its slice agents for --slice-minutes (steps add up)",
    )
    ap.add_argument(
        "--ablation-slice-continue", action="store_true",
        help="with --slice-from: the ablation alone continues stage A for --ablation-slice-minutes (a checkpoint "
        "restored from a bundle has no ablation agents: theirs then start from the main slice agents, trained on "
        "the synthesizer's features, and adapt to the ablation's own)",
    )
    ap.add_argument(
        "--synthesizer-from", help="a checkpoint whose synthesizer weights are taken as they are (no synthesizer training)"
    )
    ap.add_argument(
        "--keep-ablation", action="store_true",
        help="with --slice-from: take its ablation agents as they are (when only the main agents' later stages change)",
    )
    ap.add_argument(
        "--stats-cache",
        help="a directory for the series stats of the slice agents after stage A (computed once, about 10 "
        "minutes each for the agents and the ablation on 2 cores; one directory per feature set, a file per slice "
        "agents named by a digest of their weights; delete it when SeriesPool.level_stats changes)",
    )
    ap.add_argument(
        "--prior-shrink", type=float, default=PRIOR_SHRINK,
        help="weight of the condition priors' spread over positions in stage B1's loss (0: none, as up to 0.7.0)",
    )
    ap.add_argument(
        "--lesion-weight-cap", type=float, default=LESION_WEIGHT_CAP,
        help="cap of the lesion classes' cross-entropy weights in stage A (30 up to 0.7.0)",
    )
    ap.add_argument(
        "--hard-negatives", action="store_true",
        help="stage A draws a quarter of every batch from slices where the lesion head fires without a lesion (0.9.0)",
    )
    ap.add_argument(
        "--slice-extra",
        help="a cache of more phantom studies (prepare.py, another dataset seed) whose slices join stage A's for the "
        "agents (not the ablation; not B1, B2, B3, whose priors follow the main dataset's prevalence); its held-out "
        "vendor studies are left out, so the cross-vendor numbers stay cross-vendor",
    )
    ap.add_argument(
        "--no-contrast", action="store_true",
        help="condition agents without the contrast feature (seven evidence features per slot, as up to 0.9.0)",
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
        if args.synthesizer_from:
            prev = torch.load(args.synthesizer_from, weights_only=False)
            synth.weights.data.copy_(prev["synthesizer"])
            synth_steps = prev["steps"]["synthesizer"]
        else:
            synth_steps = train_synthesizer(synth, cache["train"], args.synth_minutes)
        started = time.time()
        feats, ablation = {}, {}
        for split, studies in cache.items():
            both = [features(t1, t2, synth, st) for st in studies]
            feats[split] = [b[0] for b in both]
            ablation[split] = [b[1] for b in both]
        print(f"features in {time.time() - started:.0f}s", flush=True)

    placements = load_placements(cache, os.path.join(os.path.dirname(os.path.abspath(args.cache)), "prep"))
    for split in cache:
        attach_pixels(cache[split], feats[split])
        attach_pixels(cache[split], ablation[split])
        attach_placements(cache[split], feats[split], placements)
        attach_placements(cache[split], ablation[split], placements)
    extra, extra_feats = [], []
    if args.slice_extra:
        started = time.time()
        extra, extra_feats = in_vendor_studies(args.slice_extra, t1, t2, synth)
        print(f"{len(extra)} extra studies for stage A, features in {time.time() - started:.0f}s", flush=True)
    pick = lambda a, b: a if a is not None else b  # noqa: E731
    earlier = torch.load(args.slice_from, weights_only=False) if args.slice_from else None

    agents = Agents(contrast=not args.no_contrast)
    steps = train_agents(
        agents, cache["train"], feats["train"], cache["validation"], feats["validation"],
        args.slice_minutes, args.condition_minutes, args.study_minutes, label="agents",
        earlier=earlier["agents"] if earlier else None, slice_continue=args.slice_continue,
        retrieval_minutes=args.retrieval_minutes, stats_dir=args.stats_cache, prior_shrink=args.prior_shrink,
        lesion_cap=args.lesion_weight_cap, hard_negatives=args.hard_negatives, slice_extra=(extra, extra_feats),
    )  # fmt: skip
    agents_ablation = Agents(contrast=not args.no_contrast)
    # A checkpoint restored from a bundle has no ablation agents: the
    # ablation then starts from the same agents as the main run, so the two
    # differ only in how other sequences are encoded.
    ablation_start, ablation_earlier_steps = None, None
    if earlier:
        own = earlier["agents_ablation"] is not None
        ablation_start = earlier["agents_ablation"] if own else earlier["agents"]
        ablation_earlier_steps = earlier["steps"]["ablation" if own else "agents"]
    if args.keep_ablation:
        assert earlier and earlier["agents_ablation"] is not None, "--keep-ablation needs --slice-from with ablation agents"
        agents_ablation = load_agents(earlier["agents_ablation"])
        ab_steps = dict(earlier["steps"]["ablation"])
    else:
        ab_steps = train_agents(
            agents_ablation, cache["train"], ablation["train"], cache["validation"], ablation["validation"],
            pick(args.ablation_slice_minutes, args.slice_minutes),
            pick(args.ablation_condition_minutes, args.condition_minutes),
            pick(args.ablation_study_minutes, args.study_minutes),
            label="ablation", earlier=ablation_start, slice_continue=args.slice_continue or args.ablation_slice_continue,
            retrieval_minutes=args.retrieval_minutes, stats_dir=args.stats_cache,
            prior_shrink=args.prior_shrink, lesion_cap=args.lesion_weight_cap, hard_negatives=args.hard_negatives,
        )  # fmt: skip
    if earlier:  # stage A and B2 start from the earlier run's weights: their steps add up
        pairs = [(steps, earlier["steps"]["agents"])]
        if not args.keep_ablation:
            pairs.append((ab_steps, ablation_earlier_steps))
        for mine, theirs in pairs:
            mine["slice"] += theirs["slice"]
            mine["study"] += theirs["study"]
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
        strip = lambda fs: {k: [[{n: v for n, v in it.items() if n != "pixels"} for it in items] for items in studies]  # noqa: E731
                            for k, studies in fs.items()}  # fmt: skip
        torch.save({"routed": strip(feats), "ablation": strip(ablation)}, args.out + ".features")
    print(f"saved {args.out}", flush=True)


if __name__ == "__main__":
    main()
