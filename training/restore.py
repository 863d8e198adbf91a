"""Rebuilds training checkpoints from an exported bundle, so that training
can continue from the shipped models when the work directory that made
them is gone (a fresh machine): the encoders, the synthesizer's per-layer
weights and the agents, read back from the ONNX initializers.

    python training/restore.py --bundle models/spinefm-tiny --work WORK
    -> WORK/enc_t1_ft.pt, WORK/enc_t2_ft.pt, WORK/agents.pt
       (and WORK/report_projector.pt, WORK/report_adapter.safetensors where
       the bundle has a report agent, for export.py to ship again)

torch.onnx.export keeps a parameter's name where it feeds a node directly
(convolutions, Gemm, LayerNorm, biases) but gives a Linear's weight an
`onnx::MatMul_N` name (transposed) when its input has more than two
dimensions; such a weight is named after the bias that the Add right after
its MatMul adds. Every restored module is checked against ONNX Runtime on
the bundle's golden inputs, so a wrong mapping cannot pass silently.

Not in the bundle, so not restored: the text projection and CLIP scale
(retrieval training starts them afresh), the encoders' mask token (only
pre-training uses it) and the ablation's agents (retrain them)."""

import argparse
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from spinefm.model import Encoder, Synthesizer
from spinefm.pipeline import Agents, has_contrast
from export import ConditionsExport, PatientExport, SeriesPoolExport, SliceAgentsExport


def named_parameters(path):
    """{parameter name as the module wrote it: tensor} from one ONNX file."""
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    named = {}
    for name, value in inits.items():
        if not name.startswith("onnx::"):
            named[name] = value
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or not node.input[1].startswith("onnx::"):
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        bias = [i for n in adds for i in n.input if i.endswith(".bias") and i in inits]
        if len(bias) != 1:
            raise SystemExit(f"{path}: cannot name the weight {node.input[1]} (no single bias after it)")
        named[bias[0][: -len(".bias")] + ".weight"] = inits[node.input[1]].T.copy()
    return named


def load_into(module, named, prefix, skip=()):
    """Copies `prefix`+name tensors into the module's state; every state
    entry must be found, except those in `skip`."""
    state = module.state_dict()
    missing = []
    for key in state:
        source = prefix + key
        value = named.get(source, named.get(source + ".1"))  # ".1": renamed where it clashed with an output name
        if value is None:
            if key not in skip:
                missing.append(key)
            continue
        if tuple(value.shape) != tuple(state[key].shape):
            raise SystemExit(f"{source}: shape {value.shape} in the bundle, {tuple(state[key].shape)} in the model")
        state[key] = torch.from_numpy(np.array(value))
    if missing:
        raise SystemExit(f"not in the bundle: {missing}")
    module.load_state_dict(state)


