//! Findings: the 16 conditions of the published task list plus disc
//! degeneration and cord signal abnormality, with level, side and severity,
//! sampled per subject or forced from the command line.

use serde::{Deserialize, Serialize};

use crate::levels::{DISCS, Region, VERTEBRAE};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    CanalStenosis,
    ParsDefect,
    CordCompression,
    MarrowEdema,
    Inflammation,
    ForaminalStenosis,
    Spondylolisthesis,
    PerineuralCyst,
    Herniation,
    Hemangioma,
    Lipomatosis,
    MarrowLesion,
    CompressionFracture,
    DiscHeightLoss,
    SubarticularStenosis,
    SynovialCyst,
    DiscDegeneration,
    CordSignal,
}

pub const ALL_CONDITIONS: &[Condition] = &[
    Condition::CanalStenosis,
    Condition::ParsDefect,
    Condition::CordCompression,
    Condition::MarrowEdema,
    Condition::Inflammation,
    Condition::ForaminalStenosis,
    Condition::Spondylolisthesis,
    Condition::PerineuralCyst,
    Condition::Herniation,
    Condition::Hemangioma,
    Condition::Lipomatosis,
    Condition::MarrowLesion,
    Condition::CompressionFracture,
    Condition::DiscHeightLoss,
    Condition::SubarticularStenosis,
    Condition::SynovialCyst,
    Condition::DiscDegeneration,
    Condition::CordSignal,
];

/// RSNA grades; a finding that is present is at least `Mild`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Mild,
    Moderate,
    Severe,
}

impl Severity {
    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Left,
    Right,
    Bilateral,
    Central,
}

impl Side {
    /// +1 for the patient's left (DICOM +x), -1 for the right, 0 otherwise.
    pub fn sign(self) -> f64 {
        match self {
            Side::Left => 1.0,
            Side::Right => -1.0,
            _ => 0.0,
        }
    }
}

/// Sub-types where the condition has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subtype {
    Bulge,
    Protrusion,
    Extrusion,
    Acute,
    Chronic,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub condition: Condition,
    /// A disc level ("L4-L5") or a vertebra ("L1").
    pub level: String,
    pub side: Option<Side>,
    pub severity: Severity,
    pub subtype: Option<Subtype>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "bad finding {0:?}: expected CONDITION:LEVEL[:SIDE][:SEVERITY][:SUBTYPE], e.g. herniation:L4-L5:left:moderate:protrusion"
)]
pub struct FindingParseError(pub String);

fn parse_enum<T: serde::de::DeserializeOwned>(s: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(s.to_lowercase().replace('-', "_"))).ok()
}

impl std::str::FromStr for Finding {
    type Err = FindingParseError;
    fn from_str(s: &str) -> Result<Finding, FindingParseError> {
        let bad = || FindingParseError(s.to_string());
        let mut parts = s.split(':');
        let condition: Condition = parts.next().and_then(parse_enum).ok_or_else(bad)?;
        let level = parts.next().ok_or_else(bad)?.to_uppercase();
        if !DISCS.contains(&level.as_str()) && !VERTEBRAE.contains(&level.as_str()) {
            return Err(bad());
        }
        let mut f = Finding {
            condition,
            level,
            side: None,
            severity: Severity::Moderate,
            subtype: None,
        };
        for part in parts {
            if let Some(side) = parse_enum::<Side>(part) {
                f.side = Some(side);
            } else if let Some(sev) = parse_enum::<Severity>(part) {
                f.severity = sev;
            } else if let Some(sub) = parse_enum::<Subtype>(part) {
                f.subtype = Some(sub);
            } else {
                return Err(bad());
            }
        }
        if needs_side(condition) && f.side.is_none() {
            f.side = Some(Side::Left);
        }
        if wants_disc(condition) != DISCS.contains(&f.level.as_str()) {
            return Err(bad());
        }
        Ok(f)
    }
}

