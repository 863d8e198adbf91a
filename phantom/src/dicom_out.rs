//! Writes phantom slices as DICOM MR Image Storage files (explicit VR
//! little endian) with the Patient, Study, Series, Frame of Reference,
//! Equipment, Image Plane, Image Pixel and MR Image modules filled
//! consistently. Everything is derived from the study seed: the same seed
//! gives the same bytes.

use std::path::Path;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;

use crate::anatomy::{V3, dot};
use crate::rng::Rng;

pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.203766255250399777493205363430923222333";
pub const MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// A UID under 2.25 derived from the seed and a purpose.
pub fn uid(seed: u64, purpose: &str, index: u64) -> String {
    let mut r = Rng::derive(seed, purpose, index);
    let v = ((r.next_u64() as u128) << 64 | r.next_u64() as u128) >> 2;
    format!("2.25.{}", v.max(1))
}

/// Study-level values shared by every file.
#[derive(Debug, Clone)]
pub struct StudyTags {
    pub seed: u64,
    pub patient_name: String,
    pub patient_id: String,
    pub birth_date: String,
    pub sex: &'static str,
    pub study_uid: String,
    pub frame_of_reference_uid: String,
    pub study_date: String,
    pub study_time: String,
    pub accession: String,
    pub study_description: String,
    pub manufacturer: String,
    pub model: String,
    pub software: String,
    pub field_t: f64,
}

/// Series-level values.
#[derive(Debug, Clone)]
pub struct SeriesTags {
    pub series_uid: String,
    pub series_number: i32,
    pub description: String,
    pub body_part: String,
    pub image_type: Vec<String>,
    pub scanning_sequence: Vec<String>,
    pub sequence_variant: Vec<String>,
    pub scan_options: Vec<String>,
    pub sequence_name: String,
    pub tr: f64,
    pub te: f64,
    pub ti: Option<f64>,
    pub echo_train: u32,
    pub contrast: bool,
    pub rows: usize,
    pub cols: usize,
    pub pixel_mm: f64,
    pub thickness_mm: f64,
    pub spacing_mm: f64,
    pub bits_stored: u16,
    pub signed: bool,
    pub rescale_slope: f64,
    pub window: (f64, f64),
    pub images_in_acquisition: usize,
}

/// One slice.
pub struct SliceTags<'a> {
    pub sop_uid: String,
    pub instance_number: i32,
    pub position: V3,
    pub row_dir: V3,
    pub col_dir: V3,
    pub pixels: &'a [u16],
}

fn ds(v: f64) -> String {
    // DS is at most 16 characters.
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    if s == "-0" {
        "0".into()
    } else {
        s[..s.len().min(16)].to_string()
    }
}

fn strs(tag: Tag, vr: VR, values: &[String]) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::Strs(values.to_vec().into()))
}

