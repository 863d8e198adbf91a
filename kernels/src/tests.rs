//! CPU preprocessing against a straightforward reference written here:
//! explicit padding, a full 2-D weighted sum per output pixel, f64.

use crate::cpu::{preprocess, thresholds};
use crate::spec::{PreprocessSpec, Slice};

fn reference(s: &Slice, spec: &PreprocessSpec) -> Vec<f32> {
    let mut sorted = s.values.to_vec();
    sorted.sort();
    let n = sorted.len();
    let rank = |p: f64| ((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1;
    let (lo, hi) = (
        sorted[rank(spec.low_percentile)] as f64,
        sorted[rank(spec.high_percentile)] as f64,
    );
    let side = s.rows.max(s.cols);
    let (or, oc) = ((side - s.rows) / 2, (side - s.cols) / 2);
    let mut padded = vec![0f64; side * side];
    for r in 0..s.rows {
        for c in 0..s.cols {
            let x = s.values[r * s.cols + c] as f64;
            let y = if hi > lo {
                ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
            } else {
                0.0
            };
            padded[(r + or) * side + c + oc] = if s.invert { 1.0 - y } else { y };
        }
    }
    let scale = side as f64 / spec.resize as f64;
    let support = scale.max(1.0);
    let weight = |i: usize, j: usize| {
        let centre = (i as f64 + 0.5) * scale;
        (1.0 - ((j as f64 + 0.5 - centre).abs() / support)).max(0.0)
    };
    let c0 = (spec.resize - spec.crop) / 2;
    let mut out = vec![0f32; 3 * spec.crop * spec.crop];
    for i in 0..spec.crop {
        for k in 0..spec.crop {
            let (oi, ok) = (c0 + i, c0 + k);
            let (mut acc, mut wsum_r, mut wsum_c) = (0.0, 0.0, 0.0);
            for j in 0..side {
                wsum_r += weight(oi, j);
                wsum_c += weight(ok, j);
            }
            for jr in 0..side {
                let wr = weight(oi, jr);
                if wr == 0.0 {
                    continue;
                }
                for jc in 0..side {
                    acc += wr * weight(ok, jc) * padded[jr * side + jc];
                }
            }
            let y = acc / (wsum_r * wsum_c);
            for ch in 0..3 {
                out[ch * spec.crop * spec.crop + i * spec.crop + k] =
                    ((y - spec.mean[ch] as f64) / spec.std[ch] as f64) as f32;
            }
        }
    }
    out
}

fn pattern(rows: usize, cols: usize, seed: i32) -> Vec<i32> {
    (0..rows * cols)
        .map(|i| {
            let (r, c) = ((i / cols) as i32, (i % cols) as i32);
            ((r * 37 + c * 11 + seed).wrapping_mul(2654435761u32 as i32) >> 20).rem_euclid(4096)
                - if seed % 2 == 0 { 0 } else { 1024 }
        })
        .collect()
}

#[test]
fn cpu_matches_the_reference() {
    let spec = PreprocessSpec {
        resize: 40,
        crop: 32,
        ..Default::default()
    };
    for (rows, cols, invert) in [(64, 64, false), (50, 70, true), (90, 33, false), (20, 20, false)] {
        let values = pattern(rows, cols, rows as i32);
        let s = Slice {
            rows,
            cols,
            values: &values,
            invert,
        };
        let got = preprocess(std::slice::from_ref(&s), &spec).unwrap();
        let want = reference(&s, &spec);
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 2e-5, "{rows}x{cols}: max abs diff {worst}");
    }
}

#[test]
fn batch_is_the_concatenation_of_slices() {
    let spec = PreprocessSpec {
        resize: 24,
        crop: 16,
        ..Default::default()
    };
    let (a, b) = (pattern(30, 30, 1), pattern(28, 40, 2));
    let sa = Slice {
        rows: 30,
        cols: 30,
        values: &a,
        invert: false,
    };
    let sb = Slice {
        rows: 28,
        cols: 40,
        values: &b,
        invert: false,
    };
    let both = preprocess(&[sa.clone(), sb.clone()], &spec).unwrap();
    let one_a = preprocess(&[sa], &spec).unwrap();
    let one_b = preprocess(&[sb], &spec).unwrap();
    assert_eq!(both, [one_a, one_b].concat());
}

#[test]
fn thresholds_are_nearest_rank() {
    let v: Vec<i32> = (1..=1000).rev().collect();
    assert_eq!(thresholds(&v, 0.5, 99.5), (5, 995));
    assert_eq!(thresholds(&v, 0.0, 100.0), (1, 1000));
    assert_eq!(thresholds(&[7; 10], 1.0, 99.0), (7, 7));
}

#[test]
fn constant_slice_and_bad_shapes() {
    let spec = PreprocessSpec {
        resize: 8,
        crop: 8,
        ..Default::default()
    };
    let v = vec![100; 64];
    let out = preprocess(
        &[Slice {
            rows: 8,
            cols: 8,
            values: &v,
            invert: false,
        }],
        &spec,
    )
    .unwrap();
    // y = 0 everywhere -> (0 - mean) / std.
    assert!((out[0] - (-0.485 / 0.229)).abs() < 1e-6);
    let err = preprocess(
        &[Slice {
            rows: 8,
            cols: 9,
            values: &v,
            invert: false,
        }],
        &spec,
    )
    .unwrap_err();
    assert!(err.to_string().contains("8x9 needs 72 values, got 64"), "{err}");
}

#[test]
fn default_spec_shape() {
    let spec = PreprocessSpec::default();
    let v = pattern(512, 512, 3);
    let out = preprocess(
        &[Slice {
            rows: 512,
            cols: 512,
            values: &v,
            invert: false,
        }],
        &spec,
    )
    .unwrap();
    assert_eq!(out.len(), 3 * 224 * 224);
    assert!(out.iter().all(|x| x.is_finite()));
}

/// CUDA against CPU, within 1e-4 (float sums in another order). Runs where
/// a GPU and its libraries are present; says SKIPPED and why otherwise.
#[cfg(feature = "cuda")]
#[test]
fn cuda_matches_cpu() {
    if let Err(why) = crate::cuda::available() {
        eprintln!("SKIPPED cuda_matches_cpu: {why}");
        return;
    }
    let gpu = crate::cuda::CudaPreprocessor::new(0).expect("a present GPU must initialise");
    eprintln!("cuda_matches_cpu on {}", gpu.device_name);
    for (spec, rows, cols, invert) in [
        (PreprocessSpec::default(), 512, 512, false),
        (PreprocessSpec::default(), 320, 288, true),
        (
            PreprocessSpec {
                resize: 40,
                crop: 32,
                ..Default::default()
            },
            64,
            50,
            false,
        ),
    ] {
        let batch: Vec<Vec<i32>> = (0..4).map(|k| pattern(rows, cols, k)).collect();
        let slices: Vec<Slice> = batch
            .iter()
            .map(|v| Slice {
                rows,
                cols,
                values: v,
                invert,
            })
            .collect();
        let cpu = preprocess(&slices, &spec).unwrap();
        let cuda = gpu.preprocess(&slices, &spec).unwrap();
        assert_eq!(cpu.len(), cuda.len());
        let worst = cpu.iter().zip(&cuda).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{rows}x{cols}: CUDA differs from CPU by {worst}");
    }
}
