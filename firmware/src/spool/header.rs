//! The facts about one stored instance that assembly and classification
//! need, pulled from its data set once. Deliberately holds no patient
//! identity (name, ID, birth date, accession), so it can be logged, kept in
//! memory and written to manifests freely.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceHeader {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub transfer_syntax_uid: String,
    pub modality: String,
    pub manufacturer: String,
    pub manufacturer_model: String,
    pub series_number: Option<i32>,
    pub instance_number: Option<i32>,
    pub series_description: String,
    pub protocol_name: String,
    pub sequence_name: String,
    pub body_part_examined: String,
    pub study_description: String,
    pub scanning_sequence: Vec<String>,
    pub sequence_variant: Vec<String>,
    pub scan_options: Vec<String>,
    pub image_type: Vec<String>,
    pub echo_time_ms: Option<f64>,
    pub repetition_time_ms: Option<f64>,
    pub inversion_time_ms: Option<f64>,
    pub magnetic_field_strength_t: Option<f64>,
    /// ContrastBolusAgent present and non-empty.
    pub contrast_agent: bool,
    pub rows: u32,
    pub columns: u32,
    pub number_of_frames: u32,
    /// ImagesInAcquisition: the expected instance count, when the scanner sends it.
    pub images_in_acquisition: Option<u32>,
    /// Row then column direction cosines (ImageOrientationPatient).
    pub orientation: Option<[f64; 6]>,
    /// ImagePositionPatient per frame (one entry for classic MR).
    pub positions: Vec<[f64; 3]>,
    pub pixel_spacing: Option<[f64; 2]>,
    pub slice_thickness_mm: Option<f64>,
}

fn string(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_matches(['\0', ' ']).to_string())
        .unwrap_or_default()
}

fn strings(obj: &InMemDicomObject, tag: Tag) -> Vec<String> {
    obj.get(tag)
        .and_then(|e| e.to_multi_str().ok())
        .map(|v| {
            v.iter()
                .map(|s| s.trim_matches(['\0', ' ']).to_uppercase())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn float(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    obj.get(tag).and_then(|e| e.to_float64().ok()).filter(|v| v.is_finite())
}

fn floats(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.get(tag)
        .and_then(|e| e.to_multi_float64().ok())
        .filter(|v| v.iter().all(|x| x.is_finite()))
}

fn int<T: num_like::FromI64>(obj: &InMemDicomObject, tag: Tag) -> Option<T> {
    obj.get(tag).and_then(|e| e.to_int::<i64>().ok()).and_then(T::from_i64)
}

mod num_like {
    pub trait FromI64: Sized {
        fn from_i64(v: i64) -> Option<Self>;
    }
    impl FromI64 for i32 {
        fn from_i64(v: i64) -> Option<Self> {
            i32::try_from(v).ok()
        }
    }
    impl FromI64 for u32 {
        fn from_i64(v: i64) -> Option<Self> {
            u32::try_from(v).ok()
        }
    }
}

/// The first item of a sequence.
fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.get(tag)?.items()?.first()
}

/// A value from the root, else from the shared functional groups (Enhanced MR
/// keeps MR parameters in nested macros), else from the first frame's groups.
fn find_float(obj: &InMemDicomObject, tag: Tag, macros: &[Tag]) -> Option<f64> {
    if let Some(v) = float(obj, tag) {
        return Some(v);
    }
    for groups in [
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
    ] {
        let Some(g) = first_item(obj, groups) else {
            continue;
        };
        for &m in macros {
            if let Some(v) = first_item(g, m).and_then(|item| float(item, tag)) {
                return Some(v);
            }
        }
    }
    None
}

fn orientation_from(item: &InMemDicomObject) -> Option<[f64; 6]> {
    let v = floats(item, tags::IMAGE_ORIENTATION_PATIENT)?;
    v.get(..6)?.try_into().ok()
}

fn position_from(item: &InMemDicomObject) -> Option<[f64; 3]> {
    let v = floats(item, tags::IMAGE_POSITION_PATIENT)?;
    v.get(..3)?.try_into().ok()
}

fn spacing_from(item: &InMemDicomObject) -> Option<[f64; 2]> {
    let v = floats(item, tags::PIXEL_SPACING)?;
    v.get(..2)?.try_into().ok()
}

/// Geometry of a classic instance or of each frame of an Enhanced MR.
fn geometry(obj: &InMemDicomObject) -> (Option<[f64; 6]>, Vec<[f64; 3]>, Option<[f64; 2]>, Option<f64>) {
    if let Some(orientation) = orientation_from(obj) {
        let positions = position_from(obj).into_iter().collect();
        return (
            orientation.into(),
            positions,
            spacing_from(obj),
            float(obj, tags::SLICE_THICKNESS),
        );
    }
    // Enhanced MR: PlaneOrientationSequence usually shared, PlanePositionSequence per frame.
    let shared = first_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let frames: &[InMemDicomObject] = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap_or(&[]);
    fn from_groups<'a>(
        seq: Tag,
        frame: Option<&'a InMemDicomObject>,
        shared: Option<&'a InMemDicomObject>,
    ) -> Option<&'a InMemDicomObject> {
        frame
            .and_then(|f| first_item(f, seq))
            .or_else(|| shared.and_then(|s| first_item(s, seq)))
    }
    let orientation = from_groups(tags::PLANE_ORIENTATION_SEQUENCE, frames.first(), shared).and_then(orientation_from);
    let positions = frames
        .iter()
        .filter_map(|f| first_item(f, tags::PLANE_POSITION_SEQUENCE).and_then(position_from))
        .collect();
    let measures = from_groups(tags::PIXEL_MEASURES_SEQUENCE, frames.first(), shared);
    (
        orientation,
        positions,
        measures.and_then(spacing_from),
        measures.and_then(|m| float(m, tags::SLICE_THICKNESS)),
    )
}

