//! The daemon's analysis stage: each completed study is analyzed by the
//! model bundle and its report (analysis.json, report.txt, the DICOM SR)
//! is written to `spool/reports/<study>/`: first into a temporary directory,
//! then renamed, so a report directory is whole or absent. At start the
//! stage looks for completed studies without a report (the daemon was
//! stopped or killed in between) and analyzes them first.
//!
//! The analysis runs on the blocking pool (it is CPU work); one study at a
//! time, so the models' threads are not oversubscribed. Urgent findings are
//! logged as an event and counted by category. A written report is queued
//! for delivery ([`crate::deliver`]), most urgent first.
//!
//! A study that gets no report (no usable series, or the analysis failed)
//! gets a marker `spool/no-report/<study>.txt` with the reason, so it is not
//! retried at every start; deleting the marker retries it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use spineagent_engine::analysis::SpineModels;
use spineagent_engine::report::Triage;
use spineagent_engine::report::codes::Codes;
use tokio::sync::{mpsc, watch};

use crate::analyze::{analyze_files, write_outputs};
use crate::assemble::AssemblyEvent;
use crate::deliver::Delivery;
use crate::metrics::Metrics;

pub struct ReportStage {
    pub models: Arc<SpineModels>,
    pub spool: PathBuf,
    pub triage: Triage,
    pub codes: Codes,
    /// None = the bundle's per-condition thresholds.
    pub threshold: Option<f32>,
    pub metrics: Arc<Metrics>,
    /// `[assembly] accept_unknown_region`, applied again to the files.
    pub accept_unknown_region: bool,
    /// Slices encoded as they arrived (None: everything is encoded here).
    pub encoded: Option<Arc<crate::stream::EncodeCache>>,
    /// The report agent (language model + verifier); None = the composer.
    pub agent: Option<Arc<std::sync::Mutex<spineagent_engine::report::agent::ReportAgent>>>,
    /// None = no destinations: reports stay in the spool.
    pub delivery: Option<Arc<Delivery>>,
}

fn reports_dir(spool: &Path) -> PathBuf {
    spool.join("reports")
}

fn no_report_marker(spool: &Path, uid: &str) -> PathBuf {
    spool.join("no-report").join(format!("{uid}.txt"))
}

/// Records why a study got no report (best effort: without the marker the
/// study is only tried again at the next start).
fn mark_no_report(spool: &Path, uid: &str, reason: &str) {
    let path = no_report_marker(spool, uid);
    let written = std::fs::create_dir_all(path.parent().expect("marker has a parent"))
        .and_then(|_| std::fs::write(&path, format!("{reason}\n")));
    if let Err(e) = written {
        tracing::warn!(study = %uid, "cannot write the no-report marker: {e}");
    }
}

/// Clears an earlier no-report verdict: the study completed again, so
/// instances arrived after it (the assembler re-completes a study that a
/// late instance reopened). A study that first completed with a localizer
/// alone, because the rest arrived after the study idle time, must not stay
/// unreported once the rest is there.
fn clear_no_report(spool: &Path, uid: &str) -> bool {
    std::fs::remove_file(no_report_marker(spool, uid)).is_ok()
}

/// Completed studies (study.json present) that have no report yet.
fn unreported(spool: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(spool.join("studies")) else {
        return out;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let uid = e.file_name().to_string_lossy().into_owned();
        if dir.join("study.json").exists()
            && !reports_dir(spool).join(&uid).exists()
            && !no_report_marker(spool, &uid).exists()
        {
            out.push((uid, dir));
        }
    }
    out.sort();
    out
}

impl ReportStage {
    /// Analyzes one study and writes its report directory atomically.
    fn report(&self, uid: &str, study_dir: &Path) -> anyhow::Result<spineagent_engine::report::Report> {
        // Instances only: the study directory also holds the manifests.
        let mut files = crate::scu::collect_files(&[study_dir.to_path_buf()])?;
        files.retain(|f| f.extension().is_some_and(|x| x == "dcm"));
        let encoded = self.encoded.as_deref().map(|c| (c, uid));
        let analyzed = analyze_files(
            &self.models,
            &files,
            self.threshold,
            self.accept_unknown_region,
            encoded,
        )?;
        let root = reports_dir(&self.spool);
        std::fs::create_dir_all(&root)?;
        let tmp = root.join(format!(".tmp-{uid}"));
        let _ = std::fs::remove_dir_all(&tmp);
        let report = write_outputs(
            &self.models,
            &analyzed,
            &tmp,
            &self.triage,
            &self.codes,
            self.agent.as_deref(),
        )?;
        for f in std::fs::read_dir(&tmp)?.flatten() {
            std::fs::File::open(f.path())?.sync_all()?;
        }
        std::fs::rename(&tmp, root.join(uid))?;
        std::fs::File::open(&root)?.sync_all()?;
        Ok(report)
    }

