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
    // The seven of the analysis, plus the report agent's projector where the
    // bundle has one: every model the manifest names is checked.
    let manifest = spineagent_engine::bundle::Bundle::open(&default_bundle())
        .unwrap()
        .manifest;
    assert!(manifest.models.len() >= 7);
    assert!(text.contains(&format!("{} models ok", manifest.models.len())), "{text}");
}

/// A bundle whose retrieval index is in another space than the embedding
/// that queries it (rows half as wide) is refused with a clear error, not
/// searched: similar cases from such an index would be noise.
#[test]
fn analyze_refuses_a_retrieval_index_of_another_width() {
    use spineagent_engine::{bundle::sha256_file, npy};
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    copy_dir(&default_bundle(), &bundle);
    let index_path = bundle.join("retrieval_index.npy");
    let old_hash = sha256_file(&index_path).unwrap();
    let index = npy::read_f32(&index_path).unwrap();
    let (rows, width) = (index.shape[0], index.shape[1]);
    let narrow = npy::ArrayF32 {
        shape: vec![rows, width / 2],
        data: index.data.chunks(width).flat_map(|r| r[..width / 2].to_vec()).collect(),
    };
    npy::write_f32(&index_path, &narrow).unwrap();
    let manifest = std::fs::read_to_string(bundle.join("bundle.toml")).unwrap();
    let new_hash = sha256_file(&index_path).unwrap();
    std::fs::write(bundle.join("bundle.toml"), manifest.replace(&old_hash, &new_hash)).unwrap();

    let dir = tmp.path().join("study");
    study(&dir, 880_101, "siemens", &[]);
    let o = Command::new(bin())
        .args(["analyze", "--json", "--threads", "2", "--bundle"])
        .arg(&bundle)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "retrieval index rows are {} wide, the retrieval embedding {width}",
            width / 2
        )),
        "{err}"
    );
}

