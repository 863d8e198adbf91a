//! `spineagent analyze`: the whole model bundle on the DICOM files of one
//! study, without the daemon (files are read from disk, as the spool holds
//! them), and the report outputs: analysis JSON, report text, DICOM SR.

use std::path::{Path, PathBuf};

use anyhow::Context;
use spineagent_engine::SessionOptions;
use spineagent_engine::analysis::{Placement, SeriesInput, SpineModels, StudyAnalysis};
use spineagent_engine::report::agent::ReportAgent;
use spineagent_engine::report::codes::Codes;
use spineagent_engine::report::key_images::locate;
use spineagent_engine::report::seg::{SegInput, SegSlice, build_seg};
use spineagent_engine::report::sr::{KeyImage, SourceImage, SrFinding, SrInput, build_sr};
use spineagent_engine::report::{Report, Triage, bundle_device_uid, compose, new_uid, uid_from};

use crate::assemble::classify::{Family, Region, Rules};
use crate::assemble::geometry::Plane;
use crate::stream::EncodeCache;

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

/// The report agent's LoRA adapter and its scale: the one named (config or
/// command line), else the one the bundle ships (trained together with its
/// visual projector; alpha / rank already folded into the weights).
pub fn chosen_adapter(
    named: Option<PathBuf>,
    scale: f64,
    bundle: &spineagent_engine::bundle::Bundle,
) -> Option<(PathBuf, f64)> {
    named
        .map(|a| (a, scale))
        .or_else(|| bundle.file("report_adapter").map(|a| (a, 1.0)))
}

/// Loads the report agent's language model (and warms it up with a short
/// generation and, for grounded decoding, the tokens' texts, so the first
/// report does not pay for them).
pub fn report_agent(
    path: &Path,
    adapter: Option<(PathBuf, f64)>,
    budget_seconds: f64,
    max_new_tokens: usize,
    guided: bool,
    repeat_penalty: f32,
) -> anyhow::Result<ReportAgent> {
    let started = std::time::Instant::now();
    let loras = match adapter {
        Some((file, scale)) => spineagent_engine::lm::load_loras(&file, scale)
            .with_context(|| format!("loading the adapter {}", file.display()))?,
        None => Default::default(),
    };
    let mut lm = spineagent_engine::lm::ReportLm::load(path, &loras)
        .with_context(|| format!("loading the report language model {}", path.display()))?;
    lm.repeat_penalty = repeat_penalty;
    if guided {
        lm.prepare_guides();
    }
    let warm = lm.generate(
        &[spineagent_engine::lm::PromptPart::Text(
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n".into(),
        )],
        4,
        None,
        None,
        |_| {},
    )?;
    tracing::info!(
        model = %lm.name,
        seconds = started.elapsed().as_secs_f64(),
        tokens_per_second = warm.tokens_per_second(),
        "report language model loaded"
    );
    Ok(ReportAgent {
        lm,
        budget: std::time::Duration::from_secs_f64(budget_seconds),
        max_new_tokens,
        attempts: 2,
        guided,
    })
}

/// Where a stack's slices are (for the SEG).
#[derive(Debug, Clone)]
pub struct StackGeometry {
    pub orientation: [f64; 6],
    pub positions: Vec<[f64; 3]>,
    pub pixel_spacing: Option<[f64; 2]>,
    pub slice_thickness: Option<f64>,
    pub first_file: PathBuf,
    /// Each slice's file and frame (key-image PNGs decode them again).
    pub slices: Vec<(PathBuf, u32)>,
}

/// An analyzed study and what the report outputs need besides the analysis.
pub struct Analyzed {
    pub analysis: StudyAnalysis,
    /// Every source image of the analyzed stacks, in analysis series order.
    pub images: Vec<Vec<SourceImage>>,
    /// Geometry of each analyzed stack, in analysis series order.
    pub geometry: Vec<StackGeometry>,
    /// Series not analyzed: (description, reason).
    pub skipped: Vec<(String, String)>,
    /// A source file (patient and study modules are copied from it).
    pub source_file: PathBuf,
}

