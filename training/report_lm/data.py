"""Training pairs (prompt, target) for the report LoRA: prompts mirror
engine/src/lm/prompt.rs + engine/src/analysis/tokens.rs (teacher-forced from
truth findings), targets mirror engine/src/report/compose.rs (which
engine/src/report/verify.rs accepts). Impression keeps the localization order."""
import json
import os
import random

# The phantom dataset (`spineagent phantom dataset`, as training/run_all.sh makes it).
DS = os.environ.get("SPINEAGENT_DATASET", os.path.join(os.path.dirname(__file__), "..", "..", "work", "ds"))
SYSTEM = ("You are a radiologist writing a spine MRI report. "
          "Use only the findings listed in <localization>; state each one with its level, side and severity. "
          "Do not add findings. Levels and structures not listed are normal. "
          "Write two sections: FINDINGS: and IMPRESSION: (a numbered list, most urgent first).")
TEMPLATES = {
    "thoracic": "FINDINGS:\nALIGNMENT:\nMARROW:\nDISCS:\nCORD:\nPARAVERTEBRAL SOFT TISSUES:\nSPECIFIC LEVELS:\n\nIMPRESSION:",
    "_": "FINDINGS:\nALIGNMENT:\nMARROW:\nDISCS:\nCORD:\nPARAVERTEBRAL SOFT TISSUES:\nAXIAL DISCS, DURAL COMPRESSION & FORAMINA:\n\nIMPRESSION:",
}
CONDITIONS = ["canal_stenosis", "pars_defect", "cord_compression", "marrow_edema", "inflammation", "foraminal_stenosis",
              "spondylolisthesis", "perineural_cyst", "herniation", "hemangioma", "lipomatosis", "marrow_lesion",
              "compression_fracture", "disc_height_loss", "subarticular_stenosis", "synovial_cyst", "disc_degeneration",
              "cord_signal"]
KINDS = ["disc", "vertebra", "disc", "vertebra", "disc", "disc", "disc", "vertebra", "disc", "vertebra", "disc",
         "vertebra", "vertebra", "disc", "disc", "disc", "disc", "disc"]
READABLE = {
    "canal_stenosis": "Spinal Canal Stenosis", "pars_defect": "Pars Defect", "cord_compression": "Cord Compression",
    "marrow_edema": "Marrow Edema", "inflammation": "Inflammation", "foraminal_stenosis": "Neural Foraminal Stenosis",
    "spondylolisthesis": "Spondylolisthesis", "perineural_cyst": "Perineural Cyst", "herniation": "Disc Herniation",
    "hemangioma": "Hemangioma", "lipomatosis": "Epidural Lipomatosis", "marrow_lesion": "Marrow Lesion",
    "compression_fracture": "Compression Fracture", "disc_height_loss": "Disc Height Loss",
    "subarticular_stenosis": "Subarticular Stenosis", "synovial_cyst": "Synovial Cyst",
    "disc_degeneration": "Disc Degeneration", "cord_signal": "Cord Signal Abnormality",
}
SIDED = {"foraminal_stenosis", "subarticular_stenosis", "herniation", "synovial_cyst"}
LUMBAR_DISCS = ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
LUMBAR_VERT = ["T12", "L1", "L2", "L3", "L4", "L5"]
POS_ORDER = ["T11-T12", "T12", "T12-L1", "L1", "L1-L2", "L2", "L2-L3", "L3", "L3-L4", "L4", "L4-L5", "L5", "L5-S1", "S1"]


def short_level(level):
    if "-" in level:
        a, b = level.split("-", 1)
        if a[0] == b[0]:
            return f"{a}-{b.lstrip('CTLS')}"
    return level


def cap(s):
    return s[:1].upper() + s[1:]


