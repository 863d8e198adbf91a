//! Assembly timing and grouping, driven with paused tokio time.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::*;
use crate::spool::{InstanceHeader, Spool, StoredInstance};

const SAG: [f64; 6] = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0];

fn settings() -> AssemblySettings {
    AssemblySettings {
        series_idle: Duration::from_secs(10),
        study_idle: Duration::from_secs(30),
        oblique_threshold_degrees: 35.0,
        min_slices: 3,
        accept_unknown_region: false,
    }
}

fn instance(spool: &Spool, study: &str, series: &str, sop: &str, x: f64, expected: Option<u32>) -> StoredInstance {
    let header = InstanceHeader {
        sop_class_uid: crate::ingest::syntaxes::MR_IMAGE_STORAGE.into(),
        sop_instance_uid: sop.into(),
        study_instance_uid: study.into(),
        series_instance_uid: series.into(),
        series_description: "t2_tse_sag".into(),
        body_part_examined: "LSPINE".into(),
        manufacturer: "SIEMENS".into(),
        echo_time_ms: Some(100.0),
        repetition_time_ms: Some(3000.0),
        rows: 320,
        columns: 320,
        number_of_frames: 1,
        images_in_acquisition: expected,
        orientation: Some(SAG),
        positions: vec![[x, 0.0, 0.0]],
        ..Default::default()
    };
    StoredInstance {
        path: spool.series_dir(study, series).join(format!("{sop}.dcm")),
        header,
        bytes: 1000,
        duplicate: false,
    }
}

fn setup() -> (tempfile::TempDir, Spool, Assembler, mpsc::Receiver<AssemblyEvent>) {
    let dir = tempfile::tempdir().unwrap();
    let limits = crate::spool::SpoolLimits {
        max_instance_bytes: 1 << 30,
        in_memory_instance_bytes: 1 << 24,
        watermark_percent: 100.0,
    };
    let spool = Spool::open(dir.path(), limits).unwrap();
    let (tx, rx) = mpsc::channel(16);
    let a = Assembler::new(
        settings(),
        Rules::builtin(),
        spool.clone(),
        Arc::new(Metrics::new()),
        tx,
    );
    (dir, spool, a, rx)
}

#[tokio::test(start_paused = true)]
async fn series_then_study_complete_after_idle() {
    let (_dir, spool, mut a, mut rx) = setup();
    let t0 = Instant::now();
    for (i, x) in [5.0, -5.0, 0.0].into_iter().enumerate() {
        a.add(
            &instance(&spool, "1.2.3", "1.2.3.1", &format!("1.2.3.1.{i}"), x, None),
            t0,
        );
    }
    assert_eq!(
        a.metrics.spool_instances_bytes.get(),
        3000,
        "three open instances of 1000 bytes"
    );
    a.complete_due(t0 + Duration::from_secs(9)).await;
    assert!(rx.try_recv().is_err(), "nothing before the series idle time");
    a.complete_due(t0 + Duration::from_secs(10)).await;
    let AssemblyEvent::SeriesComplete(series) = rx.try_recv().unwrap() else {
        panic!("series first")
    };
    assert_eq!(series.class.family, classify::Family::T2);
    assert_eq!(series.class.plane, Some(geometry::Plane::Sagittal));
    assert!(series.usable());
    // Ordered along the normal (-x for this orientation), not by arrival.
    let xs: Vec<f64> = series.stacks[0].slices.iter().map(|s| s.position[0]).collect();
    assert_eq!(xs, [5.0, 0.0, -5.0]);
    assert!(series.dir.join(crate::spool::SERIES_MANIFEST).exists());
    assert!(rx.try_recv().is_err(), "study waits for its own idle time");
    a.complete_due(t0 + Duration::from_secs(30)).await;
    let AssemblyEvent::StudyComplete(study) = rx.try_recv().unwrap() else {
        panic!("study next")
    };
    assert_eq!(study.series.len(), 1);
    assert!(study.dir.join(crate::spool::STUDY_MANIFEST).exists());
    assert_eq!(a.open_studies(), 0);
    assert_eq!(
        a.metrics.spool_instances_bytes.get(),
        0,
        "completed studies leave the open total"
    );
}

