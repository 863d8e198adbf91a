//! The DICOM Segmentation (BINARY) of one analyzed series: a segment per
//! anatomy and lesion class the segmentation agent found, one frame per
//! segment and slice that holds it, each frame on its source slice's
//! geometry (the mask cells, 128 x 128 per slice since bundle 0.5.0, mapped
//! back through the preprocessing geometry to the source pixel grid) and
//! referencing that slice.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};
use spineagent_kernels::PreprocessSpec;

use super::codes::{Code, LOCAL_SCHEME, code};
use super::elements::{PATIENT_AND_STUDY, code_item, copy, el, file_meta, seq};
use super::sr::SourceImage;
use crate::analysis::SliceMasks;

pub const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// One source slice of the segmented series.
#[derive(Debug, Clone)]
pub struct SegSlice {
    pub image: SourceImage,
    pub position: [f64; 3],
}

pub struct SegInput<'a> {
    /// A source instance of the series: patient, study and frame of reference are copied.
    pub source: &'a InMemDicomObject,
    pub slices: Vec<SegSlice>,
    pub masks: &'a [SliceMasks],
    pub orientation: [f64; 6],
    pub pixel_spacing: [f64; 2],
    pub slice_thickness: Option<f64>,
    pub rows: usize,
    pub cols: usize,
    pub spec: &'a PreprocessSpec,
    pub anatomy_labels: &'a [String],
    pub lesion_labels: &'a [String],
    pub algorithm_name: String,
    pub algorithm_version: String,
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
    pub dimension_organization_uid: String,
    pub series_number: i32,
    pub date: String,
    pub time: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SegError {
    #[error("nothing to segment: {0}")]
    Empty(&'static str),
    #[error("building the SEG file meta: {0}")]
    Meta(String),
}

fn ds(values: &[f64]) -> String {
    values.iter().map(|v| format!("{v:.6}")).collect::<Vec<_>>().join("\\")
}

/// Mask cell index for each source pixel along one axis (None outside the
/// crop): the forward preprocessing geometry.
fn cell_of(n: usize, side: usize, grid: usize, spec: &PreprocessSpec) -> Vec<Option<usize>> {
    let off = (side - n) / 2;
    let margin = ((spec.resize - spec.crop) / 2) as f64;
    (0..n)
        .map(|i| {
            let resized = (i + off) as f64 + 0.5;
            let crop = resized * spec.resize as f64 / side as f64 - margin;
            let cell = (crop * grid as f64 / spec.crop as f64).floor();
            (cell >= 0.0 && cell < grid as f64).then_some(cell as usize)
        })
        .collect()
}

/// A segment: its number in the object, label and codes, and which class of
/// which mask it is.
struct Segment {
    label: String,
    category: Code,
    kind: Code,
    anatomy: bool,
    class: u8,
}

fn segments(input: &SegInput) -> Vec<Segment> {
    let mut out = Vec::new();
    for (anatomy, labels) in [(true, input.anatomy_labels), (false, input.lesion_labels)] {
        for (class, name) in labels.iter().enumerate().skip(1) {
            let present = input.masks.iter().any(|m| {
                let v = if anatomy { &m.anatomy } else { &m.lesion };
                v.contains(&(class as u8))
            });
            if !present {
                continue;
            }
            let (category, prefix) = if anatomy {
                (code("91723000", "SCT", "Anatomical structure"), "ANAT")
            } else {
                (code("49755003", "SCT", "Morphologically abnormal structure"), "LESION")
            };
            out.push(Segment {
                label: name.replace('_', " "),
                category,
                kind: code(&format!("{prefix}_{class:02}"), LOCAL_SCHEME, &name.replace('_', " ")),
                anatomy,
                class: class as u8,
            });
        }
    }
    out
}

pub fn build_seg(input: &SegInput) -> Result<FileDicomObject<InMemDicomObject>, SegError> {
    if input.slices.is_empty() || input.slices.len() != input.masks.len() {
        return Err(SegError::Empty("no slices, or masks and slices differ"));
    }
    let segs = segments(input);
    if segs.is_empty() {
        return Err(SegError::Empty("no segment found"));
    }
    let side = input.rows.max(input.cols);
    let grid = input.masks[0].side;
    let row_cells = cell_of(input.rows, side, grid, input.spec);
    let col_cells = cell_of(input.cols, side, grid, input.spec);
    let per_frame = input.rows * input.cols;
    let mut bits: Vec<u8> = Vec::new();
    let mut n_bits = 0usize;
    let mut frames = Vec::new();
    for (number, seg) in segs.iter().enumerate() {
        for (k, (slice, mask)) in input.slices.iter().zip(input.masks).enumerate() {
            let cells = if seg.anatomy { &mask.anatomy } else { &mask.lesion };
            if !cells.contains(&seg.class) {
                continue;
            }
            bits.resize((n_bits + per_frame).div_ceil(8), 0);
            for (r, rc) in row_cells.iter().enumerate() {
                for (c, cc) in col_cells.iter().enumerate() {
                    if let (Some(rc), Some(cc)) = (rc, cc)
                        && cells[rc * grid + cc] == seg.class
                    {
                        let i = n_bits + r * input.cols + c;
                        bits[i / 8] |= 1 << (i % 8);
                    }
                }
            }
            n_bits += per_frame;
            frames.push(per_frame_item(number + 1, k, slice));
        }
    }
    if bits.len() % 2 == 1 {
        bits.push(0);
    }
    let segment_items = segs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            InMemDicomObject::from_element_iter([
                el(tags::SEGMENT_NUMBER, VR::US, PrimitiveValue::from((i + 1) as u16)),
                el(tags::SEGMENT_LABEL, VR::LO, s.label.as_str()),
                el(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
                el(tags::SEGMENT_ALGORITHM_NAME, VR::LO, input.algorithm_name.as_str()),
                seq(
                    tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                    vec![code_item(&s.category)],
                ),
                seq(tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE, vec![code_item(&s.kind)]),
            ])
        })
        .collect();
    let dim_uid = input.dimension_organization_uid.as_str();
    let dimension_index = |pointer: Tag, group: Tag, label: &str| {
        InMemDicomObject::from_element_iter([
            el(tags::DIMENSION_ORGANIZATION_UID, VR::UI, dim_uid),
            el(
                tags::DIMENSION_INDEX_POINTER,
                VR::AT,
                PrimitiveValue::Tags([pointer].into_iter().collect()),
            ),
            el(
                tags::FUNCTIONAL_GROUP_POINTER,
                VR::AT,
                PrimitiveValue::Tags([group].into_iter().collect()),
            ),
            el(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label),
        ])
    };
    let mut pixel_measures = vec![el(tags::PIXEL_SPACING, VR::DS, ds(&input.pixel_spacing))];
    if let Some(t) = input.slice_thickness {
        pixel_measures.push(el(tags::SLICE_THICKNESS, VR::DS, ds(&[t])));
    }
    let shared = InMemDicomObject::from_element_iter([
        seq(
            tags::PIXEL_MEASURES_SEQUENCE,
            vec![InMemDicomObject::from_element_iter(pixel_measures)],
        ),
        seq(
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([el(
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                ds(&input.orientation),
            )])],
        ),
    ]);
    let referenced = {
        let series_uid = input.slices[0].image.series_instance_uid.clone();
        let instances = input
            .slices
            .iter()
            .map(|s| {
                InMemDicomObject::from_element_iter([
                    el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, s.image.sop_class_uid.as_str()),
                    el(
                        tags::REFERENCED_SOP_INSTANCE_UID,
                        VR::UI,
                        s.image.sop_instance_uid.as_str(),
                    ),
                ])
            })
            .collect();
        InMemDicomObject::from_element_iter([
            el(tags::SERIES_INSTANCE_UID, VR::UI, series_uid),
            seq(tags::REFERENCED_INSTANCE_SEQUENCE, instances),
        ])
    };
    let mut e = vec![
        el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        el(tags::SOP_CLASS_UID, VR::UI, SEGMENTATION_STORAGE),
        el(tags::SOP_INSTANCE_UID, VR::UI, input.sop_instance_uid.as_str()),
        el(tags::INSTANCE_CREATION_DATE, VR::DA, input.date.as_str()),
        el(tags::INSTANCE_CREATION_TIME, VR::TM, input.time.as_str()),
        el(tags::MODALITY, VR::CS, "SEG"),
        el(tags::SERIES_INSTANCE_UID, VR::UI, input.series_instance_uid.as_str()),
        el(tags::SERIES_NUMBER, VR::IS, input.series_number.to_string()),
        el(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            "spineagent segmentation (SYNTHETIC model)",
        ),
        el(tags::MANUFACTURER, VR::LO, "spineagent"),
        el(tags::MANUFACTURER_MODEL_NAME, VR::LO, input.algorithm_name.as_str()),
        el(tags::DEVICE_SERIAL_NUMBER, VR::LO, "0"),
        el(tags::SOFTWARE_VERSIONS, VR::LO, input.algorithm_version.as_str()),
        el(tags::INSTANCE_NUMBER, VR::IS, "1"),
        el(tags::CONTENT_DATE, VR::DA, input.date.as_str()),
        el(tags::CONTENT_TIME, VR::TM, input.time.as_str()),
        el(tags::IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY"),
        el(tags::CONTENT_LABEL, VR::CS, "SPINEAGENT"),
        el(tags::CONTENT_DESCRIPTION, VR::LO, "Anatomy and lesion segmentation"),
        el(tags::CONTENT_CREATOR_NAME, VR::PN, ""),
        el(tags::SEGMENTATION_TYPE, VR::CS, "BINARY"),
        el(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        el(tags::ROWS, VR::US, PrimitiveValue::from(input.rows as u16)),
        el(tags::COLUMNS, VR::US, PrimitiveValue::from(input.cols as u16)),
        el(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(1u16)),
        el(tags::BITS_STORED, VR::US, PrimitiveValue::from(1u16)),
        el(tags::HIGH_BIT, VR::US, PrimitiveValue::from(0u16)),
        el(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0u16)),
        el(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        el(tags::NUMBER_OF_FRAMES, VR::IS, frames.len().to_string()),
        el(tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
        seq(tags::SEGMENT_SEQUENCE, segment_items),
        seq(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]),
        seq(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, frames),
        seq(
            tags::DIMENSION_ORGANIZATION_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([el(
                tags::DIMENSION_ORGANIZATION_UID,
                VR::UI,
                dim_uid,
            )])],
        ),
        seq(
            tags::DIMENSION_INDEX_SEQUENCE,
            vec![
                dimension_index(
                    tags::REFERENCED_SEGMENT_NUMBER,
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    "Segment",
                ),
                dimension_index(tags::IMAGE_POSITION_PATIENT, tags::PLANE_POSITION_SEQUENCE, "Position"),
            ],
        ),
        seq(tags::REFERENCED_SERIES_SEQUENCE, vec![referenced]),
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(bits.into())),
    ];
    copy(input.source, &mut e, PATIENT_AND_STUDY);
    copy(input.source, &mut e, &[(tags::FRAME_OF_REFERENCE_UID, VR::UI)]);
    let meta = file_meta(SEGMENTATION_STORAGE, &input.sop_instance_uid).map_err(SegError::Meta)?;
    Ok(InMemDicomObject::from_element_iter(e).with_exact_meta(meta))
}

