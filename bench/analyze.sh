#!/usr/bin/env bash
# Analysis latency of one standard lumbar phantom study (sagittal T1, T2,
# STIR, axial T2; SYNTHETIC) with the default bundle, 2 threads:
# spineagent (decode + preprocess + the seven models, Rust) against the same
# analysis in Python (pydicom + numpy + onnxruntime, bench/analyze_reference.py).
# Also checks that both give the same presence probabilities.
#   bench/analyze.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
scripts/setup >/dev/null
cargo build --release -q --bin spineagent
bin=target/release/spineagent
py=.venv/bin/python
work=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}" analyze.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$bin" phantom study --seed 424242 --region lumbar --vendor siemens --out "$work/study" \
  --finding herniation:L4-L5:left:severe:extrusion >/dev/null
files=$(find "$work/study" -name '*.dcm' | sort)
export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 RAYON_NUM_THREADS=2
for i in $(seq "$runs"); do
  "$bin" analyze --json --threads 2 --threshold 0 $files > "$work/ours_$i.json"
done
$py - "$work" "$runs" <<'PY'
import json, sys
work, runs = sys.argv[1], int(sys.argv[2])
a = json.load(open(f"{work}/ours_1.json"))
json.dump({s["series_instance_uid"]: [s["family"], s["plane"]] for s in a["series"]}, open(f"{work}/families.json", "w"))
PY
for i in $(seq "$runs"); do
  $py bench/analyze_reference.py models/spinefm-tiny "$work/families.json" 2 $files > "$work/theirs_$i.json"
done
$py - "$work" "$runs" <<'PY'
import json, sys, statistics
work, runs = sys.argv[1], int(sys.argv[2])
ours = [json.load(open(f"{work}/ours_{i}.json")) for i in range(1, runs + 1)]
theirs = [json.load(open(f"{work}/theirs_{i}.json")) for i in range(1, runs + 1)]
o = statistics.median(x["seconds"] for x in ours)
t = statistics.median(x["seconds"] for x in theirs)
slices = sum(len(s["attention"]) for s in ours[0]["series"])
diffs = [abs(p - theirs[0]["probabilities"][f"{lv}|{c}"]) for lv, c, p in ours[0]["probabilities"]]
print(f"| analysis of one lumbar study ({len(ours[0]['series'])} stacks, {slices} slices), median of {runs} |"
      f" spineagent {o:.2f} s | pydicom + numpy + onnxruntime {t:.2f} s | {t / o:.2f}x |")
print(f"presence probabilities, spineagent vs Python: max abs difference {max(diffs):.2e} over {len(diffs)}")
PY
