#!/usr/bin/env python3
"""The peer for bench/analyze.sh: the same analysis written with the tools
a user would otherwise pick (pydicom + numpy preprocessing, Python
onnxruntime running the bundle's seven ONNX files in the same order as
engine/src/analysis/mod.rs). It also serves as an independent check of the
Rust orchestration: it prints its presence probabilities so the script can
compare them with `spineagent analyze --json`.

    analyze_reference.py BUNDLE_DIR FAMILIES_JSON THREADS FILE...
FAMILIES_JSON maps SeriesInstanceUID -> [family, plane] (from the Rust run,
so both sides analyze the same stacks). Prints one JSON object.
"""
import json
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "training"))
from engine_reference import preprocess  # noqa: E402
from spinefm.crossref import axial_levels  # noqa: E402  (numpy only)


def sessions(bundle, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    manifest = tomllib.loads((bundle / "bundle.toml").read_text())
    return manifest, {
        m["name"]: ort.InferenceSession(str(bundle / m["file"]), opts, providers=["CPUExecutionProvider"])
        for m in manifest["model"]
    }


def stacks(files, families):
    import pydicom

    groups = {}
    for f in files:
        ds = pydicom.dcmread(f)
        uid = ds.SeriesInstanceUID
        if uid not in families:
            continue
        cos = np.array(ds.ImageOrientationPatient, dtype=float)
        normal = np.cross(cos[:3], cos[3:])
        key = (uid, tuple(np.round(normal, 2)))
        pos = float(np.dot(np.array(ds.ImagePositionPatient, dtype=float), normal))
        inv = ds.get("PhotometricInterpretation", "") == "MONOCHROME1"
        groups.setdefault(key, []).append((pos, ds.pixel_array.astype(np.int32), inv, ds))
    out = []
    for (uid, _), slices in groups.items():
        slices.sort(key=lambda s: s[0])
        h = slices[0][3]
        placement = {
            "orientation": np.array([float(v) for v in h.ImageOrientationPatient]),
            "positions": np.array([[float(v) for v in s[3].ImagePositionPatient] for s in slices]),
            "pixel_spacing": np.array([float(v) for v in h.PixelSpacing]),
            "rows": int(h.Rows),
            "cols": int(h.Columns),
        }
        out.append((uid, [s[:3] for s in slices], placement))
    return out


def cross_reference(stacks, labels, pp):
    """Since bundle 0.7.0: axial stacks' level maps from where their slices
    cross the sagittal stacks' level masks (engine/src/analysis/crossref.rs,
    here through training/spinefm/crossref.py)."""
    n_anatomy, n_lesion, n_levels = len(labels["anatomy"]), len(labels["lesion"]), len(labels["levels"])
    sagittal = [
        (st["placement"], st["agent_out"]["segmentation"][:, n_anatomy + n_lesion:n_anatomy + n_lesion + n_levels].argmax(1))
        for st in stacks if st["plane"] == "sagittal"
    ]  # fmt: skip
    if not sagittal:
        return
    for st in stacks:
        if st["plane"] != "axial":
            continue
        shares = axial_levels(st["placement"], sagittal, pp["resize"], pp["crop"], n_levels)
        for name in ("level_patches", "level_cells"):
            maps = st["agent_out"][name]
            for i, share in enumerate(shares):
                if share is not None:
                    maps[i, 1:] = (1 - maps[i, :1]) * share[1:, None]


def analyze(bundle, families, threads, files):
    manifest, s = sessions(bundle, threads)
    pp = manifest["preprocess"]
    labels = manifest["labels"]
    slots, levels = labels["slots"], labels["levels"]
    synth = labels["synthesizer_families"]
    started = time.perf_counter()
    slot_sum = np.zeros((len(slots), len(levels), 128), np.float32)
    slot_mass = np.zeros((len(slots), len(levels)), np.float32)
    series_embs, series_slots = [], []
    done = []
    for uid, slices, placement in stacks(files, families):
        family, plane = families[uid]
        x = np.stack([preprocess(a, inv, pp["resize"], pp["crop"], pp["low_percentile"], pp["high_percentile"],
                                 pp["mean"], pp["std"]) for _, a, inv in slices]).astype(np.float32)
        if family in ("t1", "t2"):
            cls, patches = s[f"encoder_{family}"].run(None, {"pixels": x})
        else:
            onehot = np.zeros((len(x), len(synth)), np.float32)
            onehot[:, synth.index(family)] = 1
            cls, patches = s["synthesizer"].run(None, {"pixels": x, "family": onehot})
        rec = cls if family == "t2" else s["encoder_t2"].run(None, {"pixels": x})[0]
        feeds = {"patches": patches, "rec_cls": rec}
        if "pixels" in {i.name for i in s["slice_agents"].get_inputs()}:  # since bundle 0.3.0: channel 0
            feeds["pixels"] = np.ascontiguousarray(x[:, :1])
        agent_out = dict(zip([o.name for o in s["slice_agents"].get_outputs()], s["slice_agents"].run(None, feeds)))
        done.append({"family": family, "plane": plane, "placement": placement, "cls": cls, "patches": patches,
                     "agent_out": agent_out})  # fmt: skip
    if "level_cross_reference" in manifest.get("agents", {}):
        cross_reference(done, labels, pp)
    for st in done:
        family, plane, agent_out = st["family"], st["plane"], st["agent_out"]
        # Since bundle 0.6.0 the series pool reads the slice agents' per-slice
        # maps; before, the whole segmentation.
        pool_feeds = {"cls": st["cls"], "patches": st["patches"]}
        pool_feeds.update({i.name: agent_out[i.name] for i in s["series_pool"].get_inputs() if i.name in agent_out})
        emb, _, feats, mass = s["series_pool"].run(None, pool_feeds)
        name = ("sagittal_t1" if family == "t1" else "sagittal_t2" if family == "t2" else "sagittal_other") \
            if plane == "sagittal" else ("axial_t2" if family == "t2" else "axial_other")
        k = slots.index(name)
        slot_sum[k] += feats * mass[:, None]
        slot_mass[k] += mass
        series_embs.append(emb)
        series_slots.append(k)
    lf = (slot_sum / (slot_mass[..., None] + 1e-3))[None].astype(np.float32)
    sm = (slot_mass.sum(-1) > 0).astype(np.float32)[None]
    n = len(series_embs)
    onehot = np.zeros((1, n, len(slots)), np.float32)
    onehot[0, np.arange(n), series_slots] = 1
    s["patient"].run(None, {"series": np.stack(series_embs)[None].astype(np.float32), "slots": onehot,
                            "mask": np.ones((1, n), np.float32)})
    presence = s["conditions"].run(None, {"level_features": lf, "slot_mask": sm})[0][0]
    seconds = time.perf_counter() - started
    return seconds, presence, labels


def main():
    bundle, families, threads = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()), int(sys.argv[3])
    files = sys.argv[4:]
    seconds, presence, labels = analyze(bundle, families, threads, files)
    probs = {f"{p}|{c}": float(presence[i, j]) for i, p in enumerate(labels["positions"])
             for j, c in enumerate(labels["conditions"])}
    print(json.dumps({"seconds": seconds, "probabilities": probs}))


if __name__ == "__main__":
    main()
