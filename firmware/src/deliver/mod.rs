//! Report delivery: every report's SR and SEG go by C-STORE to every
//! configured destination, from a durable outbox ([`outbox`]), with
//! exponential back-off on transient failures and a dead-letter directory
//! for permanent ones ([`outcome`]).
//!
//! One task per destination, one association at a time: a PACS is not
//! flooded, and a slow or dead destination never delays the others. Jobs
//! are picked most urgent first. The job file is updated only after the
//! peer's answer, so a crash between the answer and the update re-sends the
//! same SOP Instance UIDs: the PACS keeps one object.

pub mod outbox;
pub mod outcome;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::config::{Config, DeliveryConfig, DestinationConfig};
use crate::metrics::Metrics;
use crate::scu::{Destination, ScuOptions};
use outbox::{Job, Outbox, State, next_due, now_unix};
use outcome::Outcome;

/// Files of a report directory that are sent (in this order).
pub const SENT_FILES: [&str; 2] = ["sr.dcm", "seg.dcm"];

/// The delivery side of the daemon: queues reports and runs the senders.
pub struct Delivery {
    outbox: Outbox,
    destinations: Vec<DestinationConfig>,
    settings: DeliveryConfig,
    calling_ae_title: String,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
}

impl Delivery {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Arc<Delivery> {
        Arc::new(Delivery {
            outbox: Outbox::new(&cfg.spool_dir()),
            destinations: cfg.destinations.clone(),
            settings: cfg.delivery.clone(),
            calling_ae_title: cfg.dicom.ae_title.clone(),
            metrics,
            wake: Arc::new(Notify::new()),
        })
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn destination_names(&self) -> impl Iterator<Item = &str> {
        self.destinations.iter().map(|d| d.name.as_str())
    }

    /// Queues a written report for every destination (idempotent).
    pub fn enqueue(&self, study: &str, category: u8) -> std::io::Result<()> {
        let dir = self.outbox.report_dir(study);
        let files: Vec<String> = SENT_FILES
            .iter()
            .filter(|f| dir.join(f).exists())
            .map(|f| f.to_string())
            .collect();
        let now = now_unix();
        for d in &self.destinations {
            if self
                .outbox
                .enqueue(&d.name, &Job::new(study, files.clone(), category, now))?
            {
                tracing::info!(study, destination = %d.name, category, "report queued for delivery");
            }
        }
        self.wake.notify_waiters();
        Ok(())
    }

    /// Queues every report in the spool that some destination has in no
    /// state (the daemon stopped between writing the report and queueing
    /// it, or a destination was added).
    pub fn reconcile(&self) -> std::io::Result<()> {
        let Ok(entries) = std::fs::read_dir(self.outbox.reports_root()) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let study = e.file_name().to_string_lossy().into_owned();
            if study.starts_with('.') || !e.path().join("sr.dcm").exists() {
                continue;
            }
            let missing = self
                .destinations
                .iter()
                .any(|d| self.outbox.state_of(&d.name, &study).is_none());
            if missing {
                let category = report_category(&e.path()).unwrap_or(3);
                self.enqueue(&study, category)?;
            }
        }
        Ok(())
    }

