//! The grounding check on a generated report: every finding the text
//! states must exist among the agents' findings at that level, with that
//! side and severity where the text gives them, and every finding the
//! agents reported must be stated. The text is read sentence by sentence
//! (clauses split at `.`, `;` and line ends); a clause that negates ("no",
//! "without", "normal", "preserved", ...) states nothing.
//!
//! The vocabulary is the one reports use (and the composer writes):
//! "neural foraminal narrowing", "lateral recess", "Tarlov", "listhesis"...
//! A finding phrased in words outside it is not seen, which shows up as a
//! missing finding: the check fails closed.

use std::fmt;

use crate::analysis::Finding;

/// A finding as the text states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stated {
    pub condition: &'static str,
    /// "L4-L5" or "L2".
    pub level: String,
    /// left, right, or None (not stated, bilateral or central).
    pub side: Option<&'static str>,
    pub severity: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discrepancy {
    /// The text states a finding the agents did not report there.
    Unsupported(Stated),
    /// The text gives another side than the agents.
    WrongSide { stated: Stated, agents: String },
    /// The text gives another severity than the agents.
    WrongSeverity { stated: Stated, agents: String },
    /// An agent finding the text does not state.
    Missing { condition: String, level: String },
    /// The text lacks the FINDINGS or IMPRESSION section.
    Structure(&'static str),
}

impl fmt::Display for Discrepancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |c: &str| c.replace('_', " ");
        match self {
            Discrepancy::Unsupported(s) => {
                write!(f, "{} at {} is not among the findings", name(s.condition), s.level)
            }
            Discrepancy::WrongSide { stated, agents } => write!(
                f,
                "{} at {} is on the {} side, not {}",
                name(stated.condition),
                stated.level,
                agents,
                stated.side.unwrap_or("?")
            ),
            Discrepancy::WrongSeverity { stated, agents } => write!(
                f,
                "{} at {} is {}, not {}",
                name(stated.condition),
                stated.level,
                agents,
                stated.severity.unwrap_or("?")
            ),
            Discrepancy::Missing { condition, level } => {
                write!(f, "{} at {} is missing", name(condition), level)
            }
            Discrepancy::Structure(what) => write!(f, "the {what} section is missing"),
        }
    }
}

/// Phrases that name each condition (lower case). Order matters only in
/// that every matching condition of a clause is stated.
const LEXICON: &[(&str, &[&str])] = &[
    (
        "canal_stenosis",
        &[
            "canal stenosis",
            "spinal stenosis",
            "central stenosis",
            "canal narrowing",
        ],
    ),
    ("foraminal_stenosis", &["foraminal", "foramina "]),
    ("subarticular_stenosis", &["subarticular", "lateral recess"]),
    ("herniation", &["herniat", "protrusion", "extrusion"]),
    (
        "cord_compression",
        &[
            "cord compression",
            "compression of the cord",
            "compressing the cord",
            "cord is compressed",
        ],
    ),
    (
        "cord_signal",
        &[
            "cord signal",
            "signal in the spinal cord",
            "signal in the cord",
            "myelopathy",
        ],
    ),
    ("marrow_edema", &["edema", "oedema"]),
    ("hemangioma", &["hemangioma", "haemangioma"]),
    ("marrow_lesion", &["marrow-replacing", "marrow replacing", "metasta"]),
    ("compression_fracture", &["fracture"]),
    ("pars_defect", &["pars ", "spondylolysis"]),
    ("spondylolisthesis", &["listhesis"]),
    ("perineural_cyst", &["perineural", "tarlov"]),
    ("lipomatosis", &["lipomatosis"]),
    (
        "disc_height_loss",
        &["loss of disc height", "disc height loss", "disc space narrowing"],
    ),
    ("synovial_cyst", &["synovial cyst"]),
    ("disc_degeneration", &["degenerat", "desiccat"]),
    ("inflammation", &["discitis", "inflammat", "osteomyelitis"]),
];

const NEGATIONS: &[&str] = &[
    "no ",
    "not ",
    "without",
    "normal",
    "preserved",
    "maintained",
    "unremarkable",
    "negative for",
    "absent",
];

fn negated(clause: &str) -> bool {
    let c = format!(" {clause}");
    NEGATIONS.iter().any(|n| c.contains(&format!(" {n}")))
}