def check(module, bundle, name):
    """The restored module against ONNX Runtime on the golden inputs."""
    sess = ort.InferenceSession(str(bundle / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.load(bundle / "golden" / f"{name}.{i.name}.npy") for i in sess.get_inputs()}
    outs = sess.run(None, feeds)
    module.eval()
    with torch.no_grad():
        ref = module(*[torch.from_numpy(feeds[i.name]) for i in sess.get_inputs()])
    ref = ref if isinstance(ref, tuple) else (ref,)
    worst = max(float(np.abs(o - r.numpy()).max()) for o, r in zip(outs, ref))
    if worst > 1e-3:
        raise SystemExit(f"{name}: restored model differs from the bundle by {worst}")
    print(f"{name}: restored, max difference to ONNX Runtime {worst:.1e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument(
        "--steps", type=int, nargs=4, default=[50, 3806, 545, 428], metavar=("SYNTH", "SLICE", "CONDITIONS", "STUDY"),
        help="training steps behind the bundle (default: bundle 0.4.x, from its EVALUATION.md)",
    )
    args = ap.parse_args()
    b, w = args.bundle, args.work
    w.mkdir(parents=True, exist_ok=True)

    encoders = {}
    for fam in ("t1", "t2"):
        e = Encoder()
        load_into(e, named_parameters(b / f"encoder_{fam}.onnx"), "", skip=("mask_token",))
        check(e, b, f"encoder_{fam}")
        encoders[fam] = e
        torch.save({"encoder": e.state_dict(), "restored_from": str(b)}, w / f"enc_{fam}_ft.pt")
    synth = Synthesizer(encoders["t1"], encoders["t2"])
    synth.weights.data.copy_(torch.from_numpy(np.array(named_parameters(b / "synthesizer.onnx")["weights"])))
    check(synth, b, "synthesizer")

    # What the bundle holds: the full-resolution refinement (0.5.0 on) and
    # the retrieval head over the condition answers (0.5.0 on). The series
    # pool must be this code's (0.6.0 on: its level statistics changed).
    slice_named = named_parameters(b / "slice_agents.onnx")
    conditions_named = named_parameters(b / "conditions.onnx")
    agents = Agents(
        full_res=any(k.startswith("a.refine.") for k in slice_named),
        condition_retrieval=any(k.startswith("retrieval.") for k in conditions_named),
        contrast=has_contrast(np.array(conditions_named["a.evidence_weight"]).shape),
    )
    parts = [
        ("slice_agents", agents.slice, SliceAgentsExport),
        ("series_pool", agents.series, SeriesPoolExport),
        ("patient", agents.patient, PatientExport),
        ("conditions", agents.conditions, ConditionsExport),
    ]
    for name, module, wrapper in parts:
        named = named_parameters(b / f"{name}.onnx")
        load_into(module, named, "a.")
        if name == "conditions" and agents.condition_retrieval:
            load_into(agents.retrieval, named, "retrieval.")
        check(wrapper(agents), b, name)
    if agents.condition_retrieval:
        # The report-text side of that head is not in the bundle (its index
        # holds the projected texts only): stage B3 trains it again.
        print("retrieval_text: not in the bundle, left untrained (run stage B3)")
    torch.save(
        {
            "synthesizer": synth.weights.detach(),
            "agents": agents.state_dict(),
            "agents_ablation": None,
            # Steps of the run that made the bundle (its EVALUATION.md), so
            # that steps trained on top of these add up.
            "steps": {"synthesizer": args.steps[0],
                      "agents": {"slice": args.steps[1], "conditions": args.steps[2], "study": args.steps[3]},
                      "ablation": {"slice": 0, "conditions": 0, "study": 0}},
            "restored_from": str(b),
            "t1": str(w / "enc_t1_ft.pt"),
            "t2": str(w / "enc_t2_ft.pt"),
        },
        w / "agents.pt",
    )
    print(f"-> {w}/enc_t1_ft.pt, enc_t2_ft.pt, agents.pt")
    restore_report_agent(b, w)


def restore_report_agent(b, w):
    """The report agent's projector (slice class tokens -> visual tokens;
    the encoders are the bundle's, so it stays valid) and LoRA adapter, in
    the form export.py's --report-projector and --report-adapter take."""
    if not (b / "report_projector.onnx").exists():
        return
    from report_lm.projector import VisualProjector

    named = named_parameters(b / "report_projector.onnx")
    dim, hidden = named["norm.weight"].shape[0], named["down.bias"].shape[0]
    proj = VisualProjector(dim=dim, hidden=hidden, queries=named["queries"].shape[0])
    load_into(proj, named, "")
    check(proj, b, "report_projector")
    torch.save(proj.state_dict(), w / "report_projector.pt")
    if (b / "report_adapter.safetensors").exists():
        shutil.copyfile(b / "report_adapter.safetensors", w / "report_adapter.safetensors")
    print(f"-> {w}/report_projector.pt, report_adapter.safetensors")


if __name__ == "__main__":
    main()
