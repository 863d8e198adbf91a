"""Per-condition reporting thresholds chosen on the validation split (F1 at
level positions), written into the bundle's manifest as [thresholds].
Threshold-free metrics (AUROC, AUPRC) in EVALUATION.md do not depend on them.

    python training/calibrate.py --work work --agents agents_ft.pt --bundle models/spinefm-tiny
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from spinefm import labels as L
from spinefm.data import covered_positions, finding_targets
from spinefm.pipeline import Agents, load_agents
from evaluate import predict
from train_agents import attach_pixels, attach_placements, load_placements


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--agents", default="agents.pt")
    ap.add_argument("--bundle", required=True, type=Path)
    args = ap.parse_args()
    ck = torch.load(args.work / args.agents, weights_only=False)
    cache = torch.load(args.work / "cache.pt", weights_only=False)
    fs = torch.load(str(args.work / args.agents) + ".features", weights_only=False)
    attach_pixels(cache["validation"], fs["routed"]["validation"])
    attach_placements(cache["validation"], fs["routed"]["validation"], load_placements(cache, str(args.work / "prep")))
    agents = load_agents(ck["agents"])
    agents.eval()
    rows = predict(agents, cache["validation"], fs["routed"]["validation"])
    thresholds = {}
    for c, name in enumerate(L.CONDITIONS):
        valid = np.array(L.valid_positions(name))
        y, s = [], []
        for r in rows:
            p, _, _, _ = finding_targets(r["study"]["truth"])
            cov = covered_positions(r["study"]) & valid
            y += p[cov, c].tolist()
            s += r["presence"][cov, c].tolist()
        y, s = np.array(y), np.array(s)
        # Without validation positives the default stays: a threshold must
        # never silence a condition (some are urgent) for lack of examples.
        best, best_t = -1.0, 0.5
        if y.sum() > 0:
            for t in np.unique(s):
                pred = s >= t
                tp = (pred & (y == 1)).sum()
                f1 = 2 * tp / (pred.sum() + y.sum())
                if f1 > best:
                    best, best_t = f1, float(t)
        thresholds[name] = max(best_t, 0.5)
        print(f"{name}: threshold {thresholds[name]:.3f} (validation F1 {max(best, 0):.2f}, {int(y.sum())} positives)")
    manifest = args.bundle / "bundle.toml"
    text = manifest.read_text()
    if "[thresholds]" in text:
        text = text[: text.index("\n# Reporting thresholds")] + "\n"
    text += "\n# Reporting thresholds per condition, chosen on the validation split (calibrate.py).\n[thresholds]\n"
    text += "".join(f"{k} = {v:.4f}\n" for k, v in thresholds.items())
    manifest.write_text(text)


if __name__ == "__main__":
    main()
