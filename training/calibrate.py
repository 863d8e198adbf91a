"""Per-condition reporting thresholds chosen on the validation split, at
level positions, written into the bundle's manifest as [thresholds].
Threshold-free metrics (AUROC, AUPRC) in EVALUATION.md do not depend on them.

What a threshold optimizes follows what a miss costs (the triage rules in
config/triage.toml). A condition that some rule puts in ACR category 1 or 2
(actionable: cord compression, fractures, severe stenosis ...) takes the
threshold with the best F2, which weighs recall twice. Every other
(routine, mostly degenerative) condition takes the best F1 among the
thresholds whose validation precision is at least PRECISION_FLOOR; where
none reaches it the agents cannot tell the condition, and it is not
reported (threshold SILENT, above any probability; its probabilities stay
in the analysis output). The floor applies only to conditions with at
least FLOOR_POSITIVES validation positives: the validation split has 24
studies, and with three hemangiomas in it the floor silenced a condition
that the agents find at 0.93 in the strict test; with fewer positives a
routine condition takes its best F1, as every condition did before.

Up to 0.7.0 every condition took its best F1 with a 0.5 floor: disc
degeneration (validation F1 0.11) and disc height loss (0.14) sat at that
floor and were reported at most lumbar levels, which cost the draft
reports far more precision than they gave them recall.

    python training/calibrate.py --work work --agents agents_ft.pt --bundle models/spinefm-tiny
"""

import argparse
import tomllib
from pathlib import Path

import numpy as np
import torch

from spinefm import labels as L
from spinefm.data import covered_positions, finding_targets
from spinefm.pipeline import load_agents
from evaluate import predict
from train_agents import attach_pixels, attach_placements, checkpoint_encoders, in_vendor_studies, load_placements


PRECISION_FLOOR = 0.3
FLOOR_POSITIVES = 5
SILENT = 1.01  # above any probability: the condition is not reported


def actionable_conditions(triage: Path):
    """Conditions that any triage rule puts in category 1 or 2."""
    rules = tomllib.loads(triage.read_text()).get("rule", [])
    return {r["condition"] for r in rules if r.get("category", 3) <= 2}


def best_threshold(y, s, beta, min_precision=0.0):
    """The score threshold with the best F-beta on (labels y, scores s)
    among those whose precision is at least `min_precision`, and that
    F-beta; (None, -1) when no threshold qualifies or there are no
    positives."""
    best, best_t = -1.0, None
    if y.sum() == 0:
        return best_t, best
    b2 = beta * beta
    for t in np.unique(s):
        pred = s >= t
        tp = (pred & (y == 1)).sum()
        if tp < min_precision * pred.sum():
            continue
        f = (1 + b2) * tp / (pred.sum() + b2 * y.sum())
        if f > best:
            best, best_t = f, float(t)
    return best_t, best


def calibration_rows(agents, ck, cache_path: Path, prep: Path):
    """Predictions on a calibration dataset (prepare.py with its own
    --prep): its studies of the vendor styles the agents trained on (the
    held-out style stays unseen), features from the checkpoint's own
    encoders and synthesizer (about 2 s a study on 2 cores)."""
    studies, feats = in_vendor_studies(cache_path, *checkpoint_encoders(ck))
    attach_placements(studies, feats, load_placements({"calibration": studies}, str(prep)))
    return predict(agents, studies, feats)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--agents", default="agents.pt")
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--triage", type=Path, default=Path(__file__).resolve().parent.parent / "config" / "triage.toml")
    ap.add_argument(
        "--calibration", type=Path,
        help="a prepare.py cache of fresh phantom studies (never trained on) whose in-vendor studies join the "
        "validation split here: 24 validation studies hold 0 to 10 positives of a condition",
    )
    ap.add_argument("--calibration-prep", type=Path, help="its prepare.py --prep directory")
    args = ap.parse_args()
    actionable = actionable_conditions(args.triage)
    ck = torch.load(args.work / args.agents, weights_only=False)
    cache = torch.load(args.work / "cache.pt", weights_only=False)
    fs = torch.load(str(args.work / args.agents) + ".features", weights_only=False)
    attach_pixels(cache["validation"], fs["routed"]["validation"])
    attach_placements(cache["validation"], fs["routed"]["validation"], load_placements(cache, str(args.work / "prep")))
    agents = load_agents(ck["agents"])
    agents.eval()
    rows = predict(agents, cache["validation"], fs["routed"]["validation"])
    studies = f"the validation split ({len(rows)} studies)"
    if args.calibration:
        extra = calibration_rows(agents, ck, args.calibration, args.calibration_prep)
        rows += extra
        studies = f"the validation split and {len(extra)} calibration studies ({len(rows)} in all)"
    print(f"thresholds chosen on {studies}")
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
        if name in actionable:
            beta, t, f = 2.0, *best_threshold(y, s, 2.0)
        else:
            floor = PRECISION_FLOOR if y.sum() >= FLOOR_POSITIVES else 0.0
            beta, t, f = 1.0, *best_threshold(y, s, 1.0, floor)
        if t is None:
            t = 0.5 if y.sum() == 0 else SILENT
        thresholds[name] = max(t, 0.5)
        pred = s >= thresholds[name]
        tp = int((pred & (y == 1)).sum())
        print(
            f"{name}: threshold {thresholds[name]:.3f} ({'actionable' if beta > 1 else 'routine'}, validation "
            f"F{beta:g} {max(f, 0):.2f}, {tp} of {int(pred.sum())} reported are true, {int(y.sum())} positives)"
        )
    manifest = args.bundle / "bundle.toml"
    text = manifest.read_text()
    if "[thresholds]" in text:
        text = text[: text.index("\n# Reporting thresholds")] + "\n"
    text += (
        f"\n# Reporting thresholds per condition, chosen on {studies} (calibrate.py:\n"
        "# best F2 for conditions a triage rule makes actionable, best F1 for the rest, at precision\n"
        "# 0.3 or more where validation has 5 positives or more; 1.01 = not reported, the agents cannot tell it).\n[thresholds]\n"
    )
    text += "".join(f"{k} = {v:.4f}\n" for k, v in thresholds.items())
    manifest.write_text(text)


if __name__ == "__main__":
    main()
