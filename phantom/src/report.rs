//! Reference report text in the published method's region templates
//! (FINDINGS: alignment, marrow, discs, cord, paravertebral soft tissues,
//! the level block; IMPRESSION as a numbered list), with several phrasings
//! per finding so a language model cannot memorize one sentence.

use crate::findings::{Condition, Finding, Severity, Side, Subtype};
use crate::levels::{Region, short_disc_name};
use crate::rng::Rng;

fn sev(s: Severity) -> &'static str {
    match s {
        Severity::Mild => "mild",
        Severity::Moderate => "moderate",
        Severity::Severe => "severe",
    }
}

fn side(s: Option<Side>) -> &'static str {
    match s {
        Some(Side::Left) => "left",
        Some(Side::Right) => "right",
        Some(Side::Bilateral) => "bilateral",
        _ => "central",
    }
}

fn level_name(level: &str) -> String {
    if level.contains('-') {
        short_disc_name(level)
    } else {
        level.to_string()
    }
}

/// One sentence describing `f`, in one of several phrasings.
pub fn sentence(f: &Finding, rng: &mut Rng) -> String {
    let lv = level_name(&f.level);
    let s = sev(f.severity);
    let sd = side(f.side);
    let options: Vec<String> = match f.condition {
        Condition::CanalStenosis => vec![
            format!("{s} central canal stenosis at {lv}"),
            format!("{s} narrowing of the central spinal canal at {lv}"),
            format!("at {lv} there is {s} spinal canal stenosis"),
        ],
        Condition::ForaminalStenosis => vec![
            format!("{s} {sd} neural foraminal narrowing at {lv}"),
            format!("{s} narrowing of the {sd} neural foramen at {lv}"),
            format!("at {lv}, the {sd} foramen is {s}ly narrowed"),
        ],
        Condition::SubarticularStenosis => vec![
            format!("{s} {sd} subarticular recess stenosis at {lv}"),
            format!("{s} narrowing of the {sd} lateral recess at {lv}"),
        ],
        Condition::Herniation => {
            let kind = match f.subtype {
                Some(Subtype::Bulge) => "disc bulge",
                Some(Subtype::Extrusion) => "disc extrusion",
                _ => "disc protrusion",
            };
            let zone = match f.side {
                Some(Side::Central) | None => "central".to_string(),
                Some(x) if f.severity == Severity::Severe => format!("{} foraminal", side(Some(x))),
                Some(x) => format!("{} paracentral", side(Some(x))),
            };
            vec![
                format!("{zone} {kind} at {lv}"),
                format!("{kind} at {lv}, {zone} in location"),
                format!("at {lv} there is a {zone} {kind}"),
            ]
        }
        Condition::CordCompression => vec![
            format!("{s} spinal canal stenosis at {lv} with compression of the cord"),
            format!("cord compression at {lv} from {s} canal narrowing"),
        ],
        Condition::CordSignal => vec![
            format!("abnormal T2 hyperintense signal within the cord at {lv}"),
            format!("focal cord signal abnormality at the {lv} level"),
        ],
        Condition::MarrowEdema => vec![
            format!("marrow edema in the {lv} vertebral body"),
            format!("STIR hyperintense marrow edema at {lv}"),
        ],
        Condition::Hemangioma => vec![
            format!("vertebral hemangioma in {lv}"),
            format!("T1 and T2 hyperintense lesion in the {lv} body, consistent with a hemangioma"),
        ],
        Condition::MarrowLesion => vec![
            format!("marrow-replacing lesion in the {lv} vertebral body"),
            format!("T1 hypointense marrow-replacing lesion at {lv}, suspicious for neoplasm"),
        ],
        Condition::CompressionFracture => {
            let age = if f.subtype == Some(Subtype::Chronic) {
                "chronic"
            } else {
                "acute"
            };
            vec![
                format!("{age} {s} compression fracture of {lv}"),
                format!("{s} height loss of the {lv} vertebral body, {age} compression fracture"),
            ]
        }
        Condition::ParsDefect => vec![
            format!("bilateral pars interarticularis defects at {lv}"),
            format!("spondylolysis of {lv}"),
        ],
        Condition::Spondylolisthesis => {
            let grade = if f.severity == Severity::Mild {
                "grade 1"
            } else {
                "grade 2"
            };
            vec![
                format!("{grade} anterolisthesis at {lv}"),
                format!("{grade} spondylolisthesis of {lv}"),
            ]
        }
        Condition::PerineuralCyst => vec![
            format!("{sd} perineural (Tarlov) cyst at {lv}"),
            format!("{sd} sacral perineural cyst"),
        ],
        Condition::Lipomatosis => vec![
            format!("epidural lipomatosis, most pronounced at {lv}"),
            format!("excess epidural fat narrowing the thecal sac at {lv}"),
        ],
        Condition::DiscHeightLoss => vec![
            format!("{s} disc height loss at {lv}"),
            format!("{s} loss of disc height at {lv}"),
        ],
        Condition::SynovialCyst => vec![
            format!("{sd} facet synovial cyst at {lv}"),
            format!("synovial cyst arising from the {sd} facet joint at {lv}"),
        ],
        Condition::DiscDegeneration => vec![
            format!("disc desiccation at {lv}"),
            format!("{s} degenerative signal loss of the {lv} disc"),
        ],
        Condition::Inflammation => vec![
            format!("discitis at {lv} with adjacent endplate edema"),
            format!("findings of discitis-osteomyelitis at {lv}"),
        ],
    };
    rng.pick(&options).clone()
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// The reference report: FINDINGS and IMPRESSION.
pub fn reference_report(region: Region, findings: &[Finding], seed: u64) -> (String, String) {
    let mut rng = Rng::derive(seed, "report", 0);
    let at = |levels: &[Condition]| {
        findings
            .iter()
            .filter(|f| levels.contains(&f.condition))
            .collect::<Vec<_>>()
    };
    let mut out = String::from("FINDINGS:\n");
    let listhesis = at(&[Condition::Spondylolisthesis]);
    out.push_str("ALIGNMENT: ");
    if listhesis.is_empty() {
        out.push_str(*rng.pick::<&str>(&["Normal.", "Normal alignment.", "Alignment is maintained."]));
    } else {
        let s: Vec<_> = listhesis.iter().map(|f| capitalize(&sentence(f, &mut rng))).collect();
        out.push_str(&(s.join(". ") + "."));
    }
    out.push_str("\nMARROW: ");
    let marrow = at(&[
        Condition::MarrowEdema,
        Condition::Hemangioma,
        Condition::MarrowLesion,
        Condition::CompressionFracture,
        Condition::ParsDefect,
    ]);
    if marrow.is_empty() {
        out.push_str(*rng.pick::<&str>(&[
            "Normal marrow signal.",
            "Vertebral body heights and marrow signal are normal.",
        ]));
    } else {
        let s: Vec<_> = marrow.iter().map(|f| capitalize(&sentence(f, &mut rng))).collect();
        out.push_str(&(s.join(". ") + "."));
    }
    out.push_str("\nDISCS: ");
    let discs = at(&[
        Condition::DiscDegeneration,
        Condition::DiscHeightLoss,
        Condition::Inflammation,
    ]);
    if discs.is_empty() {
        out.push_str("Normal in height and signal intensity.");
    } else {
        let s: Vec<_> = discs.iter().map(|f| capitalize(&sentence(f, &mut rng))).collect();
        out.push_str(&(s.join(". ") + "."));
    }
    out.push_str("\nCORD: ");
    let cord = at(&[Condition::CordSignal, Condition::CordCompression]);
    if !cord.is_empty() {
        let s: Vec<_> = cord.iter().map(|f| capitalize(&sentence(f, &mut rng))).collect();
        out.push_str(&(s.join(". ") + "."));
    } else if region == Region::Lumbar {
        out.push_str("The conus ends normally at L1-L2. The cord and cauda equina are normal.");
    } else {
        out.push_str("Normal in signal and size.");
    }
    out.push_str("\nPARAVERTEBRAL SOFT TISSUES: ");
    let soft = at(&[Condition::PerineuralCyst, Condition::Lipomatosis]);
    if soft.is_empty() {
        out.push_str("Normal.");
    } else {
        let s: Vec<_> = soft.iter().map(|f| capitalize(&sentence(f, &mut rng))).collect();
        out.push_str(&(s.join(". ") + "."));
    }
    let level_conditions = [
        Condition::Herniation,
        Condition::CanalStenosis,
        Condition::SubarticularStenosis,
        Condition::ForaminalStenosis,
        Condition::SynovialCyst,
    ];
    match region {
        Region::Thoracic => out.push_str("\nSPECIFIC LEVELS:"),
        _ => out.push_str("\nAXIAL DISCS, DURAL COMPRESSION & FORAMINA:"),
    }
    let mut any_abnormal = false;
    for level in region.disc_levels() {
        let here: Vec<_> = findings
            .iter()
            .filter(|f| f.level == level && level_conditions.contains(&f.condition))
            .collect();
        if here.is_empty() && region == Region::Thoracic {
            continue;
        }
        out.push_str(&format!("\n{}: ", short_disc_name(level)));
        if here.is_empty() {
            out.push_str(*rng.pick::<&str>(&[
                "No central or foraminal stenosis; facets normal.",
                "No canal or foraminal narrowing. Facets are normal.",
            ]));
        } else {
            any_abnormal = true;
            let s: Vec<_> = here.iter().map(|f| capitalize(&sentence(f, &mut rng))).collect();
            out.push_str(&(s.join(". ") + "."));
        }
    }
    if region == Region::Thoracic {
        out.push_str(if any_abnormal {
            "\nALL OTHER LEVELS: Normal."
        } else {
            "\nALL LEVELS: Normal."
        });
    }
    // Impression: urgent and severe first.
    let mut ranked: Vec<&Finding> = findings.iter().collect();
    let urgency = |f: &Finding| match f.condition {
        Condition::CordCompression | Condition::MarrowLesion | Condition::Inflammation => 0,
        Condition::CompressionFracture | Condition::CordSignal => 1,
        _ => 2,
    };
    ranked.sort_by(|a, b| urgency(a).cmp(&urgency(b)).then(b.severity.cmp(&a.severity)));
    let mut impression = String::from("IMPRESSION:");
    if ranked.is_empty() {
        impression.push_str(&format!(
            "\n1. {}",
            rng.pick::<&str>(&[
                "No acute abnormality.",
                "Normal MRI of the spine.",
                "Unremarkable examination."
            ])
        ));
    }
    for (i, f) in ranked.iter().enumerate() {
        impression.push_str(&format!("\n{}. {}.", i + 1, capitalize(&sentence(f, &mut rng))));
    }
    (out, impression)
}
