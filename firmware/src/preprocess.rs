//! `spineagent preprocess`: the product's own decoding and preprocessing
//! applied to DICOM files, written as tensors, so training and serving can
//! never disagree on pixels. Files are grouped by series, slices ordered
//! along the slice normal (as the receiver orders them), and each series
//! becomes one float32 `.npy` of shape [slices, 3, crop, crop].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use spineagent_engine::decode::decode_file;
use spineagent_engine::npy::{ArrayF32, write_f32};
use spineagent_kernels::{PreprocessSpec, cpu::preprocess};

use crate::assemble::geometry::{Placed, build_stacks};
use crate::spool::read_header;

#[derive(Debug, Serialize)]
pub struct SeriesTensor {
    pub series_instance_uid: String,
    pub series_description: String,
    pub tensor: String,
    pub shape: Vec<usize>,
    /// Source file of each slice, in tensor order.
    pub files: Vec<PathBuf>,
}

/// Preprocesses every series among `files` into `out`; returns the index
/// (also written as `out/index.json`).
pub fn run(files: &[PathBuf], out: &Path, spec: &PreprocessSpec) -> anyhow::Result<Vec<SeriesTensor>> {
    std::fs::create_dir_all(out)?;
    let mut series: BTreeMap<String, (String, Vec<Placed>)> = BTreeMap::new();
    for f in files {
        let Ok(h) = read_header(f) else { continue };
        let Some(orientation) = h.orientation else { continue };
        let entry = series
            .entry(h.series_instance_uid.clone())
            .or_insert_with(|| (h.series_description.clone(), Vec::new()));
        for (i, p) in h.positions.iter().enumerate() {
            entry.1.push(Placed {
                sop_instance_uid: h.sop_instance_uid.clone(),
                file: f.display().to_string(),
                frame: i as u32 + 1,
                instance_number: h.instance_number,
                orientation,
                position: *p,
            });
        }
    }
    let mut index = Vec::new();
    for (uid, (description, placed)) in series {
        // One tensor per stack of parallel slices (multi-block axials give several).
        for (k, stack) in build_stacks(placed, 35.0).into_iter().enumerate() {
            let mut decoded = Vec::new();
            let mut sources = Vec::new();
            // A multi-frame file holds many slices: decode each file once.
            let mut files_decoded: BTreeMap<&str, Vec<spineagent_engine::decode::DecodedSlice>> = BTreeMap::new();
            for s in &stack.slices {
                if !files_decoded.contains_key(s.file.as_str()) {
                    files_decoded.insert(&s.file, decode_file(Path::new(&s.file))?);
                }
                let frame = files_decoded[s.file.as_str()]
                    .get(s.frame as usize - 1)
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("{}: frame {} missing", s.file, s.frame))?;
                decoded.push(frame);
                sources.push(PathBuf::from(&s.file));
            }
            let views: Vec<_> = decoded.iter().map(|d| d.as_slice()).collect();
            let data = preprocess(&views, spec)?;
            let shape = vec![views.len(), 3, spec.crop, spec.crop];
            let name = format!("{uid}_{k}.npy");
            write_f32(
                &out.join(&name),
                &ArrayF32 {
                    shape: shape.clone(),
                    data,
                },
            )?;
            index.push(SeriesTensor {
                series_instance_uid: uid.clone(),
                series_description: description.clone(),
                tensor: name,
                shape,
                files: sources,
            });
        }
    }
    std::fs::write(out.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
    Ok(index)
}
