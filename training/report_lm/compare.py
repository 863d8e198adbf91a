"""Greedy continuation of the product's exact prompt (from OUT/analysis.json) with
the PyTorch model, to compare with the Rust draft in OUT/report_agent.json.
usage: compare.py OUT_DIR N_TOKENS [ADAPTER]"""
import json, sys, time
sys.path.insert(0, __import__("os").path.dirname(__file__))
import torch
torch.set_num_threads(int(__import__("os").environ.get("NT", "2")))
from model import Llama, load_tokenizer, greedy, encode_prompt
import data
out, n = sys.argv[1], int(sys.argv[2])
a = json.load(open(f"{out}/analysis.json"))
st = a.get("structured_tokens") or a["analysis"]["structured_tokens"]
p = data.prompt("lumbar", st)
m = Llama(); tok = load_tokenizer(m.reader)
use = len(sys.argv) > 3
if use: m.load_adapter(sys.argv[3])
t = time.time(); s = greedy(m, tok, p, n, use_lora=use)
print("prompt tokens", len(encode_prompt(tok, p)), "secs", round(time.time() - t, 1))
print("PYTORCH:", repr(s))
d = json.load(open(f"{out}/report_agent.json"))["drafts"][0]["text"]
print("RUST   :", repr(d[: len(s) + 40]))
