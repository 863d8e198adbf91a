"""The report agent's visual projector (published method: an attention
pooler with 64 learned queries over the study's slice embeddings, projected
to the language model's hidden size, inserted at the image position).

Input: the class token of every slice the models used ([slices, 128]: the
T1/T2 encoders' own, the synthesizer's for other sequences), in any order.
Output: [64, hidden] embeddings, spliced between `<image>` and `</image>`
(engine/src/lm/prompt.rs). Exported as `report_projector.onnx` in the model
bundle; the engine runs it with ONNX Runtime."""

import torch
import torch.nn.functional as F

QUERIES = 64


class VisualProjector(torch.nn.Module):
    def __init__(self, dim=128, hidden=576, queries=QUERIES, width=256, heads=4, token_rms=1.0):
        super().__init__()
        self.heads, self.width = heads, width
        self.norm = torch.nn.LayerNorm(dim)
        self.key = torch.nn.Linear(dim, width)
        self.value = torch.nn.Linear(dim, width)
        self.queries = torch.nn.Parameter(torch.randn(queries, width) * 0.02)
        self.mix = torch.nn.Linear(width, width)
        self.out_norm = torch.nn.LayerNorm(width)
        self.up = torch.nn.Linear(width, hidden)
        self.down = torch.nn.Linear(hidden, hidden)
        # The visual tokens start at the size of the model's own token
        # embeddings, so the first blocks' norms see familiar magnitudes.
        self.gain = torch.nn.Parameter(torch.tensor(float(token_rms)))

    def forward(self, slices):
        """slices [n, dim] -> [queries, hidden]."""
        x = self.norm(slices)
        n, q = x.shape[0], self.queries.shape[0]
        d = self.width // self.heads
        k = self.key(x).view(n, self.heads, d).transpose(0, 1)  # [h, n, d]
        v = self.value(x).view(n, self.heads, d).transpose(0, 1)
        qs = self.queries.view(q, self.heads, d).transpose(0, 1)  # [h, q, d]
        att = (qs @ k.transpose(1, 2)) / d**0.5
        pooled = (att.softmax(-1) @ v).transpose(0, 1).reshape(q, self.width)
        pooled = self.queries + self.mix(pooled)
        y = self.down(F.gelu(self.up(self.out_norm(pooled))))
        # unit RMS per token, times the learned gain
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)
        return y * self.gain
