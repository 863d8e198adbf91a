"""Trains the report agent's LoRA (rank 8, alpha 16, attn_q + attn_v) and,
with --slices, its visual projector, on report pairs built from phantom
truth; loss on the target tokens only.

usage: train.py MINUTES OUT.safetensors [--resume ADAPTER.safetensors]
                [--slices SLICES.pt --projector OUT_PROJECTOR.pt [--projector-resume P.pt|P.onnx]]

Gradients are truncated to keep a step affordable on a 2-core CPU: the
text prompt's keys and values are computed without gradient; the target
tokens and the visual tokens (which the target attends to directly) carry
it. The projector therefore learns what the report needs to read from the
visual tokens, not how the prompt text between them and the report
reinterprets them."""
import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import torch

torch.set_num_threads(2)
from model import Llama, load_tokenizer
from projector import VisualProjector
import data

ap = argparse.ArgumentParser()
ap.add_argument("minutes", type=float)
ap.add_argument("out")
ap.add_argument("--resume")
ap.add_argument("--slices", help="slices.py output: per study, its slice embeddings")
ap.add_argument("--projector", help="where to save the projector (torch state dict)")
ap.add_argument("--projector-resume")
ap.add_argument("--lr", type=float, default=2e-3)
ap.add_argument("--seed", type=int, default=1, help="sampling order (another seed when continuing a run)")
args = ap.parse_args()



def load_projector(path, proj):
    """A projector state dict from torch (.pt) or from the bundle's ONNX
    export (its initializers keep the parameter names), so that training
    can continue from a shipped bundle."""
    if not path.endswith(".onnx"):
        return torch.load(path)
    import onnx
    from onnx import numpy_helper
    names = set(proj.state_dict())
    found = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
             for i in onnx.load(path).graph.initializer if i.name in names}
    missing = names - set(found)
    if missing:
        raise SystemExit(f"{path}: no {sorted(missing)}")
    return found


torch.manual_seed(0)
m = Llama(rank=8, alpha=16.0)
for w in m.W.values():
    w.requires_grad_(False)
if args.resume:
    m.load_adapter(args.resume)
tok = load_tokenizer(m.reader)
end = tok.token_to_id("<|im_end|>")
studies = data.load_studies("train", "lumbar")
params = list(m.lora.parameters())
proj, slices = None, None
if args.slices:
    slices = torch.load(args.slices, weights_only=False)
    studies = [s for s in studies if s["dir"] in slices]
    rms = float(m.embed.pow(2).mean(-1).sqrt().mean())
    proj = VisualProjector(dim=next(iter(slices.values())).shape[1], hidden=m.hidden, token_rms=rms)
    if args.projector_resume:
        proj.load_state_dict(load_projector(args.projector_resume, proj))
    params += list(proj.parameters())
rng = random.Random(args.seed)
opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
m.train()


def detached(kvs):
    return [(k.detach(), v.detach()) for k, v in kvs]


def step_loss(p, t, study):
    i = p.index("</image>")
    pre, post = tok.encode(p[:i]).ids, tok.encode(p[i:]).ids
    target = tok.encode(t).ids + [end]
    if proj is None:
        ids = torch.tensor(pre + post + target)
        n = len(pre) + len(post)
        with torch.no_grad():
            _, past = m(ids[: n - 1])
        logits = m(ids[n - 1 : -1], past=past)[0][0]
        return torch.nn.functional.cross_entropy(logits, ids[n:]), n
    with torch.no_grad():
        _, past = m(torch.tensor(pre))
    visual = proj(slices[study].float())
    _, with_visual = m.forward_embeds(visual.unsqueeze(0), past=past)  # keys/values of the visual tokens carry gradient
    with torch.no_grad():
        _, after = m(torch.tensor(post[:-1]), past=detached(with_visual))
    cut = with_visual[0][0].shape[2]
    past = [
        (torch.cat([k, k2[:, :, cut:]], 2), torch.cat([v, v2[:, :, cut:]], 2))
        for (k, v), (k2, v2) in zip(with_visual, after)
    ]
    ids = torch.tensor(post[-1:] + target)
    logits = m(ids[:-1], past=past)[0][0]
    return torch.nn.functional.cross_entropy(logits, ids[1:]), len(pre) + visual.shape[0] + len(post)


t0 = time.time()
step, ema = 0, None
log = open(args.out + ".log", "a")
deadline = t0 + args.minutes * 60


def save():
    m.save_adapter(args.out)
    if proj is not None:
        torch.save(proj.state_dict(), args.projector)


while time.time() < deadline:
    p, t, _, study = data.sample(studies, rng)
    for g in opt.param_groups:
        g["lr"] = args.lr * min(1.0, (step + 1) / 3)
    loss, n = step_loss(p, t, study)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    step += 1
    ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
    msg = f"step {step} t={time.time() - t0:.0f}s prompt={n} loss={loss.item():.4f} ema={ema:.4f}"
    print(msg, flush=True)
    log.write(msg + "\n")
    log.flush()
    if step % 10 == 0:
        save()
save()
print("saved", args.out, "steps", step)
