//! Triage: findings to ACR actionable-finding categories by the rules in
//! `config/triage.toml` (first matching rule wins; no match = routine).

use serde::{Deserialize, Serialize};

use crate::analysis::Finding;

/// ACR communication category; lower is more urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(into = "u8")]
#[repr(u8)]
pub enum Category {
    /// Category 1: minutes.
    Critical = 1,
    /// Category 2: hours.
    Urgent = 2,
    /// Category 3: days.
    Routine = 3,
}

impl From<Category> for u8 {
    fn from(c: Category) -> u8 {
        c as u8
    }
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Critical => "critical",
            Category::Urgent => "urgent",
            Category::Routine => "routine",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    condition: String,
    #[serde(default)]
    min_severity: Option<String>,
    /// Only levels of this region (cervical, thoracic, lumbar).
    #[serde(default)]
    region: Option<String>,
    category: u8,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    rule: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub struct Triage {
    rules: Vec<Rule>,
}

#[derive(Debug, thiserror::Error)]
pub enum TriageError {
    #[error("triage rules: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("triage rule for {condition}: {problem}")]
    Invalid { condition: String, problem: String },
}

pub const BUILTIN_RULES: &str = include_str!("../../../config/triage.toml");

fn severity_rank(s: &str) -> Option<u8> {
    match s {
        "mild" => Some(1),
        "moderate" => Some(2),
        "severe" => Some(3),
        _ => None,
    }
}

fn region_of(level: &str) -> &'static str {
    match level.chars().next() {
        Some('C') => "cervical",
        Some('T') => "thoracic",
        _ => "lumbar",
    }
}

impl Triage {
    pub fn builtin() -> Triage {
        Triage::from_toml(BUILTIN_RULES).expect("the built-in triage rules parse")
    }

    pub fn from_toml(text: &str) -> Result<Triage, TriageError> {
        let file: RulesFile = toml::from_str(text)?;
        for r in &file.rule {
            let invalid = |problem: &str| TriageError::Invalid {
                condition: r.condition.clone(),
                problem: problem.to_string(),
            };
            if !(1..=3).contains(&r.category) {
                return Err(invalid("category must be 1, 2 or 3"));
            }
            if let Some(s) = &r.min_severity
                && severity_rank(s).is_none()
            {
                return Err(invalid("min_severity must be mild, moderate or severe"));
            }
        }
        Ok(Triage { rules: file.rule })
    }

    pub fn category(&self, f: &Finding) -> Category {
        for r in &self.rules {
            if r.condition != f.condition {
                continue;
            }
            if let Some(min) = &r.min_severity
                && severity_rank(&f.severity) < severity_rank(min)
            {
                continue;
            }
            if let Some(region) = &r.region
                && region_of(&f.level) != region
            {
                continue;
            }
            return match r.category {
                1 => Category::Critical,
                2 => Category::Urgent,
                _ => Category::Routine,
            };
        }
        Category::Routine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(condition: &str, level: &str, severity: &str) -> Finding {
        Finding {
            condition: condition.into(),
            level: level.into(),
            probability: 0.9,
            side: "both_or_central".into(),
            side_probability: 0.9,
            severity: severity.into(),
            severity_probability: 0.9,
        }
    }

    #[test]
    fn builtin_rules_rank_emergencies_first() {
        let t = Triage::builtin();
        assert_eq!(
            t.category(&finding("cord_compression", "C5-C6", "moderate")),
            Category::Critical
        );
        assert_eq!(
            t.category(&finding("canal_stenosis", "L4-L5", "severe")),
            Category::Critical
        );
        assert_eq!(
            t.category(&finding("canal_stenosis", "C5-C6", "severe")),
            Category::Urgent
        );
        assert_eq!(
            t.category(&finding("canal_stenosis", "L4-L5", "moderate")),
            Category::Routine
        );
        assert_eq!(
            t.category(&finding("compression_fracture", "L1", "mild")),
            Category::Urgent
        );
        assert_eq!(
            t.category(&finding("disc_degeneration", "L4-L5", "severe")),
            Category::Routine
        );
    }

    #[test]
    fn bad_rules_are_named() {
        let e = Triage::from_toml("[[rule]]\ncondition = \"x\"\ncategory = 4\n").unwrap_err();
        assert!(e.to_string().contains("category"), "{e}");
        let e = Triage::from_toml("[[rule]]\ncondition = \"x\"\nmin_severity = \"huge\"\ncategory = 1\n").unwrap_err();
        assert!(e.to_string().contains("min_severity"), "{e}");
    }
}
