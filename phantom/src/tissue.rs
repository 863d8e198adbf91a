//! Tissues: what each point of the phantom is made of, the label classes
//! written as ground truth, and the MR properties that the signal equations
//! turn into pixels.

use serde::Serialize;

/// Anatomy label classes (the `*_anatomy.npy` volumes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[repr(u8)]
pub enum Anatomy {
    Background = 0,
    SoftTissue = 1,
    SubcutaneousFat = 2,
    Muscle = 3,
    CorticalBone = 4,
    Marrow = 5,
    Endplate = 6,
    DiscNucleus = 7,
    DiscAnnulus = 8,
    Csf = 9,
    EpiduralFat = 10,
    Cord = 11,
    NerveRoot = 12,
    PosteriorElement = 13,
    Ligament = 14,
    FacetJoint = 15,
    ForaminalFat = 16,
}

pub const ANATOMY_CLASSES: &[(u8, &str)] = &[
    (0, "background"),
    (1, "soft_tissue"),
    (2, "subcutaneous_fat"),
    (3, "paraspinal_muscle"),
    (4, "cortical_bone"),
    (5, "vertebral_marrow"),
    (6, "endplate"),
    (7, "disc_nucleus"),
    (8, "disc_annulus"),
    (9, "csf"),
    (10, "epidural_fat"),
    (11, "spinal_cord"),
    (12, "nerve_root"),
    (13, "posterior_element"),
    (14, "ligamentum_flavum"),
    (15, "facet_joint"),
    (16, "foraminal_fat"),
];

/// Pathology label classes (the `*_pathology.npy` volumes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[repr(u8)]
pub enum Lesion {
    None = 0,
    Herniation = 1,
    MarrowEdema = 2,
    Hemangioma = 3,
    MarrowLesion = 4,
    Fracture = 5,
    Discitis = 6,
    SynovialCyst = 7,
    PerineuralCyst = 8,
    CordSignal = 9,
    ParsDefect = 10,
    CanalStenosis = 11,
    ForaminalStenosis = 12,
    SubarticularStenosis = 13,
    Lipomatosis = 14,
    DegeneratedDisc = 15,
    CordCompression = 16,
    Listhesis = 17,
}

pub const LESION_CLASSES: &[(u8, &str)] = &[
    (0, "none"),
    (1, "disc_herniation"),
    (2, "marrow_edema"),
    (3, "hemangioma"),
    (4, "marrow_replacing_lesion"),
    (5, "compression_fracture"),
    (6, "discitis"),
    (7, "facet_synovial_cyst"),
    (8, "perineural_cyst"),
    (9, "cord_signal_abnormality"),
    (10, "pars_defect"),
    (11, "central_canal_stenosis"),
    (12, "neural_foraminal_stenosis"),
    (13, "subarticular_stenosis"),
    (14, "epidural_lipomatosis"),
    (15, "degenerated_disc"),
    (16, "cord_compression"),
    (17, "spondylolisthesis"),
];

/// What the signal equations need: proton density, T1 and T2 at 1.5 T and
/// 3 T (ms), fat fraction (for Dixon and fat suppression) and whether the
/// tissue takes up gadolinium.
#[derive(Debug, Clone, Copy)]
pub struct Relaxation {
    pub pd: f64,
    pub t1: [f64; 2],
    pub t2: [f64; 2],
    pub fat_fraction: f64,
    pub enhancement: f64,
}

/// Every distinct material the renderer knows; the anatomy and lesion label
/// of a point are stored next to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Material {
    Air,
    SoftTissue,
    Fat,
    Muscle,
    Cortical,
    Marrow,
    Nucleus,
    Annulus,
    Csf,
    Cord,
    Nerve,
    Ligament,
    JointFluid,
    Edema,
    Hemangioma,
    Tumor,
    DegeneratedNucleus,
    InflamedDisc,
    CordLesion,
    Cyst,
}

pub const MATERIAL_COUNT: usize = 20;

