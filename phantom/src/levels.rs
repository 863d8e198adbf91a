//! Vertebral levels and regions.

use serde::{Deserialize, Serialize};

/// C2 to S1, top to bottom.
pub const VERTEBRAE: &[&str] = &[
    "C2", "C3", "C4", "C5", "C6", "C7", "T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12",
    "L1", "L2", "L3", "L4", "L5", "S1",
];

/// Disc k lies between vertebra k and k+1.
pub const DISCS: &[&str] = &[
    "C2-C3", "C3-C4", "C4-C5", "C5-C6", "C6-C7", "C7-T1", "T1-T2", "T2-T3", "T3-T4", "T4-T5", "T5-T6", "T6-T7",
    "T7-T8", "T8-T9", "T9-T10", "T10-T11", "T11-T12", "T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1",
];

pub fn vertebra_index(name: &str) -> Option<usize> {
    VERTEBRAE.iter().position(|v| *v == name)
}

pub fn disc_index(name: &str) -> Option<usize> {
    DISCS.iter().position(|d| *d == name)
}

/// Report style: "L4-5", "L5-S1", "C7-T1".
pub fn short_disc_name(name: &str) -> String {
    match name.split_once('-') {
        Some((a, b)) if a.chars().next() == b.chars().next() => format!("{a}-{}", &b[1..]),
        _ => name.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    Cervical,
    Thoracic,
    Lumbar,
    WholeSpine,
}

impl Region {
    pub const ALL: [Region; 4] = [Region::Cervical, Region::Thoracic, Region::Lumbar, Region::WholeSpine];

    pub fn as_str(self) -> &'static str {
        match self {
            Region::Cervical => "cervical",
            Region::Thoracic => "thoracic",
            Region::Lumbar => "lumbar",
            Region::WholeSpine => "whole_spine",
        }
    }

    /// Vertebrae the sagittal field of view covers (first, last).
    pub fn coverage(self) -> (usize, usize) {
        match self {
            Region::Cervical => (0, 7),    // C2..T2
            Region::Thoracic => (5, 18),   // C7..L1
            Region::Lumbar => (16, 23),    // T11..S1
            Region::WholeSpine => (0, 23), // C2..S1
        }
    }

    /// The disc levels a report of this region lists.
    pub fn disc_levels(self) -> Vec<&'static str> {
        let (a, b) = match self {
            Region::Cervical => (0, 5),
            Region::Thoracic => (6, 16),
            Region::Lumbar => (18, 22),
            Region::WholeSpine => (0, 22),
        };
        DISCS[a..=b].to_vec()
    }

    pub fn vertebra_levels(self) -> Vec<&'static str> {
        let (a, b) = match self {
            Region::Cervical => (0, 5),
            Region::Thoracic => (6, 17),
            Region::Lumbar => (18, 23),
            Region::WholeSpine => (0, 23),
        };
        VERTEBRAE[a..=b].to_vec()
    }
}

impl std::str::FromStr for Region {
    type Err = String;
    fn from_str(s: &str) -> Result<Region, String> {
        Region::ALL
            .into_iter()
            .find(|r| r.as_str() == s.to_lowercase().replace('-', "_"))
            .ok_or_else(|| format!("unknown region {s:?} (cervical, thoracic, lumbar, whole_spine)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(VERTEBRAE.len(), 24);
        assert_eq!(DISCS.len(), 23);
        assert_eq!(short_disc_name("L4-L5"), "L4-5");
        assert_eq!(short_disc_name("L5-S1"), "L5-S1");
        assert_eq!(short_disc_name("C7-T1"), "C7-T1");
        assert_eq!(
            Region::Lumbar.disc_levels(),
            ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
        );
        assert_eq!("whole-spine".parse::<Region>().unwrap(), Region::WholeSpine);
    }
}
