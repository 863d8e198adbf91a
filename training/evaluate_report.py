"""Evaluates the report text (SYNTHETIC: phantom studies, no clinical claim).

On held-out phantom studies (seeds never used in training, all four vendor
styles), `spineagent analyze --language-model` runs twice per study:
- with `--unguided`: the language model's first draft, unsteered and
  unchecked ("model alone");
- as the product runs it (grounded decoding on): its last draft, steered
  but not yet judged ("model, grounded decoding"), and the text the report
  agent used after verification ("model + grounded decoding + verifier",
  which is the composer's when every draft failed); the deterministic
  composer's text (report_composer.txt) too.
Each is scored against the phantom's ground truth (finding-level precision
and recall at condition + level, read by `spineagent verify-report`, the
verifier's own reader) and against the phantom's reference report (BLEU-4,
ROUGE-L on lower-cased word tokens). Also: tokens per second and time to a
full report on this CPU.

  python training/evaluate_report.py --binary target/release/spineagent \
      --lm models/lm/SmolLM2-135M-Instruct.Q4_1.gguf --count 6 \
      --out models/spinefm-tiny/REPORT_EVALUATION.md

Only the standard library: runs without the training venv.
"""

import argparse
import collections
import json
import math
import os
import re
import subprocess
import tempfile

VENDORS = ["siemens", "ge", "philips", "canon"]


def words(text):
    return re.findall(r"[a-z0-9]+", text.lower())


def bleu4(candidate, reference):
    c, r = words(candidate), words(reference)
    if not c:
        return 0.0
    logs = []
    for n in range(1, 5):
        cn = collections.Counter(tuple(c[i:i + n]) for i in range(len(c) - n + 1))
        rn = collections.Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
        overlap = sum(min(v, rn[k]) for k, v in cn.items())
        total = max(sum(cn.values()), 1)
        logs.append(math.log((overlap + 1) / (total + 1)))  # add-one smoothing
    bp = 1.0 if len(c) > len(r) else math.exp(1 - len(r) / max(len(c), 1))
    return bp * math.exp(sum(logs) / 4)


def rouge_l(candidate, reference):
    c, r = words(candidate), words(reference)
    if not c or not r:
        return 0.0
    prev = [0] * (len(r) + 1)
    for x in c:
        cur = [0]
        for j, y in enumerate(r):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    p, rec = lcs / len(c), lcs / len(r)
    return 0.0 if lcs == 0 else 2 * p * rec / (p + rec)


def stated(binary, text, tmp):
    path = os.path.join(tmp, "text.txt")
    with open(path, "w") as f:
        f.write(text)
    out = subprocess.run([binary, "verify-report", path], capture_output=True, text=True, check=True).stdout
    return {(s["condition"], s["level"]) for s in json.loads(out)["stated"]}


