"""Minimal PyTorch Llama forward matching engine/src/lm/llama.rs (GGUF weights
as-is, interleaved RoPE, GQA, SwiGLU, tied output) with LoRA on attn_q/attn_v,
plus a tokenizer built from the GGUF vocabulary like engine/src/lm/tokenizer.rs."""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
import gguf
from gguf.quants import dequantize

GGUF = os.environ.get(
    "SPINEAGENT_LM",
    os.path.join(os.path.dirname(__file__), "..", "..", "models", "lm", "SmolLM2-135M-Instruct.Q4_1.gguf"),
)


def _field(reader, key):
    f = reader.fields[key]
    if len(f.data) == 1:
        v = f.parts[f.data[0]]
        if f.types and f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(v).decode("utf-8")
        return v[0].item()
    if f.types[-1] == gguf.GGUFValueType.STRING:
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    return [f.parts[i][0].item() for i in f.data]


def load_tokenizer(reader):
    from tokenizers import Tokenizer, AddedToken
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import ByteLevel
    from tokenizers import decoders

    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges") if " " in m]
    types = _field(reader, "tokenizer.ggml.token_type")
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(BPE(vocab, merges))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty == 3])
    return tok


class Llama(torch.nn.Module):
    def __init__(self, path=GGUF, rank=8, alpha=16.0, targets=("attn_q", "attn_v")):
        super().__init__()
        r = gguf.GGUFReader(path)
        self.reader = r
        g = lambda k: _field(r, k)
        self.hidden = g("llama.embedding_length")
        self.heads = g("llama.attention.head_count")
        self.kv_heads = g("llama.attention.head_count_kv")
        self.layers = g("llama.block_count")
        self.head_dim = self.hidden // self.heads
        self.eps = float(g("llama.attention.layer_norm_rms_epsilon")) if "llama.attention.layer_norm_rms_epsilon" in r.fields else 1e-5
        self.theta = float(g("llama.rope.freq_base")) if "llama.rope.freq_base" in r.fields else 10000.0
        W = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type)
            shape = [int(x) for x in reversed(list(t.shape))]
            W[t.name] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32).reshape(shape))
        self.W = W
        self.embed = W["token_embd.weight"]
        self.out_w = W.get("output.weight", self.embed)
        self.scale = alpha / rank
        self.rank = rank
        self.lora = torch.nn.ParameterDict()
        self.targets = targets
        for i in range(self.layers):
            for p in targets:
                w = W[f"blk.{i}.{p}.weight"]
                out_f, in_f = w.shape
                a = torch.empty(rank, in_f)
                torch.nn.init.kaiming_uniform_(a, a=5 ** 0.5)
                self.lora[f"blk_{i}_{p}_a"] = torch.nn.Parameter(a)
                self.lora[f"blk_{i}_{p}_b"] = torch.nn.Parameter(torch.zeros(out_f, rank))
        inv = 1.0 / (self.theta ** (torch.arange(0, self.head_dim // 2, dtype=torch.float32) * 2.0 / self.head_dim))
        ang = torch.arange(4096, dtype=torch.float32)[:, None] * inv[None, :]
        self.cos, self.sin = ang.cos(), ang.sin()

    def rms(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x, n, start=0):  # x [1,h,n,d], interleaved pairs (2i,2i+1)
        c = self.cos[start:start + n][None, None]
        s = self.sin[start:start + n][None, None]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], -1).flatten(-2)

    def lin(self, x, i, p, use_lora):
        y = x @ self.W[f"blk.{i}.{p}.weight"].T
        if use_lora and p in self.targets:
            y = y + (x @ self.lora[f"blk_{i}_{p}_a"].T @ self.lora[f"blk_{i}_{p}_b"].T) * self.scale
        return y

    def forward(self, ids, use_lora=True, past=None, logits_from=0):
        """ids [n] at positions start..start+n where start = len of past KV;
        returns (logits [1, n - logits_from, vocab], new per-layer KV)."""
        return self.forward_embeds(self.embed[ids].unsqueeze(0), use_lora, past, logits_from)

    def forward_embeds(self, h, use_lora=True, past=None, logits_from=0):
        """The same from embeddings h [1, n, hidden] (visual tokens)."""
        n = h.shape[1]
        start = 0 if past is None else past[0][0].shape[2]
        mask = torch.full((n, start + n), float("-inf")).triu(start + 1)
        kvs = []
        for i in range(self.layers):
            h, kv = self.block(h, i, n, start, mask, use_lora, None if past is None else past[i])
            kvs.append(kv)
        h = self.rms(h[:, logits_from:], self.W["output_norm.weight"])
        return h @ self.out_w.T, kvs

    def block(self, h, i, n, start, mask, use_lora, past):
        d = self.head_dim
        x = self.rms(h, self.W[f"blk.{i}.attn_norm.weight"])
        q = self.lin(x, i, "attn_q", use_lora).view(1, n, self.heads, d).transpose(1, 2)
        k = self.lin(x, i, "attn_k", use_lora).view(1, n, self.kv_heads, d).transpose(1, 2)
        v = self.lin(x, i, "attn_v", use_lora).view(1, n, self.kv_heads, d).transpose(1, 2)
        q, k = self.rope(q, n, start), self.rope(k, n, start)
        if past is not None:
            k = torch.cat([past[0], k], 2); v = torch.cat([past[1], v], 2)
        kv = (k, v)
        grp = self.heads // self.kv_heads
        k = k.repeat_interleave(grp, 1)
        v = v.repeat_interleave(grp, 1)
        att = (q @ k.transpose(-1, -2)) / (d ** 0.5) + mask
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(1, n, self.hidden)
        h = h + self.lin(y, i, "attn_output", use_lora)
        x = self.rms(h, self.W[f"blk.{i}.ffn_norm.weight"])
        y = self.lin(F.silu(self.lin(x, i, "ffn_gate", use_lora)) * self.lin(x, i, "ffn_up", use_lora), i, "ffn_down", use_lora)
        return h + y, kv

    def save_adapter(self, path):
        from safetensors.torch import save_file
        out = {}
        for i in range(self.layers):
            for p in self.targets:
                out[f"blk.{i}.{p}.lora_a"] = self.lora[f"blk_{i}_{p}_a"].detach().float().contiguous()
                out[f"blk.{i}.{p}.lora_b"] = (self.lora[f"blk_{i}_{p}_b"].detach().float() * self.scale).contiguous()
        save_file(out, path)

    def load_adapter(self, path):
        from safetensors.torch import load_file
        t = load_file(path)
        for i in range(self.layers):
            for p in self.targets:
                self.lora[f"blk_{i}_{p}_a"].data.copy_(t[f"blk.{i}.{p}.lora_a"])
                self.lora[f"blk_{i}_{p}_b"].data.copy_(t[f"blk.{i}.{p}.lora_b"] / self.scale)


@torch.no_grad()
def encode_prompt(tok, prompt):
    """The Rust side encodes the parts before and after the visual tokens
    separately ("...<image>" and "</image>..."); so do we."""
    i = prompt.index("</image>")
    return tok.encode(prompt[:i]).ids + tok.encode(prompt[i:]).ids


def greedy(model, tok, prompt, max_new=60, use_lora=True, penalty=1.15, window=64):
    ids = encode_prompt(tok, prompt)
    stop = {tok.token_to_id(s) for s in ["<|im_end|>", "<|endoftext|>"] if tok.token_to_id(s) is not None}
    out = []
    logits_all, past = model(torch.tensor(ids), use_lora=use_lora)
    logits = logits_all[0, -1].clone()
    for _ in range(max_new):
        for t in list(reversed(out))[:window]:
            logits[t] = logits[t] / penalty if logits[t] > 0 else logits[t] * penalty
        nxt = int(logits.argmax())
        if nxt in stop:
            break
        out.append(nxt)
        l, past = model(torch.tensor([nxt]), use_lora=use_lora, past=past)
        logits = l[0, -1].clone()
    return tok.decode(out)
