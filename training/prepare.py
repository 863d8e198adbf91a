"""Preprocess a phantom dataset with the product (`spineagent preprocess`),
attach resampled labels and frozen report-text embeddings, and save one
training cache.

    python training/prepare.py --dataset work/ds --binary target/release/spineagent --out work/cache.pt
"""

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from spinefm import data


def split_of(i: int, vendor: str, held_out: str) -> str:
    # Same rule as phantom/src/dataset.rs (used while the manifest is not yet written).
    if vendor == held_out:
        return "test_heldout_vendor"
    return {8: "validation", 9: "test"}.get(i % 10, "train")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True, type=Path)
    ap.add_argument("--binary", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--held-out-vendor", default="canon")
    ap.add_argument(
        "--prep", type=Path, help="where the preprocessed studies go (default: prep beside --out; another dataset in "
        "the same work directory needs its own, its study names repeat)",
    )
    args = ap.parse_args()

    manifest = args.dataset / "manifest.json"
    studies = sorted(p.parent for p in args.dataset.glob("study_*/truth.json"))
    splits = {}
    if manifest.exists():
        for s in json.loads(manifest.read_text())["studies"]:
            splits[s["dir"] if "dir" in s else f"study_{s['index']:05d}"] = s["split"]
    prep_root = args.prep or args.out.parent / "prep"
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda s: data.preprocess_study(args.binary, s, prep_root / s.name), studies))
    cache = {"train": [], "validation": [], "test": [], "test_heldout_vendor": []}
    loaded = []
    for s in studies:
        st = data.load_study(s, prep_root / s.name, fine=True)
        i = int(s.name.split("_")[1])
        split = splits.get(s.name) or split_of(i, st["truth"]["vendor"], args.held_out_vendor)
        loaded.append((split, st))
    texts = [st["report"] for _, st in loaded]
    emb = data.text_embeddings(texts)
    for (split, st), e in zip(loaded, emb):
        st["text"] = e
        cache[split].append(st)
    torch.save(cache, args.out)
    print({k: len(v) for k, v in cache.items()}, "->", args.out)


if __name__ == "__main__":
    main()