fn text(tag: Tag, vr: VR, value: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

fn us(tag: Tag, v: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

pub fn write_slice(path: &Path, study: &StudyTags, series: &SeriesTags, slice: &SliceTags) -> std::io::Result<()> {
    let normal = crate::anatomy::cross(slice.row_dir, slice.col_dir);
    let slice_location = dot(slice.position, normal);
    let mut e = vec![
        text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
        strs(tags::IMAGE_TYPE, VR::CS, &series.image_type),
        text(tags::INSTANCE_CREATION_DATE, VR::DA, &study.study_date),
        text(tags::INSTANCE_CREATION_TIME, VR::TM, &study.study_time),
        text(tags::SOP_CLASS_UID, VR::UI, MR_IMAGE_STORAGE),
        text(tags::SOP_INSTANCE_UID, VR::UI, &slice.sop_uid),
        text(tags::STUDY_DATE, VR::DA, &study.study_date),
        text(tags::SERIES_DATE, VR::DA, &study.study_date),
        text(tags::ACQUISITION_DATE, VR::DA, &study.study_date),
        text(tags::CONTENT_DATE, VR::DA, &study.study_date),
        text(tags::STUDY_TIME, VR::TM, &study.study_time),
        text(tags::SERIES_TIME, VR::TM, &study.study_time),
        text(tags::ACQUISITION_TIME, VR::TM, &study.study_time),
        text(tags::CONTENT_TIME, VR::TM, &study.study_time),
        text(tags::ACCESSION_NUMBER, VR::SH, &study.accession),
        text(tags::MODALITY, VR::CS, "MR"),
        text(tags::MANUFACTURER, VR::LO, &study.manufacturer),
        text(tags::INSTITUTION_NAME, VR::LO, "SPINEAGENT PHANTOM"),
        text(tags::REFERRING_PHYSICIAN_NAME, VR::PN, ""),
        text(tags::STUDY_DESCRIPTION, VR::LO, &study.study_description),
        text(tags::SERIES_DESCRIPTION, VR::LO, &series.description),
        text(tags::MANUFACTURER_MODEL_NAME, VR::LO, &study.model),
        text(tags::PATIENT_NAME, VR::PN, &study.patient_name),
        text(tags::PATIENT_ID, VR::LO, &study.patient_id),
        text(tags::PATIENT_BIRTH_DATE, VR::DA, &study.birth_date),
        text(tags::PATIENT_SEX, VR::CS, study.sex),
        text(tags::PATIENT_COMMENTS, VR::LT, "SYNTHETIC PHANTOM - NOT A PATIENT"),
        strs(tags::SCANNING_SEQUENCE, VR::CS, &series.scanning_sequence),
        strs(tags::SEQUENCE_VARIANT, VR::CS, &series.sequence_variant),
        strs(tags::SCAN_OPTIONS, VR::CS, &series.scan_options),
        text(tags::MR_ACQUISITION_TYPE, VR::CS, "2D"),
        text(tags::SLICE_THICKNESS, VR::DS, &ds(series.thickness_mm)),
        text(tags::REPETITION_TIME, VR::DS, &ds(series.tr)),
        text(tags::ECHO_TIME, VR::DS, &ds(series.te)),
        text(tags::NUMBER_OF_AVERAGES, VR::DS, "1"),
        text(tags::IMAGING_FREQUENCY, VR::DS, &ds(42.577478 * study.field_t)),
        text(tags::IMAGED_NUCLEUS, VR::SH, "1H"),
        text(tags::MAGNETIC_FIELD_STRENGTH, VR::DS, &ds(study.field_t)),
        text(tags::SPACING_BETWEEN_SLICES, VR::DS, &ds(series.spacing_mm)),
        text(tags::ECHO_TRAIN_LENGTH, VR::IS, &series.echo_train.to_string()),
        text(tags::SOFTWARE_VERSIONS, VR::LO, &study.software),
        text(tags::PATIENT_POSITION, VR::CS, "HFS"),
        text(tags::STUDY_INSTANCE_UID, VR::UI, &study.study_uid),
        text(tags::SERIES_INSTANCE_UID, VR::UI, &series.series_uid),
        text(tags::STUDY_ID, VR::SH, &format!("{}", study.seed % 100_000)),
        text(tags::SERIES_NUMBER, VR::IS, &series.series_number.to_string()),
        text(tags::ACQUISITION_NUMBER, VR::IS, "1"),
        text(tags::INSTANCE_NUMBER, VR::IS, &slice.instance_number.to_string()),
        strs(tags::IMAGE_POSITION_PATIENT, VR::DS, &slice.position.map(ds)),
        strs(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            &[slice.row_dir, slice.col_dir]
                .concat()
                .iter()
                .map(|v| ds(*v))
                .collect::<Vec<_>>(),
        ),
        text(tags::FRAME_OF_REFERENCE_UID, VR::UI, &study.frame_of_reference_uid),
        text(tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
        text(tags::SLICE_LOCATION, VR::DS, &ds(slice_location)),
        text(
            tags::IMAGES_IN_ACQUISITION,
            VR::IS,
            &series.images_in_acquisition.to_string(),
        ),
        text(tags::IMAGE_COMMENTS, VR::LT, "SYNTHETIC PHANTOM"),
        us(tags::SAMPLES_PER_PIXEL, 1),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, series.rows as u16),
        us(tags::COLUMNS, series.cols as u16),
        strs(tags::PIXEL_SPACING, VR::DS, &[ds(series.pixel_mm), ds(series.pixel_mm)]),
        us(tags::BITS_ALLOCATED, 16),
        us(tags::BITS_STORED, series.bits_stored),
        us(tags::HIGH_BIT, series.bits_stored - 1),
        us(tags::PIXEL_REPRESENTATION, series.signed as u16),
        text(tags::WINDOW_CENTER, VR::DS, &ds(series.window.0)),
        text(tags::WINDOW_WIDTH, VR::DS, &ds(series.window.1)),
    ];
    // Some consoles (Canon here) leave BodyPartExamined out altogether.
    // Without a body part, Laterality's condition cannot be judged: send
    // it empty (Type 2), as such consoles do.
    if series.body_part.is_empty() {
        e.push(text(tags::LATERALITY, VR::CS, ""));
    } else {
        e.push(text(tags::BODY_PART_EXAMINED, VR::CS, &series.body_part));
    }
    if let Some(ti) = series.ti {
        e.push(text(tags::INVERSION_TIME, VR::DS, &ds(ti)));
    }
    if !series.sequence_name.is_empty() {
        e.push(text(tags::SEQUENCE_NAME, VR::SH, &series.sequence_name));
    }
    if series.contrast {
        e.push(text(tags::CONTRAST_BOLUS_AGENT, VR::LO, "GADOTERATE 0.1 mmol/kg"));
    }
    if series.rescale_slope != 1.0 {
        e.push(text(tags::RESCALE_INTERCEPT, VR::DS, "0"));
        e.push(text(tags::RESCALE_SLOPE, VR::DS, &ds(series.rescale_slope)));
        e.push(text(tags::RESCALE_TYPE, VR::LO, "US"));
    }
    let mut bytes = Vec::with_capacity(slice.pixels.len() * 2);
    for v in slice.pixels {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    e.push(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(bytes)));
    let obj = InMemDicomObject::from_element_iter(e);
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(MR_IMAGE_STORAGE)
        .media_storage_sop_instance_uid(slice.sop_uid.as_str())
        .transfer_syntax(EXPLICIT_VR_LE)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name("SA_PHANTOM_1")
        .build()
        .map_err(std::io::Error::other)?;
    obj.with_exact_meta(meta)
        .write_to_file(path)
        .map_err(std::io::Error::other)
}
