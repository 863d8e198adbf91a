//! The durable outbox: one JSON job file per (destination, study).
//!
//! ```text
//! spool/outbox/<destination>/<study>.json       waiting or being retried
//! spool/sent/<destination>/<study>.json         delivered (kept for retention)
//! spool/dead-letter/<destination>/<study>.json  refused for good, with the reason
//! ```
//!
//! A job moves between the three directories by rename, and every write is
//! a temporary file, fsync, rename, directory fsync: after a crash a job is
//! in exactly one place, whole. The files it sends stay in
//! `spool/reports/<study>/`, written before the job existed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a job file lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Sent,
    DeadLetter,
}

impl State {
    fn dir_name(self) -> &'static str {
        match self {
            State::Pending => "outbox",
            State::Sent => "sent",
            State::DeadLetter => "dead-letter",
        }
    }

    const ALL: [State; 3] = [State::Pending, State::Sent, State::DeadLetter];
}

/// One study's report on its way to one destination.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    /// Study Instance UID (names the report directory).
    pub study: String,
    /// Files of `spool/reports/<study>/` to send, in order.
    pub files: Vec<String>,
    /// Triage category (1 critical, 2 urgent, 3 routine): lower goes first.
    pub category: u8,
    /// Unix seconds when the report was queued.
    pub queued_at: f64,
    pub attempts: u32,
    /// Unix seconds before which no attempt is made.
    pub next_attempt_at: f64,
    /// Files the destination has acknowledged (not sent again).
    #[serde(default)]
    pub stored: Vec<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Unix seconds when the job was sent or dead-lettered.
    #[serde(default)]
    pub finished_at: Option<f64>,
}

impl Job {
    pub fn new(study: &str, files: Vec<String>, category: u8, now: f64) -> Job {
        Job {
            study: study.to_string(),
            files,
            category,
            queued_at: now,
            attempts: 0,
            next_attempt_at: now,
            stored: Vec::new(),
            last_error: None,
            finished_at: None,
        }
    }

    /// Files still to send.
    pub fn remaining(&self) -> impl Iterator<Item = &String> {
        self.files.iter().filter(|f| !self.stored.contains(f))
    }
}

/// The outbox of the whole spool (all destinations).
#[derive(Debug, Clone)]
pub struct Outbox {
    spool: PathBuf,
}

pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("job paths have a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().expect("job paths have a name").to_string_lossy()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl Outbox {
    pub fn new(spool: &Path) -> Outbox {
        Outbox {
            spool: spool.to_owned(),
        }
    }

    /// `spool/reports`: one directory per reported study.
    pub fn reports_root(&self) -> PathBuf {
        self.spool.join("reports")
    }

    pub fn report_dir(&self, study: &str) -> PathBuf {
        self.reports_root().join(study)
    }

    fn dir(&self, state: State, destination: &str) -> PathBuf {
        self.spool.join(state.dir_name()).join(destination)
    }

    pub fn path(&self, state: State, destination: &str, study: &str) -> PathBuf {
        self.dir(state, destination).join(format!("{study}.json"))
    }

    /// Where the job for (destination, study) is, if anywhere.
    pub fn state_of(&self, destination: &str, study: &str) -> Option<State> {
        State::ALL
            .into_iter()
            .find(|s| self.path(*s, destination, study).exists())
    }

    /// Queues a job unless one exists for this destination and study in any
    /// state (so a start-up reconciliation may call it for every report).
    pub fn enqueue(&self, destination: &str, job: &Job) -> std::io::Result<bool> {
        if self.state_of(destination, &job.study).is_some() {
            return Ok(false);
        }
        self.save(State::Pending, destination, job)?;
        Ok(true)
    }

    pub fn save(&self, state: State, destination: &str, job: &Job) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(job).map_err(std::io::Error::other)?;
        write_atomically(&self.path(state, destination, &job.study), &bytes)
    }

    /// Moves a pending job to `to` with its final content: the content is
    /// first replaced in place (atomically), then the file is renamed into
    /// the other directory, so at every moment the job is in exactly one
    /// place.
    pub fn finish(&self, to: State, destination: &str, job: &Job) -> std::io::Result<()> {
        self.save(State::Pending, destination, job)?;
        let from = self.path(State::Pending, destination, &job.study);
        let target = self.path(to, destination, &job.study);
        let target_dir = self.dir(to, destination);
        std::fs::create_dir_all(&target_dir)?;
        std::fs::rename(&from, &target)?;
        std::fs::File::open(&target_dir)?.sync_all()?;
        std::fs::File::open(self.dir(State::Pending, destination))?.sync_all()
    }

    /// Every job of one destination in one state. Unreadable job files are
    /// returned as errors with their path, not skipped silently.
    pub fn list(&self, state: State, destination: &str) -> Vec<Result<Job, (PathBuf, String)>> {
        let Ok(entries) = std::fs::read_dir(self.dir(state, destination)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            out.push(
                std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice::<Job>(&b).map_err(|e| e.to_string()))
                    .map_err(|e| (path, e)),
            );
        }
        out
    }

    /// Removes a job file in any state (retention).
    pub fn remove(&self, state: State, destination: &str, study: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(state, destination, study)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The next job to attempt: due now, most urgent category first, then the
/// oldest.
pub fn next_due(jobs: &[Job], now: f64) -> Option<&Job> {
    jobs.iter()
        .filter(|j| j.next_attempt_at <= now)
        .min_by(|a, b| a.category.cmp(&b.category).then(a.queued_at.total_cmp(&b.queued_at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_in_one_place_and_enqueue_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Outbox::new(tmp.path());
        let job = Job::new("1.2.3", vec!["sr.dcm".into(), "seg.dcm".into()], 3, 100.0);
        assert!(o.enqueue("pacs", &job).unwrap());
        assert!(!o.enqueue("pacs", &job).unwrap());
        assert_eq!(o.state_of("pacs", "1.2.3"), Some(State::Pending));
        assert_eq!(o.state_of("other", "1.2.3"), None);
        let listed: Vec<Job> = o.list(State::Pending, "pacs").into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(listed, vec![job.clone()]);
        o.finish(State::Sent, "pacs", &job).unwrap();
        assert_eq!(o.state_of("pacs", "1.2.3"), Some(State::Sent));
        assert!(o.list(State::Pending, "pacs").is_empty());
        // Sent once: a reconciliation does not queue it again.
        assert!(!o.enqueue("pacs", &job).unwrap());
    }

    #[test]
    fn unreadable_jobs_are_reported_not_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Outbox::new(tmp.path());
        let path = o.path(State::Pending, "pacs", "9.9");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{ not json").unwrap();
        let listed = o.list(State::Pending, "pacs");
        assert_eq!(listed.len(), 1);
        assert!(listed[0].is_err());
    }

    #[test]
    fn urgent_jobs_jump_the_queue_and_waiting_jobs_wait() {
        let routine_old = Job::new("a", vec![], 3, 10.0);
        let critical_new = Job::new("b", vec![], 1, 20.0);
        let mut waiting = Job::new("c", vec![], 1, 5.0);
        waiting.next_attempt_at = 1000.0;
        let jobs = vec![routine_old.clone(), critical_new.clone(), waiting];
        assert_eq!(next_due(&jobs, 30.0).unwrap().study, "b");
        assert_eq!(next_due(&jobs[..1], 30.0).unwrap().study, "a");
        assert_eq!(next_due(&jobs[2..], 30.0), None);
    }
}