impl InstanceHeader {
    pub fn from_object(obj: &InMemDicomObject, transfer_syntax_uid: &str) -> InstanceHeader {
        let (orientation, positions, pixel_spacing, slice_thickness_mm) = geometry(obj);
        let mr_macros = [
            tags::MR_ECHO_SEQUENCE,
            tags::MR_TIMING_AND_RELATED_PARAMETERS_SEQUENCE,
            tags::MR_MODIFIER_SEQUENCE,
        ];
        InstanceHeader {
            sop_class_uid: string(obj, tags::SOP_CLASS_UID),
            sop_instance_uid: string(obj, tags::SOP_INSTANCE_UID),
            study_instance_uid: string(obj, tags::STUDY_INSTANCE_UID),
            series_instance_uid: string(obj, tags::SERIES_INSTANCE_UID),
            transfer_syntax_uid: transfer_syntax_uid.trim_end_matches('\0').to_string(),
            modality: string(obj, tags::MODALITY),
            manufacturer: string(obj, tags::MANUFACTURER),
            manufacturer_model: string(obj, tags::MANUFACTURER_MODEL_NAME),
            series_number: int(obj, tags::SERIES_NUMBER),
            instance_number: int(obj, tags::INSTANCE_NUMBER),
            series_description: string(obj, tags::SERIES_DESCRIPTION),
            protocol_name: string(obj, tags::PROTOCOL_NAME),
            sequence_name: {
                let s = string(obj, tags::SEQUENCE_NAME);
                if s.is_empty() {
                    string(obj, tags::PULSE_SEQUENCE_NAME)
                } else {
                    s
                }
            },
            body_part_examined: string(obj, tags::BODY_PART_EXAMINED).to_uppercase(),
            study_description: string(obj, tags::STUDY_DESCRIPTION),
            scanning_sequence: strings(obj, tags::SCANNING_SEQUENCE),
            sequence_variant: strings(obj, tags::SEQUENCE_VARIANT),
            scan_options: strings(obj, tags::SCAN_OPTIONS),
            image_type: strings(obj, tags::IMAGE_TYPE),
            echo_time_ms: float(obj, tags::ECHO_TIME)
                .or_else(|| find_float(obj, tags::EFFECTIVE_ECHO_TIME, &mr_macros)),
            repetition_time_ms: find_float(obj, tags::REPETITION_TIME, &mr_macros),
            inversion_time_ms: find_float(obj, tags::INVERSION_TIME, &mr_macros)
                .or_else(|| find_float(obj, tags::INVERSION_TIMES, &mr_macros)),
            magnetic_field_strength_t: float(obj, tags::MAGNETIC_FIELD_STRENGTH),
            contrast_agent: !string(obj, tags::CONTRAST_BOLUS_AGENT).is_empty()
                || first_item(obj, tags::CONTRAST_BOLUS_AGENT_SEQUENCE).is_some(),
            rows: int(obj, tags::ROWS).unwrap_or(0),
            columns: int(obj, tags::COLUMNS).unwrap_or(0),
            number_of_frames: int(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1),
            images_in_acquisition: int::<u32>(obj, tags::IMAGES_IN_ACQUISITION).filter(|n| *n > 0),
            orientation,
            positions,
            pixel_spacing,
            slice_thickness_mm,
        }
    }

