//! The preprocessing transform, specified once; the CPU and CUDA paths both
//! implement exactly this.
//!
//! For each slice of stored values `x` (integers as decoded, `rows` x `cols`):
//! 1. `lo`, `hi` = the `low_percentile` and `high_percentile` of `x`,
//!    nearest rank: the smallest value `v` with `#{x <= v} >= ceil(p/100 * N)`
//!    (p = 0 gives the minimum). Exact for integer data, and computable by
//!    histogram on a GPU.
//! 2. `y = clamp((x - lo) / (hi - lo), 0, 1)` (0 when `hi == lo`). This equals
//!    scaling after the modality LUT (Rescale Slope/Intercept), because an
//!    affine map with positive slope moves the percentiles with the values;
//!    a negative slope flips the image and is applied as `y = 1 - y`.
//! 3. MONOCHROME1: `y = 1 - y` (so bright always means high signal).
//! 4. Pad to a square of side `S = max(rows, cols)`, the image centred at
//!    offset `floor((S - rows) / 2)`, `floor((S - cols) / 2)`, fill 0.
//! 5. Resize to `resize` x `resize` with a separable triangle (bilinear)
//!    filter whose support widens with the downscale factor (antialiased,
//!    like PIL's BILINEAR): output centre `u = (i + 0.5) * S / resize`,
//!    weights `max(0, 1 - |j + 0.5 - u| / s)` over input pixels `j`, with
//!    `s = max(1, S / resize)`, normalized to sum 1.
//! 6. Centre crop `crop` x `crop` at offset `floor((resize - crop) / 2)`.
//! 7. Three channels `c`: `(y - mean[c]) / std[c]`.
//! 8. Output f32, NCHW, slices along N. A model whose manifest declares a
//!    float16 input gets these values converted to half precision at the
//!    inference boundary (`engine/src/model.rs`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    pub low_percentile: f64,
    pub high_percentile: f64,
    pub resize: usize,
    pub crop: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for PreprocessSpec {
    /// The published method: pad to square, resize 256, crop 224, ImageNet
    /// statistics; percentiles 0.5 / 99.5 (the method's 8-bit windowing is
    /// unpublished; this is the appliance's documented choice).
    fn default() -> Self {
        PreprocessSpec {
            low_percentile: 0.5,
            high_percentile: 99.5,
            resize: 256,
            crop: 224,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum SpecError {
    #[error("percentiles must satisfy 0 <= low < high <= 100 (got {0}, {1})")]
    Percentiles(f64, f64),
    #[error("crop {crop} must be between 1 and resize {resize}")]
    Crop { crop: usize, resize: usize },
    #[error("std must be positive")]
    Std,
}

impl PreprocessSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        if !(0.0 <= self.low_percentile && self.low_percentile < self.high_percentile && self.high_percentile <= 100.0)
        {
            return Err(SpecError::Percentiles(self.low_percentile, self.high_percentile));
        }
        if self.crop == 0 || self.crop > self.resize {
            return Err(SpecError::Crop {
                crop: self.crop,
                resize: self.resize,
            });
        }
        if self.std.iter().any(|s| !(*s > 0.0)) {
            return Err(SpecError::Std);
        }
        Ok(())
    }
}

/// One decoded slice.
#[derive(Debug, Clone)]
pub struct Slice<'a> {
    pub rows: usize,
    pub cols: usize,
    /// Stored values, row-major.
    pub values: &'a [i32],
    /// MONOCHROME1 (or a negative rescale slope): invert.
    pub invert: bool,
}

/// Nearest-rank percentile threshold: the smallest value `v` with at least
/// `ceil(p / 100 * n)` values `<= v`.
pub fn rank_for(p: f64, n: usize) -> usize {
    ((p / 100.0 * n as f64).ceil() as usize).clamp(1, n)
}

/// Triangle-filter resampling weights for one axis: for each output index,
/// the first input index and its weights (spec step 5).
#[derive(Debug, Clone, PartialEq)]
pub struct AxisWeights {
    pub start: Vec<u32>,
    pub len: Vec<u32>,
    /// `len[i]` weights per output `i`, packed; offsets in `offset`.
    pub weights: Vec<f32>,
    pub offset: Vec<u32>,
}

pub fn axis_weights(input: usize, output: usize) -> AxisWeights {
    let scale = input as f64 / output as f64;
    let support = scale.max(1.0);
    let mut w = AxisWeights {
        start: vec![],
        len: vec![],
        weights: vec![],
        offset: vec![],
    };
    for i in 0..output {
        let centre = (i as f64 + 0.5) * scale;
        let first = ((centre - support).floor().max(0.0)) as usize;
        let last = ((centre + support).ceil() as usize).min(input);
        let ws: Vec<f64> = (first..last)
            .map(|j| (1.0 - ((j as f64 + 0.5 - centre).abs() / support)).max(0.0))
            .collect();
        let sum: f64 = ws.iter().sum();
        w.start.push(first as u32);
        w.len.push(ws.len() as u32);
        w.offset.push(w.weights.len() as u32);
        w.weights.extend(ws.iter().map(|x| (x / sum) as f32));
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_specs_are_named() {
        PreprocessSpec::default().validate().unwrap();
        let bad = PreprocessSpec {
            crop: 300,
            ..Default::default()
        };
        assert_eq!(bad.validate(), Err(SpecError::Crop { crop: 300, resize: 256 }));
        let bad = PreprocessSpec {
            low_percentile: 50.0,
            high_percentile: 10.0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn weights_sum_to_one_and_identity_is_identity() {
        let w = axis_weights(512, 256);
        for i in 0..256 {
            let o = w.offset[i] as usize;
            let s: f32 = w.weights[o..o + w.len[i] as usize].iter().sum();
            assert!((s - 1.0).abs() < 1e-5);
        }
        let id = axis_weights(10, 10);
        for i in 0..10 {
            let o = id.offset[i] as usize;
            let (j, wt) = (0..id.len[i] as usize)
                .map(|k| (id.start[i] as usize + k, id.weights[o + k]))
                .fold((0, 0.0), |b, x| if x.1 > b.1 { x } else { b });
            assert_eq!(j, i);
            assert!((wt - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn ranks() {
        assert_eq!(rank_for(0.0, 100), 1);
        assert_eq!(rank_for(50.0, 100), 50);
        assert_eq!(rank_for(99.5, 1000), 995);
        assert_eq!(rank_for(100.0, 7), 7);
    }
}