    /// Runs one sender per destination until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        if let Err(e) = self.reconcile() {
            tracing::error!("outbox reconciliation failed: {e}");
        }
        let mut tasks = Vec::new();
        for d in self.destinations.clone() {
            let me = self.clone();
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move { me.sender(d, stop).await }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    fn pending(&self, destination: &str) -> Vec<Job> {
        let mut jobs = Vec::new();
        for r in self.outbox.list(State::Pending, destination) {
            match r {
                Ok(j) => jobs.push(j),
                Err((path, e)) => {
                    tracing::error!(path = %path.display(), "unreadable outbox job (left in place): {e}")
                }
            }
        }
        jobs
    }

    async fn sender(&self, d: DestinationConfig, mut shutdown: watch::Receiver<bool>) {
        let dest = Destination {
            ae_title: d.ae_title.clone(),
            address: d.address.clone(),
        };
        let opts = ScuOptions {
            calling_ae_title: self.calling_ae_title.clone(),
            timeout: Duration::from_secs(self.settings.timeout_seconds),
            ..ScuOptions::default()
        };
        loop {
            if *shutdown.borrow() {
                return;
            }
            // Registered before the scan, so an enqueue during it still wakes us.
            let woken = self.wake.notified();
            let jobs = self.pending(&d.name);
            self.metrics
                .outbox_pending
                .with_label_values(&[&d.name])
                .set(jobs.len() as i64);
            let now = now_unix();
            if let Some(job) = next_due(&jobs, now).cloned() {
                // An attempt is not interrupted by shutdown: the job file is
                // written after the answer either way.
                self.attempt(&d, &dest, &opts, job).await;
                continue;
            }
            let wait = jobs
                .iter()
                .map(|j| j.next_attempt_at - now)
                .fold(60.0f64, f64::min)
                .max(0.05);
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn attempt(&self, d: &DestinationConfig, dest: &Destination, opts: &ScuOptions, mut job: Job) {
        let dir = self.outbox.report_dir(&job.study);
        let files: Vec<_> = job.remaining().map(|f| dir.join(f)).collect();
        job.attempts += 1;
        let started = Instant::now();
        let outcome = match crate::scu::store_files(dest, opts, &files).await {
            Ok(results) => {
                for r in results.iter().filter(|r| r.stored()) {
                    if let Some(name) = r.path.file_name() {
                        job.stored.push(name.to_string_lossy().into_owned());
                    }
                }
                outcome::from_results(&results)
            }
            Err(e) => outcome::from_error(&e),
        };
        let now = now_unix();
        let study = job.study.clone();
        let (label, saved) = match &outcome {
            Outcome::Delivered => {
                job.finished_at = Some(now);
                job.last_error = None;
                self.metrics.delivery_seconds.observe((now - job.queued_at).max(0.0));
                tracing::info!(
                    study = %study, destination = %d.name, attempts = job.attempts,
                    seconds = started.elapsed().as_secs_f64(), "report delivered"
                );
                ("delivered", self.outbox.finish(State::Sent, &d.name, &job))
            }
            Outcome::Permanent(why) => {
                job.finished_at = Some(now);
                job.last_error = Some(why.clone());
                tracing::error!(study = %study, destination = %d.name, "report refused for good, dead-lettered: {why}");
                ("dead_letter", self.outbox.finish(State::DeadLetter, &d.name, &job))
            }
            Outcome::Transient(why) if now - job.queued_at > self.settings.give_up_after_hours * 3600.0 => {
                job.finished_at = Some(now);
                job.last_error = Some(format!("gave up after {} attempts: {why}", job.attempts));
                tracing::error!(study = %study, destination = %d.name, attempts = job.attempts, "report delivery given up, dead-lettered: {why}");
                ("dead_letter", self.outbox.finish(State::DeadLetter, &d.name, &job))
            }
            Outcome::Transient(why) => {
                let wait = outcome::backoff(
                    job.attempts,
                    self.settings.retry_initial_seconds,
                    self.settings.retry_max_seconds,
                );
                job.next_attempt_at = now + wait;
                job.last_error = Some(why.clone());
                tracing::warn!(study = %study, destination = %d.name, attempts = job.attempts, retry_in = wait, "report delivery failed: {why}");
                ("retry", self.outbox.save(State::Pending, &d.name, &job))
            }
        };
        self.metrics
            .delivery_attempts_total
            .with_label_values(&[&d.name, label])
            .inc();
        if let Err(e) = saved {
            // The previous job file stays: the attempt is repeated, which the
            // same SOP Instance UIDs make harmless.
            tracing::error!(study = %study, destination = %d.name, "cannot update outbox job: {e}");
        }
    }
}

/// The triage category recorded in a report directory's analysis.json.
fn report_category(dir: &std::path::Path) -> Option<u8> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("analysis.json")).ok()?).ok()?;
    v["triage"]["category"].as_u64().map(|c| c as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciliation_queues_reports_that_no_destination_has() {
        let tmp = tempfile::tempdir().unwrap();
        let text = format!(
            "{}\n[[destination]]\nname = \"pacs\"\nae_title = \"PACS\"\naddress = \"127.0.0.1:104\"\n",
            crate::config::DEFAULT_CONFIG_TOML
        );
        let cfg = Config::from_toml_str(&text, std::path::Path::new("t.toml"), tmp.path().to_owned()).unwrap();
        let delivery = Delivery::new(&cfg, Arc::new(Metrics::new()));
        let outbox = delivery.outbox();
        // Written, never queued (the daemon died in between); and one
        // already sent, which must not be queued again.
        for study in ["1.2.3", "1.2.4"] {
            let dir = outbox.report_dir(study);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("sr.dcm"), b"x").unwrap();
        }
        outbox
            .save(State::Sent, "pacs", &Job::new("1.2.4", vec!["sr.dcm".into()], 3, 1.0))
            .unwrap();
        delivery.reconcile().unwrap();
        assert_eq!(outbox.state_of("pacs", "1.2.3"), Some(State::Pending));
        assert_eq!(outbox.state_of("pacs", "1.2.4"), Some(State::Sent));
        let job: Job =
            serde_json::from_slice(&std::fs::read(outbox.path(State::Pending, "pacs", "1.2.3")).unwrap()).unwrap();
        assert_eq!(job.files, vec!["sr.dcm".to_string()]);
    }
}