    /// Series-level text that naming rules match against.
    pub fn naming_text(&self) -> String {
        format!(
            "{} | {} | {}",
            self.series_description, self.protocol_name, self.sequence_name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
        DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
    }

    fn ds(tag: Tag, values: &[f64]) -> DataElement<InMemDicomObject> {
        // Parsed files hold multi-valued DS as several strings.
        let text: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        DataElement::new(tag, VR::DS, PrimitiveValue::Strs(text.into()))
    }

    #[test]
    fn enhanced_mr_geometry_comes_from_functional_groups() {
        let shared = InMemDicomObject::from_element_iter([
            seq(
                tags::PLANE_ORIENTATION_SEQUENCE,
                vec![InMemDicomObject::from_element_iter([ds(
                    tags::IMAGE_ORIENTATION_PATIENT,
                    &[0.0, 1.0, 0.0, 0.0, 0.0, -1.0],
                )])],
            ),
            seq(
                tags::PIXEL_MEASURES_SEQUENCE,
                vec![InMemDicomObject::from_element_iter([
                    ds(tags::PIXEL_SPACING, &[0.5, 0.5]),
                    ds(tags::SLICE_THICKNESS, &[3.0]),
                ])],
            ),
            seq(
                tags::MR_TIMING_AND_RELATED_PARAMETERS_SEQUENCE,
                vec![InMemDicomObject::from_element_iter([ds(
                    tags::REPETITION_TIME,
                    &[3200.0],
                )])],
            ),
        ]);
        let frames: Vec<InMemDicomObject> = (0..3)
            .map(|i| {
                InMemDicomObject::from_element_iter([seq(
                    tags::PLANE_POSITION_SEQUENCE,
                    vec![InMemDicomObject::from_element_iter([ds(
                        tags::IMAGE_POSITION_PATIENT,
                        &[i as f64 * 4.0, -100.0, 50.0],
                    )])],
                )])
            })
            .collect();
        let obj = InMemDicomObject::from_element_iter([
            seq(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]),
            seq(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, frames),
            DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from("3")),
        ]);
        let h = InstanceHeader::from_object(&obj, "1.2.840.10008.1.2.1");
        assert_eq!(h.orientation, Some([0.0, 1.0, 0.0, 0.0, 0.0, -1.0]));
        assert_eq!(
            h.positions,
            vec![[0.0, -100.0, 50.0], [4.0, -100.0, 50.0], [8.0, -100.0, 50.0]]
        );
        assert_eq!(h.pixel_spacing, Some([0.5, 0.5]));
        assert_eq!(h.slice_thickness_mm, Some(3.0));
        assert_eq!(h.repetition_time_ms, Some(3200.0));
        assert_eq!(h.number_of_frames, 3);
    }
}