/// The cross-reference of axial levels (engine/src/analysis/crossref.rs)
/// runs for bundles whose roster names it and only for them: the default
/// bundle's answers change when the roster entry is taken out (its condition
/// agents then see the slice agents' own axial levels, as 0.6.0's did), and
/// the sagittal stacks, which it never touches, keep their attention.
#[test]
fn axial_levels_come_from_the_sagittal_stacks_only_where_the_roster_says() {
    let tmp = tempfile::tempdir().unwrap();
    let without = tmp.path().join("bundle");
    copy_dir(&default_bundle(), &without);
    let manifest = std::fs::read_to_string(without.join("bundle.toml")).unwrap();
    let entry = "level_cross_reference = [\"slice_agents\", \"series_pool\"]\n";
    assert!(manifest.contains(entry), "the default bundle names the cross-reference");
    std::fs::write(without.join("bundle.toml"), manifest.replace(entry, "")).unwrap();

    let dir = tmp.path().join("study");
    study(&dir, 880_031, "siemens", &["herniation:L4-L5:left:severe:extrusion"]);
    let with = analyze(&dir, &tmp.path().join("with"));
    let o = run(Command::new(bin())
        .args(["analyze", "--json", "--threads", "2", "--bundle"])
        .arg(&without)
        .arg("--out")
        .arg(tmp.path().join("without"))
        .arg(&dir));
    let plain: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let probabilities = |a: &serde_json::Value| -> Vec<f64> {
        a["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row[2].as_f64().unwrap())
            .collect()
    };
    let (p, q) = (probabilities(&with), probabilities(&plain));
    assert_eq!(p.len(), q.len());
    let moved = p.iter().zip(&q).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(
        moved > 1e-3,
        "the cross-reference changed nothing (max difference {moved})"
    );
    for (a, b) in with["series"]
        .as_array()
        .unwrap()
        .iter()
        .zip(plain["series"].as_array().unwrap())
    {
        if a["plane"] == "sagittal" {
            assert_eq!(a["attention"], b["attention"], "{}", a["description"]);
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn study(dir: &Path, seed: u64, vendor: &str, findings: &[&str]) -> serde_json::Value {
    phantom_study(dir, seed, vendor, "lumbar", findings, &[])
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

/// The acceptance test: forced findings come out at their level and
/// side, and every series' pixels agree with its tags. The SYNTHETIC bundle
/// 0.11.0 passes it (2026-12-02): canal stenosis at L3-L4 (0.98),
/// hemangioma at L2 (0.96), and the herniation at L4-L5 on the left
/// (0.806), its most probable level and side (L2-L3 0.64, L5-S1 0.49), just
/// over herniation's threshold (0.800, the best F1 on 228 held-out
/// studies). The margin is thin: the same agents with thresholds from 78
/// studies (0.842) miss it. Earlier bundles missed it: 0.9.0 scored L4-L5
/// 0.51 and L5-S1 0.54 (threshold 0.77), 0.8.0 0.60 and 0.74, 0.7.0 0.51
/// and 0.78. 0.11.0's slice agents, trained on 120 more phantom studies rich
/// in extrusions, find the fragment behind the L5 body on the sagittal T1
/// and STIR and the axial T2 (lesion peaks 0.97, 0.86, 0.86, where 0.9.0's
/// axial T2 reached 0.2), not yet on the sagittal T2 (0.15).
#[test]
fn analyze_finds_forced_findings_at_their_level_and_side() {
    let tmp = tempfile::tempdir().unwrap();
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
    let mut missed = Vec::new();
    for (seed, vendor, forced, condition, level, side) in cases {
        let dir = tmp.path().join(format!("s{seed}"));
        study(&dir, seed, vendor, &[forced]);
        let a = analyze(&dir, &tmp.path().join(format!("o{seed}")));
        for s in a["series"].as_array().unwrap() {
            assert_eq!(s["tags_disagree"], false, "{}", s["description"]);
        }
        if !found(&a, condition, level, side) {
            missed.push(forced);
        }
    }
    assert!(missed.is_empty(), "missed: {missed:?}");
}

/// What the bundle must do on any study: analyze every usable stack through
/// the path its tags name, answer only at levels the study shows and with
/// conditions of the right kind (disc or vertebra), point key images at
/// analyzed slices, and write an SR and SEG that DCMTK and dicom3tools accept.
#[test]
fn analyze_writes_a_valid_report_sr_and_seg_for_unseen_phantom_studies() {
    require_tool("dciodvfy");
    require_tool("dsrdump");
    let tmp = tempfile::tempdir().unwrap();
    for (seed, vendor, forced) in [
        (880_021, "siemens", "herniation:L4-L5:left:severe:extrusion"),
        (880_022, "ge", "hemangioma:L2"),
    ] {
        let dir = tmp.path().join(format!("s{seed}"));
        let out = tmp.path().join(format!("o{seed}"));
        let truth = study(&dir, seed, vendor, &[forced]);
        let a = analyze(&dir, &out);
        assert_eq!(a["synthetic_model"], true);
        let series = a["series"].as_array().unwrap();
        // Sagittal T1, T2, STIR and the axial T2 blocks (one stack per disc).
        let usable = truth["series"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["family"] != "localizer")
            .count();
        assert!(
            series.len() >= usable,
            "{} stacks for {usable} usable series",
            series.len()
        );
        for s in series {
            let want = match s["family"].as_str().unwrap() {
                "t1" => "encoder_t1",
                "t2" => "encoder_t2",
                _ => "synthesizer",
            };
            assert_eq!(s["path"], want);
            let attention: f64 = s["attention"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .sum();
            assert!((attention - 1.0).abs() < 1e-3, "attention sums to {attention}");
        }
        let covered: Vec<&str> = a["levels_covered"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(covered.contains(&"L4-L5") && covered.contains(&"L2"), "{covered:?}");
        assert!(
            !covered.iter().any(|l| l.starts_with('C')),
            "cervical levels in a lumbar study: {covered:?}"
        );
        for f in a["findings"].as_array().unwrap() {
            let level = f["level"].as_str().unwrap();
            assert!(covered.contains(&level), "{f}");
            let disc = level.contains('-');
            let disc_condition = !matches!(
                f["condition"].as_str().unwrap(),
                "hemangioma"
                    | "marrow_edema"
                    | "marrow_lesion"
                    | "compression_fracture"
                    | "pars_defect"
                    | "perineural_cyst"
            );
            assert_eq!(disc, disc_condition, "{f}");
            assert!(f["probability"].as_f64().unwrap() >= 0.5);
        }
        assert!(
            a["structured_tokens"]
                .as_str()
                .unwrap()
                .starts_with("<classification>{")
        );
        // The SR and SEG: no dciodvfy error; dsrdump renders the SR.
        for name in ["sr.dcm", "seg.dcm"] {
            let o = Command::new("dciodvfy").arg(out.join(name)).output().unwrap();
            let text = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
            assert!(!text.lines().any(|l| l.starts_with("Error")), "{name}: {text}");
        }
        let dump = String::from_utf8_lossy(&run(Command::new("dsrdump").arg(out.join("sr.dcm"))).stdout).to_string();
        assert!(dump.contains("Imaging Measurement Report"), "{dump}");
        assert!(dump.contains("UNVERIFIED"));
        assert!(dump.contains("Impressions"));
        assert!(
            std::fs::read_to_string(out.join("report.txt"))
                .unwrap()
                .contains("IMPRESSION:")
        );
    }
}

fn wait_for_report(d: &Daemon, uid: &str) -> std::path::PathBuf {
    let dir = d.spool().join("reports").join(uid);
    // Generous: CI runs the heavy tests side by side on two cores.
    d.wait_for("report", std::time::Duration::from_secs(300), || {
        dir.join("sr.dcm").exists()
    });
    dir
}

/// A study whose localizer arrives first and the rest only after the study
/// idle time completes with nothing usable (no report, spool/no-report);
/// when the rest arrives the study completes again and is reported. Found
/// by bench/report_latency.sh with four scanners sending at once on two
/// cores: one such study never got an SR.
#[test]
fn daemon_reports_a_study_whose_usable_series_came_after_it_first_completed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(Opts {
        series_idle: 0.5,
        study_idle: 1.0,
        bundle: Some(default_bundle()),
        ..Opts::default()
    });
    let truth = study(&tmp.path().join("s"), 880_041, "siemens", &["hemangioma:L3"]);
    let uid = truth["study_instance_uid"].as_str().unwrap().to_string();
    let (localizer, rest): (Vec<_>, Vec<_>) = phantom_series_dirs(&tmp.path().join("s"))
        .into_iter()
        .partition(|p| p.ends_with("series_01"));
    assert_eq!(truth["series"][0]["family"], "localizer");
    let o = d.storescu("MODALITY", &["-q", "+sd"], &localizer);
    assert!(o.status.success(), "{}", stderr(&o));
    let marker = d.spool().join("no-report").join(format!("{uid}.txt"));
    d.wait_for("no-report verdict", std::time::Duration::from_secs(30), || {
        marker.exists()
    });
    let o = d.storescu("MODALITY", &["-q", "+sd"], &rest);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = wait_for_report(&d, &uid);
    assert!(report.join("sr.dcm").exists());
    assert!(!marker.exists(), "the stale verdict stays behind");
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
    let files_a = phantom_series_dirs(&tmp.path().join("a"));
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
    let files_b = phantom_series_dirs(&tmp.path().join("b"));
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
    // The report directory appears (rename) just before the stage counts it.
    let reports = || -> f64 {
        ["critical", "urgent", "routine"]
            .iter()
            .map(|c| d.metric(&format!("spineagent_reports_total{{category=\"{c}\"}}")))
            .sum()
    };
    d.wait_for("two reports counted", std::time::Duration::from_secs(30), || {
        reports() >= 2.0
    });
    assert_eq!(reports(), 2.0);
    assert!(d.log().contains("report written"));
}
