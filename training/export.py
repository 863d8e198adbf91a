"""Export SpineFM-tiny and its agents as the default bundle: one ONNX file
per component, golden inputs/outputs (from Python onnxruntime on the
exported file), the retrieval index of reference phantom cases, and
bundle.toml.

    python training/export.py --work work --out models/spinefm-tiny
"""

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

from spinefm import labels as L
from spinefm.data import RESIZE
from spinefm.model import GRID, IMAGE, WIDTH, Encoder, SeriesPool, SliceAgents, flops_per_slice
from spinefm.pipeline import Agents, load_agents
from train_agents import as_float, checkpoint_encoders

VERSION = "0.11.0"


def fold_channels(encoder):
    """Training feeds channel 0 of the product's tensor to all three input
    channels (data.load_study keeps one channel), but the engine feeds the
    three channels normalized with their own mean/std, which differ by up to
    0.4. Folding the patch embedding onto channel 0 (sum of the three
    channel kernels there, zero on 1 and 2) makes the exported encoder see
    exactly what it was trained on, whatever channels 1 and 2 hold."""
    with torch.no_grad():
        w = encoder.patch.weight
        w[:, 0] = w.sum(dim=1)
        w[:, 1:] = 0


class SliceAgentsExport(nn.Module):
    def __init__(self, agents):
        super().__init__()
        self.a = agents.slice

    def forward(self, patches, rec_cls, pixels):
        seg, _ = self.a(rec_cls, patches, pixels)
        return (seg, self.a.recognize(rec_cls), *SeriesPool.slice_maps(seg, GRID))


class SeriesPoolExport(nn.Module):
    def __init__(self, agents):
        super().__init__()
        self.a = agents.series

    def forward(self, cls, patches, level_patches, level_cells, lesion_cells):
        return self.a(cls, patches, level_patches, level_cells, lesion_cells)


class PatientExport(nn.Module):
    def __init__(self, agents):
        super().__init__()
        self.a = agents.patient

    def forward(self, series, slots, mask):
        return self.a(series, slots, mask)


class ConditionsExport(nn.Module):
    """Probabilities, not logits: presence (sigmoid), side/severity/grade
    (softmax); and, with the condition retrieval head, the study's
    retrieval embedding."""

    def __init__(self, agents):
        super().__init__()
        self.a = agents.conditions
        self.retrieval = agents.retrieval if agents.condition_retrieval else None

    def forward(self, level_features, slot_mask):
        p, side, sev, graded = self.a(level_features, slot_mask)
        probs = (torch.sigmoid(p), side.softmax(-1), sev.softmax(-1), graded.softmax(-1))
        if self.retrieval is None:
            return probs
        return probs + (self.retrieval(p, side, sev, graded),)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def set_shapes(path, shapes):
    """Write the manifest's dims into the ONNX I/O (named = dynamic)."""
    model = onnx.load(path)
    for v in list(model.graph.input) + list(model.graph.output):
        dims = shapes[v.name]
        t = v.type.tensor_type
        del t.shape.dim[:]
        for d in dims:
            dim = t.shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            else:
                dim.dim_param = d
    onnx.checker.check_model(model)
    onnx.save(model, path)