/// Levels named in a clause: "L4-5", "L4-L5", "L4/5", "L5-S1" (discs) and
/// "L2" (vertebrae), normalized to "L4-L5" / "L2".
fn levels(clause: &str) -> Vec<String> {
    let b = clause.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let vertebra = |i: usize| -> Option<(char, u32, usize)> {
        let region = (*b.get(i)? as char).to_ascii_uppercase();
        if !matches!(region, 'C' | 'T' | 'L' | 'S') {
            return None;
        }
        if i > 0 && b[i - 1].is_ascii_alphanumeric() {
            return None;
        }
        let mut j = i + 1;
        while j < b.len() && b[j].is_ascii_digit() && j < i + 3 {
            j += 1;
        }
        let n: u32 = clause.get(i + 1..j)?.parse().ok()?;
        Some((region, n, j))
    };
    while i < b.len() {
        let Some((region, n, mut j)) = vertebra(i) else {
            i += 1;
            continue;
        };
        let mut level = format!("{region}{n}");
        if j < b.len() && matches!(b[j], b'-' | b'/') {
            let k = j + 1;
            if let Some((r2, n2, end)) = vertebra(k) {
                level = format!("{region}{n}-{r2}{n2}");
                j = end;
            } else {
                let mut e = k;
                while e < b.len() && b[e].is_ascii_digit() && e < k + 2 {
                    e += 1;
                }
                if let Ok(n2) = clause[k..e].parse::<u32>() {
                    level = format!("{region}{n}-{region}{n2}");
                    j = e;
                }
            }
        }
        if j < b.len() && b[j].is_ascii_alphanumeric() {
            i = j;
            continue;
        }
        out.push(level);
        i = j;
    }
    out
}

