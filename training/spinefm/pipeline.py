"""One study through the agents, shared by training, evaluation and export
checks; the Rust engine (`spineagent analyze`) runs the same steps on the
exported ONNX files."""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import labels as L
from .model import GRID, WIDTH, ConditionAgents, PatientModel, SeriesPool, SliceAgents, TextProjection


class Agents(nn.Module):
    def __init__(self):
        super().__init__()
        self.slice = SliceAgents()
        self.series = SeriesPool()
        self.patient = PatientModel()
        self.conditions = ConditionAgents()
        self.text = TextProjection()
        self.logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))


def level_logits_per_patch(seg_logits):
    """Level part of the 32x32 segmentation logits averaged to the patch grid."""
    _, _, level = SliceAgents.split_seg(None, seg_logits)
    return F.adaptive_avg_pool2d(level, GRID)


def run_study(agents: Agents, items):
    """items: per series stack {cls [S,D], patches [S,N,D], rec_cls [S,D], slot}.
    Returns per-item outputs and the study-level tensors."""
    per_item = []
    slot_sum = torch.zeros(len(L.SLOTS), len(L.LEVELS), WIDTH)
    slot_mass = torch.zeros(len(L.SLOTS), len(L.LEVELS))
    series_embs, slots = [], []
    for it in items:
        seg, _ = agents.slice(it["cls"], it["patches"])
        rec = agents.slice.recognize(it["rec_cls"])
        series, attn, feats, mass = agents.series(it["cls"], it["patches"], level_logits_per_patch(seg))
        slot_sum[it["slot"]] += feats * mass.unsqueeze(-1)
        slot_mass[it["slot"]] += mass
        series_embs.append(series)
        slots.append(it["slot"])
        per_item.append({"seg": seg, "recognition": rec, "attention": attn})
    level_features = slot_sum / (slot_mass.unsqueeze(-1) + 1e-3)
    slot_mask = (slot_mass.sum(-1) > 0).float()
    series = torch.stack(series_embs).unsqueeze(0)
    slot_onehot = F.one_hot(torch.tensor(slots), len(L.SLOTS)).float().unsqueeze(0)
    patient, retrieval, _ = agents.patient(series, slot_onehot, torch.ones(1, len(items)))
    return per_item, {
        "level_features": level_features,
        "slot_mask": slot_mask,
        "patient": patient[0],
        "retrieval": retrieval[0],
    }
