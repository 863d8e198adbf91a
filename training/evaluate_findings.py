"""Precision and recall of the findings a bundle reports (condition and
level, at its own thresholds) on freshly generated standard lumbar phantom
studies (SYNTHETIC), for one or more bundles on the same studies: what the
draft report would state, without the report agent's language model (the
composer states exactly these). The studies are those of
evaluate_report.py (same seeds and vendors), so the two compare.

    python training/evaluate_findings.py --bundle models/spinefm-tiny --bundle OLD_BUNDLE --count 8

Only the standard library: runs without the training venv.
"""

import argparse
import json
import os
import subprocess
import tempfile

from evaluate_report import VENDORS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/spineagent")
    ap.add_argument("--bundle", action="append", required=True, help="a bundle directory (repeat to compare)")
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--seed", type=int, default=990_000)
    args = ap.parse_args()
    counts = {b: [0, 0, 0] for b in args.bundle}  # true positives, false positives, false negatives
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.count):
            seed, vendor = args.seed + i, VENDORS[i % 4]
            study = os.path.join(tmp, f"s{i}")
            subprocess.run([args.binary, "phantom", "study", "--seed", str(seed), "--region", "lumbar",
                            "--vendor", vendor, "--standard", "--out", study], check=True, capture_output=True)  # fmt: skip
            truth = json.load(open(os.path.join(study, "truth.json")))
            want = {(f["condition"], f["level"]) for f in truth["findings"]}
            for b in args.bundle:
                out = subprocess.run([args.binary, "analyze", "--json", "--threads", "2", "--bundle", b,
                                      "--out", os.path.join(tmp, f"o{i}"), study],
                                     check=True, capture_output=True, text=True).stdout  # fmt: skip
                got = {(f["condition"], f["level"]) for f in json.loads(out)["findings"]}
                c = counts[b]
                c[0] += len(got & want)
                c[1] += len(got - want)
                c[2] += len(want - got)
                print(f"seed {seed} {vendor:8s} {b}: reported {sorted(got)}; truth {sorted(want)}", flush=True)
    print("\n| bundle | true positives | false positives | missed | precision | recall |\n|---|---|---|---|---|---|")
    for b, (tp, fp, fn) in counts.items():
        print(f"| {b} | {tp} | {fp} | {fn} | {tp / max(tp + fp, 1):.3f} | {tp / max(tp + fn, 1):.3f} |")


if __name__ == "__main__":
    main()
