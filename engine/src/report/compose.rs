//! The deterministic report composer: the agents' findings in the region's
//! template (per-level lines, findings sections, impression ordered by
//! urgency and severity). The baseline a language-model report must beat,
//! and its fallback.

use std::collections::BTreeMap;

use crate::analysis::{Finding, StudyAnalysis};

use super::triage::{Category, Triage};

/// The composed report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub region: String,
    pub findings: String,
    pub impression: String,
    /// The study's triage category (the most urgent finding's).
    pub category: Category,
}

impl Report {
    pub fn text(&self) -> String {
        format!("{}\n\n{}\n", self.findings, self.impression)
    }
}

/// "L4-L5" -> "L4-5" (the short form reports use); vertebrae unchanged.
pub fn short_level(level: &str) -> String {
    match level.split_once('-') {
        Some((a, b)) if a.chars().next() == b.chars().next() => {
            format!("{a}-{}", b.trim_start_matches(|c: char| c.is_ascii_alphabetic()))
        }
        _ => level.to_string(),
    }
}

fn side_words(f: &Finding) -> &str {
    match f.side.as_str() {
        "left" => "left",
        "right" => "right",
        _ => "bilateral",
    }
}

/// One sentence for one finding.
pub fn sentence(f: &Finding) -> String {
    let level = short_level(&f.level);
    let sev = f.severity.as_str();
    let side = side_words(f);
    match f.condition.as_str() {
        "canal_stenosis" => format!("{} spinal canal stenosis at {level}.", capital(sev)),
        "foraminal_stenosis" => format!("{} {side} neural foraminal narrowing at {level}.", capital(sev)),
        "subarticular_stenosis" => format!(
            "{} {side} subarticular (lateral recess) stenosis at {level}.",
            capital(sev)
        ),
        "herniation" => {
            let zone = if f.side == "both_or_central" {
                "central".to_string()
            } else {
                format!("{side} paracentral")
            };
            format!("{} {zone} disc herniation at {level}.", capital(sev))
        }
        "cord_compression" => format!("Spinal cord compression at {level}."),
        "cord_signal" => format!("Abnormal T2 signal in the spinal cord at {level}."),
        "marrow_edema" => format!("Marrow edema in the {level} vertebral body."),
        "hemangioma" => format!("Vertebral hemangioma in {level}."),
        "marrow_lesion" => format!("Marrow-replacing lesion in the {level} vertebral body."),
        "compression_fracture" => format!("Compression fracture of {level}."),
        "pars_defect" => format!("Pars interarticularis defect at {level}."),
        "spondylolisthesis" => format!("Spondylolisthesis at {level}."),
        "perineural_cyst" => format!("Perineural (Tarlov) cyst at {level}."),
        "lipomatosis" => format!("Epidural lipomatosis at {level}."),
        "disc_height_loss" => format!("{} loss of disc height at {level}.", capital(sev)),
        "synovial_cyst" => format!("{} facet synovial cyst at {level}.", capital(side)),
        "disc_degeneration" => format!("{} degenerative signal loss of the {level} disc.", capital(sev)),
        "inflammation" => format!("Disc and endplate inflammatory change at {level}, suspicious for discitis."),
        other => format!("{other} at {level}."),
    }
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// The section each condition's sentence goes in.
fn section(condition: &str) -> &'static str {
    match condition {
        "spondylolisthesis" | "pars_defect" => "ALIGNMENT",
        "marrow_edema" | "hemangioma" | "marrow_lesion" | "compression_fracture" => "MARROW",
        "disc_degeneration" | "disc_height_loss" | "inflammation" => "DISCS",
        "cord_compression" | "cord_signal" => "CORD",
        "perineural_cyst" | "lipomatosis" => "PARAVERTEBRAL SOFT TISSUES",
        _ => "LEVELS",
    }
}

fn normal_sentence(section: &str) -> &'static str {
    match section {
        "ALIGNMENT" => "Normal alignment.",
        "MARROW" => "Normal marrow signal; vertebral body heights maintained.",
        "DISCS" => "Disc heights and signal are preserved.",
        "CORD" => "The cord and cauda equina are normal.",
        _ => "Normal.",
    }
}

const SEVERITY_RANK: [&str; 3] = ["severe", "moderate", "mild"];

pub fn compose(analysis: &StudyAnalysis, triage: &Triage, region: &str) -> Report {
    let mut by_section: BTreeMap<&str, Vec<&Finding>> = BTreeMap::new();
    for f in &analysis.findings {
        by_section.entry(section(&f.condition)).or_default().push(f);
    }
    let mut out = String::from("FINDINGS:\n");
    for name in ["ALIGNMENT", "MARROW", "DISCS", "CORD", "PARAVERTEBRAL SOFT TISSUES"] {
        let lines: Vec<String> = by_section
            .get(name)
            .map(|v| v.iter().map(|f| sentence(f)).collect())
            .unwrap_or_default();
        let body = if lines.is_empty() {
            normal_sentence(name).to_string()
        } else {
            lines.join(" ")
        };
        out += &format!("{name}: {body}\n");
    }
    // Per-level lines for every disc the study shows.
    out += if region == "thoracic" {
        "SPECIFIC LEVELS:\n"
    } else {
        "AXIAL DISCS, DURAL COMPRESSION & FORAMINA:\n"
    };
    let level_findings = by_section.get("LEVELS").cloned().unwrap_or_default();
    for level in analysis.levels_covered.iter().filter(|l| l.contains('-')) {
        let here: Vec<String> = level_findings
            .iter()
            .filter(|f| &f.level == level)
            .map(|f| sentence(f))
            .collect();
        let body = if here.is_empty() {
            "No canal or foraminal narrowing.".to_string()
        } else {
            here.join(" ")
        };
        out += &format!("{}: {body}\n", short_level(level));
    }
    // Impression: most urgent first, then most severe, then most probable.
    let mut ranked: Vec<&Finding> = analysis.findings.iter().collect();
    ranked.sort_by(|a, b| {
        let key = |f: &Finding| {
            (
                triage.category(f) as u8,
                SEVERITY_RANK.iter().position(|s| *s == f.severity).unwrap_or(3),
            )
        };
        key(a).cmp(&key(b)).then(b.probability.total_cmp(&a.probability))
    });
    let mut impression = String::from("IMPRESSION:\n");
    if ranked.is_empty() {
        impression += "1. No finding above the reporting threshold.\n";
    }
    for (i, f) in ranked.iter().enumerate() {
        impression += &format!("{}. {}\n", i + 1, sentence(f));
    }
    let category = ranked.first().map(|f| triage.category(f)).unwrap_or(Category::Routine);
    Report {
        region: region.to_string(),
        findings: out.trim_end().to_string(),
        impression: impression.trim_end().to_string(),
        category,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_shorten_within_a_region_only() {
        assert_eq!(short_level("L4-L5"), "L4-5");
        assert_eq!(short_level("L5-S1"), "L5-S1");
        assert_eq!(short_level("C7-T1"), "C7-T1");
        assert_eq!(short_level("T12"), "T12");
    }
}