def sentence(f):
    lv = short_level(f["level"]); sev = f["severity"]
    side = f["side"] if f["side"] in ("left", "right") else "bilateral"
    c = f["condition"]
    if c == "canal_stenosis": return f"{cap(sev)} spinal canal stenosis at {lv}."
    if c == "foraminal_stenosis": return f"{cap(sev)} {side} neural foraminal narrowing at {lv}."
    if c == "subarticular_stenosis": return f"{cap(sev)} {side} subarticular (lateral recess) stenosis at {lv}."
    if c == "herniation":
        zone = "central" if f["side"] == "both_or_central" else f"{side} paracentral"
        return f"{cap(sev)} {zone} disc herniation at {lv}."
    return {
        "cord_compression": f"Spinal cord compression at {lv}.",
        "cord_signal": f"Abnormal T2 signal in the spinal cord at {lv}.",
        "marrow_edema": f"Marrow edema in the {lv} vertebral body.",
        "hemangioma": f"Vertebral hemangioma in {lv}.",
        "marrow_lesion": f"Marrow-replacing lesion in the {lv} vertebral body.",
        "compression_fracture": f"Compression fracture of {lv}.",
        "pars_defect": f"Pars interarticularis defect at {lv}.",
        "spondylolisthesis": f"Spondylolisthesis at {lv}.",
        "perineural_cyst": f"Perineural (Tarlov) cyst at {lv}.",
        "lipomatosis": f"Epidural lipomatosis at {lv}.",
        "disc_height_loss": f"{cap(sev)} loss of disc height at {lv}.",
        "synovial_cyst": f"{cap(side)} facet synovial cyst at {lv}.",
        "disc_degeneration": f"{cap(sev)} degenerative signal loss of the {lv} disc.",
        "inflammation": f"Disc and endplate inflammatory change at {lv}, suspicious for discitis.",
    }.get(c, f"{c} at {lv}.")


def section(c):
    if c in ("spondylolisthesis", "pars_defect"): return "ALIGNMENT"
    if c in ("marrow_edema", "hemangioma", "marrow_lesion", "compression_fracture"): return "MARROW"
    if c in ("disc_degeneration", "disc_height_loss", "inflammation"): return "DISCS"
    if c in ("cord_compression", "cord_signal"): return "CORD"
    if c in ("perineural_cyst", "lipomatosis"): return "PARAVERTEBRAL SOFT TISSUES"
    return "LEVELS"


NORMAL = {"ALIGNMENT": "Normal alignment.", "MARROW": "Normal marrow signal; vertebral body heights maintained.",
          "DISCS": "Disc heights and signal are preserved.", "CORD": "The cord and cauda equina are normal."}


def compose(findings, region="lumbar"):
    out = "FINDINGS:\n"
    for name in ["ALIGNMENT", "MARROW", "DISCS", "CORD", "PARAVERTEBRAL SOFT TISSUES"]:
        lines = [sentence(f) for f in findings if section(f["condition"]) == name]
        out += f"{name}: {' '.join(lines) if lines else NORMAL.get(name, 'Normal.')}\n"
    out += "SPECIFIC LEVELS:\n" if region == "thoracic" else "AXIAL DISCS, DURAL COMPRESSION & FORAMINA:\n"
    # Compact variant of the composer: the per-level findings in localization
    # order, other levels summarised as normal (keeps drafts short).
    lvl = [sentence(f) for f in findings if section(f["condition"]) == "LEVELS"]
    out += (" ".join(lvl) + " Other levels: no canal or foraminal narrowing." if lvl
            else "No canal or foraminal narrowing at any level.") + "\n"
    imp = "IMPRESSION:\n"
    if not findings:
        imp += "1. No finding above the reporting threshold.\n"
    for i, f in enumerate(findings):
        imp += f"{i + 1}. {sentence(f)}\n"
    return out.rstrip() + "\n\n" + imp.rstrip()


def tokens(findings, similar):
    present = {f["condition"] for f in findings}
    cls = ", ".join(f'"{READABLE[c]}": {int(c in present)}' for c in sorted(CONDITIONS))
    loc = "; ".join(f'{f["level"]} {READABLE[f["condition"]]} {f["side"]} {f["severity"]} (p={f["p"]:.2f})' for f in findings)
    return (f"<classification>{{{cls}}}</classification>\n<localization>{loc}</localization>\n"
            f"<similar_case_report>{similar.strip()}</similar_case_report>")


def prompt(region, structured, correction=None):
    user = f"Region: {region}.\nTemplate:\n{TEMPLATES.get(region, TEMPLATES['_'])}\n\n{structured}\n"
    if correction:
        user += f"\nYour previous draft was wrong: {correction}\nWrite the report again.\n"
    user += "Write the report."
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<image>"
            f"</image>\n{user}<|im_end|>\n<|im_start|>assistant\n")