    /// Callers leave out studies with a no-report verdict (`unreported`) or
    /// clear it first (a study that completed again).
    async fn handle(self: &Arc<Self>, uid: String, dir: PathBuf) {
        if reports_dir(&self.spool).join(&uid).exists() {
            // Reported before (a late instance reopened and re-completed the
            // study, or the start-up scan got there first).
            tracing::info!(study = %uid, "report exists: not analyzed again");
            return;
        }
        let stage = self.clone();
        let started = Instant::now();
        let task_uid = uid.clone();
        let result = tokio::task::spawn_blocking(move || stage.report(&task_uid, &dir)).await;
        let seconds = started.elapsed().as_secs_f64();
        if let Some(cache) = &self.encoded {
            cache.forget(&uid);
            self.metrics.stream_cache_slices.set(cache.len() as i64);
        }
        match result {
            Ok(Ok(report)) => {
                let category = report.category;
                self.metrics.report_seconds.observe(seconds);
                self.metrics.reports_total.with_label_values(&[category.as_str()]).inc();
                if (category as u8) < 3 {
                    tracing::warn!(
                        study = %uid,
                        category = category as u8,
                        urgency = category.as_str(),
                        "URGENT study: report flagged for communication"
                    );
                }
                tracing::info!(study = %uid, seconds, category = category as u8, "report written");
                if let Some(delivery) = &self.delivery
                    && let Err(e) = delivery.enqueue(&uid, category as u8)
                {
                    // The start-up reconciliation queues it again.
                    tracing::error!(study = %uid, "cannot queue the report for delivery: {e}");
                }
            }
            Ok(Err(e)) => {
                self.metrics.report_failures_total.inc();
                tracing::error!(study = %uid, "no report: {e:#}");
                mark_no_report(&self.spool, &uid, &format!("analysis failed: {e:#}"));
            }
            Err(e) => {
                self.metrics.report_failures_total.inc();
                tracing::error!(study = %uid, "analysis task failed: {e}");
                mark_no_report(&self.spool, &uid, &format!("analysis task failed: {e}"));
            }
        }
    }

    pub async fn run(self, mut events: mpsc::Receiver<AssemblyEvent>, mut shutdown: watch::Receiver<bool>) {
        let stage = Arc::new(self);
        for (uid, dir) in unreported(&stage.spool) {
            tracing::info!(study = %uid, "completed study without a report: analyzing");
            stage.handle(uid, dir).await;
        }
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(AssemblyEvent::StudyComplete(study)) => {
                        if clear_no_report(&stage.spool, &study.study_instance_uid) {
                            tracing::info!(
                                study = %study.study_instance_uid,
                                "study completed again with new instances: no-report verdict cleared"
                            );
                        }
                        if study.usable_series().next().is_none() {
                            stage.metrics.studies_not_reported_total.with_label_values(&["no_usable_series"]).inc();
                            let skipped: Vec<String> = study
                                .series
                                .iter()
                                .map(|s| {
                                    format!(
                                        "series {}: {}",
                                        s.series_number.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
                                        s.class.skip_reason.map(|r| r.as_str()).unwrap_or("not usable")
                                    )
                                })
                                .collect();
                            tracing::warn!(
                                study = %study.study_instance_uid,
                                series = %skipped.join("; "),
                                "no series the models can use: no report"
                            );
                            mark_no_report(
                                &stage.spool,
                                &study.study_instance_uid,
                                &format!("no usable series ({})", skipped.join("; ")),
                            );
                            continue;
                        }
                        stage.handle(study.study_instance_uid.clone(), study.dir.clone()).await;
                    }
                    Some(AssemblyEvent::SeriesComplete(_)) => {}
                    None => break,
                },
                _ = shutdown.changed() => break,
            }
        }
    }
}
