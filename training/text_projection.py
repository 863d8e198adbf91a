"""Trains the report-text side of the patient embedding's retrieval (the
published method's path: patient embedding <-> report text, CLIP) alone,
with everything else frozen.

A checkpoint restored from a bundle (restore.py) has no text projection:
the bundle serves retrieval over the condition agents' answers, whose text
side B3 trains, and holds only the image side of the patient path. With
`--study-minutes 0` (pooling and patient embedding kept as the bundle had
them) that projection stays at its random start and the patient path's
Recall@k in EVALUATION.md means nothing. This fits it to the frozen patient
retrieval embeddings, keeping the state with the best validation Recall@5.

    python training/text_projection.py --work W --agents agents_v8.pt \
        --stats-cache W/stats_xref --minutes 2 --out agents_v8t.pt
"""

import argparse
import os
import random
import time

import numpy as np
import torch

from spinefm.model import clip_loss
from spinefm.pipeline import combine, load_agents
from train_agents import (
    attach_pixels,
    attach_placements,
    load_placements,
    retrieval_recall,
    stats_cache_file,
    study_stats,
)


def series_stats(agents, cache, checkpoint):
    """Training and validation series stats of these slice agents, from the
    checkpoint's features (about 6 minutes on 2 cores)."""
    fs = torch.load(checkpoint + ".features", weights_only=False)["routed"]
    placements = load_placements(cache, os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "prep"))
    out = []
    for split in ("train", "validation"):
        attach_pixels(cache[split], fs[split])
        attach_placements(cache[split], fs[split], placements)
        out.append(study_stats(agents, cache[split], fs[split]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--agents", required=True, help="checkpoint in WORK")
    ap.add_argument(
        "--stats-cache", required=True,
        help="train_agents.py --stats-cache directory (same features); these slice agents' stats are computed and "
        "written there when missing (train_agents.py writes them there when it has --stats-cache)",
    )
    ap.add_argument("--minutes", type=float, default=2)
    ap.add_argument("--out", required=True, help="checkpoint written in WORK (features linked)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    ck = torch.load(os.path.join(args.work, args.agents), weights_only=False)
    cache = torch.load(os.path.join(args.work, "cache.pt"), weights_only=False)
    agents = load_agents(ck["agents"])
    agents.eval()
    stats_file = stats_cache_file(args.stats_cache, ck["agents"], "agents")
    if not os.path.exists(stats_file):
        stats, val_stats = series_stats(agents, cache, os.path.join(args.work, args.agents))
        torch.save((stats, val_stats), stats_file)
    stats, val_stats = torch.load(stats_file, weights_only=False)

    def images(all_stats):
        with torch.no_grad():
            return torch.stack([combine(agents, s)[1]["retrieval"] for s in all_stats])

    def texts(studies):
        return torch.stack([torch.from_numpy(st["text"]) for st in studies])

    img, val_img = images(stats), images(val_stats)
    txt, val_txt = texts(cache["train"]), texts(cache["validation"])
    params = list(agents.text.parameters()) + [agents.logit_scale]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    agents.text.train()

    def recall():
        agents.text.eval()
        with torch.no_grad():
            r = retrieval_recall(val_img, agents.text(val_txt))
        agents.text.train()
        return r

    best, best_state, step = recall(), None, 0
    print(f"start: validation R@5 {best:.3f}", flush=True)
    deadline = time.time() + args.minutes * 60
    while time.time() < deadline:
        chosen = random.sample(range(len(img)), min(args.batch, len(img)))
        loss = clip_loss(img[chosen], agents.text(txt[chosen]), agents.logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 25 == 0:
            r = recall()
            if r > best:
                best, best_state = r, {k: v.clone() for k, v in agents.state_dict().items()}
            if step % 500 == 0:
                print(f"step {step} loss {loss.item():.3f} validation R@5 {r:.3f} (best {best:.3f})", flush=True)
    if best_state is not None:
        agents.load_state_dict(best_state)
    ck["agents"] = agents.state_dict()
    ck["steps"]["agents"]["text_projection"] = step
    out = os.path.join(args.work, args.out)
    torch.save(ck, out)
    features = os.path.join(args.work, args.agents) + ".features"
    if not os.path.exists(out + ".features"):
        os.symlink(os.path.realpath(features), out + ".features")
    print(f"{step} steps, best validation R@5 {best:.3f} -> {out}", flush=True)


if __name__ == "__main__":
    main()
