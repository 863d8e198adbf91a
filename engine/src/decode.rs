//! DICOM slices to the preprocessing kernels' input: decoded stored values
//! (any accepted transfer syntax, 8/12/16-bit, signed or unsigned), one
//! slice per frame, with the photometric interpretation and the sign of the
//! rescale slope folded into `invert`.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("{path}: {reason}")]
    Decode { path: String, reason: String },
}

/// One decoded frame.
#[derive(Debug, Clone)]
pub struct DecodedSlice {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<i32>,
    pub invert: bool,
}

impl DecodedSlice {
    pub fn as_slice(&self) -> spineagent_kernels::Slice<'_> {
        spineagent_kernels::Slice {
            rows: self.rows,
            cols: self.cols,
            values: &self.values,
            invert: self.invert,
        }
    }
}

pub fn decode_object(obj: &DefaultDicomObject, label: &str) -> Result<Vec<DecodedSlice>, DecodeError> {
    let err = |reason: String| DecodeError::Decode {
        path: label.to_string(),
        reason,
    };
    let decoded = obj.decode_pixel_data().map_err(|e| err(e.to_string()))?;
    let (rows, cols, frames) = (
        decoded.rows() as usize,
        decoded.columns() as usize,
        decoded.number_of_frames(),
    );
    if decoded.samples_per_pixel() != 1 {
        return Err(err("colour images are not MR slices".into()));
    }
    let monochrome1 = obj
        .get(tags::PHOTOMETRIC_INTERPRETATION)
        .and_then(|e| e.to_str().ok())
        .is_some_and(|s| s.trim() == "MONOCHROME1");
    let negative_slope = obj
        .get(tags::RESCALE_SLOPE)
        .and_then(|e| e.to_float64().ok())
        .is_some_and(|s| s < 0.0);
    let options = ConvertOptions::new().with_modality_lut(ModalityLutOption::None);
    (0..frames)
        .map(|f| {
            let values = decoded
                .to_vec_frame_with_options::<i32>(f, &options)
                .map_err(|e| err(e.to_string()))?;
            Ok(DecodedSlice {
                rows,
                cols,
                values,
                invert: monochrome1 != negative_slope,
            })
        })
        .collect()
}

/// Decodes every frame of a file. Files with trailing zero padding (real
/// scanner files have it; the parser alone rejects them) are read through
/// the structural walk.
pub fn decode_file(path: &Path) -> Result<Vec<DecodedSlice>, DecodeError> {
    let obj = crate::structure::open_instance(path).map_err(|reason| DecodeError::Decode {
        path: path.display().to_string(),
        reason,
    })?;
    decode_object(&obj, &path.display().to_string())
}
