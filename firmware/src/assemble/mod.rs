//! Study assembly: groups stored instances into series and studies, decides
//! when each is complete, classifies series and emits typed events.
//!
//! A series is complete after `series_idle_seconds` without a new instance,
//! or as soon as its expected instance count (ImagesInAcquisition) is
//! reached; a study when all its series are complete and it has been idle
//! for `study_idle_seconds`. Association release is not a signal: scanners
//! send one series over many associations and many series over one.
//! An instance arriving after its series completed reopens the series (and
//! its study), which is then emitted again when idle.
//!
//! Completion is persisted as manifests in the spool (`series.json`,
//! `study.json`) before the event is sent, so a restart resumes exactly the
//! series and studies that were not finished ([`Assembler::recover`]).

pub mod classify;
pub mod events;
pub mod geometry;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::spool::{InstanceHeader, SERIES_MANIFEST, STUDY_MANIFEST, Spool, StoredInstance};
use classify::{Rules, SeriesShape, classify};
pub use events::{AssemblyEvent, SeriesReady, StudyReady};
use geometry::{Placed, build_stacks};

/// Assembly settings (from `[assembly]`).
#[derive(Debug, Clone)]
pub struct AssemblySettings {
    pub series_idle: Duration,
    pub study_idle: Duration,
    pub oblique_threshold_degrees: f64,
    pub min_slices: usize,
    pub accept_unknown_region: bool,
}

/// What assembly keeps per instance: where the slice is and which file.
#[derive(Debug, Clone)]
struct InstanceRecord {
    file: String,
    bytes: u64,
    instance_number: Option<i32>,
    rows: u32,
    columns: u32,
    orientation: Option<[f64; 6]>,
    positions: Vec<[f64; 3]>,
}

#[derive(Debug)]
struct SeriesState {
    /// Series-level tags, from the first instance received.
    header: InstanceHeader,
    instances: BTreeMap<String, InstanceRecord>,
    last_arrival: Instant,
    complete: bool,
    /// ImagesInAcquisition when every instance agrees on it and it is at
    /// least 2 (some consoles write 1 on every slice of a 2-D series).
    expected: Option<u32>,
}

#[derive(Debug)]
struct StudyState {
    series: BTreeMap<String, SeriesState>,
    last_arrival: Instant,
}

pub struct Assembler {
    settings: AssemblySettings,
    rules: Rules,
    spool: Spool,
    metrics: Arc<Metrics>,
    events: mpsc::Sender<AssemblyEvent>,
    studies: BTreeMap<String, StudyState>,
    /// Completed series by (study, series), kept until their study completes.
    ready: BTreeMap<(String, String), Arc<SeriesReady>>,
    /// Bytes of the instances of open studies (kept as a running total: the
    /// gauge is updated per instance, a sum over all would be quadratic).
    open_bytes: u64,
    /// Where each new instance also goes (the streaming encoder), if set.
    tap: Option<mpsc::Sender<crate::stream::ArrivedInstance>>,
}

impl InstanceRecord {
    fn from_stored(s: &StoredInstance) -> InstanceRecord {
        InstanceRecord {
            file: s
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            bytes: s.bytes,
            instance_number: s.header.instance_number,
            rows: s.header.rows,
            columns: s.header.columns,
            orientation: s.header.orientation,
            positions: s.header.positions.clone(),
        }
    }
}

impl Assembler {
    pub fn new(
        settings: AssemblySettings,
        rules: Rules,
        spool: Spool,
        metrics: Arc<Metrics>,
        events: mpsc::Sender<AssemblyEvent>,
    ) -> Assembler {
        Assembler {
            settings,
            rules,
            spool,
            metrics,
            events,
            studies: BTreeMap::new(),
            ready: BTreeMap::new(),
            open_bytes: 0,
            tap: None,
        }
    }

    /// Sends every newly stored instance to `tap` as well. The send waits
    /// when the tap's queue is full: back-pressure, not loss.
    pub fn set_tap(&mut self, tap: mpsc::Sender<crate::stream::ArrivedInstance>) {
        self.tap = Some(tap);
    }

    /// Number of studies not yet complete.
    pub fn open_studies(&self) -> usize {
        self.studies.len()
    }

