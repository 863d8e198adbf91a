//! Scanner vendor styles: the way each vendor names, tags, scales and
//! resolves the same acquisition. Canon is the style held out of training
//! by default, to measure cross-vendor generalization.

use serde::{Deserialize, Serialize};

use crate::levels::Region;
use crate::rng::Rng;
use crate::sequence::{Sequence, Timing, stir_ti};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vendor {
    Siemens,
    Ge,
    Philips,
    Canon,
}

impl Vendor {
    pub const ALL: [Vendor; 4] = [Vendor::Siemens, Vendor::Ge, Vendor::Philips, Vendor::Canon];
    pub const HELD_OUT: Vendor = Vendor::Canon;

    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Siemens => "siemens",
            Vendor::Ge => "ge",
            Vendor::Philips => "philips",
            Vendor::Canon => "canon",
        }
    }

    pub fn manufacturer(self) -> &'static str {
        match self {
            Vendor::Siemens => "SIEMENS",
            Vendor::Ge => "GE MEDICAL SYSTEMS",
            Vendor::Philips => "Philips Medical Systems",
            Vendor::Canon => "CANON_MEC",
        }
    }

    pub fn model(self, field: f64) -> &'static str {
        let high = field > 2.0;
        match (self, high) {
            (Vendor::Siemens, false) => "Avanto_fit",
            (Vendor::Siemens, true) => "Skyra",
            (Vendor::Ge, false) => "SIGNA Artist",
            (Vendor::Ge, true) => "DISCOVERY MR750",
            (Vendor::Philips, false) => "Ingenia",
            (Vendor::Philips, true) => "Ingenia Elition X",
            (Vendor::Canon, false) => "Vantage Orian",
            (Vendor::Canon, true) => "Vantage Galan 3T",
        }
    }

    pub fn software(self) -> &'static str {
        match self {
            Vendor::Siemens => "syngo MR E11",
            Vendor::Ge => "29\\LX\\MR Software release:RX29.1_R02",
            Vendor::Philips => "5.7.1\\5.7.1.2",
            Vendor::Canon => "V7.0",
        }
    }

    /// SeriesDescription as the vendor's console writes it.
    pub fn description(self, seq: Sequence, axial: bool, region: Region) -> String {
        let reg = match (self, region) {
            (Vendor::Ge, Region::Lumbar) | (Vendor::Canon, Region::Lumbar) => " L-SPINE",
            (Vendor::Ge, Region::Cervical) | (Vendor::Canon, Region::Cervical) => " C-SPINE",
            (Vendor::Ge, Region::Thoracic) | (Vendor::Canon, Region::Thoracic) => " T-SPINE",
            _ => "",
        };
        let plane_s = if axial { "tra" } else { "sag" };
        let s = match self {
            Vendor::Siemens => match seq {
                Sequence::T1 => format!("t1_tse_{plane_s}"),
                Sequence::T2 => format!("t2_tse_{plane_s}"),
                Sequence::Stir => format!("t2_tirm_{plane_s}"),
                Sequence::T1Post => format!("t1_tse_{plane_s}_post"),
                Sequence::Pd => format!("pd_tse_{plane_s}"),
                Sequence::DixonWater => format!("t2_tse_dixon_{plane_s}_W"),
                Sequence::DixonFat => format!("t2_tse_dixon_{plane_s}_F"),
                Sequence::DixonInPhase => format!("t2_tse_dixon_{plane_s}_in"),
                Sequence::DixonOpposedPhase => format!("t2_tse_dixon_{plane_s}_opp"),
                Sequence::Localizer => "localizer".into(),
            },
            Vendor::Ge => {
                let p = if axial { "Ax" } else { "Sag" };
                match seq {
                    Sequence::T1 => format!("{p} T1 FSE{reg}"),
                    Sequence::T2 => format!("{p} T2 FRFSE{reg}"),
                    Sequence::Stir => format!("{p} STIR{reg}"),
                    Sequence::T1Post => format!("{p} T1 FSE +C{reg}"),
                    Sequence::Pd => format!("{p} PD FSE{reg}"),
                    Sequence::DixonWater => format!("{p} T2 IDEAL WATER"),
                    Sequence::DixonFat => format!("{p} T2 IDEAL FAT"),
                    Sequence::DixonInPhase => format!("{p} T2 IDEAL InPhase"),
                    Sequence::DixonOpposedPhase => format!("{p} T2 IDEAL OutPhase"),
                    Sequence::Localizer => "3-Plane Loc".into(),
                }
            }
            Vendor::Philips => {
                let p = if axial { "TRA" } else { "SAG" };
                match seq {
                    Sequence::T1 => format!("T1W_TSE_{p}"),
                    Sequence::T2 => format!("T2W_TSE_{p}"),
                    Sequence::Stir => format!("STIR_{p}"),
                    Sequence::T1Post => format!("T1W_TSE_{p}_GD"),
                    Sequence::Pd => format!("PDW_TSE_{p}"),
                    Sequence::DixonWater => format!("T2W_mDIXON_{p}_W"),
                    Sequence::DixonFat => format!("T2W_mDIXON_{p}_F"),
                    Sequence::DixonInPhase => format!("T2W_mDIXON_{p}_IP"),
                    Sequence::DixonOpposedPhase => format!("T2W_mDIXON_{p}_OP"),
                    Sequence::Localizer => "Survey".into(),
                }
            }
            Vendor::Canon => {
                let p = if axial { "AX" } else { "SAG" };
                match seq {
                    Sequence::T1 => format!("T1_FSE_{p}{reg}"),
                    Sequence::T2 => format!("T2_FSE_{p}{reg}"),
                    Sequence::Stir => format!("STIR_{p}{reg}"),
                    Sequence::T1Post => format!("T1_FSE_{p}_POST{reg}"),
                    Sequence::Pd => format!("PD_FSE_{p}{reg}"),
                    Sequence::DixonWater => format!("T2_{p}_Dixon WFOP water"),
                    Sequence::DixonFat => format!("T2_{p}_Dixon WFOP fat"),
                    Sequence::DixonInPhase => format!("T2_{p}_Dixon WFOP in phase"),
                    Sequence::DixonOpposedPhase => format!("T2_{p}_Dixon WFOP out phase"),
                    Sequence::Localizer => "Locator".into(),
                }
            }
        };
        s
    }

    /// BodyPartExamined: Siemens and GE write the region; Philips writes
    /// SPINE and names the region in the study description; Canon leaves it
    /// empty.
    pub fn body_part(self, region: Region) -> &'static str {
        match (self, region) {
            (Vendor::Siemens | Vendor::Ge, Region::Cervical) => "CSPINE",
            (Vendor::Siemens | Vendor::Ge, Region::Thoracic) => "TSPINE",
            (Vendor::Siemens | Vendor::Ge, Region::Lumbar) => "LSPINE",
            (Vendor::Siemens | Vendor::Ge, Region::WholeSpine) => "WHOLESPINE",
            (Vendor::Philips, _) => "SPINE",
            (Vendor::Canon, _) => "",
        }
    }

    pub fn study_description(self, region: Region) -> &'static str {
        match (self, region) {
            (Vendor::Philips, Region::Cervical) => "MR HWS nativ",
            (Vendor::Philips, Region::Thoracic) => "MR BWS nativ",
            (Vendor::Philips, Region::Lumbar) => "MR LWS nativ",
            (Vendor::Philips, Region::WholeSpine) => "MR Whole Spine",
            (_, Region::Cervical) => "MRI CERVICAL SPINE",
            (_, Region::Thoracic) => "MRI THORACIC SPINE",
            (_, Region::Lumbar) => "MRI LUMBAR SPINE",
            (_, Region::WholeSpine) => "MRI WHOLE SPINE",
        }
    }

    /// ScanningSequence, SequenceVariant, ScanOptions, SequenceName.
    pub fn sequence_tags(self, seq: Sequence) -> (Vec<&'static str>, Vec<&'static str>, Vec<&'static str>, String) {
        let stir = seq == Sequence::Stir;
        let loc = seq == Sequence::Localizer;
        match self {
            Vendor::Siemens => (
                if loc {
                    vec!["GR"]
                } else if stir {
                    vec!["SE", "IR"]
                } else {
                    vec!["SE"]
                },
                if loc {
                    vec!["SP", "OSP"]
                } else {
                    vec!["SK", "SP", "OSP"]
                },
                if stir { vec!["IR"] } else { vec![] },
                if loc {
                    "*fl2d1".into()
                } else if stir {
                    "*tir2d1_15".into()
                } else {
                    "*tse2d1_15".into()
                },
            ),
            Vendor::Ge => (
                if loc {
                    vec!["GR"]
                } else if stir {
                    vec!["IR"]
                } else {
                    vec!["SE"]
                },
                if loc { vec!["SS"] } else { vec!["SK", "OSP"] },
                if loc {
                    vec!["FAST_GEMS"]
                } else {
                    vec!["FAST_GEMS", "EDR_GEMS", "FILTERED_GEMS"]
                },
                String::new(),
            ),
            Vendor::Philips => (
                if loc {
                    vec!["GR"]
                } else if stir {
                    vec!["IR"]
                } else {
                    vec!["SE"]
                },
                vec!["SK"],
                vec![],
                String::new(),
            ),
            Vendor::Canon => (
                if loc {
                    vec!["GR"]
                } else if stir {
                    vec!["IR"]
                } else {
                    vec!["SE"]
                },
                vec!["SK", "SP"],
                vec![],
                if loc { "FE2D".into() } else { "FSE2D".into() },
            ),
        }
    }

    /// ImageType of a series.
    pub fn image_type(self, seq: Sequence) -> Vec<&'static str> {
        match (self, seq) {
            (_, Sequence::Localizer) => vec!["ORIGINAL", "PRIMARY", "LOCALIZER"],
            (Vendor::Siemens, Sequence::DixonWater) => vec!["DERIVED", "PRIMARY", "DIXON", "WATER"],
            (Vendor::Siemens, Sequence::DixonFat) => vec!["DERIVED", "PRIMARY", "DIXON", "FAT"],
            (Vendor::Siemens, Sequence::DixonInPhase) => vec!["DERIVED", "PRIMARY", "DIXON", "IN_PHASE"],
            (Vendor::Siemens, Sequence::DixonOpposedPhase) => vec!["DERIVED", "PRIMARY", "DIXON", "OPP_PHASE"],
            (Vendor::Philips, Sequence::DixonWater) => vec!["DERIVED", "PRIMARY", "W", "W", "DIXON"],
            (Vendor::Philips, Sequence::DixonFat) => vec!["DERIVED", "PRIMARY", "F", "F", "DIXON"],
            (Vendor::Philips, _) => vec!["ORIGINAL", "PRIMARY", "M", "SE"],
            _ => vec!["ORIGINAL", "PRIMARY", "OTHER"],
        }
    }

    /// Sequence timing; each vendor's defaults differ, with per-study jitter.
    pub fn timing(self, seq: Sequence, field: usize, rng: &mut Rng) -> Timing {
        let j = |rng: &mut Rng, v: f64, frac: f64| (v * rng.range(1.0 - frac, 1.0 + frac)).round();
        let (tr, te, etl) = match (self, seq) {
            (_, Sequence::Localizer) => (8.6, 4.0, 1),
            (Vendor::Siemens, Sequence::T1 | Sequence::T1Post) => (550.0, 9.5, 3),
            (Vendor::Ge, Sequence::T1 | Sequence::T1Post) => (600.0, 10.0, 3),
            (Vendor::Philips, Sequence::T1 | Sequence::T1Post) => (450.0, 8.0, 5),
            (Vendor::Canon, Sequence::T1 | Sequence::T1Post) => (500.0, 12.0, 4),
            (Vendor::Siemens, Sequence::T2) => (3500.0, 95.0, 17),
            (Vendor::Ge, Sequence::T2) => (3200.0, 102.0, 24),
            (Vendor::Philips, Sequence::T2) => (3000.0, 110.0, 28),
            (Vendor::Canon, Sequence::T2) => (3800.0, 90.0, 19),
            (_, Sequence::Stir) => (4000.0, 50.0, 13),
            (_, Sequence::Pd) => (2800.0, 25.0, 9),
            _ => (3200.0, 80.0, 16), // Dixon T2 TSE
        };
        let tr = if seq == Sequence::Localizer {
            tr
        } else {
            j(rng, tr, 0.08)
        };
        let te = if seq == Sequence::Localizer {
            te
        } else {
            j(rng, te, 0.05)
        };
        let ti = (seq == Sequence::Stir).then(|| stir_ti(field, tr).round());
        Timing {
            tr,
            te,
            ti,
            echo_train: etl,
        }
    }

    /// Sagittal matrix (rows = columns), GE interpolates to 512.
    pub fn matrix(self, axial: bool) -> usize {
        match (self, axial) {
            (Vendor::Ge, false) => 512,
            (Vendor::Ge, true) => 256,
            (Vendor::Philips, false) => 336,
            (Vendor::Philips, true) => 240,
            (Vendor::Canon, false) => 288,
            (Vendor::Canon, true) => 224,
            (Vendor::Siemens, false) => 320,
            (Vendor::Siemens, true) => 256,
        }
    }

    /// Relative noise (of the brightest tissue) per vendor.
    pub fn noise(self) -> f64 {
        match self {
            Vendor::Siemens => 0.018,
            Vendor::Ge => 0.012,
            Vendor::Philips => 0.028,
            Vendor::Canon => 0.022,
        }
    }

    /// Stored-value scale, bits stored, signed pixels, rescale slope.
    pub fn scaling(self) -> (f64, u16, bool, f64) {
        match self {
            Vendor::Siemens => (1800.0, 12, false, 1.0),
            Vendor::Ge => (5000.0, 16, true, 1.0),
            Vendor::Philips => (1400.0, 12, false, 2.25),
            Vendor::Canon => (1000.0, 12, false, 1.0),
        }
    }
}

impl std::str::FromStr for Vendor {
    type Err = String;
    fn from_str(s: &str) -> Result<Vendor, String> {
        Vendor::ALL
            .into_iter()
            .find(|v| v.as_str() == s.to_lowercase())
            .ok_or_else(|| format!("unknown vendor {s:?} (siemens, ge, philips, canon)"))
    }
}
