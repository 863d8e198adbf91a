//! Where each finding is: the slice whose lesion segmentation shows the
//! finding's lesion class most, and the centroid of those cells mapped back
//! through the preprocessing geometry (pad to square, resize, centre crop)
//! to the source image's pixel coordinates.

use spineagent_kernels::PreprocessSpec;

use crate::analysis::{Finding, SeriesAnalysis, SliceMasks};

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

/// The cells of a slice at `level` ("L4" or "L4-L5"): those labelled with
/// one of its vertebrae, widened by two cells so a disc between two
/// labelled vertebrae (and a lesion just outside a label) is inside.
fn level_region(m: &SliceMasks, parts: &[u8]) -> Vec<bool> {
    let side = m.side;
    let mut region = vec![false; m.level.len()];
    for (i, c) in m.level.iter().enumerate() {
        if !parts.contains(c) {
            continue;
        }
        let (r, col) = ((i / side) as i64, (i % side) as i64);
        for dr in -2..=2i64 {
            for dc in -2..=2i64 {
                let (rr, cc) = (r + dr, col + dc);
                if rr >= 0 && cc >= 0 && (rr as usize) < side && (cc as usize) < side {
                    region[rr as usize * side + cc as usize] = true;
                }
            }
        }
    }
    region
}

fn centroid(cells: impl Iterator<Item = usize>, side: usize) -> Option<(f32, f32)> {
    let (mut sy, mut sx, mut n) = (0f32, 0f32, 0f32);
    for i in cells {
        sy += (i / side) as f32;
        sx += (i % side) as f32;
        n += 1.0;
    }
    (n > 0.0).then(|| (sy / n, sx / n))
}