/// Loads the bundle and analyzes `files` (the CLI's one-shot path).
pub fn load_and_analyze(
    files: &[PathBuf],
    bundle: &Path,
    options: &SessionOptions,
    threshold: Option<f32>,
    accept_unknown_region: bool,
) -> anyhow::Result<(SpineModels, Analyzed)> {
    let models = SpineModels::load(bundle, options)?;
    let analyzed = analyze_files(&models, files, threshold, accept_unknown_region, None)?;
    Ok((models, analyzed))
}

/// Analyzes the spine series among `files`. Series the tags place outside
/// the spine are skipped (named in the report), as in the daemon's
/// assembly; series with no region in their tags only with
/// `accept_unknown_region`.
pub fn analyze_files(
    models: &SpineModels,
    files: &[PathBuf],
    threshold: Option<f32>,
    accept_unknown_region: bool,
    encoded: Option<(&EncodeCache, &str)>,
) -> anyhow::Result<Analyzed> {
    let started = std::time::Instant::now();
    let rules = Rules::builtin();
    let is_encoded = |sop: &str, frame: u32| encoded.is_some_and(|(cache, study)| cache.contains(study, sop, frame));
    let stacks = crate::preprocess::stacks_except(files, &models.bundle.manifest.preprocess, &rules, &is_encoded)?;
    let not_spine = Region::NotSpine.as_str();
    let unknown = Region::Unknown.as_str();
    let region_ok = |r: &str| r != not_spine && (accept_unknown_region || r != unknown);
    // Patient and study modules of the outputs come from an analyzed image.
    let source_file = stacks
        .iter()
        .find(|s| region_ok(&s.region) && matches!(s.plane, Plane::Sagittal | Plane::Axial))
        .or(stacks.first())
        .and_then(|s| s.files.first().cloned())
        .context("no image with geometry among the files")?;
    let mut inputs = Vec::new();
    let mut images = Vec::new();
    let mut skipped = Vec::new();
    let mut geometry = Vec::new();
    let used =
        |family: &str| !matches!(family, "localizer" | "gre" | "dwi" | "other") && family != Family::Other.as_str();
    for s in stacks {
        if !region_ok(&s.region) {
            skipped.push((s.series_description, format!("region {}", s.region)));
            continue;
        }
        if !matches!(s.plane, Plane::Sagittal | Plane::Axial) {
            skipped.push((s.series_description, format!("{} plane not used", s.plane.as_str())));
            continue;
        }
        if !used(&s.family) || !models.takes_family(&s.family) {
            skipped.push((s.series_description, format!("{} not used by the models", s.family)));
            continue;
        }
        geometry.push(StackGeometry {
            orientation: s.orientation,
            positions: s.positions.clone(),
            pixel_spacing: s.pixel_spacing,
            slice_thickness: s.slice_thickness,
            first_file: s.files.first().cloned().unwrap_or_default(),
            slices: s.files.iter().cloned().zip(s.frames.iter().copied()).collect(),
        });
        images.push(
            s.sop_instance_uids
                .iter()
                .zip(&s.sop_class_uids)
                .map(|(uid, class)| SourceImage {
                    series_instance_uid: s.series_instance_uid.clone(),
                    sop_class_uid: class.clone(),
                    sop_instance_uid: uid.clone(),
                })
                .collect(),
        );
        let keys: Vec<(String, u32)> = s
            .sop_instance_uids
            .iter()
            .cloned()
            .zip(s.frames.iter().copied())
            .collect();
        let from_stream = encoded.and_then(|(cache, study)| cache.stack(study, &keys));
        if s.tensor.data.is_empty() && from_stream.is_none() {
            // Evicted between the two looks: decode this stack after all.
            anyhow::bail!("encodings of {} vanished from the cache", s.series_description);
        }
        // Pixel spacing is what places a slice's pixels in the patient:
        // without it the stack keeps the slice agents' own levels.
        let placement = s.pixel_spacing.map(|pixel_spacing| Placement {
            orientation: s.orientation,
            positions: s.positions.clone(),
            pixel_spacing,
            rows: s.rows,
            cols: s.cols,
        });
        inputs.push(SeriesInput {
            placement,
            series_instance_uid: s.series_instance_uid,
            description: s.series_description,
            family: s.family,
            plane: s.plane.as_str().to_string(),
            pixels: s.tensor,
            sop_instance_uids: s.sop_instance_uids,
            rows: s.rows,
            cols: s.cols,
            encoded: from_stream,
        });
    }
    skipped.sort();
    skipped.dedup();
    let mut analysis = models.analyze(inputs, threshold)?;
    analysis.seconds = started.elapsed().as_secs_f64();
    Ok(Analyzed {
        analysis,
        geometry,
        images,
        skipped,
        source_file,
    })
}

