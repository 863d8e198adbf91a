"""Class tables shared by training, export and the bundle manifest. The
phantom's truth.json uses the same names (phantom/README.md)."""

VERTEBRAE = (
    [f"C{i}" for i in range(2, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)] + ["S1"]
)
# Level classes of the level label volumes: 0 outside, vertebra index + 1.
LEVELS = ["outside"] + VERTEBRAE

# Level positions the condition agents answer for: each vertebra and the
# disc below it, head to foot (C2, C2-C3, C3, ..., L5-S1, S1).
POSITIONS = []
for i, v in enumerate(VERTEBRAE):
    POSITIONS.append(v)
    if i + 1 < len(VERTEBRAE):
        POSITIONS.append(f"{v}-{VERTEBRAE[i + 1]}")
LUMBAR_DISCS = ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]


def position_vertebrae():
    """For each position, the level classes of the vertebra above and below
    (a vertebra reads itself twice)."""
    upper, lower = [], []
    for p in POSITIONS:
        parts = p.split("-")
        a = LEVELS.index(parts[0])
        b = LEVELS.index(parts[-1])
        upper.append(a)
        lower.append(b)
    return upper, lower


ANATOMY = [
    "background", "soft_tissue", "subcutaneous_fat", "paraspinal_muscle", "cortical_bone",
    "vertebral_marrow", "endplate", "disc_nucleus", "disc_annulus", "csf", "epidural_fat",
    "spinal_cord", "nerve_root", "posterior_element", "ligamentum_flavum", "facet_joint",
    "foraminal_fat",
]  # fmt: skip
LESION = [
    "none", "disc_herniation", "marrow_edema", "hemangioma", "marrow_replacing_lesion",
    "compression_fracture", "discitis", "facet_synovial_cyst", "perineural_cyst",
    "cord_signal_abnormality", "pars_defect", "central_canal_stenosis",
    "neural_foraminal_stenosis", "subarticular_stenosis", "epidural_lipomatosis",
    "degenerated_disc", "cord_compression", "spondylolisthesis",
]  # fmt: skip

# The 16 task conditions, then the two the phantom adds.
CONDITIONS = [
    "canal_stenosis", "pars_defect", "cord_compression", "marrow_edema", "inflammation",
    "foraminal_stenosis", "spondylolisthesis", "perineural_cyst", "herniation", "hemangioma",
    "lipomatosis", "marrow_lesion", "compression_fracture", "disc_height_loss",
    "subarticular_stenosis", "synovial_cyst", "disc_degeneration", "cord_signal",
]  # fmt: skip
# The lesion label class that shows each condition (the condition agents
# read its evidence directly; disc height loss shows as a degenerated disc).
LESION_OF_CONDITION = {
    "canal_stenosis": "central_canal_stenosis", "pars_defect": "pars_defect",
    "cord_compression": "cord_compression", "marrow_edema": "marrow_edema", "inflammation": "discitis",
    "foraminal_stenosis": "neural_foraminal_stenosis", "spondylolisthesis": "spondylolisthesis",
    "perineural_cyst": "perineural_cyst", "herniation": "disc_herniation", "hemangioma": "hemangioma",
    "lipomatosis": "epidural_lipomatosis", "marrow_lesion": "marrow_replacing_lesion",
    "compression_fracture": "compression_fracture", "disc_height_loss": "degenerated_disc",
    "subarticular_stenosis": "subarticular_stenosis", "synovial_cyst": "facet_synovial_cyst",
    "disc_degeneration": "degenerated_disc", "cord_signal": "cord_signal_abnormality",
}  # fmt: skip
# Lesions with a side (left, right, both or central), all at a disc: the
# series pool measures which half of the patient they are in.
LATERAL_LESIONS = ["disc_herniation", "facet_synovial_cyst", "neural_foraminal_stenosis", "subarticular_stenosis"]
LATERAL_INDEX = [LESION.index(n) for n in LATERAL_LESIONS]
# Where each condition is reported: at a disc level or a vertebra.
CONDITION_KINDS = {
    "canal_stenosis": "disc", "pars_defect": "vertebra", "cord_compression": "disc",
    "marrow_edema": "vertebra", "inflammation": "disc", "foraminal_stenosis": "disc",
    "spondylolisthesis": "disc", "perineural_cyst": "vertebra", "herniation": "disc",
    "hemangioma": "vertebra", "lipomatosis": "disc", "marrow_lesion": "vertebra",
    "compression_fracture": "vertebra", "disc_height_loss": "disc", "subarticular_stenosis": "disc",
    "synovial_cyst": "disc", "disc_degeneration": "disc", "cord_signal": "disc",
}  # fmt: skip


def valid_positions(condition: str):
    """Boolean mask over POSITIONS where the condition can be reported."""
    want_disc = CONDITION_KINDS[condition] == "disc"
    return [("-" in p) == want_disc for p in POSITIONS]


SIDES = ["left", "right", "both_or_central"]
SEVERITIES = ["mild", "moderate", "severe"]

# RSNA-style graded task: per lumbar disc, three grades.
GRADED = ["canal", "foraminal_left", "foraminal_right", "subarticular_left", "subarticular_right"]
GRADES = ["normal_mild", "moderate", "severe"]

FAMILIES = [
    "t1", "t2", "stir", "t1_post", "pd", "dixon_water", "dixon_fat", "dixon_in_phase", "dixon_opposed_phase",
]  # fmt: skip
SYNTH_FAMILIES = FAMILIES[2:]
PLANES = ["sagittal", "axial"]
REGIONS = ["cervical", "thoracic", "lumbar", "whole_spine"]

# Series slots of a study for the condition agents.
SLOTS = ["sagittal_t1", "sagittal_t2", "sagittal_other", "axial_t2", "axial_other"]


def slot_of(family: str, plane: str):
    if plane == "sagittal":
        return {"t1": 0, "t2": 1}.get(family, 2)
    if plane == "axial":
        return 3 if family == "t2" else 4
    return None


def encoder_of(family: str) -> str:
    """Which path a family takes: its own encoder or the synthesizer."""
    return family if family in ("t1", "t2") else "synthesizer"


def side_index(side):
    return {"left": 0, "right": 1}.get(side, 2)


def severity_index(severity):
    return SEVERITIES.index(severity) if severity in SEVERITIES else None


def graded_targets(findings):
    """{(graded task, lumbar disc): grade index} from truth findings;
    absent = normal/mild."""
    out = {}
    for f in findings:
        if f["level"] not in LUMBAR_DISCS:
            continue
        grade = {"mild": 0, "moderate": 1, "severe": 2}.get(f["severity"], 0)
        c, side = f["condition"], f["side"]
        tasks = []
        if c == "canal_stenosis":
            tasks = ["canal"]
        elif c in ("foraminal_stenosis", "subarticular_stenosis"):
            base = "foraminal" if c == "foraminal_stenosis" else "subarticular"
            sides = {"left": ["left"], "right": ["right"]}.get(side, ["left", "right"])
            tasks = [f"{base}_{s}" for s in sides]
        for t in tasks:
            key = (t, f["level"])
            out[key] = max(out.get(key, 0), grade)
    return out
