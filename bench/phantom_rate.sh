#!/usr/bin/env bash
# Phantom generation rate: slices/s for a dataset of N studies (all four
# vendor styles, random regions and findings, DICOM + labels + truth
# written), on all cores, release build.
#
#   bench/phantom_rate.sh [studies] [seed]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-12}
seed=${2:-1}
cargo build --release --bins -q
out=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}" phantom.XXXXXX)
trap 'rm -rf "$out"' EXIT
start=$(date +%s.%N)
target/release/spineagent phantom dataset --count "$n" --seed "$seed" --out "$out" >/dev/null
end=$(date +%s.%N)
python3 - "$out/manifest.json" "$(echo "$end - $start" | bc -l)" "$(nproc)" "$(du -sm "$out" | cut -f1)" <<'PY'
import json, sys
m = json.load(open(sys.argv[1])); secs = float(sys.argv[2])
slices = sum(s["slices"] for s in m["studies"])
print(f"| studies | slices | seconds | slices/s | studies/min | cores | MB written |")
print(f"|---|---|---|---|---|---|---|")
print(f"| {len(m['studies'])} | {slices} | {secs:.1f} | {slices/secs:.0f} | {60*len(m['studies'])/secs:.1f} | {sys.argv[3]} | {sys.argv[4]} |")
PY
