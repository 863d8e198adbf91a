//! `spineagent analyze`: the whole model bundle on the DICOM files of one
//! study, without the daemon (files are read from disk, as the spool holds
//! them). The daemon's pipeline runs the same stages as instances arrive.

use std::path::{Path, PathBuf};

use spineagent_engine::SessionOptions;
use spineagent_engine::analysis::{SeriesInput, SpineModels, StudyAnalysis};

use crate::assemble::classify::Rules;
use crate::assemble::geometry::Plane;

/// Where `analyze` looks for the bundle when none is named: the committed
/// default bundle, relative to the working directory, then next to the binary.
pub fn default_bundle() -> PathBuf {
    let local = PathBuf::from("models/spinefm-tiny");
    if local.join("bundle.toml").exists() {
        return local;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .map(|a| a.join("models/spinefm-tiny"))
                .find(|p| p.join("bundle.toml").exists())
        })
        .unwrap_or(local)
}

pub fn analyze_files(
    files: &[PathBuf],
    bundle: &Path,
    options: &SessionOptions,
    threshold: f32,
) -> anyhow::Result<StudyAnalysis> {
    let models = SpineModels::load(bundle, options)?;
    let stacks = crate::preprocess::stacks(files, &models.bundle.manifest.preprocess, &Rules::builtin())?;
    let inputs = stacks
        .into_iter()
        .filter(|s| matches!(s.plane, Plane::Sagittal | Plane::Axial))
        .map(|s| SeriesInput {
            series_instance_uid: s.series_instance_uid,
            description: s.series_description,
            family: s.family,
            plane: s.plane.as_str().to_string(),
            pixels: s.tensor,
            sop_instance_uids: s.sop_instance_uids,
        })
        .collect();
    Ok(models.analyze(inputs, threshold)?)
}

/// A person's summary of an analysis.
pub fn summary(a: &StudyAnalysis) -> String {
    let mut out = format!("bundle {} (SYNTHETIC: trained on phantom studies)\n", a.bundle);
    for s in &a.series {
        out += &format!(
            "series {} {} {} via {}: looks like {} {} ({}), key slice {}{}\n",
            s.description,
            s.family,
            s.plane,
            s.path,
            s.recognized_family.0,
            s.recognized_plane.0,
            s.recognized_region.0,
            s.key_slice.0,
            if s.tags_disagree {
                "  TAGS DISAGREE WITH PIXELS"
            } else {
                ""
            }
        );
    }
    if a.findings.is_empty() {
        out += "no finding above the threshold\n";
    }
    for f in &a.findings {
        out += &format!(
            "{:<8} {:<22} {:<16} {:<9} p={:.2}\n",
            f.level, f.condition, f.side, f.severity, f.probability
        );
    }
    out += &a.structured_tokens;
    out.push('\n');
    out
}
