//! One phantom study: subject, findings, acquisitions, DICOM files, label
//! volumes, ground truth and reference report, all from one seed.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::anatomy::Subject;
use crate::dicom_out::{SeriesTags, SliceTags, StudyTags, uid, write_slice};
use crate::findings::{self, Condition, Finding, Prevalence};
use crate::levels::{Region, disc_index, vertebra_index};
use crate::plan::{self, Geometry, PlaneKind};
use crate::render::{SeriesRender, TissueSlice, render_series, sample_tissue};
use crate::report::reference_report;
use crate::rng::Rng;
use crate::sequence::Sequence;
use crate::tissue::{ANATOMY_CLASSES, LESION_CLASSES, Lesion};
use crate::vendor::Vendor;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PhantomError {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to generate; `None` fields are drawn from the seed.
#[derive(Debug, Clone, Default)]
pub struct StudySpec {
    pub seed: u64,
    pub region: Option<Region>,
    pub vendor: Option<Vendor>,
    pub field_t: Option<f64>,
    /// Forced findings (replace sampling when given).
    pub findings: Option<Vec<Finding>>,
    pub prevalence: Prevalence,
    pub dixon: Option<bool>,
    pub contrast: Option<bool>,
    /// Motion ghosting (default: 10 % of studies).
    pub ghosting: Option<bool>,
    /// A sagittal proton-density series (default: 15 % of studies).
    pub pd: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Visibility {
    pub series_number: i32,
    /// 0-based slice indices (instance number - 1).
    pub slices: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FindingTruth {
    #[serde(flatten)]
    pub finding: Finding,
    pub visible_in: Vec<Visibility>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeriesTruth {
    pub series_number: i32,
    pub series_instance_uid: String,
    pub description: String,
    pub sequence: Sequence,
    /// The family the receiver should classify this series as.
    pub family: &'static str,
    pub plane: PlaneKind,
    pub slices: usize,
    pub files: Vec<String>,
    /// Label volumes (NumPy .npy, uint8, shape [slices, rows, cols]),
    /// shared by series acquired with the same geometry.
    pub anatomy_labels: Option<String>,
    pub lesion_labels: Option<String>,
    pub level_labels: Option<String>,
    /// For axial series: the disc each slice is angled through.
    pub slice_discs: Vec<Option<String>>,
    pub tr_ms: f64,
    pub te_ms: f64,
    pub ti_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StudyTruth {
    /// Always true: nothing here is a patient or a clinical accuracy claim.
    pub synthetic: bool,
    pub seed: u64,
    pub region: Region,
    pub vendor: Vendor,
    pub manufacturer: String,
    pub field_strength_t: f64,
    pub study_instance_uid: String,
    pub findings: Vec<FindingTruth>,
    pub series: Vec<SeriesTruth>,
    pub report_findings: String,
    pub report_impression: String,
    pub anatomy_classes: Vec<(u8, &'static str)>,
    pub lesion_classes: Vec<(u8, &'static str)>,
    pub level_classes: Vec<(u8, &'static str)>,
}

/// The label each condition paints.
pub fn lesion_of(c: Condition) -> Lesion {
    match c {
        Condition::CanalStenosis => Lesion::CanalStenosis,
        Condition::CordCompression => Lesion::CordCompression,
        Condition::ForaminalStenosis => Lesion::ForaminalStenosis,
        Condition::SubarticularStenosis => Lesion::SubarticularStenosis,
        Condition::Herniation => Lesion::Herniation,
        Condition::SynovialCyst => Lesion::SynovialCyst,
        Condition::DiscDegeneration | Condition::DiscHeightLoss => Lesion::DegeneratedDisc,
        Condition::Inflammation => Lesion::Discitis,
        Condition::Lipomatosis => Lesion::Lipomatosis,
        Condition::CordSignal => Lesion::CordSignal,
        Condition::Spondylolisthesis => Lesion::Listhesis,
        Condition::MarrowEdema => Lesion::MarrowEdema,
        Condition::Hemangioma => Lesion::Hemangioma,
        Condition::MarrowLesion => Lesion::MarrowLesion,
        Condition::CompressionFracture => Lesion::Fracture,
        Condition::ParsDefect => Lesion::ParsDefect,
        Condition::PerineuralCyst => Lesion::PerineuralCyst,
    }
}

/// Vertebra indices a finding's label may sit in.
fn finding_vertebrae(f: &Finding) -> Vec<usize> {
    if let Some(d) = disc_index(&f.level) {
        let mut v = vec![d, d + 1];
        if f.condition == Condition::Lipomatosis {
            v.extend([d.saturating_sub(1), d.saturating_sub(2)]);
        }
        v
    } else {
        vertebra_index(&f.level).into_iter().collect()
    }
}

fn write_npy(path: &Path, shape: [usize; 3], data: &[u8]) -> std::io::Result<()> {
    let dict = format!(
        "{{'descr': '|u1', 'fortran_order': False, 'shape': ({}, {}, {}), }}",
        shape[0], shape[1], shape[2]
    );
    let mut header = dict.into_bytes();
    // Magic (6) + version (2) + length (2) + header, padded to 64 with a final newline.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.resize(total - 10 - 1, b' ');
    header.push(b'\n');
    let mut out = Vec::with_capacity(total + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    std::fs::write(path, out)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PhantomError + '_ {
    move |source| PhantomError::Write {
        path: path.to_owned(),
        source,
    }
}

struct Acq<'a> {
    seq: Sequence,
    geom: &'a Geometry,
    tissue: &'a [TissueSlice],
    labels: Option<&'a str>,
}

/// Generates the study described by `spec` into `out` (created).
pub fn generate(spec: &StudySpec, out: &Path) -> Result<StudyTruth, PhantomError> {
    let seed = spec.seed;
    let mut rng = Rng::derive(seed, "study", 0);
    let region = spec.region.unwrap_or_else(|| {
        let u = rng.unit();
        if u < 0.55 {
            Region::Lumbar
        } else if u < 0.8 {
            Region::Cervical
        } else if u < 0.92 {
            Region::Thoracic
        } else {
            Region::WholeSpine
        }
    });
    let vendor = spec.vendor.unwrap_or_else(|| *rng.pick(&Vendor::ALL));
    let field_t = spec.field_t.unwrap_or_else(|| if rng.chance(0.5) { 1.5 } else { 3.0 });
    let field = usize::from(field_t > 2.0);
    let findings = spec
        .findings
        .clone()
        .unwrap_or_else(|| findings::sample(&mut Rng::derive(seed, "findings", 0), region, &spec.prevalence));
    let subject = Subject::build(&mut Rng::derive(seed, "anatomy", 0), findings.clone());

    let mut prng = Rng::derive(seed, "plan", 0);
    let sag = plan::sagittal(&subject, region, vendor, &mut prng);
    let finding_discs: Vec<String> = findings
        .iter()
        .filter(|f| f.level.contains('-'))
        .map(|f| f.level.clone())
        .collect();
    let ax = plan::axial(&subject, region, vendor, &plan::axial_discs(region, &finding_discs));
    let loc = plan::localizer(&subject, region);
    let sag_t = sample_tissue(&subject, &sag);
    let ax_t = sample_tissue(&subject, &ax);
    let loc_t = sample_tissue(&subject, &loc);

    let wants_contrast = findings
        .iter()
        .any(|f| matches!(f.condition, Condition::MarrowLesion | Condition::Inflammation));
    let contrast = spec
        .contrast
        .unwrap_or_else(|| prng.chance(if wants_contrast { 0.7 } else { 0.1 }));
    let dixon = spec.dixon.unwrap_or_else(|| prng.chance(0.3));
    let mut acqs = vec![
        Acq {
            seq: Sequence::Localizer,
            geom: &loc,
            tissue: &loc_t,
            labels: None,
        },
        Acq {
            seq: Sequence::T1,
            geom: &sag,
            tissue: &sag_t,
            labels: Some("sagittal"),
        },
        Acq {
            seq: Sequence::T2,
            geom: &sag,
            tissue: &sag_t,
            labels: Some("sagittal"),
        },
        Acq {
            seq: Sequence::Stir,
            geom: &sag,
            tissue: &sag_t,
            labels: Some("sagittal"),
        },
        Acq {
            seq: Sequence::T2,
            geom: &ax,
            tissue: &ax_t,
            labels: Some("axial"),
        },
    ];
    if dixon {
        for seq in [
            Sequence::DixonWater,
            Sequence::DixonFat,
            Sequence::DixonInPhase,
            Sequence::DixonOpposedPhase,
        ] {
            acqs.push(Acq {
                seq,
                geom: &sag,
                tissue: &sag_t,
                labels: Some("sagittal"),
            });
        }
    }
    if contrast {
        acqs.push(Acq {
            seq: Sequence::T1Post,
            geom: &sag,
            tissue: &sag_t,
            labels: Some("sagittal"),
        });
    }
    if spec.pd.unwrap_or_else(|| prng.chance(0.15)) {
        acqs.push(Acq {
            seq: Sequence::Pd,
            geom: &sag,
            tissue: &sag_t,
            labels: Some("sagittal"),
        });
    }

    std::fs::create_dir_all(out.join("labels")).map_err(io(out))?;
    for (name, geom, tissue) in [("sagittal", &sag, &sag_t), ("axial", &ax, &ax_t)] {
        let shape = [tissue.len(), geom.rows, geom.cols];
        for (kind, pick) in [("anatomy", 0), ("lesion", 1), ("level", 2)] {
            let data: Vec<u8> = tissue
                .iter()
                .flat_map(|t| match pick {
                    0 => t.anatomy.clone(),
                    1 => t.lesion.clone(),
                    _ => t.level.clone(),
                })
                .collect();
            let path = out.join(format!("labels/{name}_{kind}.npy"));
            write_npy(&path, shape, &data).map_err(io(&path))?;
        }
    }

    let birth_year = 1940 + (seed % 60);
    let study = StudyTags {
        seed,
        patient_name: format!("PHANTOM^SUBJECT{seed:06}"),
        patient_id: format!("PH{seed:08}"),
        birth_date: format!("{birth_year}0{}15", 1 + seed % 9),
        sex: if seed % 2 == 0 { "F" } else { "M" },
        study_uid: uid(seed, "study", 0),
        frame_of_reference_uid: uid(seed, "frame", 0),
        study_date: format!("2026{:02}{:02}", 1 + seed % 12, 1 + (seed / 12) % 28),
        study_time: format!("{:02}{:02}00", 7 + seed % 12, seed % 60),
        accession: format!("PHA{seed:07}"),
        study_description: vendor.study_description(region).to_string(),
        manufacturer: vendor.manufacturer().to_string(),
        model: vendor.model(field_t).to_string(),
        software: vendor.software().to_string(),
        field_t,
    };
    let (_, bits, signed, slope) = vendor.scaling();
    let coil_y = {
        let (a, b) = region.coverage();
        subject.levels[a..=b]
            .iter()
            .map(|l| l.center[1] + l.body[1] / 2.0 + l.canal[1] + l.outline[2])
            .fold(f64::MIN, f64::max)
    };
    let ghosting = spec
        .ghosting
        .unwrap_or_else(|| Rng::derive(seed, "ghost", 0).chance(0.1));

    let mut series_truth = Vec::new();
    for (i, acq) in acqs.iter().enumerate() {
        let number = i as i32 + 1;
        let mut trng = Rng::derive(seed, "timing", i as u64);
        let timing = vendor.timing(acq.seq, field, &mut trng);
        let noise = move |slice: usize| Rng::derive(seed, "noise", (i as u64) << 20 | slice as u64);
        let pixels = render_series(
            acq.tissue,
            acq.geom,
            &SeriesRender {
                seq: acq.seq,
                timing,
                field,
                vendor,
                coil_y,
                ghosting,
                noise: &noise,
            },
        );
        let axial = acq.geom.kind == PlaneKind::Axial;
        let (scanning, variant, options, seq_name) = vendor.sequence_tags(acq.seq);
        let description = vendor.description(acq.seq, axial, region);
        let tags = SeriesTags {
            series_uid: uid(seed, "series", i as u64),
            series_number: number,
            description: description.clone(),
            body_part: vendor.body_part(region).to_string(),
            image_type: vendor.image_type(acq.seq).iter().map(|s| s.to_string()).collect(),
            scanning_sequence: scanning.iter().map(|s| s.to_string()).collect(),
            sequence_variant: variant.iter().map(|s| s.to_string()).collect(),
            scan_options: options.iter().map(|s| s.to_string()).collect(),
            sequence_name: seq_name,
            tr: timing.tr,
            te: timing.te,
            ti: timing.ti,
            echo_train: timing.echo_train,
            contrast: acq.seq == Sequence::T1Post,
            rows: acq.geom.rows,
            cols: acq.geom.cols,
            pixel_mm: acq.geom.pixel_mm,
            thickness_mm: acq.geom.thickness_mm,
            spacing_mm: acq.geom.spacing_mm,
            bits_stored: bits,
            signed,
            rescale_slope: slope,
            window: (vendor.scaling().0 * 0.45 / slope, vendor.scaling().0 * 0.9 / slope),
            images_in_acquisition: acq.geom.slice_count(),
        };
        let dir_name = format!("series_{number:02}");
        let dir = out.join(&dir_name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let slices: Vec<(usize, &crate::plan::Stack, crate::anatomy::V3)> = acq
            .geom
            .stacks
            .iter()
            .flat_map(|st| st.centers.iter().map(move |c| (st, *c)))
            .enumerate()
            .map(|(k, (st, c))| (k, st, c))
            .collect();
        let files: Vec<String> = slices
            .par_iter()
            .map(|(k, st, c)| {
                let name = format!("IM{:04}.dcm", k + 1);
                let path = dir.join(&name);
                let slice = SliceTags {
                    sop_uid: uid(seed, "instance", ((i as u64) << 20) | *k as u64),
                    instance_number: *k as i32 + 1,
                    position: acq.geom.image_position(st, *c),
                    row_dir: st.row_dir,
                    col_dir: st.col_dir,
                    pixels: &pixels[*k],
                };
                write_slice(&path, &study, &tags, &slice).map_err(io(&path))?;
                Ok(format!("{dir_name}/{name}"))
            })
            .collect::<Result<_, PhantomError>>()?;
        let slice_discs = acq
            .geom
            .stacks
            .iter()
            .flat_map(|st| st.centers.iter().map(move |_| st.disc.clone()))
            .collect();
        let label = |kind: &str| acq.labels.map(|l| format!("labels/{l}_{kind}.npy"));
        series_truth.push(SeriesTruth {
            series_number: number,
            series_instance_uid: tags.series_uid.clone(),
            description,
            sequence: acq.seq,
            family: acq.seq.family(),
            plane: acq.geom.kind,
            slices: slices.len(),
            files,
            anatomy_labels: label("anatomy"),
            lesion_labels: label("lesion"),
            level_labels: label("level"),
            slice_discs,
            tr_ms: timing.tr,
            te_ms: timing.te,
            ti_ms: timing.ti,
        });
    }

    // Where each finding is visible: slices whose lesion label is the
    // finding's, at the finding's level.
    let finding_truth = findings
        .iter()
        .map(|f| {
            let lesion = lesion_of(f.condition) as u8;
            let levels: Vec<u8> = finding_vertebrae(f).iter().map(|v| *v as u8 + 1).collect();
            let visible_in = acqs
                .iter()
                .zip(&series_truth)
                .filter(|(a, _)| a.labels.is_some())
                .map(|(a, s)| Visibility {
                    series_number: s.series_number,
                    slices: a
                        .tissue
                        .iter()
                        .enumerate()
                        .filter(|(_, t)| {
                            t.lesion
                                .iter()
                                .zip(&t.level)
                                .any(|(l, lv)| *l == lesion && levels.contains(lv))
                        })
                        .map(|(k, _)| k)
                        .collect(),
                })
                .filter(|v| !v.slices.is_empty())
                .collect();
            FindingTruth {
                finding: f.clone(),
                visible_in,
            }
        })
        .collect();
    let (report_findings, report_impression) = reference_report(region, &findings, seed);
    let truth = StudyTruth {
        synthetic: true,
        seed,
        region,
        vendor,
        manufacturer: vendor.manufacturer().to_string(),
        field_strength_t: field_t,
        study_instance_uid: study.study_uid.clone(),
        findings: finding_truth,
        series: series_truth,
        report_findings,
        report_impression,
        anatomy_classes: ANATOMY_CLASSES.to_vec(),
        lesion_classes: LESION_CLASSES.to_vec(),
        level_classes: std::iter::once((0u8, "outside"))
            .chain(
                crate::levels::VERTEBRAE
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i as u8 + 1, *v)),
            )
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&truth).expect("truth serializes");
    let path = out.join("truth.json");
    std::fs::write(&path, json).map_err(io(&path))?;
    let path = out.join("report.txt");
    std::fs::write(
        &path,
        format!("{}\n\n{}\n", truth.report_findings, truth.report_impression),
    )
    .map_err(io(&path))?;
    Ok(truth)
}
