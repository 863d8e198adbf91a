"""Writes the slice embeddings the visual projector reads, per training
study, as the engine serves them: `spineagent analyze --out` writes every
analyzed slice's class token (slice_embeddings.npy, the projector's input);
this runs it on each lumbar training study of the phantom dataset. The
projector is thereby trained on exactly what it sees in the product
(same pixels, same encoders, same routing of sequences).

usage: slices.py BINARY BUNDLE DATASET OUT.pt [--jobs 2]
       -> {study dir: float16 [slices, width]}"""
import argparse
import json
import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

ap = argparse.ArgumentParser()
ap.add_argument("binary")
ap.add_argument("bundle")
ap.add_argument("dataset")
ap.add_argument("out")
ap.add_argument("--jobs", type=int, default=2)
ap.add_argument("--split", default="train")
args = ap.parse_args()

manifest = json.load(open(os.path.join(args.dataset, "manifest.json")))
studies = [s["dir"] for s in manifest["studies"] if s["split"] == args.split and s["region"] == "lumbar"]


def embed(name, tmp):
    out = os.path.join(tmp, name)
    subprocess.run([args.binary, "analyze", "--bundle", args.bundle, "--threads", "1", "--out", out,
                    os.path.join(args.dataset, name)], check=True, capture_output=True)
    path = os.path.join(out, "slice_embeddings.npy")
    if not os.path.exists(path):
        raise SystemExit(f"{name}: no slice_embeddings.npy (does the bundle have a report_projector?)")
    return name, torch.from_numpy(np.load(path)).half()


with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
    table = {}
    for i, (name, e) in enumerate(pool.map(lambda n: embed(n, tmp), studies)):
        table[name] = e
        if (i + 1) % 20 == 0:
            print(f"{i + 1}/{len(studies)}", flush=True)
torch.save(table, args.out)
print(f"{len(table)} studies, {sum(len(v) for v in table.values())} slices -> {args.out}")