/// Every finding the text states.
pub fn stated_findings(text: &str) -> Vec<Stated> {
    let mut out: Vec<Stated> = Vec::new();
    for clause in text.split(['.', ';', '\n']) {
        let lower = clause.to_lowercase();
        if lower.trim().is_empty() || negated(&lower) {
            continue;
        }
        let conditions: Vec<&'static str> = LEXICON
            .iter()
            .filter(|(_, phrases)| phrases.iter().any(|p| lower.contains(p)))
            .map(|(c, _)| *c)
            .collect();
        if conditions.is_empty() {
            continue;
        }
        let side = if lower.contains("left") && !lower.contains("right") {
            Some("left")
        } else if lower.contains("right") && !lower.contains("left") {
            Some("right")
        } else {
            None
        };
        let severity = ["severe", "moderate", "mild"].into_iter().find(|s| lower.contains(s));
        for level in levels(clause) {
            for &condition in &conditions {
                let s = Stated {
                    condition,
                    level: level.clone(),
                    side,
                    severity,
                };
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
    }
    out
}

fn agent_side(f: &Finding) -> &str {
    match f.side.as_str() {
        "left" | "right" => f.side.as_str(),
        _ => "both",
    }
}

/// Conditions whose severity the agents grade (others are reported without one).
fn graded(condition: &str) -> bool {
    matches!(
        condition,
        "canal_stenosis"
            | "foraminal_stenosis"
            | "subarticular_stenosis"
            | "herniation"
            | "disc_height_loss"
            | "disc_degeneration"
    )
}

/// Checks a report text against the agents' findings; empty = grounded.
pub fn verify(text: &str, findings: &[Finding]) -> Vec<Discrepancy> {
    let mut out = Vec::new();
    let upper = text.to_uppercase();
    if !upper.contains("FINDINGS") {
        out.push(Discrepancy::Structure("FINDINGS"));
    }
    if !upper.contains("IMPRESSION") {
        out.push(Discrepancy::Structure("IMPRESSION"));
    }
    let stated = stated_findings(text);
    for s in &stated {
        let here: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.condition == s.condition && f.level == s.level)
            .collect();
        if here.is_empty() {
            out.push(Discrepancy::Unsupported(s.clone()));
            continue;
        }
        if let Some(side) = s.side
            && !here.iter().any(|f| f.side == side)
        {
            out.push(Discrepancy::WrongSide {
                stated: s.clone(),
                agents: agent_side(here[0]).to_string(),
            });
        }
        if let Some(sev) = s.severity
            && graded(s.condition)
            && !here.iter().any(|f| f.severity == sev)
        {
            out.push(Discrepancy::WrongSeverity {
                stated: s.clone(),
                agents: here[0].severity.clone(),
            });
        }
    }
    for f in findings {
        if !stated.iter().any(|s| s.condition == f.condition && s.level == f.level) {
            out.push(Discrepancy::Missing {
                condition: f.condition.clone(),
                level: f.level.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::StudyAnalysis;
    use crate::report::{Triage, compose};

    fn finding(condition: &str, level: &str, side: &str, severity: &str) -> Finding {
        Finding {
            condition: condition.into(),
            level: level.into(),
            probability: 0.9,
            side: side.into(),
            side_probability: 0.9,
            severity: severity.into(),
            severity_probability: 0.9,
        }
    }

    fn agents() -> Vec<Finding> {
        vec![
            finding("herniation", "L4-L5", "left", "severe"),
            finding("canal_stenosis", "L4-L5", "both_or_central", "moderate"),
            finding("hemangioma", "L2", "both_or_central", "moderate"),
            finding("foraminal_stenosis", "L5-S1", "right", "severe"),
        ]
    }

    #[test]
    fn levels_are_read_in_every_common_spelling() {
        assert_eq!(levels("at L4-5 and L5-S1"), vec!["L4-L5", "L5-S1"]);
        assert_eq!(levels("L4/5, L4-L5, C6-7"), vec!["L4-L5", "L4-L5", "C6-C7"]);
        assert_eq!(levels("in the L2 vertebral body"), vec!["L2"]);
        assert!(levels("LEFT and T2 SIGNAL").contains(&"T2".to_string()));
        assert!(levels("lumbar spine").is_empty());
    }

    #[test]
    fn the_composers_own_report_is_grounded() {
        let a = StudyAnalysis {
            synthetic_model: true,
            bundle: "test".into(),
            series: vec![],
            levels_covered: ["L3-L4", "L4-L5", "L5-S1"].iter().map(|s| s.to_string()).collect(),
            findings: agents(),
            graded: vec![],
            similar_cases: vec![],
            patient_embedding: vec![],
            probabilities: vec![],
            structured_tokens: String::new(),
            visual_tokens: None,
            seconds: 0.0,
        };
        let text = compose(&a, &Triage::builtin(), "lumbar").text();
        assert_eq!(verify(&text, &a.findings), vec![], "{text}");
    }

    #[test]
    fn invented_findings_wrong_sides_and_severities_and_omissions_are_caught() {
        let good = "FINDINGS: Severe left paracentral disc herniation at L4-5. Moderate spinal canal stenosis at L4-5. \
                    Vertebral hemangioma in L2. Severe right neural foraminal narrowing at L5-S1.\n\
                    IMPRESSION: 1. Severe left disc herniation at L4-5.";
        assert_eq!(verify(good, &agents()), vec![]);
        let invented = format!("{good} Compression fracture of L1.");
        assert!(matches!(
            verify(&invented, &agents())[..],
            [Discrepancy::Unsupported(Stated {
                condition: "compression_fracture",
                ..
            })]
        ));
        let wrong_side = good.replace("Severe left paracentral", "Severe right paracentral");
        assert!(matches!(
            verify(&wrong_side, &agents())[..],
            [Discrepancy::WrongSide { .. }]
        ));
        let wrong_sev = good.replace("Moderate spinal canal", "Mild spinal canal");
        assert!(matches!(
            verify(&wrong_sev, &agents())[..],
            [Discrepancy::WrongSeverity { .. }]
        ));
        let omitted = good.replace("Vertebral hemangioma in L2.", "");
        assert_eq!(
            verify(&omitted, &agents()),
            vec![Discrepancy::Missing {
                condition: "hemangioma".into(),
                level: "L2".into()
            }]
        );
        let no_sections = good.replace("FINDINGS:", "").replace("IMPRESSION:", "");
        assert_eq!(verify(&no_sections, &agents()).len(), 2);
    }

    #[test]
    fn negated_clauses_state_nothing() {
        let text = "No canal or foraminal narrowing at L3-4. Normal marrow signal at L1; \
                    there is no disc herniation at L2-3.";
        assert!(stated_findings(text).is_empty(), "{:?}", stated_findings(text));
    }
}
