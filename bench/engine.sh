#!/usr/bin/env bash
# Engine benchmarks (issue 4), each side by side with its peer:
#  1. decode + preprocess slices/s: spineagent (Rust, CPU) vs pydicom + numpy
#     on the same 500 MR instances of 512x512 (bench/make_mr_instances.py);
#  2. ViT-S/16-shaped encoder slices/s, batch 1 and 8, 2 threads:
#     spineagent (ort, load-dynamic) vs Python onnxruntime on the same file;
#     and the fraction of the machine's measured float32 GEMM peak.
#   bench/engine.sh [instances] [encoder_slices]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}
m=${2:-32}
scripts/setup >/dev/null
cargo build --release -q -p spineagent-engine --example bench
bin=target/release/examples/bench
py=.venv/bin/python
work=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}" engine.XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 bench/make_mr_instances.py "$work/in" "$n"
export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 RAYON_NUM_THREADS=2 THREADS=2
ours=$("$bin" preprocess "$work"/in/*.dcm)
theirs=$($py bench/engine_reference.py preprocess "$work"/in/*.dcm)
vit=target/test-bundles/vit
ours_enc=$("$bin" encoder "$vit" vit "$m")
theirs_enc=$($py bench/engine_reference.py encoder "$vit/vit.onnx" "$m" 2)
peak=$($py bench/engine_reference.py matmul 2)
$py - "$ours" "$theirs" "$ours_enc" "$theirs_enc" "$peak" <<'PY'
import json, sys
ours, theirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
oe = [json.loads(l) for l in sys.argv[3].splitlines()]
te = [json.loads(l) for l in sys.argv[4].splitlines()]
peak = json.loads(sys.argv[5])["gflops"]
# ViT-S/16 at 224: 197 patches + 1 CLS + 4 registers = 202 tokens, width 384, 12 blocks.
t, d = 202, 384
flops = 12 * (2 * t * d * 3 * d + 2 * t * d * d + 2 * 2 * t * d * 4 * d + 2 * 2 * t * t * d) + 2 * 196 * 3 * 16 * 16 * d
print("| benchmark | spineagent | peer | ratio |")
print("|---|---|---|---|")
print(f"| decode + preprocess, {ours['slices']} slices 512x512 | {ours['slices_per_s']} slices/s | pydicom + numpy {theirs['slices_per_s']} slices/s | {ours['slices_per_s']/theirs['slices_per_s']:.2f} |")
for o, t_ in zip(oe, te):
    gf = o["slices_per_s"] * flops / 1e9
    print(f"| ViT-S/16 encoder, batch {o['batch']}, 2 threads | {o['slices_per_s']} slices/s ({gf:.0f} GFLOP/s, {100*gf/peak:.0f}% of the {peak} GFLOP/s numpy GEMM peak) | Python onnxruntime {t_['slices_per_s']} slices/s | {o['slices_per_s']/t_['slices_per_s']:.2f} |")
print(f"\nEncoder FLOPs per slice: {flops/1e9:.2f} GFLOP.")
PY
