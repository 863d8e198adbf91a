//! The typed events assembly emits for the analysis stages, and the
//! manifests (`series.json`, `study.json`) that persist them.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::classify::SeriesClass;
use super::geometry::Stack;

/// A complete series: classified, its slices ordered in stacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesReady {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub series_number: Option<i32>,
    pub series_description: String,
    pub manufacturer: String,
    pub sop_class_uid: String,
    pub instance_count: usize,
    pub class: SeriesClass,
    pub stacks: Vec<Stack>,
    /// Directory holding the series' files (slice `file` names are relative to it).
    pub dir: PathBuf,
}

impl SeriesReady {
    pub fn usable(&self) -> bool {
        self.class.skip_reason.is_none()
    }

    pub fn slice_count(&self) -> usize {
        self.stacks.iter().map(|s| s.slices.len()).sum()
    }
}

/// A complete study: every series complete and the study idle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyReady {
    pub study_instance_uid: String,
    pub dir: PathBuf,
    pub series: Vec<Arc<SeriesReady>>,
}

impl StudyReady {
    pub fn usable_series(&self) -> impl Iterator<Item = &SeriesReady> {
        self.series.iter().map(|s| s.as_ref()).filter(|s| s.usable())
    }
}

#[derive(Debug, Clone)]
pub enum AssemblyEvent {
    SeriesComplete(Arc<SeriesReady>),
    StudyComplete(Arc<StudyReady>),
}
