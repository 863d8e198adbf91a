//! Spool retention: a study whose report reached every destination (or was
//! written, when none is configured), or that was marked as getting no
//! report, is removed `spool.retention_days` after that: its instances
//! first, then its report, then its delivery records, so an interrupted
//! sweep never leaves a report without the record that it was sent (which
//! would send it again). Studies with a pending or dead-lettered delivery
//! are never touched: they still need the daemon or a person.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::deliver::outbox::{Outbox, State, now_unix};

pub struct Retention {
    pub spool: PathBuf,
    pub retention: Duration,
    pub destinations: Vec<String>,
}

fn modified_unix(path: &Path) -> Option<f64> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(m.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs_f64())
}

fn remove_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Retention {
    /// When the study's work was finished, or None while it is not.
    fn finished_at(&self, outbox: &Outbox, study: &str) -> Option<f64> {
        let report = outbox.report_dir(study);
        if self.destinations.is_empty() {
            return modified_unix(&report.join("sr.dcm"));
        }
        let mut latest = 0f64;
        for d in &self.destinations {
            if outbox.state_of(d, study) != Some(State::Sent) {
                return None;
            }
            let job: crate::deliver::outbox::Job =
                serde_json::from_slice(&std::fs::read(outbox.path(State::Sent, d, study)).ok()?).ok()?;
            latest = latest.max(job.finished_at?);
        }
        Some(latest)
    }

    /// Removes what is older than the retention; returns the studies removed.
    pub fn sweep(&self) -> Vec<String> {
        let outbox = Outbox::new(&self.spool);
        let cutoff = now_unix() - self.retention.as_secs_f64();
        let mut removed = Vec::new();
        let mut candidates: Vec<(String, Option<f64>)> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.spool.join("reports")) {
            for e in entries.flatten() {
                let study = e.file_name().to_string_lossy().into_owned();
                if !study.starts_with('.') {
                    let at = self.finished_at(&outbox, &study);
                    candidates.push((study, at));
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.spool.join("no-report")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(study) = name.strip_suffix(".txt") {
                    candidates.push((study.to_string(), modified_unix(&e.path())));
                }
            }
        }
        for (study, at) in candidates {
            let Some(at) = at else { continue };
            let study_dir = self.spool.join("studies").join(&study);
            // A late instance reopened the study: wait for it to settle.
            let instances_at = modified_unix(&study_dir.join("study.json")).unwrap_or(0.0);
            if at > cutoff || instances_at > cutoff {
                continue;
            }
            let result = remove_dir(&study_dir)
                .and_then(|_| remove_dir(&outbox.report_dir(&study)))
                .and_then(|_| {
                    for d in &self.destinations {
                        outbox.remove(State::Sent, d, &study)?;
                    }
                    match std::fs::remove_file(self.spool.join("no-report").join(format!("{study}.txt"))) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                        _ => Ok(()),
                    }
                });
            match result {
                Ok(()) => {
                    tracing::info!(study = %study, "retention: study and report removed");
                    removed.push(study);
                }
                Err(e) => tracing::warn!(study = %study, "retention: cannot remove: {e}"),
            }
        }
        removed
    }

    /// Sweeps at start and then every ten minutes, on the blocking pool.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let me = std::sync::Arc::new(self);
        loop {
            let m = me.clone();
            let _ = tokio::task::spawn_blocking(move || m.sweep()).await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(600)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::outbox::Job;

    fn report(spool: &Path, study: &str) {
        std::fs::create_dir_all(spool.join("studies").join(study)).unwrap();
        std::fs::write(spool.join("studies").join(study).join("study.json"), b"{}").unwrap();
        std::fs::create_dir_all(spool.join("reports").join(study)).unwrap();
        std::fs::write(spool.join("reports").join(study).join("sr.dcm"), b"x").unwrap();
    }

    #[test]
    fn only_studies_delivered_everywhere_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = tmp.path();
        let outbox = Outbox::new(spool);
        for s in ["sent", "pending", "dead", "half"] {
            report(spool, s);
        }
        let job = |study: &str, d: &str, state: State| {
            let mut j = Job::new(study, vec!["sr.dcm".into()], 3, 1.0);
            j.finished_at = Some(2.0);
            outbox.save(state, d, &j).unwrap();
        };
        job("sent", "a", State::Sent);
        job("sent", "b", State::Sent);
        job("pending", "a", State::Pending);
        job("pending", "b", State::Sent);
        job("dead", "a", State::DeadLetter);
        job("dead", "b", State::Sent);
        job("half", "a", State::Sent);
        let r = Retention {
            spool: spool.to_owned(),
            retention: Duration::ZERO,
            destinations: vec!["a".into(), "b".into()],
        };
        // study.json was written just now: within a zero retention it is
        // already old enough once a moment passes.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(r.sweep(), vec!["sent".to_string()]);
        assert!(!spool.join("studies/sent").exists());
        assert!(!spool.join("reports/sent").exists());
        assert_eq!(outbox.state_of("a", "sent"), None);
        for kept in ["pending", "dead", "half"] {
            assert!(spool.join("studies").join(kept).exists(), "{kept}");
            assert!(spool.join("reports").join(kept).exists(), "{kept}");
        }
    }

    #[test]
    fn recent_studies_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        report(tmp.path(), "s");
        let r = Retention {
            spool: tmp.path().to_owned(),
            retention: Duration::from_secs(3600),
            destinations: vec![],
        };
        assert!(r.sweep().is_empty());
        assert!(tmp.path().join("studies/s").exists());
    }
}
