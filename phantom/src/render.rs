//! Image formation. A stack is sampled once into materials and labels
//! (2x2 in-plane, 2 through the slice thickness, for partial volume); every
//! sequence sharing that geometry then maps materials to signal, adds the
//! coil's bias field, optional motion ghosts and Rician noise, and scales
//! to the vendor's stored values. Slices render in parallel; noise streams
//! are keyed by series and slice, so the thread count never changes a pixel.

use rayon::prelude::*;

use crate::anatomy::{Subject, add, scale};
use crate::plan::Geometry;
use crate::rng::Rng;
use crate::sequence::{Sequence, Timing, signal};
use crate::tissue::{MATERIAL_COUNT, Material};
use crate::vendor::Vendor;

const SAMPLES: usize = 8;

/// One slice sampled into materials (8 per pixel) and labels: anatomy and
/// level at the pixel centre; lesion at the centre or, where a lesion only
/// reaches into part of the pixel's volume, that lesion.
pub struct TissueSlice {
    pub materials: Vec<[u8; SAMPLES]>,
    pub anatomy: Vec<u8>,
    pub lesion: Vec<u8>,
    /// Vertebra index + 1 of the segment each pixel belongs to (0 outside the body).
    pub level: Vec<u8>,
    /// Patient y (anterior-posterior) of each pixel, for the coil profile.
    pub y: Vec<f32>,
}

/// Samples every slice of `geom`. Each pixel's centre is sampled, plus two
/// points a quarter-thickness in front and behind; a pixel whose three
/// samples and whose four in-plane neighbours' centres are one material is
/// uniform and needs nothing more (measured: most of an image), the others
/// get the full 2x2x2 supersampling for partial volume.
pub fn sample_tissue(subject: &Subject, geom: &Geometry) -> Vec<TissueSlice> {
    let slices: Vec<(usize, usize)> = geom
        .stacks
        .iter()
        .enumerate()
        .flat_map(|(s, st)| (0..st.centers.len()).map(move |i| (s, i)))
        .collect();
    slices
        .par_iter()
        .map(|&(s, i)| {
            let stack = &geom.stacks[s];
            let center = stack.centers[i];
            let normal = stack.normal();
            let (rows, cols) = (geom.rows, geom.cols);
            let n = rows * cols;
            let front = add(center, scale(normal, -0.25 * geom.thickness_mm));
            let back = add(center, scale(normal, 0.25 * geom.thickness_mm));
            let mut out = TissueSlice {
                materials: Vec::with_capacity(n),
                anatomy: Vec::with_capacity(n),
                lesion: Vec::with_capacity(n),
                level: Vec::with_capacity(n),
                y: Vec::with_capacity(n),
            };
            let mut centre_material = Vec::with_capacity(n);
            let mut slab_uniform = Vec::with_capacity(n);
            for r in 0..rows {
                for c in 0..cols {
                    let (rf, cf) = (r as f64, c as f64);
                    let p = geom.pixel(stack, center, rf, cf);
                    let (v, level) = subject.voxel_and_level(p);
                    // Material and lesion together: a lesion made of the
                    // same material as its surroundings (lipomatosis in
                    // epidural fat) still has a boundary to sample.
                    let key = |v: crate::tissue::Voxel| (v.material as u16) | (v.lesion as u16) << 8;
                    let m = key(v);
                    let same = key(subject.voxel(geom.pixel(stack, front, rf, cf))) == m
                        && key(subject.voxel(geom.pixel(stack, back, rf, cf))) == m;
                    centre_material.push(m);
                    slab_uniform.push(same);
                    out.anatomy.push(v.anatomy as u8);
                    out.lesion.push(v.lesion as u8);
                    let inside = v.anatomy != crate::tissue::Anatomy::Background;
                    out.level.push(if inside { level as u8 + 1 } else { 0 });
                    out.y.push(p[1] as f32);
                }
            }
            for r in 0..rows {
                for c in 0..cols {
                    let k = r * cols + c;
                    let m = centre_material[k];
                    let neighbours_same = [
                        (r > 0, k.wrapping_sub(cols)),
                        (r + 1 < rows, k + cols),
                        (c > 0, k.wrapping_sub(1)),
                        (c + 1 < cols, k + 1),
                    ]
                    .iter()
                    .all(|&(ok, j)| !ok || centre_material[j] == m);
                    if slab_uniform[k] && neighbours_same {
                        out.materials.push([(m & 0xff) as u8; SAMPLES]);
                        continue;
                    }
                    let mut ms = [0u8; SAMPLES];
                    let mut idx = 0;
                    for slab in [front, back] {
                        for (dr, dc) in [(-0.25, -0.25), (-0.25, 0.25), (0.25, -0.25), (0.25, 0.25)] {
                            let p = geom.pixel(stack, slab, r as f64 + dr, c as f64 + dc);
                            let v = subject.voxel(p);
                            ms[idx] = v.material as u8;
                            // A lesion that reaches into the pixel's volume
                            // labels it (its signal is part of the pixel).
                            if out.lesion[k] == 0 && v.lesion as u8 != 0 {
                                out.lesion[k] = v.lesion as u8;
                            }
                            idx += 1;
                        }
                    }
                    out.materials.push(ms);
                }
            }
            out
        })
        .collect()
}

/// What makes one series' pixels.
pub struct SeriesRender<'a> {
    pub seq: Sequence,
    pub timing: Timing,
    pub field: usize,
    pub vendor: Vendor,
    /// Posterior skin y: the surface coil sits there.
    pub coil_y: f64,
    pub ghosting: bool,
    pub noise: &'a (dyn Fn(usize) -> Rng + Sync),
}

/// Stored pixel values (before rescale) of every slice.
pub fn render_series(tissue: &[TissueSlice], geom: &Geometry, job: &SeriesRender) -> Vec<Vec<u16>> {
    let mut table = [0.0f64; MATERIAL_COUNT];
    for m in Material::ALL {
        table[m as usize] = signal(m, job.field, job.seq, &job.timing);
    }
    let brightest = table.iter().cloned().fold(1e-9, f64::max);
    for v in &mut table {
        *v /= brightest;
    }
    let (scale_v, bits, signed, slope) = job.vendor.scaling();
    let max_stored = if signed {
        ((1u32 << (bits - 1)) - 1) as f64
    } else {
        ((1u32 << bits) - 1) as f64
    };
    let sigma = job.vendor.noise();
    tissue
        .par_iter()
        .enumerate()
        .map(|(i, t)| {
            let mut rng = (job.noise)(i);
            let clean: Vec<f64> = t
                .materials
                .iter()
                .zip(&t.y)
                .map(|(m, y)| {
                    let s = m.iter().map(|&k| table[k as usize]).sum::<f64>() / SAMPLES as f64;
                    // Posterior surface coil: sensitivity falls off with depth.
                    let depth = (job.coil_y - *y as f64).max(0.0);
                    s * (0.55 + 0.65 * (-depth / 110.0).exp())
                })
                .collect();
            let ghosted: Vec<f64> = if job.ghosting {
                let shift = geom.rows / 3 * geom.cols;
                let n = clean.len();
                (0..n).map(|k| clean[k] + 0.07 * clean[(k + shift) % n]).collect()
            } else {
                clean
            };
            ghosted
                .iter()
                .map(|&s| {
                    let re = s + sigma * rng.normal();
                    let im = sigma * rng.normal();
                    let magnitude = (re * re + im * im).sqrt();
                    ((magnitude * scale_v / slope).round()).clamp(0.0, max_stored) as u16
                })
                .collect()
        })
        .collect()
}