/// Conditions graded at a disc level (the others belong to a vertebra).
pub fn wants_disc(c: Condition) -> bool {
    !matches!(
        c,
        Condition::MarrowEdema
            | Condition::Hemangioma
            | Condition::MarrowLesion
            | Condition::CompressionFracture
            | Condition::ParsDefect
            | Condition::PerineuralCyst
    )
}

pub fn needs_side(c: Condition) -> bool {
    matches!(
        c,
        Condition::ForaminalStenosis
            | Condition::SubarticularStenosis
            | Condition::SynovialCyst
            | Condition::PerineuralCyst
    )
}

/// Per-condition probability that a subject has it (configurable).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prevalence(pub Vec<(Condition, f64)>);

impl Default for Prevalence {
    fn default() -> Self {
        use Condition::*;
        Prevalence(vec![
            (CanalStenosis, 0.30),
            (ParsDefect, 0.08),
            (CordCompression, 0.10),
            (MarrowEdema, 0.12),
            (Inflammation, 0.06),
            (ForaminalStenosis, 0.30),
            (Spondylolisthesis, 0.12),
            (PerineuralCyst, 0.10),
            (Herniation, 0.35),
            (Hemangioma, 0.20),
            (Lipomatosis, 0.06),
            (MarrowLesion, 0.07),
            (CompressionFracture, 0.10),
            (DiscHeightLoss, 0.25),
            (SubarticularStenosis, 0.20),
            (SynovialCyst, 0.06),
            (DiscDegeneration, 0.40),
            (CordSignal, 0.06),
        ])
    }
}

impl Prevalence {
    /// Overrides from `condition=probability,...` (the rest keep their
    /// defaults).
    pub fn with_overrides(mut self, spec: &str) -> Result<Prevalence, String> {
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, p) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected CONDITION=PROBABILITY"))?;
            let condition: Condition = parse_enum(name).ok_or_else(|| format!("unknown condition {name:?}"))?;
            let p: f64 = p
                .parse()
                .map_err(|_| format!("{item:?}: probability is not a number"))?;
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{item:?}: probability must be in [0, 1]"));
            }
            match self.0.iter_mut().find(|(c, _)| *c == condition) {
                Some(entry) => entry.1 = p,
                None => self.0.push((condition, p)),
            }
        }
        Ok(self)
    }
}

/// Levels where a condition can occur in a region (anatomically: no cord
/// below the conus, pars defects and synovial cysts in the lumbar spine,
/// perineural cysts at the sacrum ...).
pub fn candidate_levels(c: Condition, region: Region) -> Vec<&'static str> {
    let discs = region.disc_levels();
    let vertebrae = region.vertebra_levels();
    let lumbar_discs: Vec<&str> = discs.iter().copied().filter(|d| d.starts_with('L')).collect();
    let cord_discs: Vec<&str> = discs
        .iter()
        .copied()
        .filter(|d| d.starts_with('C') || d.starts_with('T'))
        .collect();
    match c {
        Condition::ParsDefect => vertebrae
            .iter()
            .copied()
            .filter(|v| matches!(*v, "L4" | "L5"))
            .collect(),
        Condition::SynovialCyst | Condition::SubarticularStenosis | Condition::Lipomatosis => lumbar_discs,
        Condition::Spondylolisthesis => discs
            .iter()
            .copied()
            .filter(|d| matches!(*d, "L3-L4" | "L4-L5" | "L5-S1" | "C3-C4" | "C4-C5" | "C5-C6"))
            .collect(),
        Condition::CordCompression | Condition::CordSignal => cord_discs,
        Condition::PerineuralCyst => vertebrae.iter().copied().filter(|v| *v == "S1").collect(),
        Condition::CompressionFracture | Condition::MarrowEdema | Condition::Hemangioma | Condition::MarrowLesion => {
            vertebrae.iter().copied().filter(|v| *v != "S1").collect()
        }
        _ => discs,
    }
}