def export(module, name, inputs, input_names, output_names, shapes, out, tolerance=1e-3):
    path = out / f"{name}.onnx"
    dynamic = {
        n: {i: d for i, d in enumerate(shapes[n]) if isinstance(d, str)}
        for n in input_names + output_names
    }
    module.eval()
    torch.onnx.export(
        module, tuple(inputs), str(path), input_names=input_names, output_names=output_names,
        dynamic_axes=dynamic, opset_version=17, dynamo=False,
    )  # fmt: skip
    set_shapes(str(path), shapes)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {n: x.detach().numpy().astype(np.float32) for n, x in zip(input_names, inputs)}
    outs = sess.run(output_names, feeds)
    with torch.no_grad():
        ref = module(*inputs)
    ref = ref if isinstance(ref, tuple) else (ref,)
    for o, r, n in zip(outs, ref, output_names):
        diff = float(np.abs(o - r.numpy()).max())
        assert diff < tolerance, f"{name}.{n}: onnxruntime differs from PyTorch by {diff}"
    golden_dir = out / "golden"
    golden_dir.mkdir(exist_ok=True)
    gin, gout = [], []
    for n, x in feeds.items():
        p = golden_dir / f"{name}.{n}.npy"
        np.save(p, x)
        gin.append(p)
    for n, o in zip(output_names, outs):
        p = golden_dir / f"{name}.{n}.npy"
        np.save(p, o.astype(np.float32))
        gout.append(p)
    return {
        "name": name,
        "file": path.name,
        "inputs": [(n, shapes[n]) for n in input_names],
        "outputs": [(n, shapes[n]) for n in output_names],
        "golden_inputs": gin,
        "golden_outputs": gout,
        "tolerance": tolerance,
    }


def toml_dims(dims):
    return "[" + ", ".join(f'"{d}"' if isinstance(d, str) else str(d) for d in dims) + "]"


def manifest(out, models, extra_files, retrieval_model="patient"):
    lines = [
        "# SpineFM-tiny: SYNTHETIC. Trained on procedural phantom studies only",
        "# (training/, see models/README.md); no clinical accuracy is claimed.",
        'name = "spinefm-tiny"',
        f'version = "{VERSION}"',
        "",
        "[preprocess]",
        "low_percentile = 0.5",
        "high_percentile = 99.5",
        f"resize = {RESIZE}",
        f"crop = {IMAGE}",
        "mean = [0.485, 0.456, 0.406]",
        "std = [0.229, 0.224, 0.225]",
        "",
    ]
    for m in models:
        lines += [
            "[[model]]",
            f'name = "{m["name"]}"',
            f'file = "{m["file"]}"',
            f'sha256 = "{sha256(out / m["file"])}"',
            f'tolerance = {m["tolerance"]}',
        ]
        for kind in ("inputs", "outputs"):
            for n, dims in m[kind]:
                lines += [f"[[model.{kind}]]", f'name = "{n}"', 'dtype = "float32"', f"shape = {toml_dims(dims)}"]
        for kind in ("golden_inputs", "golden_outputs"):
            for p in m[kind]:
                rel = p.relative_to(out)
                lines += [f"[[model.{kind}]]", f'file = "{rel}"', f'sha256 = "{sha256(p)}"']
        lines.append("")
    lines += ["[files]"]
    for name, p in extra_files.items():
        lines += [f'{name} = {{ file = "{p.relative_to(out)}", sha256 = "{sha256(p)}" }}']
    lines += ["", "[labels]"]
    for key, values in [
        ("families", L.FAMILIES), ("synthesizer_families", L.SYNTH_FAMILIES), ("planes", L.PLANES),
        ("regions", L.REGIONS), ("slots", L.SLOTS), ("levels", L.LEVELS), ("positions", L.POSITIONS),
        ("conditions", L.CONDITIONS), ("condition_kinds", [L.CONDITION_KINDS[c] for c in L.CONDITIONS]),
        ("sides", L.SIDES), ("severities", L.SEVERITIES),
        ("graded", L.GRADED), ("grades", L.GRADES), ("lumbar_discs", L.LUMBAR_DISCS),
        ("anatomy", L.ANATOMY), ("lesion", L.LESION),
    ]:  # fmt: skip
        lines.append(f"{key} = [" + ", ".join(f'"{v}"' for v in values) + "]")
    lines += [
        "",
        "# Agent roster: agent -> the models it runs (models/README.md maps it",
        "# to the published system's 37 agents).",
        "[agents]",
        'encoder_t1 = ["encoder_t1"]',
        'encoder_t2 = ["encoder_t2"]',
        'synthesizer = ["synthesizer"]',
        'segmentation = ["slice_agents"]',
        'sequence_recognition = ["encoder_t2", "slice_agents"]',
        'slice_selection = ["series_pool"]',
        'series_embedding = ["series_pool"]',
        'patient_embedding = ["patient"]',
        f'retrieval = ["{retrieval_model}"]',
    ]
    for c in L.CONDITIONS:
        lines.append(f'condition_{c} = ["conditions"]')
    lines += ['level_localization = ["slice_agents", "series_pool", "conditions"]']
    # 0.7.0 on: trained on axial level maps taken from the sagittal stacks
    # (spinefm/crossref.py); the engine does the same only where this is named.
    lines += ['level_cross_reference = ["slice_agents", "series_pool"]']
    lines += ['graded_stenosis = ["conditions"]']
    if any(m["name"] == "report_projector" for m in models):
        lines += ['report_agent_visual_tokens = ["report_projector"]']
    (out / "bundle.toml").write_text("\n".join(lines) + "\n")