impl Material {
    /// The water component's relaxation (T1/T2 at 1.5 T and 3 T, ms) and
    /// the fat fraction; the fat component always relaxes like [`FAT`], so
    /// fat suppression and Dixon separate them the way scanners do.
    pub fn relaxation(self) -> Relaxation {
        let r = |pd, t1: [f64; 2], t2: [f64; 2], ff, enh| Relaxation {
            pd,
            t1,
            t2,
            fat_fraction: ff,
            enhancement: enh,
        };
        match self {
            Material::Air => r(0.0, [1.0, 1.0], [1.0, 1.0], 0.0, 0.0),
            Material::SoftTissue => r(0.75, [900.0, 1200.0], [55.0, 48.0], 0.05, 0.3),
            Material::Fat => r(0.95, [900.0, 1100.0], [60.0, 50.0], 0.95, 0.0),
            Material::Muscle => r(0.75, [870.0, 1400.0], [45.0, 40.0], 0.03, 0.2),
            Material::Cortical => r(0.06, [1000.0, 1100.0], [2.0, 2.0], 0.0, 0.0),
            Material::Marrow => r(0.85, [900.0, 1050.0], [60.0, 50.0], 0.45, 0.15),
            Material::Nucleus => r(0.9, [1150.0, 1400.0], [130.0, 110.0], 0.0, 0.0),
            Material::Annulus => r(0.7, [1000.0, 1200.0], [45.0, 40.0], 0.0, 0.0),
            Material::Csf => r(1.0, [4000.0, 4300.0], [2000.0, 1800.0], 0.0, 0.0),
            Material::Cord => r(0.72, [750.0, 850.0], [80.0, 70.0], 0.0, 0.0),
            Material::Nerve => r(0.7, [800.0, 900.0], [70.0, 60.0], 0.0, 0.1),
            Material::Ligament => r(0.45, [800.0, 900.0], [30.0, 28.0], 0.0, 0.0),
            Material::JointFluid => r(0.95, [3000.0, 3300.0], [900.0, 800.0], 0.0, 0.2),
            Material::Edema => r(0.92, [1300.0, 1500.0], [170.0, 150.0], 0.15, 0.6),
            Material::Hemangioma => r(0.92, [1100.0, 1250.0], [260.0, 230.0], 0.8, 0.5),
            Material::Tumor => r(0.85, [1150.0, 1350.0], [95.0, 85.0], 0.0, 1.0),
            Material::DegeneratedNucleus => r(0.75, [1000.0, 1200.0], [55.0, 50.0], 0.0, 0.0),
            Material::InflamedDisc => r(0.95, [1500.0, 1800.0], [250.0, 220.0], 0.0, 0.9),
            Material::CordLesion => r(0.85, [1100.0, 1300.0], [180.0, 160.0], 0.0, 0.3),
            Material::Cyst => r(1.0, [3800.0, 4100.0], [1800.0, 1600.0], 0.0, 0.0),
        }
    }

    pub const ALL: [Material; MATERIAL_COUNT] = [
        Material::Air,
        Material::SoftTissue,
        Material::Fat,
        Material::Muscle,
        Material::Cortical,
        Material::Marrow,
        Material::Nucleus,
        Material::Annulus,
        Material::Csf,
        Material::Cord,
        Material::Nerve,
        Material::Ligament,
        Material::JointFluid,
        Material::Edema,
        Material::Hemangioma,
        Material::Tumor,
        Material::DegeneratedNucleus,
        Material::InflamedDisc,
        Material::CordLesion,
        Material::Cyst,
    ];
}

/// Fat's own relaxation (T1, T2 at 1.5 T and 3 T); T2 is the apparent T2
/// on fast spin echo (J-coupling), which keeps fat bright on T2 TSE.
pub const FAT_T1: [f64; 2] = [260.0, 370.0];
pub const FAT_T2: [f64; 2] = [140.0, 120.0];

/// One point of the phantom: material plus both labels, packed in a u32 so
/// a rendered stack costs 4 bytes per sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Voxel {
    pub material: Material,
    pub anatomy: Anatomy,
    pub lesion: Lesion,
}

impl Voxel {
    pub const AIR: Voxel = Voxel {
        material: Material::Air,
        anatomy: Anatomy::Background,
        lesion: Lesion::None,
    };

    pub fn new(material: Material, anatomy: Anatomy) -> Voxel {
        Voxel {
            material,
            anatomy,
            lesion: Lesion::None,
        }
    }

    pub fn with_lesion(self, material: Material, lesion: Lesion) -> Voxel {
        Voxel {
            material,
            lesion,
            ..self
        }
    }
}