/// Samples a subject's findings: each condition independently with its
/// prevalence, at a random candidate level, one finding per condition.
pub fn sample(rng: &mut Rng, region: Region, prevalence: &Prevalence) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    for &(condition, p) in &prevalence.0 {
        if !rng.chance(p) {
            continue;
        }
        let levels = candidate_levels(condition, region);
        if levels.is_empty() {
            continue;
        }
        let level = rng.pick(&levels).to_string();
        let severity = *rng.pick(&[Severity::Mild, Severity::Moderate, Severity::Severe]);
        let side = if needs_side(condition) {
            Some(*rng.pick(&[Side::Left, Side::Right]))
        } else if condition == Condition::Herniation {
            Some(*rng.pick(&[Side::Central, Side::Left, Side::Right]))
        } else {
            None
        };
        let subtype = match condition {
            Condition::Herniation => Some(*rng.pick(&[Subtype::Bulge, Subtype::Protrusion, Subtype::Extrusion])),
            Condition::CompressionFracture => Some(*rng.pick(&[Subtype::Acute, Subtype::Chronic])),
            _ => None,
        };
        // Two space-occupying findings at one level would be graded as one.
        let crowded = out
            .iter()
            .any(|f| f.level == level && is_mass(f.condition) && is_mass(condition));
        if crowded {
            continue;
        }
        out.push(Finding {
            condition,
            level,
            side,
            severity,
            subtype,
        });
    }
    // Severe canal stenosis in the cord-bearing spine compresses the cord.
    out.sort_by(|a, b| a.condition.cmp(&b.condition).then(a.level.cmp(&b.level)));
    out
}

fn is_mass(c: Condition) -> bool {
    matches!(
        c,
        Condition::MarrowLesion | Condition::Hemangioma | Condition::CompressionFracture
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_findings() {
        let f: Finding = "herniation:L4-L5:left:severe:extrusion".parse().unwrap();
        assert_eq!(f.condition, Condition::Herniation);
        assert_eq!(f.side, Some(Side::Left));
        assert_eq!(f.severity, Severity::Severe);
        assert_eq!(f.subtype, Some(Subtype::Extrusion));
        let f: Finding = "foraminal_stenosis:L5-S1".parse().unwrap();
        assert_eq!(f.side, Some(Side::Left));
        assert!(
            "hemangioma:L4-L5".parse::<Finding>().is_err(),
            "vertebral condition at a disc"
        );
        assert!("herniation:L9-L10".parse::<Finding>().is_err());
        assert!("nonsense:L4-L5".parse::<Finding>().is_err());
    }

    #[test]
    fn prevalence_overrides() {
        let p = Prevalence::default()
            .with_overrides("herniation=1, hemangioma=0")
            .unwrap();
        assert!(p.0.contains(&(Condition::Herniation, 1.0)));
        assert!(p.0.contains(&(Condition::Hemangioma, 0.0)));
        assert!(Prevalence::default().with_overrides("herniation=2").is_err());
        assert!(Prevalence::default().with_overrides("nope=0.1").is_err());
        let everything = Prevalence(ALL_CONDITIONS.iter().map(|c| (*c, 1.0)).collect());
        let f = sample(&mut Rng::new(1), Region::Lumbar, &everything);
        assert!(f.len() >= 12, "{}", f.len());
    }

    #[test]
    fn sampling_is_deterministic_and_region_bound() {
        let a = sample(&mut Rng::new(3), Region::Lumbar, &Prevalence::default());
        let b = sample(&mut Rng::new(3), Region::Lumbar, &Prevalence::default());
        assert_eq!(a, b);
        for seed in 0..200 {
            for f in sample(&mut Rng::new(seed), Region::Cervical, &Prevalence::default()) {
                assert!(
                    f.level.starts_with('C') || f.level.starts_with("T1") || f.level == "T1",
                    "{f:?}"
                );
                assert_ne!(f.condition, Condition::ParsDefect);
            }
        }
    }
}
