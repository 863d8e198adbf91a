"""Puts a newly trained report agent (visual projector and LoRA adapter)
into an existing model bundle, leaving every other model as it is: the
projector is exported to ONNX with golden I/O (export.py's checks: ONNX
Runtime against PyTorch), the adapter copied, and their hashes in
bundle.toml replaced; the bundle's version is set to --version.

usage: update_bundle.py BUNDLE --projector P.pt --adapter A.safetensors --version 0.4.1

For when only the report agent was trained (report_lm/train.py); run_all.sh
exports the whole bundle instead."""
import argparse
import hashlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from export import export_projector  # noqa: E402


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def set_hash(manifest, rel, digest):
    """Replaces the sha256 that follows `file = "rel"` (a [[model]] table's
    two lines, or a [files] inline table)."""
    pattern = re.compile(r'(file = "' + re.escape(rel) + r'",?\s*sha256 = ")[0-9a-f]{64}(")')
    new, n = pattern.subn(lambda m: m.group(1) + digest + m.group(2), manifest)
    if n != 1:
        raise SystemExit(f"bundle.toml: expected one entry for {rel}, found {n}")
    return new


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--projector", type=Path, required=True)
    ap.add_argument("--adapter", type=Path, required=True)
    ap.add_argument("--version", required=True)
    args = ap.parse_args()
    manifest = (args.bundle / "bundle.toml").read_text()
    with tempfile.TemporaryDirectory() as tmp:
        export_projector(args.projector, Path(tmp))
        for rel in ["report_projector.onnx", "golden/report_projector.slice_embeddings.npy",
                    "golden/report_projector.visual_tokens.npy"]:
            shutil.copyfile(Path(tmp) / rel, args.bundle / rel)
            manifest = set_hash(manifest, rel, sha256(args.bundle / rel))
    shutil.copyfile(args.adapter, args.bundle / "report_adapter.safetensors")
    manifest = set_hash(manifest, "report_adapter.safetensors", sha256(args.bundle / "report_adapter.safetensors"))
    manifest, n = re.subn(r'(?m)^version = "[^"]*"', f'version = "{args.version}"', manifest, count=1)
    if n != 1:
        raise SystemExit("bundle.toml: no version line")
    (args.bundle / "bundle.toml").write_text(manifest)
    print(f"{args.bundle}: report projector and adapter replaced, version {args.version}")


if __name__ == "__main__":
    main()
