//! Phantom studies end to end: every file passes dciodvfy, and the daemon
//! receives a study of each vendor style and classifies every series
//! (sequence, plane, region) from its tags alone as the truth says.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use spineagent::assemble::StudyReady;
use spineagent_tests::*;

fn make_study(dir: &Path, seed: u64, vendor: &str, region: &str) -> serde_json::Value {
    phantom_study(dir, seed, vendor, region, &[], &["--dixon", "--contrast", "--pd"])
}

#[test]
fn every_phantom_file_passes_dciodvfy() {
    require_tool("dciodvfy");
    let tmp = tempfile::tempdir().unwrap();
    for (i, vendor) in ["siemens", "ge", "philips", "canon"].iter().enumerate() {
        let dir = tmp.path().join(vendor);
        let truth = make_study(&dir, 100 + i as u64, vendor, "cervical");
        for series in truth["series"].as_array().unwrap() {
            for file in series["files"].as_array().unwrap() {
                let path = dir.join(file.as_str().unwrap());
                let o = Command::new("dciodvfy").arg(&path).output().unwrap();
                let text = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
                let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("Error")).collect();
                assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            }
        }
    }
}

#[test]
fn daemon_classifies_every_phantom_series_from_its_tags() {
    let d = Daemon::start(Opts {
        series_idle: 1.0,
        study_idle: 2.0,
        ..Opts::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("siemens", "lumbar"),
        ("ge", "cervical"),
        ("philips", "thoracic"),
        ("canon", "lumbar"),
        ("ge", "whole_spine"),
    ];
    let mut truths = Vec::new();
    for (i, (vendor, region)) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("{vendor}-{region}"));
        let truth = make_study(&dir, 200 + i as u64, vendor, region);
        // The directory also holds labels and JSON; only DICOM files are sent.
        let files: Vec<_> = truth["series"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| {
                s["files"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| dir.join(f.as_str().unwrap()))
            })
            .collect();
        let mut cmd = Command::new(bin());
        cmd.arg("send")
            .args(&files)
            .args(["--to", &d.ae(), "--aet", "PHANTOM_MR"]);
        run(&mut cmd);
        truths.push(truth);
    }
    let studies = d.spool().join("studies");
    d.wait_for("all phantom studies complete", Duration::from_secs(60), || {
        truths.iter().all(|t| {
            studies
                .join(t["study_instance_uid"].as_str().unwrap())
                .join("study.json")
                .exists()
        })
    });
    let mut mismatches = Vec::new();
    for t in &truths {
        let uid = t["study_instance_uid"].as_str().unwrap();
        let study: StudyReady =
            serde_json::from_slice(&std::fs::read(studies.join(uid).join("study.json")).unwrap()).unwrap();
        let region = t["region"].as_str().unwrap();
        let vendor = t["vendor"].as_str().unwrap();
        for s in t["series"].as_array().unwrap() {
            let got = study
                .series
                .iter()
                .find(|g| g.series_instance_uid == s["series_instance_uid"].as_str().unwrap())
                .unwrap_or_else(|| panic!("series {} of {uid} not assembled", s["series_number"]));
            let want_family = s["family"].as_str().unwrap();
            let want_plane = s["plane"].as_str().unwrap();
            let family = got.class.family.as_str();
            let plane = got.class.plane.map(|p| p.as_str()).unwrap_or("none");
            let ok = family == want_family
                && (want_plane == "localizer" || plane == want_plane)
                && (want_family == "localizer" || got.class.region.as_str() == region)
                && got.instance_count == s["slices"].as_u64().unwrap() as usize;
            if !ok {
                mismatches.push(format!(
                    "{vendor} {region} series {} {:?}: got {family}/{plane}/{} ({} instances), want {want_family}/{want_plane}/{region}",
                    s["series_number"],
                    s["description"],
                    got.class.region.as_str(),
                    got.instance_count,
                ));
            }
            // Localizers are skipped; every other phantom series is usable.
            let usable_expected = want_family != "localizer";
            if got.usable() != usable_expected {
                mismatches.push(format!(
                    "{vendor} {region} series {}: usable={} ({:?})",
                    s["series_number"],
                    got.usable(),
                    got.class.skip_reason
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn preprocess_writes_one_tensor_per_series_stack_in_slice_order() {
    let tmp = tempfile::tempdir().unwrap();
    let study = tmp.path().join("study");
    let truth = make_study(&study, 300, "philips", "lumbar");
    let out = tmp.path().join("tensors");
    let mut cmd = Command::new(bin());
    cmd.arg("preprocess").arg(&study).arg("--out").arg(&out);
    run(&mut cmd);
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let entries = index.as_array().unwrap();
    let total_files: usize = truth["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["files"].as_array().unwrap().len())
        .sum();
    let total_slices: usize = entries.iter().map(|e| e["shape"][0].as_u64().unwrap() as usize).sum();
    assert_eq!(total_slices, total_files, "every slice lands in exactly one tensor");
    // The axial series is one tensor per disc block (5 lumbar discs).
    let axial_uid = truth["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["plane"] == "axial")
        .unwrap()["series_instance_uid"]
        .clone();
    assert_eq!(
        entries.iter().filter(|e| e["series_instance_uid"] == axial_uid).count(),
        5
    );
    for e in entries {
        let shape: Vec<u64> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(&shape[1..], &[3, 224, 224]);
        let bytes = std::fs::metadata(out.join(e["tensor"].as_str().unwrap()))
            .unwrap()
            .len();
        assert!(bytes >= shape.iter().product::<u64>() * 4, "tensor file too small");
        // Slices follow their positions along the normal.
        let files: Vec<std::path::PathBuf> = e["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().into())
            .collect();
        let along: Vec<f64> = files
            .iter()
            .map(|f| {
                use dicom_dictionary_std::tags;
                let o = dicom_object::open_file(f).unwrap();
                let p = o
                    .element(tags::IMAGE_POSITION_PATIENT)
                    .unwrap()
                    .to_multi_float64()
                    .unwrap();
                let r = o
                    .element(tags::IMAGE_ORIENTATION_PATIENT)
                    .unwrap()
                    .to_multi_float64()
                    .unwrap();
                let n = [
                    r[1] * r[5] - r[2] * r[4],
                    r[2] * r[3] - r[0] * r[5],
                    r[0] * r[4] - r[1] * r[3],
                ];
                p[0] * n[0] + p[1] * n[1] + p[2] * n[2]
            })
            .collect();
        assert!(
            along.windows(2).all(|w| w[0] <= w[1] + 1e-6),
            "{:?}: {along:?}",
            e["tensor"]
        );
    }
}
