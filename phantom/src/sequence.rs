//! Pulse sequences and the signal equations that turn a material into a
//! magnitude: spin echo for T1/T2/PD, inversion recovery for STIR (fat
//! nulled at TI = T1_fat ln 2), gadolinium T1 shortening for post-contrast,
//! and two-point Dixon water/fat/in/opposed phase.

use serde::{Deserialize, Serialize};

use crate::tissue::{FAT_T1, FAT_T2, Material};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sequence {
    T1,
    T2,
    Stir,
    T1Post,
    Pd,
    DixonWater,
    DixonFat,
    DixonInPhase,
    DixonOpposedPhase,
    Localizer,
}

impl Sequence {
    /// The family name the receiver's classifier uses for this sequence.
    pub fn family(self) -> &'static str {
        match self {
            Sequence::T1 => "t1",
            Sequence::T2 => "t2",
            Sequence::Stir => "stir",
            Sequence::T1Post => "t1_post",
            Sequence::Pd => "pd",
            Sequence::DixonWater => "dixon_water",
            Sequence::DixonFat => "dixon_fat",
            Sequence::DixonInPhase => "dixon_in_phase",
            Sequence::DixonOpposedPhase => "dixon_opposed_phase",
            Sequence::Localizer => "localizer",
        }
    }
}

/// Timing of one acquisition (ms).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timing {
    pub tr: f64,
    pub te: f64,
    pub ti: Option<f64>,
    pub echo_train: u32,
}

/// gadolinium relaxivity times concentration for a fully enhancing tissue (1/ms).
const GD_R1: f64 = 0.003;

fn saturation(tr: f64, t1: f64) -> f64 {
    1.0 - (-tr / t1).exp()
}

fn inversion(tr: f64, ti: f64, t1: f64) -> f64 {
    (1.0 - 2.0 * (-ti / t1).exp() + (-tr / t1).exp()).abs()
}

/// Water and fat magnitudes of a material under `timing`.
fn components(material: Material, field: usize, seq: Sequence, timing: &Timing) -> (f64, f64) {
    let r = material.relaxation();
    let pd_w = r.pd * (1.0 - r.fat_fraction);
    let pd_f = r.pd * r.fat_fraction;
    let mut t1w = r.t1[field];
    if seq == Sequence::T1Post {
        t1w = 1.0 / (1.0 / t1w + GD_R1 * r.enhancement);
    }
    let (t1f, t2f, t2w) = (FAT_T1[field], FAT_T2[field], r.t2[field]);
    match (seq, timing.ti) {
        (Sequence::Stir, Some(ti)) => (
            pd_w * inversion(timing.tr, ti, t1w) * (-timing.te / t2w).exp(),
            pd_f * inversion(timing.tr, ti, t1f) * (-timing.te / t2f).exp(),
        ),
        _ => (
            pd_w * saturation(timing.tr, t1w) * (-timing.te / t2w).exp(),
            pd_f * saturation(timing.tr, t1f) * (-timing.te / t2f).exp(),
        ),
    }
}

/// Noise-free magnitude of `material` (arbitrary units, ~0..1).
pub fn signal(material: Material, field: usize, seq: Sequence, timing: &Timing) -> f64 {
    let (w, f) = components(material, field, seq, timing);
    match seq {
        Sequence::DixonWater => w,
        Sequence::DixonFat => f,
        Sequence::DixonInPhase => w + f,
        Sequence::DixonOpposedPhase => (w - f).abs(),
        _ => w + f,
    }
}

/// TI that nulls fat (a null of 1 - 2e^{-TI/T1} + e^{-TR/T1}).
pub fn stir_ti(field: usize, tr: f64) -> f64 {
    let t1 = FAT_T1[field];
    -t1 * ((1.0 + (-tr / t1).exp()) / 2.0).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tr: f64, te: f64, ti: Option<f64>) -> Timing {
        Timing {
            tr,
            te,
            ti,
            echo_train: 1,
        }
    }

    #[test]
    fn contrasts_behave_like_mri() {
        let t1 = t(550.0, 10.0, None);
        let t2 = t(3500.0, 100.0, None);
        let stir = t(4000.0, 50.0, Some(stir_ti(0, 4000.0)));
        let s = |m, seq, tm: &Timing| signal(m, 0, seq, tm);
        // Fat bright on T1 and T2 TSE, nulled on STIR.
        assert!(s(Material::Fat, Sequence::T1, &t1) > s(Material::Muscle, Sequence::T1, &t1));
        assert!(s(Material::Fat, Sequence::Stir, &stir) < 0.05 * s(Material::Fat, Sequence::T2, &t2));
        // CSF dark on T1, bright on T2.
        assert!(s(Material::Csf, Sequence::T1, &t1) < s(Material::Cord, Sequence::T1, &t1));
        assert!(s(Material::Csf, Sequence::T2, &t2) > s(Material::Cord, Sequence::T2, &t2));
        // Edema: dark on T1, bright on STIR, against normal marrow.
        assert!(s(Material::Edema, Sequence::T1, &t1) < s(Material::Marrow, Sequence::T1, &t1));
        assert!(s(Material::Edema, Sequence::Stir, &stir) > 2.0 * s(Material::Marrow, Sequence::Stir, &stir));
        // Hemangioma bright on T1 and T2.
        assert!(s(Material::Hemangioma, Sequence::T1, &t1) > s(Material::Marrow, Sequence::T1, &t1));
        assert!(s(Material::Hemangioma, Sequence::T2, &t2) > s(Material::Marrow, Sequence::T2, &t2));
        // A tumour enhances after gadolinium.
        assert!(s(Material::Tumor, Sequence::T1Post, &t1) > 1.5 * s(Material::Tumor, Sequence::T1, &t1));
        // Dixon: water + fat = in phase.
        let d = t(3000.0, 80.0, None);
        let w = s(Material::Marrow, Sequence::DixonWater, &d);
        let f = s(Material::Marrow, Sequence::DixonFat, &d);
        assert!((w + f - s(Material::Marrow, Sequence::DixonInPhase, &d)).abs() < 1e-12);
    }
}
