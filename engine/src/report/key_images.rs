//! Where each finding is: the slice whose lesion segmentation shows the
//! finding's lesion class most, and the centroid of those cells mapped back
//! through the preprocessing geometry (pad to square, resize, centre crop)
//! to the source image's pixel coordinates.

use spineagent_kernels::PreprocessSpec;

use crate::analysis::{Finding, SeriesAnalysis};

/// The lesion class (bundle `lesion` label map) that shows a condition.
pub fn lesion_class(condition: &str) -> Option<&'static str> {
    Some(match condition {
        "canal_stenosis" => "central_canal_stenosis",
        "foraminal_stenosis" => "neural_foraminal_stenosis",
        "subarticular_stenosis" => "subarticular_stenosis",
        "herniation" => "disc_herniation",
        "marrow_edema" => "marrow_edema",
        "hemangioma" => "hemangioma",
        "marrow_lesion" => "marrow_replacing_lesion",
        "compression_fracture" => "compression_fracture",
        "inflammation" => "discitis",
        "synovial_cyst" => "facet_synovial_cyst",
        "perineural_cyst" => "perineural_cyst",
        "cord_signal" => "cord_signal_abnormality",
        "pars_defect" => "pars_defect",
        "lipomatosis" => "epidural_lipomatosis",
        "disc_degeneration" | "disc_height_loss" => "degenerated_disc",
        "cord_compression" => "cord_compression",
        "spondylolisthesis" => "spondylolisthesis",
        _ => return None,
    })
}

/// A located finding: series index, slice index, (column, row) in pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub series: usize,
    pub slice: usize,
    pub point: (f32, f32),
}

/// Maps a mask cell centre (grid of `side` cells over the crop) to source
/// pixel coordinates (origin at the top left corner of the top left pixel).
pub fn cell_to_pixel(cell: (f32, f32), grid: usize, rows: usize, cols: usize, spec: &PreprocessSpec) -> (f32, f32) {
    let square = rows.max(cols) as f32;
    let (off_r, off_c) = (
        ((rows.max(cols) - rows) / 2) as f32,
        ((rows.max(cols) - cols) / 2) as f32,
    );
    let margin = ((spec.resize - spec.crop) / 2) as f32;
    let to_square = |g: f32| ((g + 0.5) * spec.crop as f32 / grid as f32 + margin) * square / spec.resize as f32;
    (to_square(cell.1) - off_c, to_square(cell.0) - off_r)
}

pub fn locate(
    finding: &Finding,
    series: &[SeriesAnalysis],
    lesion_labels: &[String],
    spec: &PreprocessSpec,
) -> Option<Located> {
    let class = lesion_labels
        .iter()
        .position(|l| Some(l.as_str()) == lesion_class(&finding.condition))? as u8;
    let mut best: Option<(usize, usize, usize)> = None; // (count, series, slice)
    for (si, s) in series.iter().enumerate() {
        for (k, m) in s.masks.iter().enumerate() {
            let count = m.lesion.iter().filter(|&&c| c == class).count();
            if count > 0 && best.is_none_or(|b| count > b.0) {
                best = Some((count, si, k));
            }
        }
    }
    let (_, si, k) = best?;
    let s = &series[si];
    let m = &s.masks[k];
    let (mut sy, mut sx, mut n) = (0f32, 0f32, 0f32);
    for (i, &c) in m.lesion.iter().enumerate() {
        if c == class {
            sy += (i / m.side) as f32;
            sx += (i % m.side) as f32;
            n += 1.0;
        }
    }
    let point = cell_to_pixel((sy / n, sx / n), m.side, s.rows, s.cols, spec);
    Some(Located {
        series: si,
        slice: k,
        point,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_centres_map_back_through_pad_resize_and_crop() {
        let spec = PreprocessSpec {
            resize: 144,
            crop: 128,
            ..Default::default()
        };
        // 320 x 320: no padding; the crop's centre is the image's centre.
        let (x, y) = cell_to_pixel((15.5, 15.5), 32, 320, 320, &spec);
        assert!((x - 160.0).abs() < 1e-3 && (y - 160.0).abs() < 1e-3, "{x} {y}");
        // 256 rows x 320 cols: 32 rows of padding above; centre stays centred.
        let (x, y) = cell_to_pixel((15.5, 15.5), 32, 256, 320, &spec);
        assert!((x - 160.0).abs() < 1e-3 && (y - 128.0).abs() < 1e-3, "{x} {y}");
        // The first cell's centre: (0.5 * 4 + 8) * 320 / 144 = 22.2 px.
        let (x, _) = cell_to_pixel((0.0, 0.0), 32, 320, 320, &spec);
        assert!((x - 22.222).abs() < 1e-2, "{x}");
    }
}
