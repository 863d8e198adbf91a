//! Checks an incoming data set before it is acknowledged: it must be the
//! instance the command announced, carry the attributes the product needs,
//! and its pixel data must fit its own Rows/Columns/BitsAllocated.

use dicom_core::Tag;
use dicom_core::header::HasLength;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::structure::PixelData;
use crate::dimse::status;
use crate::ingest::syntaxes::ENHANCED_MR_IMAGE_STORAGE;

/// Why an instance was refused: a DIMSE status and the error comment sent
/// with it. `reason` is a bounded label for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
    pub comment: String,
}

impl Rejection {
    pub fn new(status: u16, reason: &'static str, comment: impl Into<String>) -> Self {
        Rejection {
            status,
            reason,
            comment: comment.into(),
        }
    }
}

const REQUIRED: &[(Tag, &str)] = &[
    (tags::SOP_CLASS_UID, "SOPClassUID"),
    (tags::SOP_INSTANCE_UID, "SOPInstanceUID"),
    (tags::STUDY_INSTANCE_UID, "StudyInstanceUID"),
    (tags::SERIES_INSTANCE_UID, "SeriesInstanceUID"),
    (tags::ROWS, "Rows"),
    (tags::COLUMNS, "Columns"),
    (tags::BITS_ALLOCATED, "BitsAllocated"),
    (tags::BITS_STORED, "BitsStored"),
    (tags::PIXEL_REPRESENTATION, "PixelRepresentation"),
    (tags::SAMPLES_PER_PIXEL, "SamplesPerPixel"),
    (tags::PHOTOMETRIC_INTERPRETATION, "PhotometricInterpretation"),
];

/// Classic MR must say where each slice is (Image Plane module, type 1).
const REQUIRED_CLASSIC_GEOMETRY: &[(Tag, &str)] = &[
    (tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient"),
    (tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient"),
    (tags::PIXEL_SPACING, "PixelSpacing"),
];

fn uid(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| crate::uid::trim(&s).to_string())
        .unwrap_or_default()
}

fn uint(obj: &InMemDicomObject, tag: Tag) -> Option<u64> {
    obj.get(tag).and_then(|e| e.to_int::<u64>().ok())
}

/// `obj` holds the data set up to (not including) Pixel Data; what the
/// pixel data looked like comes from the structural walk.
pub fn validate(
    obj: &InMemDicomObject,
    pixel_data: Option<PixelData>,
    announced_sop_class: &str,
    announced_sop_instance: &str,
    encapsulated: bool,
) -> Result<(), Rejection> {
    for &(tag, name) in REQUIRED {
        let present = obj.get(tag).map(|e| !e.is_empty()).unwrap_or(false);
        if !present {
            return Err(Rejection::new(
                status::CANNOT_UNDERSTAND,
                "missing_attribute",
                format!("missing required attribute {name}"),
            ));
        }
    }
    let sop_class = uid(obj, tags::SOP_CLASS_UID);
    let sop_instance = uid(obj, tags::SOP_INSTANCE_UID);
    if sop_class != announced_sop_class || sop_instance != announced_sop_instance {
        return Err(Rejection::new(
            status::DATA_SET_MISMATCH,
            "uid_mismatch",
            "SOP Class/Instance UID differ from the C-STORE request",
        ));
    }
    for (tag, name) in [
        (tags::STUDY_INSTANCE_UID, "StudyInstanceUID"),
        (tags::SERIES_INSTANCE_UID, "SeriesInstanceUID"),
    ] {
        if let Err(e) = crate::uid::validate(&uid(obj, tag)) {
            return Err(Rejection::new(
                status::CANNOT_UNDERSTAND,
                "invalid_uid",
                format!("{name}: {e}"),
            ));
        }
    }
    if sop_class != ENHANCED_MR_IMAGE_STORAGE {
        for &(tag, name) in REQUIRED_CLASSIC_GEOMETRY {
            if obj.get(tag).is_none_or(|e| e.is_empty()) {
                return Err(Rejection::new(
                    status::CANNOT_UNDERSTAND,
                    "missing_attribute",
                    format!("missing required attribute {name}"),
                ));
            }
        }
    }
    check_pixel_data(obj, pixel_data, encapsulated)
}

fn check_pixel_data(
    obj: &InMemDicomObject,
    pixel_data: Option<PixelData>,
    encapsulated: bool,
) -> Result<(), Rejection> {
    let bad = |comment: String| Rejection::new(status::CANNOT_UNDERSTAND, "pixel_data_mismatch", comment);
    let rows = uint(obj, tags::ROWS).unwrap_or(0);
    let cols = uint(obj, tags::COLUMNS).unwrap_or(0);
    let bits = uint(obj, tags::BITS_ALLOCATED).unwrap_or(0);
    let spp = uint(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(0);
    let frames = uint(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    if rows == 0 || cols == 0 || !matches!(bits, 1 | 8 | 16 | 32) || !matches!(spp, 1 | 3) {
        return Err(bad(format!("bad image size {rows}x{cols} bits {bits} samples {spp}")));
    }
    match (pixel_data, encapsulated) {
        (None, _) => Err(Rejection::new(
            status::CANNOT_UNDERSTAND,
            "missing_attribute",
            "missing required attribute PixelData",
        )),
        (Some(PixelData::Native { bytes }), false) => {
            let expected = (rows * cols * spp * bits * frames).div_ceil(8);
            // Native pixel data may carry one padding byte to even length.
            if bytes < expected || bytes > expected + 1 {
                return Err(bad(format!(
                    "PixelData has {bytes} bytes, Rows/Columns/Bits need {expected}"
                )));
            }
            Ok(())
        }
        (Some(PixelData::Encapsulated { fragments }), true) => {
            if fragments == 0 {
                return Err(bad("encapsulated PixelData has no fragments".into()));
            }
            // Each frame needs at least one fragment (PS3.5 A.4).
            if (fragments as u64) < frames {
                return Err(bad(format!("{frames} frames but only {fragments} fragments")));
            }
            Ok(())
        }
        (Some(_), true) => Err(bad("transfer syntax is encapsulated but PixelData is not".into())),
        (Some(_), false) => Err(bad("PixelData is encapsulated under a native transfer syntax".into())),
    }
}
