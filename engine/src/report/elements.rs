//! Data element and code item builders shared by the SR and SEG writers.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_object::meta::{FileMetaTable, FileMetaTableBuilder};

use super::codes::Code;

pub(super) fn el(tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, value.into())
}

pub(super) fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

/// A Code Sequence item (value, scheme, meaning).
pub(super) fn code_item(c: &Code) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        el(tags::CODE_VALUE, VR::SH, c.value.as_str()),
        el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, c.scheme.as_str()),
        el(tags::CODE_MEANING, VR::LO, c.meaning.as_str()),
    ])
}

/// Copies `tags` from the source (empty when absent: the Type 2 rule).
pub(super) fn copy(source: &InMemDicomObject, out: &mut Vec<DataElement<InMemDicomObject>>, copied: &[(Tag, VR)]) {
    for (tag, vr) in copied {
        let value = source
            .element(*tag)
            .ok()
            .and_then(|e| e.to_str().ok().map(|s| s.trim_end_matches(['\0', ' ']).to_string()))
            .unwrap_or_default();
        out.push(el(*tag, *vr, value));
    }
}

/// Patient and General Study attributes every derived object copies.
pub(super) const PATIENT_AND_STUDY: &[(Tag, VR)] = &[
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
    (tags::STUDY_INSTANCE_UID, VR::UI),
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_ID, VR::SH),
    (tags::ACCESSION_NUMBER, VR::SH),
    (tags::STUDY_DESCRIPTION, VR::LO),
];

/// Explicit VR little endian file meta for an object this product writes.
pub(super) fn file_meta(sop_class: &str, sop_instance: &str) -> Result<FileMetaTable, String> {
    FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .transfer_syntax("1.2.840.10008.1.2.1")
        .implementation_class_uid(super::sr::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name("SPINEAGENT")
        .build()
        .map_err(|e| e.to_string())
}