    /// Takes in one durably stored instance.
    pub fn add(&mut self, stored: &StoredInstance, now: Instant) {
        let h = &stored.header;
        let study = self
            .studies
            .entry(h.study_instance_uid.clone())
            .or_insert_with(|| StudyState {
                series: BTreeMap::new(),
                last_arrival: now,
            });
        study.last_arrival = now;
        let series = study
            .series
            .entry(h.series_instance_uid.clone())
            .or_insert_with(|| SeriesState {
                header: h.clone(),
                instances: BTreeMap::new(),
                last_arrival: now,
                complete: false,
                expected: h.images_in_acquisition.filter(|n| *n >= 2),
            });
        series.last_arrival = now;
        if series.expected.is_some() && series.expected != h.images_in_acquisition {
            series.expected = None;
        }
        let replaced = series
            .instances
            .insert(h.sop_instance_uid.clone(), InstanceRecord::from_stored(stored));
        let is_new = replaced.is_none();
        self.open_bytes = self.open_bytes + stored.bytes - replaced.map(|r| r.bytes).unwrap_or(0);
        if is_new && series.complete {
            tracing::info!(series = %h.series_instance_uid, "late instance reopens a completed series");
            series.complete = false;
            self.ready
                .remove(&(h.study_instance_uid.clone(), h.series_instance_uid.clone()));
        }
        self.metrics.spool_instances_bytes.set(self.open_bytes as i64);
    }

    /// Rebuilds state from the spool after a restart: studies without a
    /// `study.json` resume; their series with an up-to-date `series.json`
    /// count as complete, the others get fresh idle timers.
    pub fn recover(&mut self, now: Instant) -> std::io::Result<crate::spool::scan::RecoverySummary> {
        let scanned = crate::spool::scan::scan(&self.spool)?;
        for study in &scanned.studies {
            for series in &study.series {
                for stored in &series.instances {
                    self.add(stored, now);
                }
                if let Some(manifest) = &series.manifest
                    && manifest.instance_count == series.instances.len()
                    && let Some(state) = self
                        .studies
                        .get_mut(&study.study_instance_uid)
                        .and_then(|s| s.series.get_mut(&series.series_instance_uid))
                {
                    state.complete = true;
                    self.ready.insert(
                        (study.study_instance_uid.clone(), series.series_instance_uid.clone()),
                        Arc::new(manifest.clone()),
                    );
                }
            }
        }
        Ok(scanned.summary)
    }