/// Where a finding is shown best:
/// 1. the slice with most cells of the finding's lesion class at the
///    finding's level (anywhere, when the bundle segments no levels), at
///    their centroid;
/// 2. else, at the centroid of the level on a sagittal series (T2 first,
///    then T1, then any), on its key slice when the level is seen there.
pub fn locate(
    finding: &Finding,
    series: &[SeriesAnalysis],
    lesion_labels: &[String],
    level_labels: &[String],
    spec: &PreprocessSpec,
) -> Option<Located> {
    let class = lesion_labels
        .iter()
        .position(|l| Some(l.as_str()) == lesion_class(&finding.condition))
        .map(|c| c as u8);
    let parts: Vec<u8> = finding
        .level
        .split('-')
        .filter_map(|v| level_labels.iter().position(|l| l == v).filter(|&i| i > 0))
        .map(|i| i as u8)
        .collect();
    let at = |si: usize, k: usize, cell: (f32, f32)| {
        let s = &series[si];
        Located {
            series: si,
            slice: k,
            point: cell_to_pixel(cell, s.masks[k].side, s.rows, s.cols, spec),
        }
    };
    if let Some(class) = class {
        let mut best: Option<(usize, usize, usize)> = None; // (count, series, slice)
        let mut best_cells = Vec::new();
        for (si, s) in series.iter().enumerate() {
            for (k, m) in s.masks.iter().enumerate() {
                let region = (!m.level.is_empty() && !parts.is_empty()).then(|| level_region(m, &parts));
                let cells: Vec<usize> = (0..m.lesion.len())
                    .filter(|&i| m.lesion[i] == class && region.as_ref().is_none_or(|r| r[i]))
                    .collect();
                if !cells.is_empty() && best.is_none_or(|b| cells.len() > b.0) {
                    best = Some((cells.len(), si, k));
                    best_cells = cells;
                }
            }
        }
        if let Some((_, si, k)) = best {
            let side = series[si].masks[k].side;
            return centroid(best_cells.into_iter(), side).map(|c| at(si, k, c));
        }
    }
    if parts.is_empty() {
        return None;
    }
    let rank = |s: &SeriesAnalysis| match s.family.as_str() {
        "t2" => 0,
        "t1" => 1,
        _ => 2,
    };
    let mut sagittal: Vec<usize> = (0..series.len()).filter(|&i| series[i].plane == "sagittal").collect();
    sagittal.sort_by_key(|&i| rank(&series[i]));
    for si in sagittal {
        let s = &series[si];
        let count = |m: &SliceMasks| m.level.iter().filter(|c| parts.contains(c)).count();
        let key = s.key_slice.0;
        let k = if s.masks.get(key).is_some_and(|m| count(m) > 0) {
            key
        } else {
            match (0..s.masks.len()).max_by_key(|&k| count(&s.masks[k])) {
                Some(k) if count(&s.masks[k]) > 0 => k,
                _ => continue,
            }
        };
        let m = &s.masks[k];
        if let Some(c) = centroid((0..m.level.len()).filter(|&i| parts.contains(&m.level[i])), m.side) {
            return Some(at(si, k, c));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(family: &str, plane: &str, masks: Vec<SliceMasks>) -> SeriesAnalysis {
        SeriesAnalysis {
            series_instance_uid: "1".into(),
            description: family.into(),
            family: family.into(),
            plane: plane.into(),
            path: "encoder_t2".into(),
            recognized_family: (family.into(), 1.0),
            recognized_plane: (plane.into(), 1.0),
            recognized_region: ("lumbar".into(), 1.0),
            tags_disagree: false,
            attention: vec![0.5, 0.5],
            key_slice: (1, "k".into()),
            rows: 128,
            cols: 128,
            sop_instance_uids: vec!["a".into(), "b".into()],
            embedding: vec![],
            masks,
        }
    }

    /// 8 x 8 cells; rows 0-3 labelled L4 (22), rows 4-7 L5 (23).
    fn mask(lesion_at: &[(usize, u8)]) -> SliceMasks {
        let mut lesion = vec![0u8; 64];
        for &(i, c) in lesion_at {
            lesion[i] = c;
        }
        SliceMasks {
            side: 8,
            anatomy: vec![0; 64],
            lesion,
            level: (0..64).map(|i| if i / 8 < 4 { 22 } else { 23 }).collect(),
        }
    }

    fn finding(condition: &str, level: &str) -> Finding {
        Finding {
            condition: condition.into(),
            level: level.into(),
            probability: 0.9,
            side: "left".into(),
            side_probability: 0.9,
            severity: "severe".into(),
            severity_probability: 0.9,
        }
    }

    #[test]
    fn findings_are_located_at_their_own_level() {
        let spec = PreprocessSpec {
            resize: 144,
            crop: 128,
            ..Default::default()
        };
        let lesion: Vec<String> = ["none", "hemangioma"].iter().map(|s| s.to_string()).collect();
        let mut levels: Vec<String> = (0..22).map(|i| format!("X{i}")).collect();
        levels[0] = "outside".into();
        levels.extend(["L4".to_string(), "L5".to_string()]);
        // Slice 0 shows a big hemangioma in L5, slice 1 a small one in L4.
        let s = series(
            "t2",
            "sagittal",
            vec![mask(&[(48, 1), (49, 1), (56, 1), (57, 1)]), mask(&[(10, 1)])],
        );
        let l4 = locate(
            &finding("hemangioma", "L4"),
            std::slice::from_ref(&s),
            &lesion,
            &levels,
            &spec,
        )
        .unwrap();
        assert_eq!(l4.slice, 1, "the L4 lesion, not the bigger one at L5");
        let l5 = locate(
            &finding("hemangioma", "L5"),
            std::slice::from_ref(&s),
            &lesion,
            &levels,
            &spec,
        )
        .unwrap();
        assert_eq!(l5.slice, 0);
        // No lesion cells for a herniation at L4-L5: the level's centroid on
        // the sagittal key slice (slice 1), i.e. the middle of the grid.
        let disc = locate(&finding("herniation", "L4-L5"), &[s], &lesion, &levels, &spec).unwrap();
        assert_eq!(disc.slice, 1);
        let centre = cell_to_pixel((3.5, 3.5), 8, 128, 128, &spec);
        assert!((disc.point.0 - centre.0).abs() < 1e-3 && (disc.point.1 - centre.1).abs() < 1e-3);
    }

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