def median(values):
    return sorted(values)[len(values) // 2] if values else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/spineagent")
    ap.add_argument("--lm", default="models/lm/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--count", type=int, default=6)
    ap.add_argument("--seed", type=int, default=990_000)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--budget", type=float, default=600.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    systems = ["composer", "model alone", "model, grounded decoding", "model + grounded decoding + verifier"]
    tp = collections.Counter()
    fp = collections.Counter()
    fn = collections.Counter()
    bleu = collections.defaultdict(list)
    rouge = collections.defaultdict(list)
    sources = collections.Counter()
    speed, seconds, steered, reasons = [], [], [], []
    speed_alone, seconds_alone = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.count):
            seed, vendor = args.seed + i, VENDORS[i % 4]
            study, out = os.path.join(tmp, f"s{i}"), os.path.join(tmp, f"o{i}")
            subprocess.run([args.binary, "phantom", "study", "--seed", str(seed), "--region", "lumbar",
                            "--vendor", vendor, "--standard", "--out", study], check=True, capture_output=True)
            def analyze(out, *extra):
                subprocess.run([args.binary, "analyze", "--threads", "2", "--language-model", args.lm,
                                "--max-new-tokens", str(args.max_new_tokens), "--report-budget", str(args.budget),
                                *extra, "--out", out, study], check=True, capture_output=True)
                return json.load(open(os.path.join(out, "report_agent.json")))

            alone = analyze(out + "-unguided", "--unguided")
            agent = analyze(out)
            truth = json.load(open(os.path.join(study, "truth.json")))
            texts = {
                "composer": open(os.path.join(out, "report_composer.txt")).read(),
                "model alone": alone["drafts"][0]["text"] if alone["drafts"] else "",
                "model, grounded decoding": agent["drafts"][-1]["text"] if agent["drafts"] else "",
                "model + grounded decoding + verifier": open(os.path.join(out, "report.txt")).read(),
            }
            sources[agent["source"]] += 1
            reasons.append(agent["reason"])
            for d in agent["drafts"]:
                speed.append(d["tokens_per_second"])
                seconds.append(d["seconds"])
                steered.append(d.get("steered", 0))
            for d in alone["drafts"]:
                speed_alone.append(d["tokens_per_second"])
                seconds_alone.append(d["seconds"])
            want = {(f["condition"], f["level"]) for f in truth["findings"]}
            reference = truth["report_findings"] + "\n" + truth["report_impression"]
            for name, text in texts.items():
                got = stated(args.binary, text, tmp)
                tp[name] += len(got & want)
                fp[name] += len(got - want)
                fn[name] += len(want - got)
                bleu[name].append(bleu4(text, reference))
                rouge[name].append(rouge_l(text, reference))
            print(f"study {i + 1}/{args.count} ({vendor}): text from {agent['source']}", flush=True)

    def ratio(a, b):
        return f"{a / b:.3f}" if b else "n/a"

    lines = [
        "# Report text evaluation (SYNTHETIC)",
        "",
        "Phantom studies only; no clinical accuracy is claimed. Command:",
        "",
        "```sh",
        f"python training/evaluate_report.py --binary {args.binary} --lm {args.lm} --count {args.count} "
        f"--max-new-tokens {args.max_new_tokens} --out {args.out}",
        "```",
        "",
        f"{args.count} held-out lumbar phantom studies (seeds {args.seed}..{args.seed + args.count - 1}, "
        "vendor styles Siemens, GE, Philips, Canon in turn; standard protocol). Findings: condition and level "
        "as `spineagent verify-report` reads them from the text, against the phantom's ground truth "
        "(so the agents' own errors count against every system). BLEU-4 (add-one smoothing) and ROUGE-L F "
        "against the phantom's reference report, lower-cased word tokens.",
        "",
        "| system | precision | recall | BLEU-4 | ROUGE-L |",
        "|---|---|---|---|---|",
    ]
    for name in systems:
        lines.append(
            f"| {name} | {ratio(tp[name], tp[name] + fp[name])} | {ratio(tp[name], tp[name] + fn[name])} | "
            f"{sum(bleu[name]) / len(bleu[name]):.3f} | {sum(rouge[name]) / len(rouge[name]):.3f} |"
        )
    lines += [
        "",
        f"Text used by the agent: {dict(sources)}.",
        "",
        "Why, per study: " + "; ".join(f"{i + 1}: {r}" for i, r in enumerate(reasons)) + ".",
        "",
        f"Grounded decoding: {len(speed)} drafts; decode speed median {median(speed):.1f} tokens/s "
        "(every decoded token, those taken back included); "
        f"time per draft (prefill + decode) median {median(seconds):.1f} s (max {max(seconds):.1f} s); "
        f"steered median {median(steered)} times per draft (max {max(steered)}).",
        f"Model alone: {len(speed_alone)} drafts; decode speed median {median(speed_alone):.1f} tokens/s; "
        f"time per draft median {median(seconds_alone):.1f} s (max {max(seconds_alone):.1f} s).",
        "All on the project's 2-core CPU, debug or release build as the command names.",
        "",
    ]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