fn per_frame_item(segment: usize, slice_index: usize, slice: &SegSlice) -> InMemDicomObject {
    let source = InMemDicomObject::from_element_iter([
        el(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            slice.image.sop_class_uid.as_str(),
        ),
        el(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            slice.image.sop_instance_uid.as_str(),
        ),
        seq(
            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
            vec![code_item(&code(
                "121322",
                "DCM",
                "Source image for image processing operation",
            ))],
        ),
    ]);
    InMemDicomObject::from_element_iter([
        seq(
            tags::DERIVATION_IMAGE_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                seq(tags::SOURCE_IMAGE_SEQUENCE, vec![source]),
                seq(
                    tags::DERIVATION_CODE_SEQUENCE,
                    vec![code_item(&code("113076", "DCM", "Segmentation"))],
                ),
            ])],
        ),
        seq(
            tags::FRAME_CONTENT_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([el(
                tags::DIMENSION_INDEX_VALUES,
                VR::UL,
                PrimitiveValue::U32([segment as u32, slice_index as u32 + 1].into_iter().collect()),
            )])],
        ),
        seq(
            tags::PLANE_POSITION_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([el(
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                ds(&slice.position),
            )])],
        ),
        seq(
            tags::SEGMENT_IDENTIFICATION_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([el(
                tags::REFERENCED_SEGMENT_NUMBER,
                VR::US,
                PrimitiveValue::from(segment as u16),
            )])],
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_map_to_the_cells_the_preprocessing_put_them_in() {
        let spec = PreprocessSpec {
            resize: 144,
            crop: 128,
            ..Default::default()
        };
        // 288 pixels, no padding: pixel 144 (just past the centre) is in cell 16.
        let cells = cell_of(288, 288, 32, &spec);
        assert_eq!(cells[144], Some(16));
        assert_eq!(cells[143], Some(15));
        // The crop cuts 8/144 of the side at each edge.
        assert_eq!(cells[0], None);
        assert_eq!(cells[287], None);
        assert_eq!(cells.iter().filter(|c| c.is_some()).count(), 256);
    }
}
