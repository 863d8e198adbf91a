//! The vertebral level of an axial slice, read where its plane crosses the
//! sagittal stacks, as a radiologist reads it from cross-reference lines.
//!
//! An axial slice alone hardly shows which lumbar level it is at (bundle
//! 0.6.0's slice agents label 25 to 72 % of an axial block's spine pixels
//! with the right level, against 94 % on a sagittal T2), while a sagittal
//! slice shows the whole column. So the level of each axial slice is taken
//! from the sagittal level masks at the pixels its plane passes through, in
//! patient coordinates. `training/spinefm/crossref.py` is the same
//! computation for training; the two must agree.

use super::SliceMasks;

/// Where a stack's slices are in the patient (DICOM patient coordinates, mm).
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// ImageOrientationPatient: the row direction (increasing column index),
    /// then the column direction (increasing row index).
    pub orientation: [f64; 6],
    /// ImagePositionPatient of each slice (centre of its first pixel), in
    /// stack order.
    pub positions: Vec<[f64; 3]>,
    /// PixelSpacing: between rows, then between columns (mm).
    pub pixel_spacing: [f64; 2],
    /// The source images' matrix.
    pub rows: usize,
    pub cols: usize,
}

/// The product's preprocessing geometry: pad to a square, resize to
/// `resize`, crop `crop` at the centre (kernels/src/spec.rs).
#[derive(Debug, Clone, Copy)]
pub struct CropGeometry {
    pub resize: usize,
    pub crop: usize,
}

/// Sagittal pixels within this distance of an axial slice's plane are the
/// ones it crosses (about one preprocessed pixel of a lumbar sagittal).
pub const CROSS_MM: f64 = 2.0;

/// Mask pixels sampled along each side (every other pixel of a 128 mask).
const STRIDE: usize = 2;

impl Placement {
    fn row_dir(&self) -> [f64; 3] {
        [self.orientation[0], self.orientation[1], self.orientation[2]]
    }

    fn col_dir(&self) -> [f64; 3] {
        [self.orientation[3], self.orientation[4], self.orientation[5]]
    }

    /// Unit normal (row x column), or None for degenerate cosines.
    fn normal(&self) -> Option<[f64; 3]> {
        let (a, b) = (self.row_dir(), self.col_dir());
        let n = [
            a[1] * b[2] - a[2] * b[1],
            a[2] * b[0] - a[0] * b[2],
            a[0] * b[1] - a[1] * b[0],
        ];
        let len = dot(n, n).sqrt();
        (len > 0.5 && len.is_finite()).then(|| [n[0] / len, n[1] / len, n[2] / len])
    }

