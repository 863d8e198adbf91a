//! The default bundle (models/spinefm-tiny, SYNTHETIC) end to end: its own
//! checks, and `spineagent analyze` on freshly generated phantom studies
//! (seeds never used in training) against their ground truth, with the SR
//! it writes checked by DCMTK and dicom3tools.

use std::path::Path;
use std::process::Command;

use spineagent_tests::*;

fn default_bundle() -> std::path::PathBuf {
    let b = root().join("models/spinefm-tiny");
    assert!(b.join("bundle.toml").exists(), "{} missing", b.display());
    b
}

#[test]
fn default_bundle_passes_its_checks() {
    let o = run(Command::new(bin()).args(["bundle", "check"]).arg(default_bundle()));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("7 models ok"), "{text}");
}

fn study(dir: &Path, seed: u64, vendor: &str, findings: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(bin());
    cmd.args([
        "phantom",
        "study",
        "--seed",
        &seed.to_string(),
        "--vendor",
        vendor,
        "--region",
        "lumbar",
    ]);
    for f in findings {
        cmd.args(["--finding", f]);
    }
    run(cmd.arg("--out").arg(dir));
    serde_json::from_slice(&std::fs::read(dir.join("truth.json")).unwrap()).unwrap()
}

fn analyze(dir: &Path, out: &Path) -> serde_json::Value {
    let o = run(Command::new(bin())
        .args(["analyze", "--json", "--threads", "2", "--bundle"])
        .arg(default_bundle())
        .arg("--out")
        .arg(out)
        .arg(dir));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Does the analysis hold `condition` at `level` (and `side`, when lateral)?
fn found(a: &serde_json::Value, condition: &str, level: &str, side: Option<&str>) -> bool {
    a["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["condition"] == condition && f["level"] == level && side.is_none_or(|s| f["side"] == s))
}

#[test]
fn analyze_finds_forced_findings_at_their_level_and_side() {
    require_tool("dciodvfy");
    require_tool("dsrdump");
    let tmp = tempfile::tempdir().unwrap();
    // (seed, vendor, forced finding, condition, level, side)
    let cases = [
        (
            880_001,
            "siemens",
            "herniation:L4-L5:left:severe:extrusion",
            "herniation",
            "L4-L5",
            Some("left"),
        ),
        (
            880_002,
            "ge",
            "canal_stenosis:L3-L4:central:severe",
            "canal_stenosis",
            "L3-L4",
            None,
        ),
        (880_003, "philips", "hemangioma:L2", "hemangioma", "L2", None),
    ];
    let mut hits = Vec::new();
    for (seed, vendor, forced, condition, level, side) in cases {
        let dir = tmp.path().join(format!("s{seed}"));
        let out = tmp.path().join(format!("o{seed}"));
        let truth = study(&dir, seed, vendor, &[forced]);
        let a = analyze(&dir, &out);
        assert_eq!(a["synthetic_model"], true);
        // Every usable series went through the path its tags name, and the
        // pixels agree with the tags.
        let series = a["series"].as_array().unwrap();
        assert!(series.len() >= 4, "{series:?}");
        for s in series {
            assert_eq!(s["tags_disagree"], false, "{}", s["description"]);
        }
        hits.push((forced, found(&a, condition, level, side), truth["findings"].clone()));
        // The SR: dciodvfy finds no error, dsrdump renders the finding codes.
        let sr = out.join("sr.dcm");
        let o = Command::new("dciodvfy").arg(&sr).output().unwrap();
        let text = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
        assert!(!text.lines().any(|l| l.starts_with("Error")), "{text}");
        let dump = String::from_utf8_lossy(&run(Command::new("dsrdump").arg(&sr)).stdout).to_string();
        assert!(dump.contains("Imaging Measurement Report"), "{dump}");
        assert!(dump.contains("UNVERIFIED"));
        assert!(
            std::fs::read_to_string(out.join("report.txt"))
                .unwrap()
                .contains("IMPRESSION:")
        );
    }
    let missed: Vec<_> = hits.iter().filter(|h| !h.1).collect();
    assert!(missed.is_empty(), "missed: {missed:?}");
}

fn wait_for_report(d: &Daemon, uid: &str) -> std::path::PathBuf {
    let dir = d.spool().join("reports").join(uid);
    d.wait_for("report", std::time::Duration::from_secs(60), || {
        dir.join("sr.dcm").exists()
    });
    dir
}

#[test]
fn daemon_reports_received_studies_including_one_completed_before_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = Opts {
        series_idle: 1.0,
        study_idle: 1.5,
        ..Opts::default()
    };
    // Study A completes while no bundle is configured: no report.
    let mut d = Daemon::start(opts.clone());
    let a = study(
        &tmp.path().join("a"),
        880_011,
        "siemens",
        &["herniation:L5-S1:right:severe:extrusion"],
    );
    let files_a: Vec<_> = std::fs::read_dir(tmp.path().join("a"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("series_"))
        .map(|e| e.path())
        .collect();
    let o = d.storescu("MODALITY", &["-q", "+sd"], &files_a);
    assert!(o.status.success(), "{}", stderr(&o));
    let uid_a = a["study_instance_uid"].as_str().unwrap().to_string();
    d.wait_for("study A complete", std::time::Duration::from_secs(30), || {
        d.spool().join("studies").join(&uid_a).join("study.json").exists()
    });
    assert!(!d.spool().join("reports").join(&uid_a).exists());
    let (status, _) = d.sigterm();
    assert!(status.success());
    // With the default bundle, the restart reports A first, then B as it arrives.
    d.reconfigure(&Opts {
        bundle: Some(default_bundle()),
        ..opts
    });
    d.spawn();
    let report_a = wait_for_report(&d, &uid_a);
    let b = study(&tmp.path().join("b"), 880_012, "ge", &["hemangioma:L3"]);
    let files_b: Vec<_> = std::fs::read_dir(tmp.path().join("b"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("series_"))
        .map(|e| e.path())
        .collect();
    let o = d.storescu("MODALITY", &["-q", "+sd"], &files_b);
    assert!(o.status.success(), "{}", stderr(&o));
    let report_b = wait_for_report(&d, b["study_instance_uid"].as_str().unwrap());
    for dir in [&report_a, &report_b] {
        let analysis: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("analysis.json")).unwrap()).unwrap();
        assert!(analysis["series"].as_array().unwrap().len() >= 4);
        assert!(
            std::fs::read_to_string(dir.join("report.txt"))
                .unwrap()
                .contains("IMPRESSION:")
        );
    }
    let reports: f64 = ["critical", "urgent", "routine"]
        .iter()
        .map(|c| d.metric(&format!("spineagent_reports_total{{category=\"{c}\"}}")))
        .sum();
    assert_eq!(reports, 2.0);
    assert!(d.log().contains("report written"));
}
