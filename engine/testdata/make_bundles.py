#!/usr/bin/env python3
"""Builds the engine's test bundles with the onnx helper API (no PyTorch):

  tiny/  a 4-class linear head on 3x8x8 inputs with known weights, and
  vit/   a ViT-S/16-shaped encoder (patch 16, 4 register tokens, width 384,
         depth 12, 6 heads) with seeded random weights, for shapes and speed.

Each bundle gets bundle.toml (sha256 of every file), a golden input and the
golden output computed by Python onnxruntime. Usage: make_bundles.py OUT_DIR
"""
import hashlib
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(model, path):
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def tiny(out, half=False):
    """A 4-class linear head on 3x8x8 inputs with known weights; with
    `half`, float16 input and output (Cast at the edges)."""
    rng = np.random.default_rng(8 if half else 7)
    w = rng.standard_normal((3 * 8 * 8, 4)).astype(np.float32) * 0.1
    b = np.array([0.1, -0.2, 0.3, 0.0], dtype=np.float32)
    io_type = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    first, last = ("pixels32", "logits32") if half else ("pixels", "logits")
    nodes = [
        helper.make_node("Flatten", [first], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w", "b"], [last]),
    ]
    if half:
        nodes.insert(0, helper.make_node("Cast", ["pixels"], ["pixels32"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Cast", ["logits32"], ["logits"], to=TensorProto.FLOAT16))
    graph = helper.make_graph(
        nodes, "tiny16" if half else "tiny",
        [helper.make_tensor_value_info("pixels", io_type, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", io_type, ["batch", 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float16 if half else np.float32)
    return model, {"pixels": x}


def vit(out, width=384, depth=12, heads=6, registers=4, image=224, patch=16):
    rng = np.random.default_rng(11)
    n_patch = (image // patch) ** 2
    tokens = 1 + registers + n_patch
    init, nodes = [], []

    def param(name, shape, scale=0.02):
        init.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(name, values, dtype=np.int64):
        init.append(numpy_helper.from_array(np.array(values, dtype=dtype), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def layernorm(x, name):
        g = param(name + ".g", (width,), 0.0)
        init[-1] = numpy_helper.from_array(np.ones(width, np.float32), g)
        b = param(name + ".b", (width,), 0.0)
        return node("LayerNormalization", [x, g, b], name, axis=-1, epsilon=1e-6)

    x = node("Conv", ["pixels", param("patch.w", (width, 3, patch, patch)), param("patch.b", (width,))], "patch",
             strides=[patch, patch])
    x = node("Reshape", [x, const("shape.flat", [0, width, n_patch])], "patch.flat")
    x = node("Transpose", [x], "patch.seq", perm=[0, 2, 1])
    # CLS and register tokens, broadcast over the batch.
    special = param("special", (1, 1 + registers, width))
    batch_shape = node("Shape", ["pixels"], "in.shape")
    batch = node("Slice", [batch_shape, const("s0", [0]), const("s1", [1])], "batch")
    expand_to = node("Concat", [batch, const("spec.rest", [1 + registers, width])], "special.shape", axis=0)
    special_b = node("Expand", [special, expand_to], "special.b")
    x = node("Concat", [special_b, x], "tokens", axis=1)
    x = node("Add", [x, param("pos", (1, tokens, width))], "tokens.pos")
    head_dim = width // heads
    for l in range(depth):
        p = f"blk{l}"
        h = layernorm(x, p + ".ln1")
        qkv = node("MatMul", [h, param(p + ".qkv", (width, 3 * width))], p + ".qkv.out")
        qkv = node("Reshape", [qkv, const(p + ".qkv.shape", [0, 0, 3, heads, head_dim])], p + ".qkv.r")
        qkv = node("Transpose", [qkv], p + ".qkv.t", perm=[2, 0, 3, 1, 4])
        q = node("Gather", [qkv, const(p + ".i0", 0)], p + ".q", axis=0)
        k = node("Gather", [qkv, const(p + ".i1", 1)], p + ".k", axis=0)
        v = node("Gather", [qkv, const(p + ".i2", 2)], p + ".v", axis=0)
        kt = node("Transpose", [k], p + ".kt", perm=[0, 1, 3, 2])
        att = node("MatMul", [q, kt], p + ".att")
        att = node("Mul", [att, const(p + ".scale", np.float32(head_dim ** -0.5), np.float32)], p + ".att.s")
        att = node("Softmax", [att], p + ".att.p", axis=-1)
        o = node("MatMul", [att, v], p + ".o")
        o = node("Transpose", [o], p + ".o.t", perm=[0, 2, 1, 3])
        o = node("Reshape", [o, const(p + ".o.shape", [0, 0, width])], p + ".o.r")
        o = node("MatMul", [o, param(p + ".proj", (width, width))], p + ".proj.out")
        o = node("Mul", [o, param(p + ".ls1", (width,), 0.1)], p + ".ls1.out")
        x = node("Add", [x, o], p + ".res1")
        h = layernorm(x, p + ".ln2")
        h = node("MatMul", [h, param(p + ".fc1", (width, 4 * width))], p + ".fc1.out")
        h = node("Gelu", [h], p + ".gelu") if False else node("Mul", [h, node("Sigmoid", [node("Mul", [h, const(p + ".gk", np.float32(1.702), np.float32)], p + ".gk.out")], p + ".sig")], p + ".gelu")
        h = node("MatMul", [h, param(p + ".fc2", (4 * width, width))], p + ".fc2.out")
        h = node("Mul", [h, param(p + ".ls2", (width,), 0.1)], p + ".ls2.out")
        x = node("Add", [x, h], p + ".res2")
    x = layernorm(x, "norm")
    cls = node("Gather", [x, const("cls.i", 0)], "cls.raw", axis=1)
    nodes.append(helper.make_node("Identity", [cls], ["embedding"]))
    graph = helper.make_graph(
        nodes, "vit_s16",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, image, image])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", width])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, {"pixels": rng.standard_normal((1, 3, image, image)).astype(np.float32)}


TOML = """# Test bundle made by engine/testdata/make_bundles.py (synthetic weights).
name = "{name}"
version = "0.0.1"

[preprocess]
low_percentile = 0.5
high_percentile = 99.5
resize = 256
crop = 224
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]

[[model]]
name = "{name}"
file = "{name}.onnx"
sha256 = "{sha}"
golden_input = "golden_input.npy"
golden_input_sha256 = "{gi}"
golden_output = "golden_output.npy"
golden_output_sha256 = "{go}"
tolerance = {tol}

[[model.inputs]]
name = "{iname}"
dtype = "{dtype}"
shape = {ishape}

[[model.outputs]]
name = "{oname}"
dtype = "{dtype}"
shape = {oshape}
"""


def write(out, name, model, feeds, ishape, oshape, dtype="float32", tol="1e-4"):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, name + ".onnx")
    save(model, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (iname, x), = feeds.items()
    y = sess.run(None, feeds)[0]
    # Golden files are float32 (half values are exact in float32).
    np.save(os.path.join(d, "golden_input.npy"), x.astype(np.float32))
    np.save(os.path.join(d, "golden_output.npy"), y.astype(np.float32))
    oname = sess.get_outputs()[0].name
    with open(os.path.join(d, "bundle.toml"), "w") as f:
        f.write(TOML.format(name=name, sha=sha256(path), gi=sha256(os.path.join(d, "golden_input.npy")),
                            go=sha256(os.path.join(d, "golden_output.npy")), iname=iname, oname=oname,
                            ishape=ishape, oshape=oshape, dtype=dtype, tol=tol))


def main():
    out = sys.argv[1]
    m, feeds = tiny(out)
    write(out, "tiny", m, feeds, '["batch", 3, 8, 8]', '["batch", 4]')
    m, feeds = tiny(out, half=True)
    write(out, "tiny16", m, feeds, '["batch", 3, 8, 8]', '["batch", 4]', dtype="float16", tol="1e-2")
    m, feeds = vit(out)
    write(out, "vit", m, feeds, '["batch", 3, 224, 224]', '["batch", 384]')


if __name__ == "__main__":
    main()
