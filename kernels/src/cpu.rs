//! The CPU implementation of [`crate::spec`]: slices in parallel, the
//! resize only where the crop keeps it, inner loops over contiguous rows so
//! the compiler vectorizes them.

use rayon::prelude::*;

use crate::PreprocessError;
use crate::spec::{AxisWeights, PreprocessSpec, Slice, axis_weights, rank_for};

/// Percentile thresholds of one slice (spec step 1), exact, O(n).
pub fn thresholds(values: &[i32], low: f64, high: f64) -> (i32, i32) {
    let mut v = values.to_vec();
    let n = v.len();
    let (rl, rh) = (rank_for(low, n) - 1, rank_for(high, n) - 1);
    let (_, hi, _) = v.select_nth_unstable(rh);
    let hi = *hi;
    let (_, lo, _) = v[..=rh].select_nth_unstable(rl);
    (*lo, hi)
}

/// Output floats per slice: 3 x crop x crop.
pub fn slice_len(spec: &PreprocessSpec) -> usize {
    3 * spec.crop * spec.crop
}

/// Preprocesses `slices` into one NCHW f32 tensor (spec steps 1 to 8).
pub fn preprocess(slices: &[Slice], spec: &PreprocessSpec) -> Result<Vec<f32>, PreprocessError> {
    spec.validate()?;
    for (i, s) in slices.iter().enumerate() {
        if s.rows == 0 || s.cols == 0 || s.values.len() != s.rows * s.cols {
            return Err(PreprocessError::Shape {
                slice: i,
                rows: s.rows,
                cols: s.cols,
                values: s.values.len(),
            });
        }
    }
    let mut out = vec![0f32; slices.len() * slice_len(spec)];
    out.par_chunks_mut(slice_len(spec))
        .zip(slices.par_iter())
        .for_each(|(dst, s)| one(s, spec, dst));
    Ok(out)
}

fn one(s: &Slice, spec: &PreprocessSpec, dst: &mut [f32]) {
    let (lo, hi) = thresholds(s.values, spec.low_percentile, spec.high_percentile);
    let range = (hi - lo) as f32;
    let inv = if range > 0.0 { 1.0 / range } else { 0.0 };
    let side = s.rows.max(s.cols);
    let (off_r, off_c) = ((side - s.rows) / 2, (side - s.cols) / 2);
    let w = axis_weights(side, spec.resize);
    let c0 = (spec.resize - spec.crop) / 2;
    let crop = spec.crop;

    // Horizontal pass over the image rows, only for the cropped columns.
    let mut horizontal = vec![0f32; s.rows * crop];
    let mut row_y = vec![0f32; s.cols];
    for r in 0..s.rows {
        let src = &s.values[r * s.cols..(r + 1) * s.cols];
        for (y, &x) in row_y.iter_mut().zip(src) {
            let v = ((x - lo) as f32 * inv).clamp(0.0, 1.0);
            *y = if s.invert { 1.0 - v } else { v };
        }
        let out_row = &mut horizontal[r * crop..(r + 1) * crop];
        for (k, o) in out_row.iter_mut().enumerate() {
            *o = apply(&w, c0 + k, |j| {
                j.checked_sub(off_c).and_then(|c| row_y.get(c)).copied().unwrap_or(0.0)
            });
        }
    }
    // Vertical pass for the cropped rows; then the three normalized channels.
    let plane = crop * crop;
    let mut column = vec![0f32; crop];
    for i in 0..crop {
        let (start, len, offset) = (
            w.start[c0 + i] as usize,
            w.len[c0 + i] as usize,
            w.offset[c0 + i] as usize,
        );
        column.iter_mut().for_each(|v| *v = 0.0);
        for t in 0..len {
            let Some(r) = (start + t).checked_sub(off_r).filter(|r| *r < s.rows) else {
                continue;
            };
            let weight = w.weights[offset + t];
            let src = &horizontal[r * crop..(r + 1) * crop];
            for (acc, v) in column.iter_mut().zip(src) {
                *acc += weight * v;
            }
        }
        for ch in 0..3 {
            let (m, sd) = (spec.mean[ch], spec.std[ch]);
            let row = &mut dst[ch * plane + i * crop..ch * plane + (i + 1) * crop];
            for (o, v) in row.iter_mut().zip(&column) {
                *o = (v - m) / sd;
            }
        }
    }
}

fn apply(w: &AxisWeights, i: usize, value: impl Fn(usize) -> f32) -> f32 {
    let (start, len, offset) = (w.start[i] as usize, w.len[i] as usize, w.offset[i] as usize);
    (0..len).map(|t| w.weights[offset + t] * value(start + t)).sum()
}
