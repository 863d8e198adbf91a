"""Evaluation on held-out phantom studies (SYNTHETIC; no clinical claim).

In-vendor: the validation and test splits (no model selection was done on
validation). Cross-vendor: test_heldout_vendor (a vendor style never seen
in training). Metrics: AUROC/AUPRC per condition (per level position and per
study), the RSNA weighted log loss on the graded task, slice selection
within one slice, Dice per anatomy and lesion class, Recall@1/5/10 in both
retrieval directions, and the ablation (other sequences through the
synthesizer vs through the T2 encoder alone).

    python training/evaluate.py --work work --out models/spinefm-tiny/EVALUATION.md
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spinefm import labels as L
from spinefm.data import covered_positions, finding_targets
from spinefm.pipeline import Agents, load_agents, run_study
from train_agents import as_float, attach_pixels, attach_placements, load_placements, visible_slices


def auroc(y, s):
    y, s = np.asarray(y), np.asarray(s)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    # Mann-Whitney U with ties counted half.
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def auprc(y, s):
    y, s = np.asarray(y), np.asarray(s)
    if y.sum() == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    y = y[order]
    tp = np.cumsum(y)
    precision = tp / np.arange(1, len(y) + 1)
    return float((precision * y).sum() / y.sum())


@torch.no_grad()
def predict(agents, studies, feats):
    rows = []
    for st, items in zip(studies, feats):
        per_item, out = run_study(agents, as_float(items))
        for s, o in zip(st["series"], per_item):
            o.update(predicted_masks(o.pop("seg"), s["anatomy"].shape[-1]))
        presence, side, severity, graded = agents.conditions(
            out["level_features"].unsqueeze(0), out["slot_mask"].unsqueeze(0)
        )
        condition_retrieval = (
            agents.retrieval(presence, side, severity, graded)[0].numpy() if agents.condition_retrieval else None
        )
        rows.append(
            {
                "study": st,
                "items": items,
                "per_item": per_item,
                "presence": torch.sigmoid(presence[0]).numpy(),
                "side": side[0].softmax(-1).numpy(),
                "graded": graded[0].softmax(-1).numpy(),
                "retrieval": out["retrieval"].numpy(),
                "condition_retrieval": condition_retrieval,
            }
        )
    return rows


def predicted_masks(seg, side):
    """Segmentation logits -> argmax anatomy and lesion maps at the label
    resolution (bilinear logits), kept instead of the logits (a 64 x 64
    map of 60 classes is 1 MB a slice)."""
    na, nl = len(L.ANATOMY), len(L.LESION)
    seg = F.interpolate(seg, size=side, mode="bilinear", align_corners=False)
    return {
        "anatomy_pred": seg[:, :na].argmax(1).numpy().astype(np.uint8),
        "lesion_pred": seg[:, na : na + nl].argmax(1).numpy().astype(np.uint8),
    }


def condition_metrics(rows):
    per = {}
    for c, name in enumerate(L.CONDITIONS):
        yl, sl, ys, ss = [], [], [], []
        valid = np.array(L.valid_positions(name))
        for r in rows:
            p, _, _, _ = finding_targets(r["study"]["truth"])
            # Only the positions where the condition can be (disc or vertebra).
            cov = covered_positions(r["study"]) & valid
            yl += p[cov, c].tolist()
            sl += r["presence"][cov, c].tolist()
            # The study is positive when the condition is at a position the
            # agents are asked about (a finding at a level no usable series
            # shows cannot be scored, as at the level positions above).
            ys.append(int(p[cov, c].max() > 0) if cov.any() else 0)
            ss.append(float(r["presence"][cov, c].max()) if cov.any() else 0.0)
        per[name] = {
            "level_auroc": auroc(yl, sl),
            "level_auprc": auprc(yl, sl),
            "study_auroc": auroc(ys, ss),
            "study_auprc": auprc(ys, ss),
            "positives_studies": int(sum(ys)),
        }
    return per


def localization(rows):
    """Where the agents put a finding, on studies that have it: the level
    (the condition's most probable position among those the study shows is
    the finding's own, on studies with exactly one finding of it there) and
    the side (the most probable side at the finding's position is its own,
    for findings on the left or right). What the product's test asks of a
    herniation at L4-L5 on the left."""
    level_hit = level_n = side_hit = side_n = 0
    for r in rows:
        p, side, _, _ = finding_targets(r["study"]["truth"])
        cov = covered_positions(r["study"])
        for c, name in enumerate(L.CONDITIONS):
            where = np.nonzero(p[:, c] * cov)[0]
            if len(where) == 1:
                valid = cov & np.array(L.valid_positions(name))
                scores = np.where(valid, r["presence"][:, c], -1.0)
                level_n += 1
                level_hit += int(scores.argmax() == where[0])
            for pos in where:
                if side[pos, c] in (L.SIDES.index("left"), L.SIDES.index("right")):
                    side_n += 1
                    side_hit += int(r["side"][pos, c].argmax() == side[pos, c])
    return {
        "level_top1": [level_hit / level_n if level_n else None, level_n],
        "side": [side_hit / side_n if side_n else None, side_n],
    }


def mean_of(per, key, names=None):
    vals = [v[key] for k, v in per.items() if v[key] is not None and (names is None or k in names)]
    return (float(np.mean(vals)) if vals else None), len(vals)


def rsna_log_loss(rows):
    weights = np.array([1.0, 2.0, 4.0])
    losses = []
    for g, task in enumerate(L.GRADED):
        num = den = 0.0
        for r in rows:
            _, _, _, tg = finding_targets(r["study"]["truth"])
            for pos in range(len(L.POSITIONS)):
                y = tg[pos, g]
                if y < 0:
                    continue
                p = np.clip(r["graded"][pos, g, y], 1e-15, 1)
                num += -weights[y] * np.log(p)
                den += weights[y]
        if den:
            losses.append(num / den)
    return float(np.mean(losses)) if losses else None


def slice_selection(rows):
    hit = total = 0
    for r in rows:
        truth = r["study"]["truth"]
        for it, o in zip(r["items"], r["per_item"]):
            vis = visible_slices(truth, it["number"], it["slice_index"])
            if not vis or len(vis) == len(it["slice_index"]):
                continue
            k = int(o["attention"].argmax())
            total += 1
            hit += int(min(abs(k - v) for v in vis) <= 1)
    return (hit / total if total else None), total


def dice(rows):
    na, nl = len(L.ANATOMY), len(L.LESION)
    inter = {"anatomy": np.zeros(na), "lesion": np.zeros(nl)}
    sums = {"anatomy": np.zeros(na), "lesion": np.zeros(nl)}
    for r in rows:
        for s, o in zip(r["study"]["series"], r["per_item"]):
            a, le = o["anatomy_pred"], o["lesion_pred"]
            for kind, pred, true, n in (("anatomy", a, s["anatomy"], na), ("lesion", le, s["lesion"], nl)):
                for c in range(n):
                    pc, tc = pred == c, true == c
                    inter[kind][c] += (pc & tc).sum()
                    sums[kind][c] += pc.sum() + tc.sum()
    out = {}
    for kind, names in (("anatomy", L.ANATOMY), ("lesion", L.LESION)):
        out[kind] = {
            n: (float(2 * inter[kind][c] / sums[kind][c]) if sums[kind][c] else None) for c, n in enumerate(names)
        }
    return out


@torch.no_grad()
def recall(rows, agents, kind="retrieval"):
    """Recall@k among the rows' own reports. kind "retrieval": the patient
    embedding's projection (the published method's); "condition_retrieval":
    the head over the condition agents' answers (what the engine serves
    when the bundle has it)."""
    img = np.stack([r[kind] for r in rows])
    text = agents.retrieval_text if kind == "condition_retrieval" else agents.text
    txt = text(torch.from_numpy(np.stack([r["study"]["text"] for r in rows]))).numpy()
    sim = img @ txt.T
    out = {}
    for name, m in (("image_to_report", sim), ("report_to_image", sim.T)):
        ranks = [(m[i] > m[i, i]).sum() for i in range(len(m))]
        out[name] = {f"R@{k}": float(np.mean([r < k for r in ranks])) for k in (1, 5, 10)}
    out["candidates"] = len(rows)
    return out


def recognition(rows):
    ok = total = 0
    for r in rows:
        for it, o in zip(r["items"], r["per_item"]):
            fam, plane, _ = Agents().slice.split_recognition(o["recognition"])
            f = fam.softmax(-1).mean(0).argmax().item()
            p = plane.softmax(-1).mean(0).argmax().item()
            ok += int(L.FAMILIES[f] == it["family"] and L.PLANES[p] == it["plane"])
            total += 1
    return ok / max(total, 1), total


def fmt(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--agents", default="agents.pt", help="checkpoint in WORK")
    ap.add_argument(
        "--compare", type=Path, help="an earlier evaluation's JSON to summarize beside this one (e.g. without fine-tuning)"
    )
    ap.add_argument("--compare-label", default="earlier run")
    args = ap.parse_args()
    ck = torch.load(args.work / args.agents, weights_only=False)
    cache = torch.load(args.work / "cache.pt", weights_only=False)
    fs = torch.load(str(args.work / args.agents) + ".features", weights_only=False)
    placements = load_placements(cache, str(args.work / "prep"))
    for split in cache:
        attach_pixels(cache[split], fs["routed"][split])
        attach_pixels(cache[split], fs["ablation"][split])
        attach_placements(cache[split], fs["routed"][split], placements)
        attach_placements(cache[split], fs["ablation"][split], placements)
    agents, ablation = load_agents(ck["agents"]), load_agents(ck["agents_ablation"])
    agents.eval(), ablation.eval()
    sets = {
        "in-vendor (validation + test)": ("validation", "test"),
        "cross-vendor (held-out vendor style)": ("test_heldout_vendor",),
    }
    results = {}
    for label, splits in sets.items():
        studies = [st for sp in splits for st in cache[sp]]
        feats = [f for sp in splits for f in fs["routed"][sp]]
        ab_feats = [f for sp in splits for f in fs["ablation"][sp]]
        if not studies:
            continue
        rows = predict(agents, studies, feats)
        ab_rows = predict(ablation, studies, ab_feats)
        cond = condition_metrics(rows)
        ab_cond = condition_metrics(ab_rows)
        sel, sel_n = slice_selection(rows)
        rec_acc, rec_n = recognition(rows)
        results[label] = {
            "studies": len(studies),
            "conditions": cond,
            "mean_level_auroc": mean_of(cond, "level_auroc"),
            "mean_study_auroc": mean_of(cond, "study_auroc"),
            "mean_level_auprc": mean_of(cond, "level_auprc"),
            "rsna_weighted_log_loss": rsna_log_loss(rows),
            "slice_selection_within_1": [sel, sel_n],
            "localization": localization(rows),
            "recognition_accuracy": [rec_acc, rec_n],
            "dice": dice(rows),
            "retrieval": recall(rows, agents, "condition_retrieval" if agents.condition_retrieval else "retrieval"),
            "patient_retrieval": recall(rows, agents),
            "condition_retrieval": agents.condition_retrieval,
            "ablation": {
                "synthesizer_mean_level_auroc": mean_of(cond, "level_auroc"),
                "single_encoder_mean_level_auroc": mean_of(ab_cond, "level_auroc"),
                "synthesizer_mean_study_auroc": mean_of(cond, "study_auroc"),
                "single_encoder_mean_study_auroc": mean_of(ab_cond, "study_auroc"),
            },
        }
    (args.out.with_suffix(".json")).write_text(json.dumps(results, indent=1))
    write_report(args.out, results, ck)
    if args.compare:
        append_comparison(args.out, results, json.loads(args.compare.read_text()), args.compare_label)
    print(args.out.read_text())


def append_comparison(path, results, earlier, label):
    lines = [f"## Compared with {label}", "", "| set | metric | this bundle | " + label + " |", "|---|---|---|---|"]
    for name, r in results.items():
        e = earlier.get(name)
        if not e:
            continue
        anat = lambda d: float(np.mean([v for k, v in d["dice"]["anatomy"].items() if k != "background" and v is not None]))
        for metric, a, b in [
            ("mean AUROC per level", r["mean_level_auroc"][0], e["mean_level_auroc"][0]),
            ("mean AUROC per study", r["mean_study_auroc"][0], e["mean_study_auroc"][0]),
            ("RSNA weighted log loss", r["rsna_weighted_log_loss"], e["rsna_weighted_log_loss"]),
            ("anatomy Dice (mean)", anat(r), anat(e)),
            ("Recall@5 image to report", r["retrieval"]["image_to_report"]["R@5"], e["retrieval"]["image_to_report"]["R@5"]),
        ]:
            lines.append(f"| {name} | {metric} | {fmt(a)} | {fmt(b)} |")
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")


def write_report(path, results, ck):
    lines = [
        "# SpineFM-tiny evaluation (SYNTHETIC)",
        "",
        "Every number below is measured on **procedural phantom studies** (the repository's",
        "`phantom/`), not on patients. It says how well the models learned the phantom, and",
        "nothing about clinical accuracy.",
        "",
        "Reproduce: `training/run_all.sh` (dataset, preprocessing with the product, training,",
        "export, this report); this file comes from `python training/evaluate.py --work WORK",
        "--out models/spinefm-tiny/EVALUATION.md`. Training steps: " + json.dumps(ck["steps"]) + ".",
        "",
    ]
    for label, r in results.items():
        lines += [f"## {label}: {r['studies']} studies", ""]
        m, n = r["mean_level_auroc"]
        ms, ns = r["mean_study_auroc"]
        mp, _ = r["mean_level_auprc"]
        sel, seln = r["slice_selection_within_1"]
        acc, accn = r["recognition_accuracy"]
        lines += [
            f"- Mean AUROC per level position: **{fmt(m)}** over {n} conditions with positives and negatives;"
            f" per study: **{fmt(ms)}** ({ns} conditions). Mean AUPRC per level: {fmt(mp)}.",
            f"- RSNA-style graded task (canal, foraminal L/R, subarticular L/R x lumbar discs), weighted log loss"
            f" (weights 1/2/4): **{fmt(r['rsna_weighted_log_loss'])}**.",
            f"- Slice selection (most attended slice within one slice of a slice showing a finding):"
            f" **{fmt(sel)}** over {seln} series.",
            f"- Sequence/plane recognition from pixels: {fmt(acc)} of {accn} series stacks.",
            f"- Localization: the most probable level is the finding's own for {fmt(r['localization']['level_top1'][0])}"
            f" of {r['localization']['level_top1'][1]} findings (the only one of its condition in the study);"
            f" the most probable side is its own for {fmt(r['localization']['side'][0])}"
            f" of {r['localization']['side'][1]} findings on the left or right.",
            f"- Retrieval among {r['retrieval']['candidates']} studies: image to report "
            + ", ".join(f"{k} {fmt(v, 2)}" for k, v in r["retrieval"]["image_to_report"].items())
            + "; report to image "
            + ", ".join(f"{k} {fmt(v, 2)}" for k, v in r["retrieval"]["report_to_image"].items())
            + "."
            + (
                " (Retrieval over the condition agents' answers, what the engine serves; the patient"
                " embedding's projection, the published method's: image to report "
                + ", ".join(f"{k} {fmt(v, 2)}" for k, v in r["patient_retrieval"]["image_to_report"].items())
                + "; report to image "
                + ", ".join(f"{k} {fmt(v, 2)}" for k, v in r["patient_retrieval"]["report_to_image"].items())
                + ".)"
                if r.get("condition_retrieval")
                else ""
            ),
            "- Ablation (same agents architecture and recipe, steps above; other sequences through the"
            f" synthesizer vs the T2 encoder alone): mean level AUROC {fmt(r['ablation']['synthesizer_mean_level_auroc'][0])}"
            f" vs {fmt(r['ablation']['single_encoder_mean_level_auroc'][0])}; per study"
            f" {fmt(r['ablation']['synthesizer_mean_study_auroc'][0])} vs {fmt(r['ablation']['single_encoder_mean_study_auroc'][0])}.",
            "",
            "| condition | studies with it | AUROC level | AUPRC level | AUROC study | AUPRC study |",
            "|---|---|---|---|---|---|",
        ]
        for name, c in r["conditions"].items():
            lines.append(
                f"| {name} | {c['positives_studies']} | {fmt(c['level_auroc'])} | {fmt(c['level_auprc'])} |"
                f" {fmt(c['study_auroc'])} | {fmt(c['study_auprc'])} |"
            )
        lines += ["", "| Dice | " + " | ".join(L.ANATOMY[1:]) + " |", "|---" * len(L.ANATOMY) + "|"]
        lines.append("| anatomy | " + " | ".join(fmt(r["dice"]["anatomy"][n], 2) for n in L.ANATOMY[1:]) + " |")
        lines += ["", "| Dice | " + " | ".join(L.LESION[1:]) + " |", "|---" * len(L.LESION) + "|"]
        lines.append("| lesion | " + " | ".join(fmt(r["dice"]["lesion"][n], 2) for n in L.LESION[1:]) + " |")
        anat = [v for k, v in r["dice"]["anatomy"].items() if k != "background" and v is not None]
        lines += ["", f"Mean anatomy Dice (foreground classes): **{fmt(float(np.mean(anat)))}**.", ""]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