/// The study's region: what most series' pixels say.
pub fn region(a: &StudyAnalysis) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for s in &a.series {
        *counts.entry(s.recognized_region.0.as_str()).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(r, _)| r.to_string())
        .unwrap_or_else(|| "lumbar".into())
}

/// Writes `analysis.json`, `triage.json`, `report.txt`, `sr.dcm`,
/// `seg.dcm` and one key-image PNG per located finding into `out`; returns
/// the composed report.
pub fn write_outputs(
    models: &SpineModels,
    a: &Analyzed,
    out: &Path,
    triage: &Triage,
    codes: &Codes,
    agent: Option<&std::sync::Mutex<ReportAgent>>,
) -> anyhow::Result<Report> {
    std::fs::create_dir_all(out)?;
    let analysis = &a.analysis;
    let composed = compose(analysis, triage, &region(analysis));
    // The language model writes the text when there is one; the verifier
    // decides whether its text or the composer's is used.
    let (report, text_source) = match agent {
        Some(agent) => {
            let mut agent = agent.lock().unwrap_or_else(|p| p.into_inner());
            let outcome = agent.write(analysis, &composed);
            let source = outcome.describe(&agent.lm.name);
            tracing::info!(text = %source, drafts = outcome.drafts.len(), "report text");
            std::fs::write(out.join("report_agent.json"), serde_json::to_vec_pretty(&outcome)?)?;
            // The composer's text too, for comparison (and the evaluation).
            std::fs::write(out.join("report_composer.txt"), composed.text())?;
            (outcome.report, source)
        }
        None => (
            composed,
            "deterministic composer (no language model configured)".to_string(),
        ),
    };
    std::fs::write(out.join("analysis.json"), serde_json::to_vec_pretty(analysis)?)?;
    std::fs::write(out.join("report.txt"), report.text())?;
    let triage_json = serde_json::json!({
        "category": report.category as u8,
        "urgency": report.category.as_str(),
    });
    std::fs::write(out.join("triage.json"), serde_json::to_vec_pretty(&triage_json)?)?;
    let source = spineagent_engine::structure::open_instance(&a.source_file).map_err(anyhow::Error::msg)?;
    let lesion = models.bundle.labels("lesion")?;
    let levels = models.bundle.labels("levels")?;
    let spec = &models.bundle.manifest.preprocess;
    // Tracking UIDs derive from the study and the finding: the same finding
    // in a re-analysis of the same study keeps its UID.
    let study_uid = source
        .element(dicom_dictionary_std::tags::STUDY_INSTANCE_UID)
        .ok()
        .and_then(|e| e.to_str().ok().map(|s| s.into_owned()))
        .unwrap_or_default();
    let findings = analysis
        .findings
        .iter()
        .map(|f| {
            let key_image = locate(f, &analysis.series, lesion, levels, spec).and_then(|l| {
                Some(KeyImage {
                    image: a.images.get(l.series)?.get(l.slice)?.clone(),
                    point: l.point,
                })
            });
            SrFinding {
                finding: f,
                tracking_uid: uid_from(format!("{study_uid}/{}/{}", f.level, f.condition).as_bytes()),
                key_image,
            }
        })
        .collect();
    let now = chrono_like_now();
    let input = SrInput {
        source: &source,
        report: &report,
        findings,
        evidence: a.images.iter().flatten().cloned().collect(),
        skipped: a.skipped.clone(),
        codes,
        algorithm_name: models.bundle.manifest.name.clone(),
        algorithm_version: models.bundle.manifest.version.clone(),
        device_uid: bundle_device_uid(&models.bundle),
        text_source,
        series_instance_uid: new_uid(),
        sop_instance_uid: new_uid(),
        series_number: 9901,
        date: now.0,
        time: now.1,
    };
    let sr = build_sr(&input)?;
    sr.write_to_file(out.join("sr.dcm")).context("writing sr.dcm")?;
    write_seg(models, a, out)?;
    write_key_pngs(models, a, out, triage);
    Ok(report)
}