#[tokio::test(start_paused = true)]
async fn expected_count_completes_early() {
    let (_dir, spool, mut a, mut rx) = setup();
    let t0 = Instant::now();
    for i in 0..3 {
        a.add(
            &instance(&spool, "1.2.3", "1.2.3.1", &format!("1.2.3.1.{i}"), i as f64, Some(3)),
            t0,
        );
    }
    a.complete_due(t0 + Duration::from_millis(1)).await;
    assert!(matches!(rx.try_recv().unwrap(), AssemblyEvent::SeriesComplete(_)));
}

#[tokio::test(start_paused = true)]
async fn late_instance_reopens_series_and_study_waits() {
    let (_dir, spool, mut a, mut rx) = setup();
    let t0 = Instant::now();
    for i in 0..3 {
        a.add(
            &instance(&spool, "1.2.3", "1.2.3.1", &format!("1.2.3.1.{i}"), i as f64, None),
            t0,
        );
    }
    a.complete_due(t0 + Duration::from_secs(10)).await;
    assert!(matches!(rx.try_recv().unwrap(), AssemblyEvent::SeriesComplete(_)));
    // A fourth slice arrives: the series is open again, the study cannot complete.
    let t1 = t0 + Duration::from_secs(25);
    a.add(&instance(&spool, "1.2.3", "1.2.3.1", "1.2.3.1.9", 9.0, None), t1);
    a.complete_due(t0 + Duration::from_secs(31)).await;
    assert!(rx.try_recv().is_err());
    a.complete_due(t1 + Duration::from_secs(10)).await;
    let AssemblyEvent::SeriesComplete(s) = rx.try_recv().unwrap() else {
        panic!()
    };
    assert_eq!(s.instance_count, 4);
    a.complete_due(t1 + Duration::from_secs(30)).await;
    assert!(matches!(rx.try_recv().unwrap(), AssemblyEvent::StudyComplete(_)));
}

#[tokio::test(start_paused = true)]
async fn deadlines_follow_the_oldest_open_item() {
    let (_dir, spool, mut a, _rx) = setup();
    assert!(a.next_deadline().is_none());
    let t0 = Instant::now();
    a.add(&instance(&spool, "1.2.3", "1.2.3.1", "1.2.3.1.1", 0.0, None), t0);
    assert_eq!(a.next_deadline(), Some(t0 + Duration::from_secs(10)));
}

#[tokio::test(start_paused = true)]
async fn two_studies_are_independent() {
    let (_dir, spool, mut a, mut rx) = setup();
    let t0 = Instant::now();
    for i in 0..3 {
        a.add(
            &instance(&spool, "1.2.3", "1.2.3.1", &format!("1.2.3.1.{i}"), i as f64, None),
            t0,
        );
        a.add(
            &instance(&spool, "1.2.4", "1.2.4.1", &format!("1.2.4.1.{i}"), i as f64, None),
            t0 + Duration::from_secs(25),
        );
    }
    a.complete_due(t0 + Duration::from_secs(30)).await;
    let mut kinds = Vec::new();
    while let Ok(e) = rx.try_recv() {
        kinds.push(match e {
            AssemblyEvent::SeriesComplete(s) => format!("series {}", s.study_instance_uid),
            AssemblyEvent::StudyComplete(s) => format!("study {}", s.study_instance_uid),
        });
    }
    assert_eq!(kinds, ["series 1.2.3", "study 1.2.3"]);
    assert_eq!(a.open_studies(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_expected_count_of_one_per_slice_is_ignored() {
    // GE writes ImagesInAcquisition = 1 on each slice of some 2-D series.
    let (_dir, spool, mut a, mut rx) = setup();
    let t0 = Instant::now();
    for i in 0..3 {
        a.add(
            &instance(&spool, "1.2.3", "1.2.3.1", &format!("1.2.3.1.{i}"), i as f64, Some(1)),
            t0,
        );
    }
    a.complete_due(t0 + Duration::from_millis(1)).await;
    assert!(rx.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn disagreeing_expected_counts_fall_back_to_idle_time() {
    let (_dir, spool, mut a, mut rx) = setup();
    let t0 = Instant::now();
    a.add(&instance(&spool, "1.2.3", "1.2.3.1", "1.2.3.1.1", 1.0, Some(2)), t0);
    a.add(&instance(&spool, "1.2.3", "1.2.3.1", "1.2.3.1.2", 2.0, Some(5)), t0);
    a.complete_due(t0 + Duration::from_millis(1)).await;
    assert!(rx.try_recv().is_err());
}
