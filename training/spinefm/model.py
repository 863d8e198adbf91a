"""SpineFM-tiny: the published architecture at a size a 2-core CPU serves.

Encoder: a DINOv3-style ViT (patch 16, register tokens, rotary position
embedding on patch tokens, layer scale). One encoder for T1, one for T2.
Synthesizer: every other sequence runs through both frozen encoders block by
block, their hidden states mixed by a learned weight per layer and sequence.
Agents: gated-attention pooling (slices -> series -> patient), per-patch
segmentation, sequence/plane/region recognition, level-wise condition
classifiers, and the retrieval projection. Everything here is trained on
synthetic phantom studies only.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import labels as L

# The size chosen for the appliance's CPU (FLOPs per slice in README.md).
IMAGE = 128
PATCH = 16
GRID = IMAGE // PATCH
WIDTH = 128
DEPTH = 6
HEADS = 4
REGISTERS = 4
PREFIX = 1 + REGISTERS  # class token + registers, not rotated


def rope_tables(h: int, w: int, head_dim: int, base: float = 100.0):
    """Axial 2-D rotary tables for an h x w patch grid, coordinates in [-1, 1]
    (as DINOv3 normalizes them, so a crop of another size keeps the scale)."""
    quarter = head_dim // 4
    freqs = base ** (-torch.arange(quarter, dtype=torch.float32) / quarter)
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    angles = torch.cat(
        [yy.reshape(-1, 1) * freqs * math.pi, xx.reshape(-1, 1) * freqs * math.pi], dim=1
    )  # [h*w, head_dim/2]
    angles = torch.cat([angles, angles], dim=1)  # [h*w, head_dim]
    return angles.cos(), angles.sin()


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, cos, sin):
        b, n, d = x.shape
        hd = d // self.heads
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)

        def rope(t):
            prefix, patches = t[:, :, :PREFIX], t[:, :, PREFIX:]
            patches = patches * cos + rotate_half(patches) * sin
            return torch.cat([prefix, patches], dim=2)

        q, k = rope(q), rope(k)
        attn = (q @ k.transpose(-2, -1)) * (hd**-0.5)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim, heads, layer_scale=0.1):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.gamma1 = nn.Parameter(torch.full((dim,), layer_scale))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.gamma2 = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x, cos, sin):
        x = x + self.gamma1 * self.attn(self.norm1(x), cos, sin)
        return x + self.gamma2 * self.mlp(self.norm2(x))


class Encoder(nn.Module):
    """ViT with register tokens and RoPE. forward -> (cls [B,D], patches [B,N,D])."""

    def __init__(self, dim=WIDTH, depth=DEPTH, heads=HEADS):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.patch = nn.Conv2d(3, dim, PATCH, PATCH)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.registers = nn.Parameter(torch.zeros(1, REGISTERS, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        nn.init.trunc_normal_(self.cls, std=0.02)
        nn.init.trunc_normal_(self.registers, std=0.02)

    def embed(self, x, mask=None):
        """Patch tokens with the prefix; `mask` [B,N] bool replaces patches
        by the mask token (the masked-patch objective)."""
        t = self.patch(x)
        h, w = t.shape[-2:]
        t = t.flatten(2).transpose(1, 2)
        if mask is not None:
            t = torch.where(mask.unsqueeze(-1), self.mask_token.expand_as(t), t)
        b = t.shape[0]
        tokens = torch.cat([self.cls.expand(b, -1, -1), self.registers.expand(b, -1, -1), t], dim=1)
        cos, sin = rope_tables(h, w, self.dim // self.heads)
        return tokens, cos.to(x.device), sin.to(x.device)

    def forward(self, x, mask=None):
        tokens, cos, sin = self.embed(x, mask)
        for blk in self.blocks:
            tokens = blk(tokens, cos, sin)
        tokens = self.norm(tokens)
        return tokens[:, 0], tokens[:, PREFIX:]


class Synthesizer(nn.Module):
    """Other sequences through both frozen encoders, mixed layer by layer.

    At the embedding and after every block the two encoders' hidden states
    are mixed, h = a*h_T1 + (1-a)*h_T2 with a = sigmoid(w[family, layer]), and
    the mixture feeds both encoders' next block. Only w is trained."""

    def __init__(self, t1: Encoder, t2: Encoder, families: int = len(L.SYNTH_FAMILIES)):
        super().__init__()
        self.t1, self.t2 = t1, t2
        for p in list(t1.parameters()) + list(t2.parameters()):
            p.requires_grad_(False)
        self.weights = nn.Parameter(torch.zeros(families, len(t1.blocks) + 2))

    def mix(self, family_onehot):
        """[B, layers] mixing weights from a one-hot family."""
        return torch.sigmoid(family_onehot @ self.weights)

    def forward(self, x, family_onehot):
        a = self.mix(family_onehot)  # [B, depth+2]
        h1, cos, sin = self.t1.embed(x)
        h2, _, _ = self.t2.embed(x)
        h = a[:, 0, None, None] * h1 + (1 - a[:, 0, None, None]) * h2
        for i, (b1, b2) in enumerate(zip(self.t1.blocks, self.t2.blocks)):
            w = a[:, i + 1, None, None]
            h = w * b1(h, cos, sin) + (1 - w) * b2(h, cos, sin)
        w = a[:, -1, None, None]
        h = w * self.t1.norm(h) + (1 - w) * self.t2.norm(h)
        return h[:, 0], h[:, PREFIX:]