    /// Patient position of the centre of pixel (i, j) of a `side` x `side`
    /// mask over the preprocessed crop of slice `s`: back through the crop,
    /// the resize (output centre u = (k + 0.5) * square / resize) and the
    /// padding to the source pixel grid.
    pub fn point(&self, s: usize, i: usize, j: usize, side: usize, g: CropGeometry) -> [f64; 3] {
        let square = self.rows.max(self.cols) as f64;
        let (off_r, off_c) = (
            ((self.rows.max(self.cols) - self.rows) / 2) as f64,
            ((self.rows.max(self.cols) - self.cols) / 2) as f64,
        );
        let c0 = ((g.resize - g.crop) / 2) as f64;
        let source = |k: usize, off: f64| {
            let in_crop = (k as f64 + 0.5) * g.crop as f64 / side as f64; // crop pixels, continuous
            (in_crop + c0) * square / g.resize as f64 - off - 0.5 // source pixel-centre index
        };
        let (r, c) = (source(i, off_r), source(j, off_c));
        let (p, rd, cd) = (self.positions[s], self.row_dir(), self.col_dir());
        let (dr, dc) = (self.pixel_spacing[0], self.pixel_spacing[1]);
        [
            p[0] + rd[0] * c * dc + cd[0] * r * dr,
            p[1] + rd[1] * c * dc + cd[1] * r * dr,
            p[2] + rd[2] * c * dc + cd[2] * r * dr,
        ]
    }
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Per slice of `axial`, the share of each level (`levels` classes, index
/// 0 = outside kept at 0) among the labelled spine pixels of the sagittal
/// masks within [`CROSS_MM`] of its plane; None where it crosses none.
pub fn axial_levels(
    axial: &Placement,
    sagittal: &[(&Placement, &[SliceMasks])],
    g: CropGeometry,
    levels: usize,
) -> Vec<Option<Vec<f32>>> {
    let Some(n) = axial.normal() else {
        return vec![None; axial.positions.len()];
    };
    // Every sampled labelled sagittal pixel once: (position along the axial
    // normal, level).
    let mut labelled: Vec<(f64, u8)> = Vec::new();
    for (placement, masks) in sagittal {
        for (s, m) in masks.iter().enumerate().take(placement.positions.len()) {
            if m.level.len() != m.side * m.side {
                continue;
            }
            for i in (0..m.side).step_by(STRIDE) {
                for j in (0..m.side).step_by(STRIDE) {
                    let v = m.level[i * m.side + j];
                    if v > 0 && (v as usize) < levels {
                        labelled.push((dot(placement.point(s, i, j, m.side, g), n), v));
                    }
                }
            }
        }
    }
    axial
        .positions
        .iter()
        .map(|p| {
            let at = dot(*p, n);
            let mut counts = vec![0f32; levels];
            for (d, v) in &labelled {
                if (d - at).abs() <= CROSS_MM {
                    counts[*v as usize] += 1.0;
                }
            }
            let total: f32 = counts.iter().sum();
            (total > 0.0).then(|| counts.into_iter().map(|c| c / total).collect())
        })
        .collect()
}

/// A slice's level probabilities [levels, k] (row-major, one slice) with
/// the spine's mass (1 - P(outside)) of each column spread over the levels
/// as `shares` says: the slice agents still say where the spine is, the
/// cross-reference which level it is.
pub fn relabel(probabilities: &mut [f32], levels: usize, shares: &[f32]) {
    let k = probabilities.len() / levels.max(1);
    for col in 0..k {
        let spine = 1.0 - probabilities[col];
        for (v, share) in shares.iter().enumerate().take(levels).skip(1) {
            probabilities[v * k + col] = spine * share;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: CropGeometry = CropGeometry { resize: 144, crop: 128 };

    /// A sagittal stack of one slice through x = 0: rows run head to foot
    /// (z falls), columns front to back (y rises), 0.5 mm pixels, 288 x
    /// 288, so the crop covers the middle 256 x 256 source pixels.
    fn sagittal() -> Placement {
        Placement {
            orientation: [0.0, 1.0, 0.0, 0.0, 0.0, -1.0],
            positions: vec![[0.0, -72.0, 72.0]],
            pixel_spacing: [0.5, 0.5],
            rows: 288,
            cols: 288,
        }
    }

    fn axial_at(zs: &[f64]) -> Placement {
        Placement {
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            positions: zs.iter().map(|z| [-100.0, -100.0, *z]).collect(),
            pixel_spacing: [1.0, 1.0],
            rows: 200,
            cols: 200,
        }
    }

    /// Level 1 in the upper half of the mask, 2 in the lower half.
    fn masks(side: usize) -> Vec<SliceMasks> {
        vec![SliceMasks {
            side,
            anatomy: vec![0; side * side],
            lesion: vec![0; side * side],
            level: (0..side * side)
                .map(|p| if p / side < side / 2 { 1 } else { 2 })
                .collect(),
        }]
    }

    #[test]
    fn a_mask_pixel_maps_back_through_crop_resize_and_padding() {
        let s = sagittal();
        // Crop pixel 0 of 128 = resized pixel 8 of 144: source centre
        // (8.5 * 288 / 144) - 0.5 = 16.5, i.e. 8.25 mm from the first pixel.
        let p = s.point(0, 0, 0, 128, G);
        assert!((p[1] - (-72.0 + 8.25)).abs() < 1e-9, "{p:?}");
        assert!((p[2] - (72.0 - 8.25)).abs() < 1e-9, "{p:?}");
        // Crop pixel 64: source centre (72.5 * 2) - 0.5 = 144.5.
        let q = s.point(0, 64, 64, 128, G);
        assert!((q[2] - (72.0 - 144.5 * 0.5)).abs() < 1e-9, "{q:?}");
    }

    #[test]
    fn an_axial_slice_takes_the_level_of_the_sagittal_pixels_it_crosses() {
        let sag = sagittal();
        let m = masks(128);
        // Upper half of the crop: z above about 0; lower half below.
        let levels = axial_levels(&axial_at(&[40.0, -40.0, 500.0]), &[(&sag, &m)], G, 4);
        assert_eq!(levels[0].as_deref(), Some(&[0.0, 1.0, 0.0, 0.0][..]));
        assert_eq!(levels[1].as_deref(), Some(&[0.0, 0.0, 1.0, 0.0][..]));
        assert_eq!(levels[2], None, "a plane outside the sagittal field of view");
    }

    #[test]
    fn a_plane_on_the_boundary_shares_both_levels() {
        let sag = sagittal();
        let m = masks(128);
        // The boundary between mask rows 63 and 64 lies at the crop's centre.
        let z = (sag.point(0, 63, 0, 128, G)[2] + sag.point(0, 64, 0, 128, G)[2]) / 2.0;
        let shares = axial_levels(&axial_at(&[z]), &[(&sag, &m)], G, 3)[0].clone().unwrap();
        assert!(shares[1] > 0.2 && shares[2] > 0.2, "{shares:?}");
        assert!((shares.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn relabelling_keeps_outside_and_spreads_the_spine() {
        // 3 levels x 2 columns: column 0 mostly outside, column 1 spine.
        let mut p = vec![0.9, 0.2, 0.05, 0.7, 0.05, 0.1];
        relabel(&mut p, 3, &[0.0, 0.25, 0.75]);
        let expect = [0.9, 0.2, 0.025, 0.2, 0.075, 0.6];
        for (a, b) in p.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{p:?}");
        }
    }
}
