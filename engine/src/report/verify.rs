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
    /// The text denies a finding the agents reported ("no foraminal
    /// narrowing at any level" with one at L4-L5).
    Denied { condition: String, level: String },
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
            Discrepancy::WrongSeverity { stated, agents } => match stated.severity {
                Some(said) => write!(
                    f,
                    "{} at {} is {}, not {}",
                    name(stated.condition),
                    stated.level,
                    agents,
                    said
                ),
                None => write!(
                    f,
                    "{} at {} is {}: say so",
                    name(stated.condition),
                    stated.level,
                    agents
                ),
            },
            Discrepancy::Missing { condition, level } => {
                write!(f, "{} at {} is missing", name(condition), level)
            }
            Discrepancy::Structure(what) => write!(f, "the {what} section is missing"),
            Discrepancy::Denied { condition, level } => {
                write!(
                    f,
                    "{} at {} is among the findings, it may not be denied",
                    name(condition),
                    level
                )
            }
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
            "canal or foraminal",
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

pub(crate) fn negated(clause: &str) -> bool {
    negation_at(clause).is_some()
}

/// Where a clause's negation begins (byte offset), if it negates.
fn negation_at(lower: &str) -> Option<usize> {
    let c = format!(" {lower}");
    NEGATIONS.iter().filter_map(|n| c.find(&format!(" {n}"))).min()
}

/// What a negating clause denies: (condition, level; None = every level),
/// and where its negation begins. "Other levels: no ..." denies nothing a
/// checker can place, so it denies nothing.
fn denied_in_clause(clause: &str) -> Vec<(&'static str, Option<String>, usize)> {
    let lower = clause.to_ascii_lowercase();
    let mut out: Vec<(&'static str, Option<String>, usize)> = SECTION_NORMALS
        .iter()
        .filter_map(|(phrase, conditions)| lower.find(phrase).map(|at| (conditions, at)))
        .flat_map(|(conditions, at)| conditions.iter().map(move |c| (*c, None, at)))
        .collect();
    let Some(at) = negation_at(&lower) else {
        return out;
    };
    if lower.contains("other") {
        return out;
    }
    let levels: Vec<Option<String>> = match level_mentions(clause) {
        m if m.is_empty() => vec![None],
        m => m.into_iter().map(|m| Some(m.level)).collect(),
    };
    out.extend(
        conditions_named(&lower)
            .into_iter()
            .flat_map(|c| levels.iter().map(move |l| (c, l.clone(), at))),
    );
    out
}

/// A section's normal sentence (as the composer writes it when the section
/// has no finding) denies the section's conditions at every level.
const SECTION_NORMALS: &[(&str, &[&str])] = &[
    ("normal alignment", &["spondylolisthesis", "pars_defect"]),
    ("normal marrow signal", &["marrow_edema", "marrow_lesion", "hemangioma"]),
    ("body heights maintained", &["compression_fracture"]),
    (
        "disc heights and signal are preserved",
        &["disc_degeneration", "disc_height_loss", "inflammation"],
    ),
    ("cord and cauda equina are normal", &["cord_compression", "cord_signal"]),
];

/// The agents' finding a denial contradicts, if any.
fn contradicted<'f>(findings: &'f [Finding], condition: &str, level: Option<&str>) -> Option<&'f Finding> {
    findings
        .iter()
        .find(|f| f.condition == condition && level.is_none_or(|l| l == f.level))
}

/// The conditions a (lower-case) clause names.
pub(crate) fn conditions_named(lower: &str) -> Vec<&'static str> {
    LEXICON
        .iter()
        .filter(|(_, phrases)| phrases.iter().any(|p| lower.contains(p)))
        .map(|(c, _)| *c)
        .collect()
}

/// A level named in a clause, normalized ("L4-L5" / "L2"), with the byte
/// range of its mention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mention {
    pub level: String,
    pub start: usize,
    pub end: usize,
}

/// What follows "T1"/"T2" when it names an MR weighting, not a vertebra
/// ("abnormal T2 signal in the cord at L1" states one level, L1).
const WEIGHTING_WORDS: &[&str] = &[
    "signal",
    "weighted",
    "-weighted",
    "hyper",
    "hypo",
    "image",
    "sequence",
    "stir",
];

