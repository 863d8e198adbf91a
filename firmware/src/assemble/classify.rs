//! Series classification from tags, driven by the rule table in
//! `config/series_rules.toml`: sequence family, plane, region, and whether
//! the models can use the series (with the reason when not).

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::geometry::Plane;
use crate::spool::InstanceHeader;

/// The built-in rule table (the shipped `config/series_rules.toml`).
pub const BUILTIN_RULES_TOML: &str = include_str!("../../../config/series_rules.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    T1,
    T2,
    Stir,
    T1Post,
    Pd,
    DixonWater,
    DixonFat,
    DixonInPhase,
    DixonOpposedPhase,
    Gre,
    Dwi,
    Localizer,
    Other,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::T1 => "t1",
            Family::T2 => "t2",
            Family::Stir => "stir",
            Family::T1Post => "t1_post",
            Family::Pd => "pd",
            Family::DixonWater => "dixon_water",
            Family::DixonFat => "dixon_fat",
            Family::DixonInPhase => "dixon_in_phase",
            Family::DixonOpposedPhase => "dixon_opposed_phase",
            Family::Gre => "gre",
            Family::Dwi => "dwi",
            Family::Localizer => "localizer",
            Family::Other => "other",
        }
    }

    /// Families the models take: T1 and T2 through their own encoders, the
    /// rest through the synthesizer (see the method reference).
    pub fn used_by_models(self) -> bool {
        !matches!(self, Family::Gre | Family::Dwi | Family::Localizer | Family::Other)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    Cervical,
    Thoracic,
    Lumbar,
    WholeSpine,
    /// Spine, segment not stated.
    Spine,
    NotSpine,
    Unknown,
}

