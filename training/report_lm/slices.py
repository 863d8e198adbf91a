"""Writes the slice embeddings the visual projector reads, per training
study: the class token of every slice the models use (the routed features
of train_agents.py: T1/T2 encoders, synthesizer for other sequences), as
the engine collects them (engine/src/analysis/mod.rs, `slice_embeddings`).

usage: slices.py CACHE.pt AGENTS.pt.features OUT.pt  -> {study dir: float16 [slices, 128]}"""
import sys

import torch

cache_path, features_path, out = sys.argv[1:4]
cache = torch.load(cache_path, weights_only=False)
names = {split: [st["name"] for st in studies] for split, studies in cache.items()}
del cache
routed = torch.load(features_path, weights_only=False)["routed"]
table = {}
for split, studies in routed.items():
    for name, items in zip(names[split], studies):
        table[name] = torch.cat([it["cls"] for it in items]).half()
torch.save(table, out)
print(f"{len(table)} studies, {sum(len(v) for v in table.values())} slices -> {out}")
