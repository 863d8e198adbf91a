#!/usr/bin/env python3
"""The peers for bench/engine.sh, in the tools a user would otherwise pick:
  preprocess FILE...          pydicom + numpy, the same transform (kernels/src/spec.rs)
  encoder ONNX N THREADS      Python onnxruntime, batch 1 and 8
  matmul THREADS              numpy float32 GEMM peak (GFLOP/s), the machine's measured peak
Prints one JSON object per line."""
import json
import os
import sys
import time

import numpy as np


def weights(inp, out):
    scale = inp / out
    support = max(1.0, scale)
    w = np.zeros((out, inp), dtype=np.float64)
    j = np.arange(inp) + 0.5
    for i in range(out):
        c = (i + 0.5) * scale
        row = np.maximum(0.0, 1.0 - np.abs(j - c) / support)
        w[i] = row / row.sum()
    return w.astype(np.float32)


def preprocess(x, invert, resize=256, crop=224, lo_p=0.5, hi_p=99.5,
               mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    flat = x.ravel()
    n = flat.size
    rank = lambda p: min(max(int(np.ceil(p / 100.0 * n)), 1), n) - 1
    lo, hi = np.partition(flat, [rank(lo_p), rank(hi_p)])[[rank(lo_p), rank(hi_p)]]
    y = np.clip((x.astype(np.float32) - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros(x.shape, np.float32)
    if invert:
        y = 1.0 - y
    side = max(x.shape)
    pad = np.zeros((side, side), np.float32)
    r0, c0 = (side - x.shape[0]) // 2, (side - x.shape[1]) // 2
    pad[r0:r0 + x.shape[0], c0:c0 + x.shape[1]] = y
    w = weights(side, resize)
    o = (resize - crop) // 2
    wc = w[o:o + crop]
    img = wc @ pad @ wc.T
    return np.stack([(img - m) / s for m, s in zip(mean, std)])


def bench_preprocess(files):
    import pydicom
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        outs = []
        for f in files:
            ds = pydicom.dcmread(f)
            arr = ds.pixel_array
            frames = arr if arr.ndim == 3 else arr[None]
            inv = ds.get("PhotometricInterpretation", "") == "MONOCHROME1"
            for fr in frames:
                outs.append(preprocess(fr.astype(np.int32), inv))
        best = min(best, time.perf_counter() - t)
    print(json.dumps({"slices": len(outs), "seconds": round(best, 4), "slices_per_s": round(len(outs) / best, 1)}))


def bench_encoder(path, n, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dims = inp.shape[1:]
    for batch in (1, 8):
        x = (np.arange(batch * int(np.prod(dims))) % 97).astype(np.float32).reshape([batch] + dims) / 97.0
        sess.run(None, {inp.name: x})
        runs = max(n // batch, 1)
        t = time.perf_counter()
        for _ in range(runs):
            sess.run(None, {inp.name: x})
        s = time.perf_counter() - t
        print(json.dumps({"batch": batch, "slices": runs * batch, "seconds": round(s, 4), "slices_per_s": round(runs * batch / s, 2)}))


def bench_matmul(threads):
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    a @ b
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    print(json.dumps({"gflops": round(2 * n ** 3 / best / 1e9, 1), "threads": threads}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "preprocess":
        bench_preprocess(sys.argv[2:])
    elif cmd == "encoder":
        bench_encoder(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "matmul":
        bench_matmul(int(sys.argv[2]))
