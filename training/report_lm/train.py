"""LoRA training (rank 8, alpha 16, attn_q + attn_v) on report pairs; loss on target tokens only.
usage: train.py MINUTES OUT.safetensors [RESUME.safetensors]"""
import json, random, sys, time
sys.path.insert(0, __import__("os").path.dirname(__file__))
import torch
torch.set_num_threads(2)
from model import Llama, load_tokenizer, encode_prompt
import data

minutes = float(sys.argv[1]); out = sys.argv[2]
torch.manual_seed(0)
m = Llama(rank=8, alpha=16.0)
for w in m.W.values(): w.requires_grad_(False)
if len(sys.argv) > 3: m.load_adapter(sys.argv[3])
tok = load_tokenizer(m.reader)
end = tok.token_to_id("<|im_end|>")
studies = data.load_studies("train", "lumbar")
rng = random.Random(1)
opt = torch.optim.AdamW(m.lora.parameters(), lr=1e-3, weight_decay=0.0)
m.train()
t0 = time.time(); step = 0; log = open(out + ".log", "w"); ema = None
deadline = t0 + minutes * 60
while time.time() < deadline:
    p, t, _ = data.sample(studies, rng)
    pi = encode_prompt(tok, p); ti = tok.encode(t).ids + [end]
    ids = torch.tensor(pi + ti)
    lr = 2e-3 * min(1.0, (step + 1) / 3)
    for g in opt.param_groups: g["lr"] = lr
    # prefix KV without grad (truncated gradient), target with grad
    with torch.no_grad():
        _, past = m(ids[: len(pi) - 1], logits_from=len(pi) - 2)
    logits = m(ids[len(pi) - 1 : -1], past=past)[0][0]
    loss = torch.nn.functional.cross_entropy(logits, ids[len(pi):])
    opt.zero_grad(); loss.backward(); opt.step()
    step += 1
    ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
    msg = f"step {step} t={time.time()-t0:.0f}s len={len(pi)}+{len(ti)} loss={loss.item():.4f} ema={ema:.4f}"
    print(msg, flush=True); log.write(msg + "\n"); log.flush()
    if step % 20 == 0:
        m.save_adapter(out)
m.save_adapter(out)
print("saved", out, "steps", step)