fn is_weighting(clause: &str, region: char, n: u32, end: usize) -> bool {
    region == 'T'
        && (n == 1 || n == 2)
        && clause
            .get(end..)
            .map(|rest| rest.trim_start().to_ascii_lowercase())
            .is_some_and(|rest| WEIGHTING_WORDS.iter().any(|w| rest.starts_with(w)))
}

/// Levels named in a clause: "L4-5", "L4-L5", "L4/5", "L5-S1" (discs) and
/// "L2" (vertebrae), normalized to "L4-L5" / "L2".
fn level_mentions(clause: &str) -> Vec<Mention> {
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
        let single = j;
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
        if j < b.len() && b[j].is_ascii_alphanumeric() || j == single && is_weighting(clause, region, n, j) {
            i = j;
            continue;
        }
        out.push(Mention {
            level,
            start: i,
            end: j,
        });
        i = j;
    }
    out
}

#[cfg(test)]
fn levels(clause: &str) -> Vec<String> {
    level_mentions(clause).into_iter().map(|m| m.level).collect()
}

/// Where in a clause (byte offsets) a stated finding's words are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spans {
    pub condition: usize,
    pub level: Mention,
    pub side: Option<usize>,
    pub severity: Option<usize>,
}

/// The findings one clause states, with where their words are.
pub(crate) fn stated_in_clause(clause: &str) -> Vec<(Stated, Spans)> {
    let lower = clause.to_ascii_lowercase();
    if lower.trim().is_empty() || negated(&lower) {
        return Vec::new();
    }
    let conditions: Vec<(&'static str, usize)> = LEXICON
        .iter()
        .filter_map(|(c, phrases)| phrases.iter().filter_map(|p| lower.find(p)).min().map(|at| (*c, at)))
        .collect();
    if conditions.is_empty() {
        return Vec::new();
    }
    let (left, right) = (lower.find("left"), lower.find("right"));
    let (side, side_at) = match (left, right) {
        (Some(at), None) => (Some("left"), Some(at)),
        (None, Some(at)) => (Some("right"), Some(at)),
        _ => (None, None),
    };
    let severity = ["severe", "moderate", "mild"]
        .into_iter()
        .find_map(|s| lower.find(s).map(|at| (s, at)));
    let mut out = Vec::new();
    for mention in level_mentions(clause) {
        for &(condition, at) in &conditions {
            let stated = Stated {
                condition,
                level: mention.level.clone(),
                side,
                severity: severity.map(|s| s.0),
            };
            let spans = Spans {
                condition: at,
                level: mention.clone(),
                side: side_at,
                severity: severity.map(|s| s.1),
            };
            out.push((stated, spans));
        }
    }
    out
}

/// What a finding stated without a level it can be placed at is reported as.
pub const UNNAMED_LEVEL: &str = "an unnamed level";

/// The conditions an affirming clause names without any level it can be
/// placed at ("degenerative signal loss of the LN2-3 disc"), with where
/// their words are: supported only if the agents report the condition
/// somewhere.
fn unplaced_in_clause(clause: &str) -> Vec<(&'static str, usize)> {
    let lower = clause.to_ascii_lowercase();
    if lower.trim().is_empty() || negated(&lower) || !level_mentions(clause).is_empty() {
        return Vec::new();
    }
    LEXICON
        .iter()
        .filter_map(|(c, phrases)| phrases.iter().filter_map(|p| lower.find(p)).min().map(|at| (*c, at)))
        .collect()
}

/// Every finding the text states.
pub fn stated_findings(text: &str) -> Vec<Stated> {
    let mut out: Vec<Stated> = Vec::new();
    for clause in text.split(CLAUSE_ENDS) {
        for (s, _) in stated_in_clause(clause) {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

/// Where clauses end.
pub(crate) const CLAUSE_ENDS: [char; 3] = ['.', ';', '\n'];

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

/// What is wrong with one stated finding, against the agents' findings.
/// The verifier reports each; grounded decoding mends the first.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault<'f> {
    /// No agent finding of that condition at that level.
    Unsupported,
    /// Another side than the agents' (their finding).
    WrongSide(&'f Finding),
    /// Another grade than the agents', or none where they grade it.
    WrongSeverity(&'f Finding),
}

pub(crate) fn faults<'f>(s: &Stated, findings: &'f [Finding]) -> Vec<Fault<'f>> {
    let here: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.condition == s.condition && f.level == s.level)
        .collect();
    let Some(&first) = here.first() else {
        return vec![Fault::Unsupported];
    };
    let mut out = Vec::new();
    if let Some(side) = s.side
        && !here.iter().any(|f| f.side == side)
    {
        out.push(Fault::WrongSide(first));
    }
    let wrong_severity = match s.severity {
        Some(sev) => !here.iter().any(|f| f.severity == sev),
        // The agents grade it; a statement without the grade loses it.
        None => !first.severity.is_empty(),
    };
    if graded(s.condition) && wrong_severity {
        out.push(Fault::WrongSeverity(first));
    }
    out
}

/// Conditions an affirming clause names without a readable level that the
/// agents report nowhere, with where their words are.
pub(crate) fn unplaced_unsupported(clause: &str, findings: &[Finding]) -> Vec<(&'static str, usize)> {
    unplaced_in_clause(clause)
        .into_iter()
        .filter(|(condition, _)| !findings.iter().any(|f| f.condition == *condition))
        .collect()
}

/// The agents' findings a clause denies, with where its negation begins.
pub(crate) fn contradicting_denials<'f>(clause: &str, findings: &'f [Finding]) -> Vec<(&'f Finding, usize)> {
    denied_in_clause(clause)
        .into_iter()
        .filter_map(|(condition, level, at)| contradicted(findings, condition, level.as_deref()).map(|f| (f, at)))
        .collect()
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
        for fault in faults(s, findings) {
            out.push(match fault {
                Fault::Unsupported => Discrepancy::Unsupported(s.clone()),
                Fault::WrongSide(f) => Discrepancy::WrongSide {
                    stated: s.clone(),
                    agents: agent_side(f).to_string(),
                },
                Fault::WrongSeverity(f) => Discrepancy::WrongSeverity {
                    stated: s.clone(),
                    agents: f.severity.clone(),
                },
            });
        }
    }
    for clause in text.split(CLAUSE_ENDS) {
        for (condition, _) in unplaced_unsupported(clause, findings) {
            let d = Discrepancy::Unsupported(Stated {
                condition,
                level: UNNAMED_LEVEL.into(),
                side: None,
                severity: None,
            });
            if !out.contains(&d) {
                out.push(d);
            }
        }
        for (f, _) in contradicting_denials(clause, findings) {
            let d = Discrepancy::Denied {
                condition: f.condition.clone(),
                level: f.level.clone(),
            };
            if !out.contains(&d) {
                out.push(d);
            }
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

    /// A text that states exactly `agents()`.
    const GOOD: &str = "FINDINGS: Severe left paracentral disc herniation at L4-5. Moderate spinal canal stenosis at L4-5. \
                        Vertebral hemangioma in L2. Severe right neural foraminal narrowing at L5-S1.\n\
                        IMPRESSION: 1. Severe left disc herniation at L4-5.";

    fn agents() -> Vec<Finding> {
        vec![
            Finding::certain("herniation", "L4-L5", "left", "severe"),
            Finding::certain("canal_stenosis", "L4-L5", "both_or_central", "moderate"),
            Finding::certain("hemangioma", "L2", "both_or_central", "moderate"),
            Finding::certain("foraminal_stenosis", "L5-S1", "right", "severe"),
        ]
    }

    #[test]
    fn levels_are_read_in_every_common_spelling() {
        assert_eq!(levels("at L4-5 and L5-S1"), vec!["L4-L5", "L5-S1"]);
        assert_eq!(levels("L4/5, L4-L5, C6-7"), vec!["L4-L5", "L4-L5", "C6-C7"]);
        assert_eq!(levels("in the L2 vertebral body"), vec!["L2"]);
        assert!(levels("LEFT and T2 SIGNAL").is_empty(), "a weighting, not a vertebra");
        assert_eq!(levels("abnormal T2 signal in the cord at T2"), vec!["T2"]);
        assert_eq!(levels("T1-weighted images, T1 and T2 vertebrae"), vec!["T1", "T2"]);
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
            slice_embeddings: None,
            seconds: 0.0,
        };
        let text = compose(&a, &Triage::builtin(), "lumbar").text();
        assert_eq!(verify(&text, &a.findings), vec![], "{text}");
    }

    #[test]
    fn invented_findings_wrong_sides_and_severities_and_omissions_are_caught() {
        let good = GOOD;
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
    fn the_cord_signal_sentence_states_its_level_only() {
        let cord = vec![Finding::certain("cord_signal", "L1", "both_or_central", "")];
        assert_eq!(
            verify(
                "FINDINGS: Abnormal T2 signal in the spinal cord at L1.\nIMPRESSION: 1.",
                &cord
            ),
            vec![]
        );
    }

    #[test]
    fn a_graded_finding_must_carry_its_grade_and_an_unplaced_one_must_exist() {
        let good = GOOD;
        let ungraded = format!("{good}\n2. Right neural foraminal narrowing at L5-S1.");
        let found = verify(&ungraded, &agents());
        assert!(matches!(found[..], [Discrepancy::WrongSeverity { .. }]), "{found:?}");
        assert!(found[0].to_string().ends_with("is severe: say so"), "{}", found[0]);
        let unplaced = format!("{good}\n3. Severe degenerative signal loss of the LN2-3 disc.");
        assert_eq!(
            verify(&unplaced, &agents()),
            vec![Discrepancy::Unsupported(Stated {
                condition: "disc_degeneration",
                level: UNNAMED_LEVEL.into(),
                side: None,
                severity: None
            })]
        );
        let placed_elsewhere = format!("{good} The herniation is large.");
        assert_eq!(
            verify(&placed_elsewhere, &agents()),
            vec![],
            "the agents report a herniation"
        );
    }

    #[test]
    fn denying_a_finding_the_agents_report_is_caught() {
        let good = GOOD;
        let denied = format!("{good}\nNo canal or foraminal narrowing at any level.");
        let found = verify(&denied, &agents());
        assert!(found.contains(&Discrepancy::Denied {
            condition: "foraminal_stenosis".into(),
            level: "L5-S1".into()
        }));
        assert!(found.contains(&Discrepancy::Denied {
            condition: "canal_stenosis".into(),
            level: "L4-L5".into()
        }));
        let at_a_level = format!("{good}\nL4-5: no foraminal narrowing. L3-4: no foraminal narrowing.");
        assert_eq!(
            verify(&at_a_level, &agents()),
            vec![],
            "no foraminal finding at L4-L5 or L3-L4"
        );
        let at_its_level = format!("{good}\nNo disc herniation at L4-5.");
        assert_eq!(verify(&at_its_level, &agents()).len(), 1);
        let others = format!("{good}\nOther levels: no canal or foraminal narrowing.");
        assert_eq!(verify(&others, &agents()), vec![]);
        let normal_marrow = format!("{good}\nMARROW: Normal marrow signal; vertebral body heights maintained.");
        assert_eq!(
            verify(&normal_marrow, &agents()),
            vec![Discrepancy::Denied {
                condition: "hemangioma".into(),
                level: "L2".into()
            }],
            "the section's normal sentence with a hemangioma in it"
        );
        let normal_discs = format!("{good}\nDISCS: Disc heights and signal are preserved.");
        assert_eq!(verify(&normal_discs, &agents()), vec![], "no disc finding");
    }

    #[test]
    fn negated_clauses_state_nothing() {
        let text = "No canal or foraminal narrowing at L3-4. Normal marrow signal at L1; \
                    there is no disc herniation at L2-3.";
        assert!(stated_findings(text).is_empty(), "{:?}", stated_findings(text));
    }
}