class GatedAttentionPool(nn.Module):
    """Gated attention pooling (Ilse et al.): weights from tanh(Vx) * sigmoid(Ux)."""

    def __init__(self, dim, hidden=64):
        super().__init__()
        self.v = nn.Linear(dim, hidden)
        self.u = nn.Linear(dim, hidden)
        self.w = nn.Linear(hidden, 1)

    def forward(self, x, mask=None):
        """x [B, S, D], mask [B, S] (1 = present) -> pooled [B, D], attention [B, S]."""
        score = self.w(torch.tanh(self.v(x)) * torch.sigmoid(self.u(x))).squeeze(-1)
        if mask is not None:
            score = score.masked_fill(mask < 0.5, -1e4)
        attn = score.softmax(dim=-1)
        return (attn.unsqueeze(-1) * x).sum(dim=1), attn


class SliceAgents(nn.Module):
    """Per slice: segmentation (anatomy, lesion, level) and sequence/plane/
    region recognition from the class token.

    Segmentation decodes the patch tokens (each token -> a 4 x 4 grid of
    feature cells, 32 x 32 per slice) and fuses them with a light
    convolutional stem on the slice's pixels at 64 x 64, as dense ViT heads
    (DPT, UNETR) do. Bundle 0.2.0 read the patch tokens alone at 32 x 32: its
    anatomy Dice could not pass 0.61 (a perfect 32 x 32 map upsampled
    against the 128 x 128 labels) and a lesion of 4 x 6 pixels, a quarter of
    one 16 x 16 patch, scored Dice 0.

    Bundle 0.5.0 adds a full-resolution refinement (`full_res`): the fused
    features and logits upsampled to 128 x 128, a second stem on the pixels
    at full resolution, and a residual convolution on top whose last layer
    starts at zero (so it starts as exactly the 64 x 64 head, upsampled).
    At 64 x 64 even perfect labels, upsampled, score a mean anatomy Dice of
    0.74 against the 128 x 128 truth (cortical bone, endplate, nerve root
    and facet joints are one or two pixels thick), below the 0.85 target.
    Output: logits at 128 x 128 (64 x 64 without `full_res`)."""

    SUB = 4  # token -> SUB x SUB feature cells
    TOKEN_CHANNELS = 32
    STEM_CHANNELS = 24
    FUSE_CHANNELS = 40
    OUT = 2 * GRID * SUB  # 64 x 64 fused features for 8 x 8 patches
    FULL_STEM = 16
    REFINE_CHANNELS = 24

    def __init__(self, dim=WIDTH, full_res=True):
        super().__init__()
        self.full_res = full_res
        k = len(L.ANATOMY) + len(L.LESION) + len(L.LEVELS)
        t, st, fu = self.TOKEN_CHANNELS, self.STEM_CHANNELS, self.FUSE_CHANNELS
        self.seg = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 256), nn.GELU(), nn.Linear(256, t * self.SUB**2))
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.GELU(), nn.Conv2d(16, st, 3, padding=1), nn.GELU()
        )  # fmt: skip
        self.fuse = nn.Sequential(
            nn.Conv2d(t + st, fu, 3, padding=1), nn.GELU(),
            nn.Conv2d(fu, fu, 3, padding=2, dilation=2), nn.GELU(),
            nn.Conv2d(fu, k, 1),
        )  # fmt: skip
        self.k = k
        if full_res:
            fs, rc = self.FULL_STEM, self.REFINE_CHANNELS
            self.stem_full = nn.Sequential(
                nn.Conv2d(1, fs, 3, padding=1), nn.GELU(), nn.Conv2d(fs, fs, 3, padding=1), nn.GELU()
            )  # fmt: skip
            self.refine = nn.Sequential(nn.Conv2d(fu + fs, rc, 3, padding=1), nn.GELU(), nn.Conv2d(rc, k, 1))
            nn.init.zeros_(self.refine[-1].weight)
            nn.init.zeros_(self.refine[-1].bias)
        self.recognize = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, 128),
            nn.GELU(),
            nn.Linear(128, len(L.FAMILIES) + len(L.PLANES) + len(L.REGIONS)),
        )

    def forward(self, cls, patches, pixels):
        """cls [B,D], patches [B,N,D], pixels [B,1,IMAGE,IMAGE] (channel 0 of
        the product's tensor) -> segmentation logits [B,K,IMAGE,IMAGE] (full_res)
        or [B,K,OUT,OUT], recognition."""
        hidden, logits = self.coarse(patches, pixels)
        if self.full_res:
            size = pixels.shape[-2:]
            up = lambda x: F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # noqa: E731
            logits = up(logits) + self.refine(torch.cat([up(hidden), self.stem_full(pixels)], dim=1))
        return logits, self.recognize(cls)

    def coarse(self, patches, pixels):
        """Fused features [B,FUSE,OUT,OUT] and the 64 x 64 logits."""
        b, n, _ = patches.shape
        g = int(round(math.sqrt(n)))
        s, t = self.SUB, self.TOKEN_CHANNELS
        tokens = self.seg(patches).reshape(b, g, g, t, s, s)
        tokens = tokens.permute(0, 3, 1, 4, 2, 5).reshape(b, t, g * s, g * s)
        stem = self.stem(pixels)
        tokens = F.interpolate(tokens, size=stem.shape[-2:], mode="bilinear", align_corners=False)
        hidden = self.fuse[:-1](torch.cat([tokens, stem], dim=1))
        return hidden, self.fuse[-1](hidden)

    # Receptive radius of the full-resolution convolutions (two 3 x 3 in
    # the stem, one in the refinement), rounded up to an even number.
    MARGIN = 4

    def refine_region(self, hidden, logits, pixels, y0, x0, size):
        """Full-resolution logits of the region [y0, y0+size) x [x0, x0+size)
        only (even y0, x0, size): what `forward` computes there, at a
        fraction of the cost, so training can afford the refinement. The
        coarse maps are cut with one cell of margin (bilinear upsampling
        reads a neighbour) and the pixels with MARGIN (the convolutions')."""
        m, full = self.MARGIN, pixels.shape[-1]
        ya, yb, xa, xb = max(y0 - m, 0), min(y0 + size + m, full), max(x0 - m, 0), min(x0 + size + m, full)
        cells = hidden.shape[-1]
        ca, cb, da, db = max(ya // 2 - 1, 0), min(yb // 2 + 1, cells), max(xa // 2 - 1, 0), min(xb // 2 + 1, cells)

        def up(x):
            x = F.interpolate(x[:, :, ca:cb, da:db], scale_factor=2, mode="bilinear", align_corners=False)
            return x[:, :, ya - 2 * ca : yb - 2 * ca, xa - 2 * da : xb - 2 * da]

        out = up(logits) + self.refine(torch.cat([up(hidden), self.stem_full(pixels[:, :, ya:yb, xa:xb])], dim=1))
        return out[:, :, y0 - ya : y0 - ya + size, x0 - xa : x0 - xa + size]

    def split_seg(self, logits):
        a, l = len(L.ANATOMY), len(L.LESION)
        return logits[:, :a], logits[:, a : a + l], logits[:, a + l :]

    def split_recognition(self, r):
        f, p = len(L.FAMILIES), len(L.PLANES)
        return r[:, :f], r[:, f : f + p], r[:, f + p :]


class SeriesPool(nn.Module):
    """Slices -> series embedding (gated attention; its weights select the
    findings-relevant slices) and level-wise features. A level's feature
    vector holds two parts: the patch tokens pooled by the predicted level
    of each patch, compressed to WIDTH - EVIDENCE dims, and the lesion
    evidence at that level as it is (mean and peak probability of each
    lesion class inside the level, from the segmentation's lesion and level
    maps), so the condition agents read a small lesion directly instead of
    through a mean over the whole vertebra.

    Bundle 0.6.0 adds where a lesion lies (`disc_evidence`): its peak at
    the disc below each vertebra (next to the boundary between the two
    vertebrae's labels), and for the lesions that have a side, which half
    of the patient it is in. A vertebra's level label covers half of each
    neighbouring disc, so up to 0.5.0 a fragment that had migrated into
    the lower half of the L4-L5 disc read as L5's and the agents put it at
    L5-S1; and nothing in the features said left from right."""

    EVIDENCE = 3 * len(L.LESION) + 2 * len(L.LATERAL_LESIONS)

    def __init__(self, dim=WIDTH):
        super().__init__()
        self.pool = GatedAttentionPool(dim)
        self.mix = nn.Linear(2 * dim, dim)
        self.compress = nn.Linear(dim, dim - self.EVIDENCE)

    CELLS = 32  # lesion evidence grid per slice side

    @staticmethod
    def level_stats(patches, segmentation):
        """Parameter-free part. patches [S,N,D], segmentation [S,K,H,W] ->
        patch features per level [LV,D], level mass [LV], lesion evidence
        per level [LV, EVIDENCE]."""
        g = int(round(math.sqrt(patches.shape[1])))
        return SeriesPool.stats_from_maps(patches, *SeriesPool.slice_maps(segmentation, g))

    @staticmethod
    def slice_maps(segmentation, grid):
        """What the level statistics need of each slice's segmentation,
        reduced slice by slice: level probabilities per patch [S,LV,N] and
        per cell of a 32 x 32 grid [S,LV,M] (averaged), lesion probabilities
        per cell [S,LES,M] (max-pooled: a one-cell lesion must survive).
        The slice agents output these (0.6.0), so the engine can reduce
        each slice as it arrives and keep 0.2 MB of it instead of 3.9 MB
        of logits until the series is complete."""
        a, les = len(L.ANATOMY), len(L.LESION)
        level = segmentation[:, a + les :]
        # Fixed windows (the side is a plain int here, also when exporting:
        # adaptive pooling cannot export inside the slice agents' graph,
        # where the segmentation's size is symbolic).
        side = int(segmentation.shape[-1])
        per_patch, per_cell = side // grid, side // SeriesPool.CELLS
        level_patches = F.avg_pool2d(level, per_patch).flatten(2).softmax(dim=1)
        level_cells = F.avg_pool2d(level.softmax(dim=1), per_cell).flatten(2)
        lesion_cells = F.max_pool2d(segmentation[:, a : a + les].softmax(dim=1), per_cell).flatten(2)
        return level_patches, level_cells, lesion_cells

    @staticmethod
    def stats_from_maps(patches, level_patches, level_cells, lesion_cells):
        """The series part of `level_stats`, from `slice_maps`."""
        probs, lp, ep = level_patches, level_cells, lesion_cells
        mass = probs.sum(dim=(0, 2))  # [LV]
        feats = torch.einsum("svn,snd->vd", probs, patches) / (mass.unsqueeze(-1) + 1e-3)
        mean = torch.einsum("svm,slm->vl", lp, ep) / (lp.sum(dim=(0, 2)).unsqueeze(-1) + 1e-3)
        peak = (lp.unsqueeze(2) * ep.unsqueeze(1)).amax(dim=3).amax(dim=0)  # [LV, LES]
        cells = SeriesPool.CELLS
        disc = SeriesPool.disc_evidence(lp.reshape(*lp.shape[:2], cells, cells), ep.reshape(*ep.shape[:2], cells, cells))
        return feats, mass, torch.cat([mean, peak, *disc], dim=-1)

    @staticmethod
    def disc_evidence(lp, ep):
        """lp [S,LV,C,C] level probabilities, ep [S,LES,C,C] lesion
        probabilities (max-pooled cells) -> per level row v, of the disc
        between v and v + 1: lesion peak [LV, LES], and for the lateral
        lesions the peak in the patient's left half minus the right half,
        across the image [LV, LAT] and across the slices [LV, LAT].

        A cell belongs to the disc as far as both vertebrae are around it:
        2 sqrt(b_v b_v+1) of the level probabilities averaged over a window
        of 5 slices x 3 rows (about 28 mm of a sagittal slice head to foot;
        an axial block of a disc whole, so a fragment in its last slice
        still counts). Sides follow the product's slice order and the
        phantom's (and the usual scanners') direction cosines: an axial
        image shows the patient's left on its right half; a sagittal stack
        runs from the patient's left (first slices) to the right."""
        s, lv, c, _ = lp.shape
        # Zero padding and a count of the real cells in each window (the
        # pooling's own padding refuses stacks shorter than the window).
        x = F.pad(lp.permute(1, 0, 2, 3).unsqueeze(0), (0, 0, 1, 1, 2, 2))
        count = F.pad(torch.ones_like(lp[:, :1].permute(1, 0, 2, 3).unsqueeze(0)), (0, 0, 1, 1, 2, 2))
        window = lambda t: F.avg_pool3d(t, (5, 3, 1), stride=1)  # noqa: E731
        blurred = (window(x) / window(count))[0].permute(1, 0, 2, 3)  # [S, LV, C, C]
        below = torch.cat([blurred[:, 1:], torch.zeros_like(blurred[:, :1])], dim=1)
        affinity = (2 * torch.sqrt(blurred * below + 1e-6)).clamp(max=1.0)
        affinity = affinity * (torch.arange(lv) > 0).float()[None, :, None, None]  # not "outside"
        joint = affinity.unsqueeze(2) * ep.unsqueeze(1)  # [S, LV, LES, C, C]
        peak = joint.amax(dim=(0, 3, 4))
        lat = joint[:, :, L.LATERAL_INDEX]  # [S, LV, LAT, C, C]
        half = c // 2
        across_image = lat[..., half:].amax(dim=(0, 3, 4)) - lat[..., :half].amax(dim=(0, 3, 4))
        # Slices before the middle one against slices after it (the middle
        # one, on the midline of an odd stack, is neither).
        order = torch.arange(s, dtype=torch.float32) - (s - 1) / 2
        first = (order < 0).float()[:, None, None, None, None]
        last = (order > 0).float()[:, None, None, None, None]
        across_slices = (lat * first).amax(dim=(0, 3, 4)) - (lat * last).amax(dim=(0, 3, 4))
        return peak, across_image, across_slices

    def level_features(self, feats, lesion):
        """[.., LV, D] pooled patch features, [.., LV, EVIDENCE] -> [.., LV, D]."""
        return torch.cat([self.compress(feats), lesion], dim=-1)

    def embed(self, cls, patch_mean):
        x = self.mix(torch.cat([cls, patch_mean], dim=-1))
        series, attn = self.pool(x.unsqueeze(0))
        return series[0], attn[0]

    def forward(self, cls, patches, level_patches, level_cells, lesion_cells):
        """cls [S,D], patches [S,N,D], the slice agents' `slice_maps` ->
        series [D], attention [S], level_features [LV,D], level_mass [LV]."""
        series, attn = self.embed(cls, patches.mean(dim=1))
        feats, mass, lesion = self.stats_from_maps(patches, level_patches, level_cells, lesion_cells)
        return series, attn, self.level_features(feats, lesion), mass


class PatientModel(nn.Module):
    """Series embeddings (with their slot) -> patient embedding and the
    retrieval projection (unit vector, shared space with report texts)."""

    def __init__(self, dim=WIDTH, retrieval=64):
        super().__init__()
        self.slot = nn.Parameter(torch.zeros(len(L.SLOTS), dim))
        self.pool = GatedAttentionPool(dim)
        self.project = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, retrieval))

    def forward(self, series, slot_onehot, mask):
        """series [B,K,D], slot_onehot [B,K,SLOTS], mask [B,K] -> patient [B,D], retrieval [B,R], attn [B,K]."""
        x = series + slot_onehot @ self.slot
        patient, attn = self.pool(x, mask)
        return patient, F.normalize(self.project(patient), dim=-1), attn


