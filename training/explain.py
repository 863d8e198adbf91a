"""Why did the agents score a condition where they did on one study? Runs a
phantom study (a directory from `spineagent phantom study`) through a
checkpoint's agents and prints, for one condition: the most probable
positions with their prior; the presence model's weights and each slot's
evidence and contribution at the positions asked for; each stack's lesion
evidence per level (mean, peak, peak at the disc below); and, per sagittal
stack, the cells where the lesion segmentation fires against the cells the
truth labels hold, with the level each carries.

    python training/explain.py --study S --work W --agents agents_v9.pt \
        --condition herniation --positions L3-L4 L4-L5 L5-S1

This is how 0.7.0's miss of the strict test's L4-L5 herniation (seed
880001) was traced to a false lesion at the lumbosacral disc rather than to
the level labels (training/README.md, bundle 0.8.0).
"""

import argparse
import json
from pathlib import Path

import torch

from spinefm import data
from spinefm import labels as L
from spinefm.crossref import placement_of
from spinefm.model import GRID, SeriesPool, Synthesizer
from spinefm.pipeline import combine, load_agents, study_series_stats
from train_agents import as_float, features, load_encoder, usable_entries

SLOT_PARTS = ["mean up", "peak up", "mean low", "peak low", "min", "max", "disc", "contrast"]


def load(study: Path, prep: Path, binary: Path):
    """The study's usable stacks as `load_study` gives them, with the
    placements of the files `spineagent preprocess` listed."""
    data.preprocess_study(binary, study, prep)
    st = data.load_study(study, prep, fine=True)
    index = json.loads((prep / "index.json").read_text())
    return st, [placement_of(e["files"]) for e in usable_entries(index, st["truth"])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", required=True, type=Path)
    ap.add_argument("--prep", type=Path, help="where to preprocess it (default: STUDY.prep)")
    ap.add_argument("--work", required=True, type=Path, help="holds enc_t1_ft.pt, enc_t2_ft.pt and the checkpoint")
    ap.add_argument("--agents", default="agents.pt")
    ap.add_argument("--binary", type=Path, default=Path(__file__).resolve().parent.parent / "target/release/spineagent")
    ap.add_argument("--condition", default="herniation")
    ap.add_argument("--positions", nargs="*", default=["L3-L4", "L4-L5", "L5-S1"])
    ap.add_argument("--top", type=int, default=6)
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    st, placements = load(args.study, args.prep or args.study.with_suffix(".prep"), args.binary)
    t1, t2 = load_encoder(args.work / "enc_t1_ft.pt"), load_encoder(args.work / "enc_t2_ft.pt")
    ck = torch.load(args.work / args.agents, weights_only=False)
    synth = Synthesizer(t1, t2)
    synth.weights.data.copy_(ck["synthesizer"])
    agents = load_agents(ck["agents"])
    agents.eval()
    items, _ = features(t1, t2, synth, st)
    for s, it, pl in zip(st["series"], items, placements):
        it["pixels"] = torch.from_numpy(s["pixels"]).unsqueeze(1)
        it["placement"] = pl
    items = as_float(items)
    _, _, stats = study_series_stats(agents, items)
    _, out = combine(agents, stats)
    lf = out["level_features"][None]
    presence, side, _, _ = agents.conditions(lf, out["slot_mask"][None])

    ci = L.CONDITIONS.index(args.condition)
    les = L.LESION.index(L.LESION_OF_CONDITION[args.condition])
    cond = agents.conditions
    print("truth:", [(f["condition"], f["level"], f.get("side")) for f in st["truth"]["findings"]])
    p = torch.sigmoid(presence[0, :, ci])
    print(f"most probable positions for {args.condition} (side: left, right, both/central):")
    for k in torch.argsort(-p)[: args.top]:
        print(f"  {L.POSITIONS[k]:8s} p {p[k]:.3f}  prior {cond.prior[k, ci]:+.3f}  side {side[0, k, ci].softmax(-1).numpy().round(2)}")
    w = cond.evidence_weight[ci].reshape(len(L.SLOTS), cond.EVIDENCE_FEATURES)
    ev = cond.evidence(lf[:, :, cond.upper].permute(0, 2, 1, 3), lf[:, :, cond.lower].permute(0, 2, 1, 3))
    print("presence weights per slot (" + ", ".join(SLOT_PARTS) + "):")
    for slot, row in zip(L.SLOTS, w.numpy().round(2)):
        print(f"  {slot:14s} {row}")
    for pos in args.positions:
        k = L.POSITIONS.index(pos)
        e = ev[0, k, ci].reshape(len(L.SLOTS), cond.EVIDENCE_FEATURES)
        print(f"{pos}: log evidence per slot, contribution " + " ".join(f"{c:+.2f}" for c in (e * w).sum(-1)))
        for slot, row in zip(L.SLOTS, e.numpy().round(2)):
            print(f"  {slot:14s} {row}")

    nl = len(L.LESION)
    near = {L.LEVELS.index(v) for pos in args.positions for v in pos.split("-")}
    print("lesion evidence per stack and level (mean, peak, peak at the disc below):")
    for s, sts in zip(st["series"], stats):
        lv = sts["lesion"]
        cells = {L.LEVELS[v]: tuple(round(float(lv[v, part * nl + les]), 3) for part in range(3)) for v in sorted(near)}
        print(f"  {s['family']:5s} {s['plane']:8s} {cells}")
    print("sagittal lesion cells (slice, row, column, level) where the segmentation says > 0.3, and the truth's:")
    for s, it in zip(st["series"], items):
        if s["plane"] != "sagittal":
            continue
        seg, _ = agents.slice(it["cls"], it["patches"], it["pixels"])
        _, level_cells, lesion_cells = SeriesPool.slice_maps(seg, GRID)
        n, c = lesion_cells.shape[0], SeriesPool.CELLS
        prob = lesion_cells[:, les].reshape(n, c, c)
        level = level_cells.reshape(n, len(L.LEVELS), c, c).argmax(1)
        said = [(a, b, d, L.LEVELS[level[a, b, d]], round(float(prob[a, b, d]), 2)) for a, b, d in (prob > 0.3).nonzero().tolist()]
        truth = [(a, b, d, L.LEVELS[int(it["level32"][a, b, d])]) for a, b, d in (it["lesion32"] == les).nonzero().tolist()]
        print(f"  {s['family']}: said {said[:16]}")
        print(f"  {' ' * len(s['family'])}  truth {truth[:16]}")


if __name__ == "__main__":
    main()
