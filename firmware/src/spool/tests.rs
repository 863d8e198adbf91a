//! The spool's acknowledgement contract, driven directly.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;

use super::*;

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const EXPLICIT: &str = "1.2.840.10008.1.2.1";

fn spool(dir: &Path, watermark_percent: f64, max_instance_bytes: u64) -> Spool {
    Spool::open(
        dir,
        SpoolLimits {
            max_instance_bytes,
            in_memory_instance_bytes: 1 << 20,
            watermark_percent,
        },
    )
    .unwrap()
}

/// A minimal valid MR data set (explicit VR little endian bytes).
fn mr_data_set(sop: &str, rows: u16) -> Vec<u8> {
    let e = |tag, vr, v: PrimitiveValue| DataElement::new(tag, vr, v);
    let obj = InMemDicomObject::from_element_iter([
        e(tags::SOP_CLASS_UID, VR::UI, MR.into()),
        e(tags::SOP_INSTANCE_UID, VR::UI, sop.into()),
        e(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3".into()),
        e(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.4".into()),
        e(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            PrimitiveValue::Strs(vec!["0".into(), "0".into(), "0".into()].into()),
        ),
        e(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            PrimitiveValue::Strs(["0", "1", "0", "0", "0", "-1"].map(String::from).to_vec().into()),
        ),
        e(
            tags::PIXEL_SPACING,
            VR::DS,
            PrimitiveValue::Strs(vec!["1".into(), "1".into()].into()),
        ),
        e(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        e(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2".into()),
        e(tags::ROWS, VR::US, PrimitiveValue::from(rows)),
        e(tags::COLUMNS, VR::US, PrimitiveValue::from(4u16)),
        e(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
        e(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16)),
        e(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0u16)),
        e(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(vec![0u8; 4 * 4 * 2])),
    ]);
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, &EXPLICIT_VR_LITTLE_ENDIAN.erased())
        .unwrap();
    out
}

async fn store(spool: &Spool, sop: &str, data_set: &[u8]) -> Result<StoredInstance, Rejection> {
    let mut p = spool.begin(MR, sop, EXPLICIT, "TEST").await?;
    for chunk in data_set.chunks(7) {
        p.write(chunk).await?;
    }
    p.commit().await
}

fn incoming(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("incoming")).unwrap().count()
}

#[tokio::test]
async fn commit_makes_the_instance_durable_under_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let s = spool(dir.path(), 100.0, 1 << 20);
    let data_set = mr_data_set("1.2.3.4.5", 4);
    let stored = store(&s, "1.2.3.4.5", &data_set).await.unwrap();
    assert!(!stored.duplicate);
    assert_eq!(stored.path, dir.path().join("studies/1.2.3/1.2.3.4/1.2.3.4.5.dcm"));
    let on_disk = std::fs::read(&stored.path).unwrap();
    let start = structure::data_set_offset(&on_disk).unwrap();
    assert_eq!(&on_disk[start..], &data_set[..], "data set stored byte for byte");
    assert_eq!(incoming(dir.path()), 0, "no temporary left");
    // Same SOP Instance UID again: acknowledged as a duplicate, file kept.
    let again = store(&s, "1.2.3.4.5", &data_set).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(incoming(dir.path()), 0);
}

#[tokio::test]
async fn above_the_watermark_c_store_gets_out_of_resources() {
    let dir = tempfile::tempdir().unwrap();
    let s = spool(dir.path(), 0.0001, 1 << 20);
    let err = s.begin(MR, "1.2.3.4.5", EXPLICIT, "TEST").await.unwrap_err();
    assert_eq!(err.status, 0xA700);
    assert_eq!(err.reason, "disk_watermark");
}

#[tokio::test]
async fn oversized_and_invalid_instances_are_refused_and_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let s = spool(dir.path(), 100.0, 100);
    let err = store(&s, "1.2.3.4.6", &mr_data_set("1.2.3.4.6", 4)).await.unwrap_err();
    assert_eq!((err.status, err.reason), (0xA700, "too_large"));

    let s = spool(dir.path(), 100.0, 1 << 20);
    let err = s.begin(MR, "1.2.3/../../x", EXPLICIT, "TEST").await.unwrap_err();
    assert_eq!((err.status, err.reason), (0xC000, "invalid_uid"));
    // Rows that the pixel data cannot fill.
    let err = store(&s, "1.2.3.4.7", &mr_data_set("1.2.3.4.7", 64)).await.unwrap_err();
    assert_eq!((err.status, err.reason), (0xC000, "pixel_data_mismatch"));
    // The data set names another instance than the command.
    let err = store(&s, "1.2.3.4.8", &mr_data_set("1.2.3.4.9", 4)).await.unwrap_err();
    assert_eq!((err.status, err.reason), (0xA900, "uid_mismatch"));
    // Garbage is refused quickly.
    let started = std::time::Instant::now();
    let err = store(&s, "1.2.3.4.10", &[0xfe; 300]).await.unwrap_err();
    assert_eq!((err.status, err.reason), (0xC000, "unparseable"));
    assert!(started.elapsed().as_millis() < 500);
    assert!(!dir.path().join("studies/1.2.3").exists());
}

#[test]
fn open_removes_partials_left_by_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    spool(dir.path(), 100.0, 1 << 20);
    std::fs::write(dir.path().join("incoming/1.2.3.99.1.tmp"), b"half").unwrap();
    spool(dir.path(), 100.0, 1 << 20);
    assert_eq!(incoming(dir.path()), 0);
}