impl Region {
    pub fn as_str(self) -> &'static str {
        match self {
            Region::Cervical => "cervical",
            Region::Thoracic => "thoracic",
            Region::Lumbar => "lumbar",
            Region::WholeSpine => "whole_spine",
            Region::Spine => "spine",
            Region::NotSpine => "not_spine",
            Region::Unknown => "unknown",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    #[error("cannot read rules file {path}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("rules are not valid TOML: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("rule {index} ({kind}): bad regex")]
    Regex {
        kind: &'static str,
        index: usize,
        source: regex::Error,
    },
    #[error("rule {index} ({kind}): {problem}")]
    Invalid {
        kind: &'static str,
        index: usize,
        problem: &'static str,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    family: Vec<FamilyRuleSpec>,
    #[serde(default)]
    region: Vec<RegionRuleSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conditions {
    name: Option<String>,
    #[serde(default)]
    any_image_type: Vec<String>,
    #[serde(default)]
    any_scanning_sequence: Vec<String>,
    #[serde(default)]
    any_sequence_variant: Vec<String>,
    manufacturer: Option<String>,
    te_ms: Option<[f64; 2]>,
    tr_ms: Option<[f64; 2]>,
    ti_ms: Option<[f64; 2]>,
    contrast: Option<bool>,
    #[serde(default)]
    any_body_part: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FamilyRuleSpec {
    family: Family,
    #[serde(flatten)]
    when: Conditions,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionRuleSpec {
    region: Region,
    #[serde(flatten)]
    when: Conditions,
}

#[derive(Debug)]
struct Matcher {
    name: Option<Regex>,
    any_image_type: Vec<String>,
    any_scanning_sequence: Vec<String>,
    any_sequence_variant: Vec<String>,
    manufacturer: Option<Regex>,
    te_ms: Option<[f64; 2]>,
    tr_ms: Option<[f64; 2]>,
    ti_ms: Option<[f64; 2]>,
    contrast: Option<bool>,
    any_body_part: Vec<String>,
}

fn in_range(value: Option<f64>, range: Option<[f64; 2]>) -> bool {
    match range {
        None => true,
        Some([lo, hi]) => value.is_some_and(|v| v >= lo && v <= hi),
    }
}

fn any_of(have: &[String], wanted: &[String]) -> bool {
    wanted.is_empty() || wanted.iter().any(|w| have.iter().any(|h| h == w))
}

impl Matcher {
    fn compile(c: Conditions, kind: &'static str, index: usize) -> Result<Matcher, RulesError> {
        let re = |s: Option<String>| {
            s.map(|s| Regex::new(&s))
                .transpose()
                .map_err(|source| RulesError::Regex { kind, index, source })
        };
        let upper = |v: Vec<String>| v.into_iter().map(|s| s.to_uppercase()).collect::<Vec<_>>();
        let m = Matcher {
            name: re(c.name)?,
            manufacturer: re(c.manufacturer)?,
            any_image_type: upper(c.any_image_type),
            any_scanning_sequence: upper(c.any_scanning_sequence),
            any_sequence_variant: upper(c.any_sequence_variant),
            any_body_part: upper(c.any_body_part),
            te_ms: c.te_ms,
            tr_ms: c.tr_ms,
            ti_ms: c.ti_ms,
            contrast: c.contrast,
        };
        let empty = m.name.is_none()
            && m.manufacturer.is_none()
            && m.any_image_type.is_empty()
            && m.any_scanning_sequence.is_empty()
            && m.any_sequence_variant.is_empty()
            && m.any_body_part.is_empty()
            && m.te_ms.is_none()
            && m.tr_ms.is_none()
            && m.ti_ms.is_none()
            && m.contrast.is_none();
        if empty {
            return Err(RulesError::Invalid {
                kind,
                index,
                problem: "a rule needs at least one condition",
            });
        }
        Ok(m)
    }

    fn matches(&self, h: &InstanceHeader, name_text: &str) -> bool {
        self.name.as_ref().is_none_or(|re| re.is_match(name_text))
            && self.manufacturer.as_ref().is_none_or(|re| re.is_match(&h.manufacturer))
            && any_of(&h.image_type, &self.any_image_type)
            && any_of(&h.scanning_sequence, &self.any_scanning_sequence)
            && any_of(&h.sequence_variant, &self.any_sequence_variant)
            && (self.any_body_part.is_empty() || self.any_body_part.contains(&h.body_part_examined))
            && in_range(h.echo_time_ms, self.te_ms)
            && in_range(h.repetition_time_ms, self.tr_ms)
            && in_range(h.inversion_time_ms, self.ti_ms)
            && self.contrast.is_none_or(|c| c == h.contrast_agent)
    }
}

/// The compiled rule table.
#[derive(Debug)]
pub struct Rules {
    family: Vec<(Family, Matcher)>,
    region: Vec<(Region, Matcher)>,
}

impl Rules {
    pub fn builtin() -> Rules {
        Rules::from_toml(BUILTIN_RULES_TOML).expect("the built-in rule table is valid (tested)")
    }

    pub fn load(path: &std::path::Path) -> Result<Rules, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.to_owned(),
            source,
        })?;
        Rules::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Rules, RulesError> {
        let file: RulesFile = toml::from_str(text)?;
        let family = file
            .family
            .into_iter()
            .enumerate()
            .map(|(i, r)| Ok((r.family, Matcher::compile(r.when, "family", i + 1)?)))
            .collect::<Result<_, RulesError>>()?;
        let region = file
            .region
            .into_iter()
            .enumerate()
            .map(|(i, r)| Ok((r.region, Matcher::compile(r.when, "region", i + 1)?)))
            .collect::<Result<_, RulesError>>()?;
        Ok(Rules { family, region })
    }

    pub fn family(&self, h: &InstanceHeader) -> Family {
        let text = h.naming_text();
        self.family
            .iter()
            .find(|(_, m)| m.matches(h, &text))
            .map(|(f, _)| *f)
            .unwrap_or(Family::Other)
    }

    pub fn region(&self, h: &InstanceHeader) -> Region {
        let text = format!("{} | {}", h.naming_text(), h.study_description);
        self.region
            .iter()
            .find(|(_, m)| m.matches(h, &text))
            .map(|(r, _)| *r)
            .unwrap_or(Region::Unknown)
    }
}

/// The verdict on one series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesClass {
    pub family: Family,
    pub plane: Option<Plane>,
    pub region: Region,
    /// Why the models cannot use the series (a bounded label), or None.
    pub skip_reason: Option<SkipReason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    Localizer,
    SequenceNotUsed,
    NotSpine,
    RegionUnknown,
    PlaneNotUsed,
    NoGeometry,
    TooFewSlices,
    MixedMatrix,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Localizer => "localizer",
            SkipReason::SequenceNotUsed => "sequence_not_used",
            SkipReason::NotSpine => "not_spine",
            SkipReason::RegionUnknown => "region_unknown",
            SkipReason::PlaneNotUsed => "plane_not_used",
            SkipReason::NoGeometry => "no_geometry",
            SkipReason::TooFewSlices => "too_few_slices",
            SkipReason::MixedMatrix => "mixed_matrix",
        }
    }
}

/// Facts about the assembled series that decide usability beyond its tags.
#[derive(Debug, Clone, Copy)]
pub struct SeriesShape {
    pub plane: Option<Plane>,
    pub slices: usize,
    pub uniform_matrix: bool,
}

pub fn classify(
    rules: &Rules,
    h: &InstanceHeader,
    shape: SeriesShape,
    min_slices: usize,
    accept_unknown_region: bool,
) -> SeriesClass {
    let family = rules.family(h);
    let region = rules.region(h);
    let skip_reason = if family == Family::Localizer {
        Some(SkipReason::Localizer)
    } else if !family.used_by_models() {
        Some(SkipReason::SequenceNotUsed)
    } else if region == Region::NotSpine {
        Some(SkipReason::NotSpine)
    } else if region == Region::Unknown && !accept_unknown_region {
        Some(SkipReason::RegionUnknown)
    } else if shape.plane.is_none() {
        Some(SkipReason::NoGeometry)
    } else if !matches!(shape.plane, Some(Plane::Sagittal | Plane::Axial)) {
        Some(SkipReason::PlaneNotUsed)
    } else if shape.slices < min_slices {
        Some(SkipReason::TooFewSlices)
    } else if !shape.uniform_matrix {
        Some(SkipReason::MixedMatrix)
    } else {
        None
    };
    SeriesClass {
        family,
        plane: shape.plane,
        region,
        skip_reason,
    }
}

#[cfg(test)]
mod tests;
