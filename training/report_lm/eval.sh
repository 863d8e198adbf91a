#!/bin/bash
# usage: eval.sh SEED [ADAPTER]  -> $EVAL_DIR/{lora,base}_SEED/report_agent.json
set -eu
cd "$(dirname "$0")/../.."
EVAL_DIR=${EVAL_DIR:-target/report-lm-eval}
mkdir -p "$EVAL_DIR"
S=$1; A=${2:-}
if [ -n "$A" ]; then OUT=$EVAL_DIR/lora_$S; EXTRA="--lm-adapter $A"; else OUT=$EVAL_DIR/base_$S; EXTRA=""; fi
[ -d $EVAL_DIR/p$S ] || target/debug/spineagent phantom study --seed $S --region lumbar --vendor siemens --standard --out $EVAL_DIR/p$S
nice -n 19 target/debug/spineagent analyze $EVAL_DIR/p$S --threads 2 \
  --language-model models/lm/SmolLM2-135M-Instruct.Q4_1.gguf $EXTRA \
  --max-new-tokens 320 --report-budget 600 --out $OUT > $OUT.log 2>&1
python3 - $OUT <<'PY'
import json, sys
d = json.load(open(sys.argv[1] + "/report_agent.json"))
print(sys.argv[1], "source:", d["source"])
for i, dr in enumerate(d["drafts"]):
    print(f" draft {i}: new_tokens={dr['new_tokens']} prompt={dr['prompt_tokens']} tok/s={dr['tokens_per_second']:.2f} discrepancies={len(dr['discrepancies'])} {dr['discrepancies'][:4]}")
PY
