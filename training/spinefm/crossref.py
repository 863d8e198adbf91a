"""The vertebral level of an axial slice, read where its plane crosses the
sagittal stacks (cross-reference lines). The same computation as the
engine's `engine/src/analysis/crossref.rs`; the two must agree.

An axial slice alone hardly shows which lumbar level it is at (bundle
0.6.0's slice agents label 25 to 72 % of an axial block's spine pixels with
the right level, 94 % on a sagittal T2); a sagittal slice shows the column.
"""

import numpy as np

CROSS_MM = 2.0  # sagittal pixels this close to an axial plane are crossed
STRIDE = 2  # mask pixels sampled along each side


def placement_of(files):
    """Geometry of a stack from its DICOM headers (tensor order): dict with
    orientation [6], positions [S,3], pixel_spacing [2], rows, cols."""
    import pydicom

    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    h = heads[0]
    return {
        "orientation": np.array([float(v) for v in h.ImageOrientationPatient]),
        "positions": np.array([[float(v) for v in x.ImagePositionPatient] for x in heads]),
        "pixel_spacing": np.array([float(v) for v in h.PixelSpacing]),
        "rows": int(h.Rows),
        "cols": int(h.Columns),
    }


def points(pl, side, resize, crop):
    """Patient positions [S, side, side, 3] of the centres of a side x side
    mask's pixels over each slice's preprocessed crop (back through the
    crop, the resize and the padding to the source pixel grid)."""
    rows, cols = pl["rows"], pl["cols"]
    square = max(rows, cols)
    off_r, off_c = (square - rows) // 2, (square - cols) // 2
    c0 = (resize - crop) // 2
    k = np.arange(side)
    in_crop = (k + 0.5) * crop / side
    r = (in_crop + c0) * square / resize - off_r - 0.5
    c = (in_crop + c0) * square / resize - off_c - 0.5
    rd, cd = pl["orientation"][:3], pl["orientation"][3:]
    dr, dc = pl["pixel_spacing"]
    grid = r[:, None, None] * dr * cd[None, None, :] + c[None, :, None] * dc * rd[None, None, :]  # [side, side, 3]
    return pl["positions"][:, None, None, :] + grid[None]


def normal(pl):
    o = pl["orientation"]
    n = np.cross(o[:3], o[3:])
    return n / np.linalg.norm(n)


def axial_levels(axial, sagittal, resize, crop, levels):
    """axial: placement; sagittal: [(placement, level masks [S, side, side]
    int)] -> per axial slice the share of each level among the labelled
    sagittal pixels within CROSS_MM of its plane ([levels], index 0 = 0),
    or None where it crosses none."""
    n = normal(axial)
    d, v = [], []
    for pl, masks in sagittal:
        side = masks.shape[-1]
        pts = points(pl, side, resize, crop)[:, ::STRIDE, ::STRIDE]
        lab = np.asarray(masks)[: len(pl["positions"]), ::STRIDE, ::STRIDE]
        keep = (lab > 0) & (lab < levels)
        d.append((pts @ n)[keep])
        v.append(lab[keep])
    d = np.concatenate(d) if d else np.zeros(0)
    v = np.concatenate(v).astype(np.int64) if v else np.zeros(0, np.int64)
    out = []
    for p in axial["positions"]:
        hit = np.abs(d - p @ n) <= CROSS_MM
        counts = np.bincount(v[hit], minlength=levels).astype(np.float32)
        out.append(counts / counts.sum() if counts.sum() > 0 else None)
    return out


def relabel(probabilities, shares):
    """probabilities [LV, K] of one slice (torch) -> the spine's mass of
    each column (1 - P(outside)) spread over the levels as `shares` says."""
    import torch  # here, so that numpy-only readers (bench/) can import the rest

    s = torch.as_tensor(shares, dtype=probabilities.dtype)
    spine = 1 - probabilities[:1]
    return torch.cat([probabilities[:1], spine * s[1:, None]], dim=0)
