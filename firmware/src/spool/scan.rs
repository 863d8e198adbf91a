//! Start-up rescan of the spool: finds the studies not yet complete and
//! rebuilds their instances' headers from the files, so assembly resumes
//! where it stopped.

use std::path::Path;

use super::{SERIES_MANIFEST, STUDY_MANIFEST, Spool, StoredInstance, read_header};
use crate::assemble::SeriesReady;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoverySummary {
    pub studies_resumed: usize,
    pub studies_already_complete: usize,
    pub instances: usize,
    /// Files in the spool that are not readable DICOM (left in place, logged).
    pub unreadable: usize,
}

pub struct ScannedSeries {
    pub series_instance_uid: String,
    pub instances: Vec<StoredInstance>,
    /// The manifest written when the series last completed, if any.
    pub manifest: Option<SeriesReady>,
}

pub struct ScannedStudy {
    pub study_instance_uid: String,
    pub series: Vec<ScannedSeries>,
}

pub struct Scan {
    pub studies: Vec<ScannedStudy>,
    pub summary: RecoverySummary,
}

fn subdirs(dir: &Path) -> std::io::Result<Vec<(String, std::path::PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            out.push((entry.file_name().to_string_lossy().into_owned(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

pub fn scan(spool: &Spool) -> std::io::Result<Scan> {
    let mut summary = RecoverySummary::default();
    let mut studies = Vec::new();
    for (study_uid, study_dir) in subdirs(spool.studies_dir())? {
        if study_dir.join(STUDY_MANIFEST).exists() {
            summary.studies_already_complete += 1;
            continue;
        }
        let mut series_list = Vec::new();
        for (series_uid, series_dir) in subdirs(&study_dir)? {
            let mut instances = Vec::new();
            let mut files: Vec<_> = std::fs::read_dir(&series_dir)?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
                .collect();
            files.sort();
            for path in files {
                match read_header(&path) {
                    Ok(header) => {
                        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                        instances.push(StoredInstance {
                            header,
                            path,
                            bytes,
                            duplicate: false,
                        });
                    }
                    Err(e) => {
                        summary.unreadable += 1;
                        tracing::error!(file = %path.display(), error = %e, "unreadable file in spool");
                    }
                }
            }
            let manifest = std::fs::read(series_dir.join(SERIES_MANIFEST))
                .ok()
                .and_then(|b| serde_json::from_slice::<SeriesReady>(&b).ok());
            summary.instances += instances.len();
            series_list.push(ScannedSeries {
                series_instance_uid: series_uid,
                instances,
                manifest,
            });
        }
        summary.studies_resumed += 1;
        studies.push(ScannedStudy {
            study_instance_uid: study_uid,
            series: series_list,
        });
    }
    Ok(Scan { studies, summary })
}
