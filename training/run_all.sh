#!/usr/bin/env bash
# Makes the default bundle from nothing: phantom dataset -> the product's
# preprocessing -> self-supervised encoders -> synthesizer and agents ->
# report agent projector and adapter -> ONNX bundle in models/spinefm-tiny ->
# evaluation report. SYNTHETIC data
# only. About two and a half hours on a 2-core CPU; not run by CI. Not run
# end to end since 0.7.0: the bundles since came from the incremental
# recipes in README.md, whose steps this script now takes from scratch.
#   training/run_all.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-work}
mkdir -p "$WORK"
if [[ ! -x .venv-train/bin/python ]]; then
  python3 -m venv .venv-train
  .venv-train/bin/pip install -q -r training/requirements.txt
fi
PY=$PWD/.venv-train/bin/python
cargo build --release -q --bin spineagent
BIN=$PWD/target/release/spineagent
[[ -f "$WORK/ds/manifest.json" ]] || "$BIN" phantom dataset --count 240 --seed 1001 --out "$WORK/ds"
# More studies for the slice agents alone (herniation in 9 of 10, so they
# see many more extrusions than the main split's handful), and fresh studies
# for the reporting thresholds (calibrate.py --calibration).
[[ -f "$WORK/extra_ds/manifest.json" ]] ||
  "$BIN" phantom dataset --count 160 --seed 5005 --prevalence herniation=0.9 --out "$WORK/extra_ds"
[[ -f "$WORK/calib_ds/manifest.json" ]] || "$BIN" phantom dataset --count 272 --seed 3003 --out "$WORK/calib_ds"
cd training
"$PY" prepare.py --dataset "../$WORK/ds" --binary "$BIN" --out "../$WORK/cache.pt"
"$PY" prepare.py --dataset "../$WORK/extra_ds" --binary "$BIN" --out "../$WORK/extra.pt" --prep "../$WORK/extra_prep"
"$PY" prepare.py --dataset "../$WORK/calib_ds" --binary "$BIN" --out "../$WORK/calib.pt" --prep "../$WORK/calib_prep"
# The two encoders pre-train side by side, one core each.
"$PY" pretrain.py --cache "../$WORK/cache.pt" --family t1 --out "../$WORK/enc_t1.pt" --minutes 20 --batch 32 --threads 1 &
"$PY" pretrain.py --cache "../$WORK/cache.pt" --family t2 --out "../$WORK/enc_t2.pt" --minutes 20 --batch 32 --threads 1 --seed 1 &
wait
# Dense supervised adaptation of both encoders (see finetune.py for why).
"$PY" finetune.py --cache "../$WORK/cache.pt" --family t1 --encoder "../$WORK/enc_t1.pt" --out "../$WORK/enc_t1_ft.pt" --minutes 14 --batch 32 --threads 1 &
"$PY" finetune.py --cache "../$WORK/cache.pt" --family t2 --encoder "../$WORK/enc_t2.pt" --out "../$WORK/enc_t2_ft.pt" --minutes 14 --batch 32 --threads 1 --seed 1 &
wait
# Agents in two stages: slice agents (segmentation, recognition), then the
# rest on their frozen outputs; the ablation the same way, shorter.
"$PY" train_agents.py --cache "../$WORK/cache.pt" --t1 "../$WORK/enc_t1_ft.pt" --t2 "../$WORK/enc_t2_ft.pt" \
  --out "../$WORK/agents.pt" --synth-minutes 3 --slice-minutes 30 --condition-minutes 4 --study-minutes 4 \
  --ablation-slice-minutes 6 --ablation-condition-minutes 1.5 --ablation-study-minutes 2 --threads 2 \
  --hard-negatives --slice-extra "../$WORK/extra.pt" --stats-cache "../$WORK/stats"
# The report agent's visual projector and LoRA adapter (SmolLM2-135M-Instruct
# from scripts/setup), on the same slice embeddings the engine computes.
# The slice embeddings come from the engine itself (`analyze --out` writes
# them), so the bundle must exist first: export, then the projector and
# adapter, then export again with them.
"$PY" export.py --work "../$WORK" --out ../models/spinefm-tiny
"$PY" report_lm/slices.py "$BIN" ../models/spinefm-tiny "../$WORK/ds" "../$WORK/slice_cls.pt"
SPINEAGENT_DATASET="../$WORK/ds" "$PY" report_lm/train.py 30 "../$WORK/report_adapter.safetensors" \
  --slices "../$WORK/slice_cls.pt" --projector "../$WORK/report_projector.pt"
"$PY" export.py --work "../$WORK" --out ../models/spinefm-tiny \
  --report-projector "../$WORK/report_projector.pt" --report-adapter "../$WORK/report_adapter.safetensors"
"$PY" calibrate.py --work "../$WORK" --bundle ../models/spinefm-tiny \
  --calibration "../$WORK/calib.pt" --calibration-prep "../$WORK/calib_prep"
"$PY" evaluate.py --work "../$WORK" --out ../models/spinefm-tiny/EVALUATION.md
