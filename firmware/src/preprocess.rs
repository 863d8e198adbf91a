//! The product's own decoding and preprocessing of DICOM files into
//! per-stack tensors: used by `spineagent preprocess` (written as `.npy`
//! for training, so training and serving can never disagree on pixels) and
//! by `spineagent analyze`. Files are grouped by series, slices ordered along
//! the slice normal (as the receiver orders them), and each stack becomes one
//! float32 tensor of shape [slices, 3, crop, crop].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use spineagent_engine::decode::{DecodedSlice, decode_file};
use spineagent_engine::npy::{ArrayF32, write_f32};
use spineagent_kernels::{PreprocessSpec, cpu::preprocess};

use crate::assemble::classify::Rules;
use crate::assemble::geometry::{Placed, Plane, build_stacks};
use crate::spool::read_header;

#[derive(Debug, Serialize)]
pub struct SeriesTensor {
    pub series_instance_uid: String,
    pub series_description: String,
    pub tensor: String,
    pub shape: Vec<usize>,
    /// Source file of each slice, in tensor order.
    pub files: Vec<PathBuf>,
    /// InstanceNumber (null where absent) and 1-based frame of each slice,
    /// in tensor order: what joins a slice to per-instance labels.
    pub instance_numbers: Vec<Option<i32>>,
    pub frames: Vec<u32>,
}

/// One preprocessed stack of a series, in memory.
pub struct Stack {
    pub series_instance_uid: String,
    pub series_description: String,
    /// Family from the series rules (t1, t2, stir, ...).
    pub family: String,
    /// What the tags say about the body region (`Region::as_str`).
    pub region: String,
    pub plane: Plane,
    pub tensor: ArrayF32,
    pub files: Vec<PathBuf>,
    pub sop_instance_uids: Vec<String>,
    pub instance_numbers: Vec<Option<i32>>,
    pub frames: Vec<u32>,
    pub sop_class_uids: Vec<String>,
    /// Rows and columns of the stack's images.
    pub rows: usize,
    pub cols: usize,
    /// Geometry for derived objects (SEG): orientation, per-slice position,
    /// pixel spacing and slice thickness from the headers.
    pub orientation: [f64; 6],
    pub positions: Vec<[f64; 3]>,
    pub pixel_spacing: Option<[f64; 2]>,
    pub slice_thickness: Option<f64>,
}

/// Decodes and preprocesses every series among `files`; files that are not
/// images with geometry are passed over.
pub fn stacks(files: &[PathBuf], spec: &PreprocessSpec, rules: &Rules) -> anyhow::Result<Vec<Stack>> {
    stacks_except(files, spec, rules, &|_, _| false)
}