class ConditionAgents(nn.Module):
    """One classifier per condition over level-wise features.

    Input: per slot (sagittal T1/T2/other, axial T2/other) the level features
    [SLOTS, LV, D] and a slot mask. Each level position (vertebra or disc)
    reads the features of its vertebra (or the two vertebrae around its
    disc) from every slot. Output per position and condition: presence logit,
    side logits (left, right, both/central), severity logits (mild, moderate,
    severe); and the RSNA-style graded task per position.

    Presence is a small linear model per condition over the evidence of the
    condition's own lesion class (log mean and peak probability above and
    below the position, their minimum and maximum, per slot: a disc's lesion
    straddles the two vertebrae's level labels, so "both" marks the disc and
    "one" its neighbour; from 0.6.0 the peak at the position's own disc;
    in training from the 0.10.0 candidate, how far the position's own peak stands above its
    neighbours'), plus a learned prior per position and condition. Side,
    severity and the graded task come from an MLP over all the features
    (dropout on its input), except the side of conditions whose lesion has
    one: from 0.6.0 a linear model over which half of the patient that
    lesion is in. With 144 training studies an MLP presence term learned
    them by heart (training loss 0.03, validation 7.8) and scored below the
    untrained lesion evidence (mean level AUROC 0.73 against 0.77
    in-vendor); the linear evidence term has 40 weights per condition.
    """

    SIDE_FEATURES = 2  # across the image, across the slices (per slot)

    def __init__(self, dim=WIDTH, hidden=192, dropout=0.5, contrast=True):
        super().__init__()
        # `contrast`: the eighth evidence feature (training default; bundles
        # up to 0.9.0 and their checkpoints have seven).
        self.use_contrast = contrast
        self.EVIDENCE_FEATURES = 8 if contrast else 7
        slots = len(L.SLOTS)
        self.position = nn.Parameter(torch.zeros(len(L.POSITIONS), hidden))
        self.drop = nn.Dropout(dropout)
        self.reduce = nn.Sequential(nn.LayerNorm(2 * slots * dim), nn.Linear(2 * slots * dim, hidden), nn.GELU())
        self.trunk = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU())
        self.conditions = nn.ModuleList([nn.Linear(hidden, 3 + 3) for _ in L.CONDITIONS])
        self.graded = nn.Linear(hidden, len(L.GRADED) * 3)
        n = self.EVIDENCE_FEATURES * slots
        self.evidence_weight = nn.Parameter(torch.zeros(len(L.CONDITIONS), n))
        self.prior = nn.Parameter(torch.zeros(len(L.POSITIONS), len(L.CONDITIONS)))
        a, b = L.position_vertebrae()
        self.register_buffer("upper", torch.tensor(a), persistent=False)
        self.register_buffer("lower", torch.tensor(b), persistent=False)
        les = [L.LESION.index(L.LESION_OF_CONDITION[c]) for c in L.CONDITIONS]
        self.register_buffer("lesion_of", torch.tensor(les), persistent=False)
        disc = [float("-" in p) for p in L.POSITIONS]
        self.register_buffer("is_disc", torch.tensor(disc)[None, :, None, None], persistent=False)
        # Side of the conditions whose lesion has one: a linear model over
        # where that lesion lies (its left-minus-right features per slot)
        # and a bias per condition, instead of the MLP. Its weights make
        # three regions of the evidence: left, right, and near zero (both
        # sides or central, where the bias of that class wins). The MLP
        # learns 144 training studies by heart within a few hundred steps;
        # these 33 weights per condition do not.
        lat = [L.LATERAL_LESIONS.index(n) if n in L.LATERAL_LESIONS else 0 for n in (L.LESION_OF_CONDITION[c] for c in L.CONDITIONS)]
        has = [float(L.LESION_OF_CONDITION[c] in L.LATERAL_LESIONS) for c in L.CONDITIONS]
        self.register_buffer("lateral_of", torch.tensor(lat), persistent=False)
        self.register_buffer("has_side", torch.tensor(has), persistent=False)
        self.side_weight = nn.Parameter(torch.zeros(len(L.CONDITIONS), self.SIDE_FEATURES * slots, 3))
        self.side_bias = nn.Parameter(torch.zeros(len(L.CONDITIONS), 3))

    def evidence(self, up, lo):
        """up, lo [B,P,SLOTS,D] -> [B,P,C,EVIDENCE_FEATURES*SLOTS] evidence of each condition's
        lesion class: mean and peak at the upper and lower vertebra, their
        minimum and maximum, the peak at the disc below the upper one
        (a disc position's own disc), and with `use_contrast` how far the
        position's own peak stands above its neighbours' (`contrast`)."""
        e, les = SeriesPool.EVIDENCE, len(L.LESION)
        off = up.shape[-1] - e

        def pick(x, part):  # part 0 mean, 1 peak, 2 disc below -> [B,P,SLOTS,C]
            return torch.log(x[..., off + part * les + self.lesion_of].clamp(min=0) + 1e-3)

        um, up_, lm, lp, disc = pick(up, 0), pick(up, 1), pick(lo, 0), pick(lo, 1), pick(up, 2)
        parts = [um, up_, lm, lp, torch.minimum(up_, lp), torch.maximum(up_, lp), disc]
        if self.use_contrast:
            parts.append(self.contrast(torch.where(self.is_disc > 0, disc, up_)))
        return torch.stack(parts, dim=-1).permute(0, 1, 3, 2, 4).flatten(3)  # [B,P,C,FEATURES*SLOTS]

    @staticmethod
    def contrast(own):
        """own [B,P,SLOTS,C] log peak of each position's own structure (a
        disc's at the disc, a vertebra's in it) -> that peak minus the
        larger of the neighbouring positions' of the same kind (two
        positions away: the disc or vertebra above and below). Added for
        the 0.10.0 candidate (training/README.md, not shipped): a fragment behind the L5 body lies in the level labels of L5, so
        the vertebra peaks count it for L4-L5 and L5-S1 alike; only the
        disc it came from tells the two apart, and as one of seven
        features of equal weight it did not (strict test, seed 880001:
        0.51 at L4-L5 against 0.54 at L5-S1; 0.48 against 0.44 with it)."""
        floor = torch.full_like(own[:, :2], math.log(1e-3))
        padded = torch.cat([floor, own, floor], dim=1)
        return own - torch.maximum(padded[:, :-4], padded[:, 4:])

    def side_evidence(self, up):
        """up [B,P,SLOTS,D] -> [B,P,C,2*SLOTS]: left minus right of each
        condition's lesion at the disc below the upper vertebra, across the
        image and across the slices; zero for conditions without a side."""
        e, les, lat = SeriesPool.EVIDENCE, len(L.LESION), len(L.LATERAL_LESIONS)
        base = up.shape[-1] - e + 3 * les
        image = up[..., base + self.lateral_of]  # [B,P,SLOTS,C]
        slices = up[..., base + lat + self.lateral_of]
        f = torch.stack([image, slices], dim=-1).permute(0, 1, 3, 2, 4).flatten(3)
        return f * self.has_side[:, None]

    def forward(self, level_features, slot_mask):
        """level_features [B,SLOTS,LV,D], slot_mask [B,SLOTS] ->
        presence [B,P,C], side [B,P,C,3], severity [B,P,C,3], graded [B,P,G,3]."""
        f = level_features * slot_mask[:, :, None, None]
        b = f.shape[0]
        up4 = f[:, :, self.upper].permute(0, 2, 1, 3)  # [B,P,SLOTS,D]
        lo4 = f[:, :, self.lower].permute(0, 2, 1, 3)
        ev = self.evidence(up4, lo4) * slot_mask.repeat_interleave(self.EVIDENCE_FEATURES, dim=1)[:, None, None, :]
        presence = (ev * self.evidence_weight).sum(-1) + self.prior  # [B,P,C]
        x = torch.cat([up4.reshape(b, len(L.POSITIONS), -1), lo4.reshape(b, len(L.POSITIONS), -1)], dim=-1)
        h = self.trunk(self.reduce(self.drop(x)) + self.position)
        outs = torch.stack([head(h) for head in self.conditions], dim=2)  # [B,P,C,6]
        graded = self.graded(h).reshape(b, len(L.POSITIONS), len(L.GRADED), 3)
        sm = slot_mask.repeat_interleave(self.SIDE_FEATURES, dim=1)[:, None, None, :]
        lateral = torch.einsum("bpcf,cfk->bpck", self.side_evidence(up4) * sm, self.side_weight) + self.side_bias
        side = torch.where(self.has_side[:, None] > 0, lateral, outs[..., :3])
        return presence, side, outs[..., 3:], graded


