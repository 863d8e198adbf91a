"""One study through the agents, shared by training, evaluation and export
checks; the Rust engine (`spineagent analyze`) runs the same steps on the
exported ONNX files."""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import crossref
from . import labels as L
from .data import RESIZE
from .model import GRID, IMAGE, WIDTH, ConditionAgents, ConditionRetrieval, PatientModel, SeriesPool, SliceAgents, TextProjection


class Agents(nn.Module):
    """Every trained part after the encoders. `full_res`: the slice agents'
    full-resolution refinement; `condition_retrieval`: retrieval from the
    condition agents' answers (with its own text projection) beside the
    patient embedding's. Bundles up to 0.4.x have neither."""

    def __init__(self, full_res=True, condition_retrieval=True, contrast=True):
        super().__init__()
        self.slice = SliceAgents(full_res=full_res)
        self.series = SeriesPool()
        self.patient = PatientModel()
        self.conditions = ConditionAgents(contrast=contrast)
        self.text = TextProjection()
        self.logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
        if condition_retrieval:
            self.retrieval = ConditionRetrieval()
            self.retrieval_text = TextProjection()
            self.retrieval_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))

    @property
    def condition_retrieval(self):
        return hasattr(self, "retrieval")


def level_logits_per_patch(seg_logits):
    """Level part of the segmentation logits averaged to the patch grid."""
    _, _, level = SliceAgents.split_seg(None, seg_logits)
    return F.adaptive_avg_pool2d(level, GRID)


def series_stats(agents: Agents, it):
    """One series stack through the slice agents and the parameter-free part
    of the series pool, on its own (no cross-reference). Returns (seg,
    recognition, stats for `combine`)."""
    seg, _ = agents.slice(it["cls"], it["patches"], it["pixels"])
    rec = agents.slice.recognize(it["rec_cls"])
    return seg, rec, stats_of(it, SeriesPool.slice_maps(seg, GRID))


def stats_of(it, maps):
    pf, mass, lesion = SeriesPool.stats_from_maps(it["patches"], *maps)
    return {"cls": it["cls"], "patch_mean": it["patches"].mean(dim=1), "pf": pf, "mass": mass,
            "lesion": lesion, "slot": it["slot"]}  # fmt: skip


def study_series_stats(agents: Agents, items, keep_segs=False):
    """Every stack of one study through the slice agents and the
    parameter-free part of the series pool, with the axial stacks' level
    maps taken from where they cross the sagittal stacks (`crossref`; the
    engine does the same) when the items carry their `placement`. Returns
    (segs or None, recognitions, stats)."""
    segs, recs, maps, sagittal = [], [], [], []
    for it in items:
        seg, _ = agents.slice(it["cls"], it["patches"], it["pixels"])
        recs.append(agents.slice.recognize(it["rec_cls"]))
        maps.append(list(SeriesPool.slice_maps(seg, GRID)))
        if it.get("placement") is not None and it["plane"] == "sagittal":
            _, _, level = agents.slice.split_seg(seg)
            sagittal.append((it["placement"], level.argmax(dim=1).numpy()))
        segs.append(seg if keep_segs else None)
    if sagittal:
        for it, m in zip(items, maps):
            if it.get("placement") is None or it["plane"] != "axial":
                continue
            shares = crossref.axial_levels(it["placement"], sagittal, RESIZE, IMAGE, len(L.LEVELS))
            for s, share in enumerate(shares):
                if share is not None:
                    m[0][s] = crossref.relabel(m[0][s], share)
                    m[1][s] = crossref.relabel(m[1][s], share)
    return (segs if keep_segs else None), recs, [stats_of(it, m) for it, m in zip(items, maps)]


def combine(agents: Agents, stats):
    """Series stats of one study -> per-series attention and the study-level
    tensors (the same steps as the Rust engine after slice_agents)."""
    slot_sum = torch.zeros(len(L.SLOTS), len(L.LEVELS), WIDTH)
    slot_mass = torch.zeros(len(L.SLOTS), len(L.LEVELS))
    series_embs, slots, attns = [], [], []
    for st in stats:
        series, attn = agents.series.embed(st["cls"], st["patch_mean"])
        feats = agents.series.level_features(st["pf"], st["lesion"])
        mass = st["mass"]
        slot_sum = slot_sum.index_add(0, torch.tensor([st["slot"]]), (feats * mass.unsqueeze(-1)).unsqueeze(0))
        slot_mass = slot_mass.index_add(0, torch.tensor([st["slot"]]), mass.unsqueeze(0))
        series_embs.append(series)
        slots.append(st["slot"])
        attns.append(attn)
    level_features = slot_sum / (slot_mass.unsqueeze(-1) + 1e-3)
    slot_mask = (slot_mass.sum(-1) > 0).float()
    series = torch.stack(series_embs).unsqueeze(0)
    slot_onehot = F.one_hot(torch.tensor(slots), len(L.SLOTS)).float().unsqueeze(0)
    patient, retrieval, _ = agents.patient(series, slot_onehot, torch.ones(1, len(stats)))
    return attns, {
        "level_features": level_features,
        "slot_mask": slot_mask,
        "patient": patient[0],
        "retrieval": retrieval[0],
    }


def run_study(agents: Agents, items):
    """items: per series stack {cls [S,D], patches [S,N,D], rec_cls [S,D],
    pixels [S,1,IMAGE,IMAGE], slot}.
    Returns per-item outputs and the study-level tensors."""
    segs, recs, stats = study_series_stats(agents, items, keep_segs=True)
    attns, out = combine(agents, stats)
    per_item = [{"seg": s, "recognition": r, "attention": a} for s, r, a in zip(segs, recs, attns)]
    return per_item, out


def has_contrast(evidence_weight_shape):
    """Whether condition agents with this evidence weight shape [C, F * SLOTS]
    read the contrast feature (eight features per slot; seven up to 0.9.0)."""
    return evidence_weight_shape[-1] == 8 * len(L.SLOTS)


def load_agents(state):
    """Agents from a checkpoint's state dict (strict: the architecture and
    the checkpoint must match; a checkpoint without the full-resolution
    refinement makes agents without it)."""
    agents = Agents(
        full_res=any(k.startswith("slice.refine.") for k in state),
        condition_retrieval=any(k.startswith("retrieval.") for k in state),
        contrast=has_contrast(state["conditions.evidence_weight"].shape),
    )
    agents.load_state_dict(state)
    return agents