/// As [`stacks`], but a stack whose every slice `(SOP Instance UID, frame)`
/// satisfies `encoded` is not decoded: its tensor keeps its shape and holds
/// no data (the slices were encoded as they arrived).
pub fn stacks_except(
    files: &[PathBuf],
    spec: &PreprocessSpec,
    rules: &Rules,
    encoded: &dyn Fn(&str, u32) -> bool,
) -> anyhow::Result<Vec<Stack>> {
    let mut matrix: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut series: BTreeMap<String, (String, String, Vec<Placed>)> = BTreeMap::new();
    let mut regions: BTreeMap<String, String> = BTreeMap::new();
    let mut sop_classes: BTreeMap<String, String> = BTreeMap::new();
    let mut spacing: BTreeMap<String, (Option<[f64; 2]>, Option<f64>)> = BTreeMap::new();
    for f in files {
        let Ok(h) = read_header(f) else { continue };
        let Some(orientation) = h.orientation else { continue };
        let family = rules.family(&h).as_str().to_string();
        matrix.insert(h.sop_instance_uid.clone(), (h.rows as usize, h.columns as usize));
        regions
            .entry(h.series_instance_uid.clone())
            .or_insert_with(|| rules.region(&h).as_str().to_string());
        sop_classes.insert(h.sop_instance_uid.clone(), h.sop_class_uid.clone());
        spacing
            .entry(h.series_instance_uid.clone())
            .or_insert((h.pixel_spacing, h.slice_thickness_mm));
        let entry = series
            .entry(h.series_instance_uid.clone())
            .or_insert_with(|| (h.series_description.clone(), family, Vec::new()));
        for (i, p) in h.positions.iter().enumerate() {
            entry.2.push(Placed {
                sop_instance_uid: h.sop_instance_uid.clone(),
                file: f.display().to_string(),
                frame: i as u32 + 1,
                instance_number: h.instance_number,
                orientation,
                position: *p,
            });
        }
    }
    let mut out = Vec::new();
    for (uid, (description, family, placed)) in series {
        // One tensor per stack of parallel slices (multi-block axials give several).
        for stack in build_stacks(placed, 35.0) {
            let mut decoded: Vec<DecodedSlice> = Vec::new();
            let skip = stack.slices.iter().all(|s| encoded(&s.sop_instance_uid, s.frame));
            // A multi-frame file holds many slices: decode each file once.
            let mut files_decoded: BTreeMap<&str, Vec<DecodedSlice>> = BTreeMap::new();
            for s in stack.slices.iter().filter(|_| !skip) {
                if !files_decoded.contains_key(s.file.as_str()) {
                    files_decoded.insert(&s.file, decode_file(Path::new(&s.file))?);
                }
                let frame = files_decoded[s.file.as_str()]
                    .get(s.frame as usize - 1)
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("{}: frame {} missing", s.file, s.frame))?;
                decoded.push(frame);
            }
            let views: Vec<_> = decoded.iter().map(|d| d.as_slice()).collect();
            let data = if skip { Vec::new() } else { preprocess(&views, spec)? };
            let (rows, cols) = match decoded.first() {
                Some(d) => (d.rows, d.cols),
                None => stack
                    .slices
                    .first()
                    .and_then(|s| matrix.get(&s.sop_instance_uid).copied())
                    .unwrap_or((0, 0)),
            };
            let (pixel_spacing, slice_thickness) = spacing.get(&uid).copied().unwrap_or((None, None));
            out.push(Stack {
                rows,
                cols,
                orientation: stack.orientation,
                positions: stack.slices.iter().map(|s| s.position).collect(),
                pixel_spacing,
                slice_thickness,
                sop_class_uids: stack
                    .slices
                    .iter()
                    .map(|s| sop_classes.get(&s.sop_instance_uid).cloned().unwrap_or_default())
                    .collect(),
                series_instance_uid: uid.clone(),
                series_description: description.clone(),
                family: family.clone(),
                region: regions.get(&uid).cloned().unwrap_or_default(),
                plane: stack.plane,
                tensor: ArrayF32 {
                    shape: vec![stack.slices.len(), 3, spec.crop, spec.crop],
                    data,
                },
                files: stack.slices.iter().map(|s| PathBuf::from(&s.file)).collect(),
                sop_instance_uids: stack.slices.iter().map(|s| s.sop_instance_uid.clone()).collect(),
                instance_numbers: stack.slices.iter().map(|s| s.instance_number).collect(),
                frames: stack.slices.iter().map(|s| s.frame).collect(),
            });
        }
    }
    Ok(out)
}

/// Preprocesses every series among `files` into `out` (one `.npy` per
/// stack); returns the index (also written as `out/index.json`).
pub fn run(files: &[PathBuf], out: &Path, spec: &PreprocessSpec) -> anyhow::Result<Vec<SeriesTensor>> {
    std::fs::create_dir_all(out)?;
    let mut index = Vec::new();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for stack in stacks(files, spec, &Rules::builtin())? {
        let k = count.entry(stack.series_instance_uid.clone()).or_default();
        let name = format!("{}_{k}.npy", stack.series_instance_uid);
        *k += 1;
        write_f32(&out.join(&name), &stack.tensor)?;
        index.push(SeriesTensor {
            series_instance_uid: stack.series_instance_uid,
            series_description: stack.series_description,
            tensor: name,
            shape: stack.tensor.shape,
            files: stack.files,
            instance_numbers: stack.instance_numbers,
            frames: stack.frames,
        });
    }
    std::fs::write(out.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
    Ok(index)
}