class ConditionRetrieval(nn.Module):
    """Image-report retrieval from what the condition agents found: the
    presence probability of every condition at every level position, side
    and severity weighted by it, and the graded task's grades, projected
    into the space shared with report texts (unit vectors).

    The published retrieval agent reads the patient embedding. On the
    phantom the report is a function of the findings (which condition, at
    which level, which side, how severe), and the patient embedding, pooled
    from whole-slice features, carries too little of that: bundle 0.4
    reached Recall@5 0.42 in-vendor and 0.30 cross-vendor with it. This
    head reads the level-wise answers instead; the patient embedding is
    still computed, trained and evaluated (EVALUATION.md reports both)."""

    def __init__(self, retrieval=64, hidden=128, dropout=0.3):
        super().__init__()
        p, c, g = len(L.POSITIONS), len(L.CONDITIONS), len(L.GRADED)
        self.net = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(p * c * 7 + p * g * 3, hidden), nn.GELU(), nn.Linear(hidden, retrieval)
        )  # fmt: skip

    @staticmethod
    def inputs(presence, side, severity, graded):
        """Condition agents' logits -> [B, features] (probabilities)."""
        p = torch.sigmoid(presence)
        parts = [p, p.unsqueeze(-1) * side.softmax(-1), p.unsqueeze(-1) * severity.softmax(-1), graded.softmax(-1)]
        return torch.cat([x.flatten(1) for x in parts], dim=1)

    def forward(self, presence, side, severity, graded):
        return F.normalize(self.net(self.inputs(presence, side, severity, graded)), dim=-1)


class TextProjection(nn.Module):
    """Frozen all-MiniLM-L6-v2 sentence embedding (384) -> retrieval space."""

    def __init__(self, retrieval=64):
        super().__init__()
        self.project = nn.Linear(384, retrieval)

    def forward(self, text):
        return F.normalize(self.project(text), dim=-1)


def clip_loss(a, b, logit_scale):
    """Symmetric InfoNCE between matched rows of a and b (unit vectors)."""
    logits = logit_scale.exp() * a @ b.t()
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def flops_per_slice(dim=WIDTH, depth=DEPTH, image=IMAGE):
    """Multiply-adds x 2 of one encoder forward (matmuls only)."""
    n = (image // PATCH) ** 2 + PREFIX
    embed = (image // PATCH) ** 2 * (3 * PATCH * PATCH) * dim
    per_block = n * (3 * dim * dim + dim * dim + 8 * dim * dim) + 2 * n * n * dim
    return 2 * (embed + depth * per_block)