def export_projector(state_path, out):
    """The report agent's visual projector: slice embeddings -> 64 tokens
    in the language model's hidden size (report_lm/projector.py)."""
    from report_lm.projector import VisualProjector

    state = torch.load(state_path)
    dim, hidden = state["norm.weight"].shape[0], state["down.weight"].shape[0]
    proj = VisualProjector(dim=dim, hidden=hidden, queries=state["queries"].shape[0])
    proj.load_state_dict(state)
    x = torch.randn(37, dim)
    return export(
        proj, "report_projector", [x], ["slice_embeddings"], ["visual_tokens"],
        {"slice_embeddings": ["slices", dim], "visual_tokens": [proj.queries.shape[0], hidden]}, out,
    )  # fmt: skip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--agents", default="agents.pt", help="checkpoint in WORK")
    ap.add_argument("--report-projector", type=Path, help="report_lm/train.py --projector output (state dict)")
    ap.add_argument("--report-adapter", type=Path, help="report_lm/train.py LoRA adapter (safetensors)")
    args = ap.parse_args()
    w = args.work
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)

    ck = torch.load(w / args.agents, weights_only=False)
    # The encoders the agents were trained on (paths recorded in the checkpoint).
    t1, t2, synth = checkpoint_encoders(ck)
    fold_channels(t1), fold_channels(t2)
    agents = load_agents(ck["agents"])
    agents.eval()

    torch.manual_seed(0)
    cache = torch.load(w / "cache.pt", weights_only=False)
    study = (cache["test"] or cache["validation"])[0]
    s0 = study["series"][0]
    px = torch.from_numpy(s0["pixels"][:2]).float().unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    n = 2
    D, N, LV, S = WIDTH, GRID * GRID, len(L.LEVELS), len(L.SLOTS)
    seg_k = len(L.ANATOMY) + len(L.LESION) + len(L.LEVELS)
    models = []
    enc_shapes = {"pixels": ["batch", 3, IMAGE, IMAGE], "cls": ["batch", D], "patches": ["batch", N, D]}
    models.append(export(t1, "encoder_t1", [px], ["pixels"], ["cls", "patches"], enc_shapes, args.out))
    models.append(export(t2, "encoder_t2", [px], ["pixels"], ["cls", "patches"], enc_shapes, args.out))
    fam = torch.zeros(n, len(L.SYNTH_FAMILIES))
    fam[:, 0] = 1
    models.append(
        export(
            synth, "synthesizer", [px, fam], ["pixels", "family"], ["cls", "patches"],
            dict(enc_shapes, family=["batch", len(L.SYNTH_FAMILIES)]), args.out,
        )
    )  # fmt: skip
    # One slice for the slice agents' and series pool's golden I/O: their
    # segmentation is 60 x 128 x 128 floats (3.9 MB) per slice.
    with torch.no_grad():
        cls, patches = t2(px[:1])
    px0 = px[:1, :1].contiguous()
    seg_side = IMAGE if agents.slice.full_res else SliceAgents.OUT
    cells = SeriesPool.CELLS**2
    maps = {"level_patches": ["slices", LV, N], "level_cells": ["slices", LV, cells],
            "lesion_cells": ["slices", len(L.LESION), cells]}  # fmt: skip
    models.append(
        export(
            SliceAgentsExport(agents), "slice_agents", [patches, cls, px0], ["patches", "rec_cls", "pixels"],
            ["segmentation", "recognition", "level_patches", "level_cells", "lesion_cells"],
            dict(maps, patches=["slices", N, D], rec_cls=["slices", D], pixels=["slices", 1, IMAGE, IMAGE],
                 segmentation=["slices", seg_k, seg_side, seg_side],
                 recognition=["slices", len(L.FAMILIES) + len(L.PLANES) + len(L.REGIONS)]),
            args.out,
        )
    )  # fmt: skip
    # The series pool's golden input: both slices' maps (0.2 MB each).
    with torch.no_grad():
        cls2, patches2 = t2(px)
        maps2 = SeriesPool.slice_maps(agents.slice(cls2, patches2, px[:, :1].contiguous())[0], GRID)
    models.append(
        export(
            SeriesPoolExport(agents), "series_pool", [cls2, patches2, *maps2],
            ["cls", "patches", "level_patches", "level_cells", "lesion_cells"],
            ["series", "attention", "level_features", "level_mass"],
            dict(maps, cls=["slices", D], patches=["slices", N, D], series=[D], attention=["slices"],
                 level_features=[LV, D], level_mass=[LV]),
            args.out,
        )
    )  # fmt: skip
    k = 3
    series = torch.randn(1, k, D)
    slots = F.one_hot(torch.tensor([[0, 1, 3]]), S).float()
    mask = torch.ones(1, k)
    models.append(
        export(
            PatientExport(agents), "patient", [series, slots, mask], ["series", "slots", "mask"],
            ["patient", "retrieval", "attention"],
            {"series": [1, "series", D], "slots": [1, "series", S], "mask": [1, "series"], "patient": [1, D],
             "retrieval": [1, 64], "attention": [1, "series"]},
            args.out,
        )
    )  # fmt: skip
    lf = torch.randn(1, S, LV, D)
    sm = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0]])
    P, C, G = len(L.POSITIONS), len(L.CONDITIONS), len(L.GRADED)
    cond_outputs = ["presence", "side", "severity", "graded"] + (["retrieval"] if agents.condition_retrieval else [])
    models.append(
        export(
            ConditionsExport(agents), "conditions", [lf, sm], ["level_features", "slot_mask"], cond_outputs,
            {"level_features": [1, S, LV, D], "slot_mask": [1, S], "presence": [1, P, C], "side": [1, P, C, 3],
             "severity": [1, P, C, 3], "graded": [1, P, G, 3], "retrieval": [1, 64]},
            args.out,
        )
    )  # fmt: skip

    # Retrieval index: the training studies' reports in the space the
    # engine queries (the condition retrieval head's when the bundle has
    # it, else the patient embedding's).
    text = agents.retrieval_text if agents.condition_retrieval else agents.text
    with torch.no_grad():
        texts = text(torch.from_numpy(np.stack([st["text"] for st in cache["train"]]))).numpy()
    index_path = args.out / "retrieval_index.npy"
    np.save(index_path, texts.astype(np.float32))
    reports_path = args.out / "retrieval_reports.json"
    reports_path.write_text(
        json.dumps(
            [{"case": st["name"], "report": st["report"]} for st in cache["train"]], indent=1
        )
    )
    files = {"retrieval_index": index_path, "retrieval_reports": reports_path}
    if args.report_projector:
        models.append(export_projector(args.report_projector, args.out))
    if args.report_adapter:
        files["report_adapter"] = args.out / "report_adapter.safetensors"
        shutil.copyfile(args.report_adapter, files["report_adapter"])
    manifest(args.out, models, files, retrieval_model="conditions" if agents.condition_retrieval else "patient")
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"bundle {args.out}: {total / 1e6:.1f} MB; encoder {flops_per_slice() / 1e9:.2f} GFLOPs per slice")


if __name__ == "__main__":
    main()