/// `key_<level>_<condition>.png` for each finding with a key image. A PNG
/// that cannot be made is logged and skipped: it is a convenience, the SR
/// carries the same reference.
fn write_key_pngs(models: &SpineModels, a: &Analyzed, out: &Path, triage: &Triage) {
    use spineagent_engine::report::key_png;
    let analysis = &a.analysis;
    let (Ok(lesion), Ok(levels)) = (models.bundle.labels("lesion"), models.bundle.labels("levels")) else {
        return;
    };
    for f in &analysis.findings {
        let Some(l) = locate(f, &analysis.series, lesion, levels, &models.bundle.manifest.preprocess) else {
            continue;
        };
        let Some((file, frame)) = a.geometry.get(l.series).and_then(|g| g.slices.get(l.slice)) else {
            continue;
        };
        let name = format!("key_{}_{}.png", f.level, f.condition).replace(['/', ' '], "_");
        let made = spineagent_engine::decode::decode_file(file)
            .map_err(|e| e.to_string())
            .and_then(|frames| {
                // Frame numbers are 1-based, as in DICOM.
                let slice = frames.get((*frame as usize).wrapping_sub(1)).ok_or("frame missing")?;
                // About 12 mm on a 0.6-1 mm grid: a ring around a disc level.
                let radius = (slice.rows.min(slice.cols) as f32 / 20.0).max(4.0);
                let colour = key_png::category_colour(triage.category(f) as u8);
                let rgb = key_png::draw(slice, l.point, radius, colour);
                key_png::encode_png(&rgb, slice.rows, slice.cols).map_err(|e| e.to_string())
            })
            .and_then(|png| std::fs::write(out.join(&name), png).map_err(|e| e.to_string()));
        if let Err(e) = made {
            tracing::warn!(finding = %name, "no key-image PNG: {e}");
        }
    }
}

/// The SEG of the series that best shows the anatomy (sagittal T2, else the
/// first analyzed stack); skipped with a log line when nothing was segmented.
fn write_seg(models: &SpineModels, a: &Analyzed, out: &Path) -> anyhow::Result<()> {
    let series = &a.analysis.series;
    let Some(i) = series
        .iter()
        .position(|s| s.family == "t2" && s.plane == "sagittal")
        .or(if series.is_empty() { None } else { Some(0) })
    else {
        return Ok(());
    };
    let (s, g) = (&series[i], &a.geometry[i]);
    let source = spineagent_engine::structure::open_instance(&g.first_file).map_err(anyhow::Error::msg)?;
    let now = chrono_like_now();
    let input = SegInput {
        source: &source,
        slices: a.images[i]
            .iter()
            .zip(&g.positions)
            .map(|(image, position)| SegSlice {
                image: image.clone(),
                position: *position,
            })
            .collect(),
        masks: &s.masks,
        orientation: g.orientation,
        pixel_spacing: g.pixel_spacing.unwrap_or([1.0, 1.0]),
        slice_thickness: g.slice_thickness,
        rows: s.rows,
        cols: s.cols,
        spec: &models.bundle.manifest.preprocess,
        anatomy_labels: models.bundle.labels("anatomy")?,
        lesion_labels: models.bundle.labels("lesion")?,
        algorithm_name: models.bundle.manifest.name.clone(),
        algorithm_version: models.bundle.manifest.version.clone(),
        series_instance_uid: new_uid(),
        sop_instance_uid: new_uid(),
        dimension_organization_uid: new_uid(),
        series_number: 9902,
        date: now.0,
        time: now.1,
    };
    match build_seg(&input) {
        Ok(seg) => seg.write_to_file(out.join("seg.dcm")).context("writing seg.dcm")?,
        Err(e) => tracing::warn!("no SEG: {e}"),
    }
    Ok(())
}

/// Today's DICOM date and time (UTC) without a calendar crate.
fn chrono_like_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
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

#[cfg(test)]
mod tests {
    #[test]
    fn dicom_dates_from_the_epoch() {
        let (d, t) = super::chrono_like_now();
        assert_eq!(d.len(), 8);
        assert!(d.as_str() >= "20260101", "{d}");
        assert_eq!(t.len(), 6);
    }
}