    /// The earliest moment something may complete.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.studies
            .values()
            .flat_map(|st| {
                let series = st
                    .series
                    .values()
                    .filter(|s| !s.complete)
                    .map(|s| s.last_arrival + self.settings.series_idle);
                series.chain(std::iter::once(st.last_arrival + self.settings.study_idle))
            })
            .min()
    }

    /// Completes what is due at `now`, emitting events (waits while the
    /// event queue is full: back-pressure reaches the receiver).
    pub async fn complete_due(&mut self, now: Instant) {
        let mut due_series = Vec::new();
        for (study_uid, study) in &self.studies {
            for (series_uid, s) in &study.series {
                let expected_reached = s.expected.is_some_and(|n| s.instances.len() >= n as usize);
                if !s.complete && (now >= s.last_arrival + self.settings.series_idle || expected_reached) {
                    due_series.push((study_uid.clone(), series_uid.clone()));
                }
            }
        }
        for (study_uid, series_uid) in due_series {
            let ready = self.finish_series(&study_uid, &series_uid);
            self.persist_manifest(&ready.dir.join(SERIES_MANIFEST), ready.as_ref())
                .await;
            self.metrics.series_completed_total.inc();
            if let Some(reason) = ready.class.skip_reason {
                self.metrics
                    .series_skipped_total
                    .with_label_values(&[reason.as_str()])
                    .inc();
            }
            tracing::info!(
                series = %series_uid,
                family = ready.class.family.as_str(),
                plane = ready.class.plane.map(|p| p.as_str()).unwrap_or("none"),
                region = ready.class.region.as_str(),
                slices = ready.slice_count(),
                skipped = ready.class.skip_reason.map(|r| r.as_str()).unwrap_or("no"),
                "series complete"
            );
            self.ready.insert((study_uid, series_uid), ready.clone());
            self.send(AssemblyEvent::SeriesComplete(ready)).await;
        }

        let due_studies: Vec<String> = self
            .studies
            .iter()
            .filter(|(_, st)| {
                now >= st.last_arrival + self.settings.study_idle && st.series.values().all(|s| s.complete)
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for study_uid in due_studies {
            let state = self.studies.remove(&study_uid).expect("listed above");
            let study_bytes: u64 = state
                .series
                .values()
                .flat_map(|se| se.instances.values())
                .map(|i| i.bytes)
                .sum();
            self.open_bytes -= study_bytes;
            self.metrics.spool_instances_bytes.set(self.open_bytes as i64);
            let series = state
                .series
                .keys()
                .filter_map(|series_uid| self.ready.remove(&(study_uid.clone(), series_uid.clone())))
                .collect::<Vec<_>>();
            let ready = Arc::new(StudyReady {
                dir: self.spool.study_dir(&study_uid),
                study_instance_uid: study_uid.clone(),
                series,
            });
            self.persist_manifest(&ready.dir.join(STUDY_MANIFEST), ready.as_ref())
                .await;
            self.metrics.studies_completed_total.inc();
            tracing::info!(
                study = %study_uid,
                series = ready.series.len(),
                usable = ready.usable_series().count(),
                "study complete"
            );
            self.send(AssemblyEvent::StudyComplete(ready)).await;
        }
    }

    fn finish_series(&mut self, study_uid: &str, series_uid: &str) -> Arc<SeriesReady> {
        let s = self
            .studies
            .get_mut(study_uid)
            .and_then(|st| st.series.get_mut(series_uid))
            .expect("due series exists");
        s.complete = true;
        let placed: Vec<Placed> = s
            .instances
            .iter()
            .flat_map(|(sop, rec)| {
                rec.positions.iter().enumerate().filter_map(move |(frame, pos)| {
                    Some(Placed {
                        sop_instance_uid: sop.clone(),
                        file: rec.file.clone(),
                        frame: frame as u32 + 1,
                        instance_number: rec.instance_number,
                        orientation: rec.orientation?,
                        position: *pos,
                    })
                })
            })
            .collect();
        let stacks = build_stacks(placed, self.settings.oblique_threshold_degrees);
        // The series' plane is that of its largest stack.
        let plane = stacks.iter().max_by_key(|st| st.slices.len()).map(|st| st.plane);
        let first = s.instances.values().next();
        let uniform_matrix = s
            .instances
            .values()
            .all(|r| first.is_some_and(|f| f.rows == r.rows && f.columns == r.columns));
        let shape = SeriesShape {
            plane,
            slices: stacks.iter().map(|st| st.slices.len()).sum(),
            uniform_matrix,
        };
        let class = classify(
            &self.rules,
            &s.header,
            shape,
            self.settings.min_slices,
            self.settings.accept_unknown_region,
        );
        Arc::new(SeriesReady {
            study_instance_uid: study_uid.to_string(),
            series_instance_uid: series_uid.to_string(),
            series_number: s.header.series_number,
            series_description: s.header.series_description.clone(),
            manufacturer: s.header.manufacturer.clone(),
            sop_class_uid: s.header.sop_class_uid.clone(),
            instance_count: s.instances.len(),
            class,
            stacks,
            dir: self.spool.series_dir(study_uid, series_uid),
        })
    }

    async fn persist_manifest<T: serde::Serialize>(&self, path: &std::path::Path, value: &T) {
        let bytes = match serde_json::to_vec_pretty(value) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode manifest");
                return;
            }
        };
        let spool = self.spool.clone();
        let path: PathBuf = path.to_owned();
        let result = tokio::task::spawn_blocking(move || spool.write_file_durable(&path, &bytes)).await;
        if let Err(e) = result.map_err(std::io::Error::other).and_then(|r| r) {
            // The event still goes out; without the manifest a restart simply
            // re-emits it, which consumers must tolerate anyway.
            tracing::error!(error = %e, "cannot write manifest");
        }
    }

    async fn send(&self, event: AssemblyEvent) {
        if self.events.send(event).await.is_err() {
            tracing::warn!("event consumer has stopped; event dropped (it is persisted in the spool)");
        }
        self.metrics.observe_queue("events", &self.events);
    }

    /// Runs until the input channel closes: takes instances, completes
    /// series and studies when due.
    pub async fn run(mut self, mut input: mpsc::Receiver<StoredInstance>) {
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                msg = input.recv() => match msg {
                    Some(stored) => {
                        self.add(&stored, Instant::now());
                        if let Some(tap) = &self.tap
                            && !stored.duplicate
                        {
                            let arrived = crate::stream::ArrivedInstance {
                                header: stored.header.clone(),
                                path: stored.path.clone(),
                            };
                            if tap.send(arrived).await.is_err() {
                                self.tap = None; // the encoder stopped
                            }
                        }
                    }
                    None => break,
                },
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {}
            }
            self.complete_due(Instant::now()).await;
        }
        tracing::debug!(open_studies = self.open_studies(), "assembler stopped");
    }
}

#[cfg(test)]
mod tests;