def random_finding(rng):
    c = rng.choice(CONDITIONS)
    kind = KINDS[CONDITIONS.index(c)]
    level = rng.choice(LUMBAR_DISCS if kind == "disc" else LUMBAR_VERT)
    return {"condition": c, "level": level, "side": rng.choice(["left", "right", "both_or_central"]),
            "severity": rng.choice(["mild", "moderate", "severe"])}


def load_studies(split="train", region="lumbar"):
    man = json.load(open(f"{DS}/manifest.json"))
    out = []
    for s in man["studies"]:
        if s["split"] != split or s["region"] != region:
            continue
        t = json.load(open(f"{DS}/{s['dir']}/truth.json"))
        rep = open(f"{DS}/{s['dir']}/report.txt").read()
        out.append({"dir": s["dir"], "findings": t["findings"], "report": rep})
    return out


def sample(studies, rng, augment=True):
    st = rng.choice(studies)
    fs = []
    for f in st["findings"]:
        fs.append({"condition": f["condition"], "level": f["level"],
                   "side": f["side"] if f.get("side") in ("left", "right") else "both_or_central",
                   "severity": f["severity"] or rng.choice(["mild", "moderate", "severe"])})
    # The served agents call disc degeneration and height loss at several
    # lumbar discs in most studies (the drafts that failed verification
    # mostly left some of those out): train on lists shaped like that.
    if augment and rng.random() < 0.5:
        for lv in rng.sample(LUMBAR_DISCS, rng.randint(1, 4)):
            fs.append({"condition": rng.choice(["disc_degeneration", "disc_height_loss"]), "level": lv,
                       "side": "both_or_central", "severity": rng.choice(["mild", "moderate", "severe"])})
    if augment and rng.random() < 0.7:
        for f in fs:
            if rng.random() < 0.3: f["severity"] = rng.choice(["mild", "moderate", "severe"])
            if rng.random() < 0.3: f["side"] = rng.choice(["left", "right", "both_or_central"])
        if fs and rng.random() < 0.3: fs.pop(rng.randrange(len(fs)))
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3])): fs.append(random_finding(rng))
    # dedup (condition, level)
    seen, uniq = set(), []
    for f in fs:
        if (f["condition"], f["level"]) not in seen:
            seen.add((f["condition"], f["level"])); uniq.append(f)
    for f in uniq:
        f["p"] = rng.uniform(0.3, 0.99)
    uniq.sort(key=lambda f: -f["p"])
    other = rng.choice([s for s in studies if s is not st])
    correction = wrong_draft(uniq, rng) if augment and rng.random() < 0.25 else None
    return prompt("lumbar", tokens(uniq, other["report"]), correction), compose(uniq), uniq, st["dir"]


def wrong_draft(findings, rng):
    """What the verifier (engine/src/report/verify.rs) says of a bad first
    draft, so the model learns the second draft the agent asks for."""
    said = []
    name = lambda c: c.replace("_", " ")  # noqa: E731
    for f in rng.sample(findings, min(len(findings), rng.randint(1, 3))):
        kind = rng.choice(["missing", "severity", "side"])
        if kind == "missing":
            said.append(f"{name(f['condition'])} at {f['level']} is missing")
        elif kind == "severity":
            other = rng.choice([s for s in ["mild", "moderate", "severe"] if s != f["severity"]])
            said.append(f"{name(f['condition'])} at {f['level']} is {f['severity']}, not {other}")
        elif f["side"] in ("left", "right"):
            other = "right" if f["side"] == "left" else "left"
            said.append(f"{name(f['condition'])} at {f['level']} is on the {f['side']} side, not {other}")
    if rng.random() < 0.5:
        extra = random_finding(rng)
        said.append(f"{name(extra['condition'])} at {extra['level']} is not among the findings")
    if rng.random() < 0.3:
        said.append(rng.choice(["the IMPRESSION section is missing", "the FINDINGS section is missing"]))
    return "; ".join(said) if said else "the IMPRESSION section is missing"
