//! The DICOM Comprehensive 3D SR: TID 1500 (Imaging Measurement Report)
//! with one measurement group per finding (tracking identifier and UID,
//! finding site with laterality, finding code with severity, probability,
//! algorithm name and version, key image with a SCOORD point), the
//! narrative findings and impression, the triage category, the series the
//! models skipped, Contributing Equipment, and the evidence (every source
//! instance used). Patient and study modules are copied from a source
//! instance; UIDs are given by the caller (so a retry resends the same
//! object).

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::codes::{Code, Codes, LOCAL_SCHEME, code};
use super::compose::Report;
use super::elements::{PATIENT_AND_STUDY, code_item, copy, el, file_meta, seq};
use crate::analysis::Finding;

pub const COMPREHENSIVE_3D_SR: &str = "1.2.840.10008.5.1.4.1.1.88.34";
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.203766255250399777493205363430923222334";

/// One source image the report rests on.
#[derive(Debug, Clone)]
pub struct SourceImage {
    pub series_instance_uid: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
}

/// The key image of a finding and the point (column, row in image pixels)
/// where the finding is.
#[derive(Debug, Clone)]
pub struct KeyImage {
    pub image: SourceImage,
    pub point: (f32, f32),
}

pub struct SrFinding<'a> {
    pub finding: &'a Finding,
    pub tracking_uid: String,
    pub key_image: Option<KeyImage>,
}

pub struct SrInput<'a> {
    /// A source instance's header: patient and study modules are copied.
    pub source: &'a InMemDicomObject,
    pub report: &'a Report,
    pub findings: Vec<SrFinding<'a>>,
    pub evidence: Vec<SourceImage>,
    /// Series the models did not use: (description, reason).
    pub skipped: Vec<(String, String)>,
    pub codes: &'a Codes,
    pub algorithm_name: String,
    pub algorithm_version: String,
    /// Changes with the model bundle (AIR: Device UID in Contributing Equipment).
    pub device_uid: String,
    /// Who wrote the narrative text (deterministic composer or a model) and why.
    pub text_source: String,
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
    pub series_number: i32,
    /// DICOM DA and TM of creation.
    pub date: String,
    pub time: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SrError {
    #[error("building the SR file meta: {0}")]
    Meta(String),
}

/// A content item: relationship, value type, concept name, then the
/// value elements and children.
fn item(
    relationship: &str,
    value_type: &str,
    concept: &Code,
    mut value: Vec<DataElement<InMemDicomObject>>,
    children: Vec<InMemDicomObject>,
) -> InMemDicomObject {
    let mut elements = vec![
        el(tags::RELATIONSHIP_TYPE, VR::CS, relationship),
        el(tags::VALUE_TYPE, VR::CS, value_type),
        seq(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code_item(concept)]),
    ];
    elements.append(&mut value);
    if !children.is_empty() {
        elements.push(seq(tags::CONTENT_SEQUENCE, children));
    }
    InMemDicomObject::from_element_iter(elements)
}

fn container(relationship: &str, concept: &Code, children: Vec<InMemDicomObject>) -> InMemDicomObject {
    item(
        relationship,
        "CONTAINER",
        concept,
        vec![el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE")],
        children,
    )
}

fn text(relationship: &str, concept: &Code, value: &str) -> InMemDicomObject {
    item(
        relationship,
        "TEXT",
        concept,
        vec![el(tags::TEXT_VALUE, VR::UT, value)],
        vec![],
    )
}

fn coded(relationship: &str, concept: &Code, value: &Code, children: Vec<InMemDicomObject>) -> InMemDicomObject {
    item(
        relationship,
        "CODE",
        concept,
        vec![seq(tags::CONCEPT_CODE_SEQUENCE, vec![code_item(value)])],
        children,
    )
}

fn uidref(relationship: &str, concept: &Code, uid: &str) -> InMemDicomObject {
    item(
        relationship,
        "UIDREF",
        concept,
        vec![el(tags::UID, VR::UI, uid)],
        vec![],
    )
}

fn num(relationship: &str, concept: &Code, value: f32, unit: &Code) -> InMemDicomObject {
    let measured = InMemDicomObject::from_element_iter([
        el(tags::NUMERIC_VALUE, VR::DS, format!("{value:.4}")),
        seq(tags::MEASUREMENT_UNITS_CODE_SEQUENCE, vec![code_item(unit)]),
    ]);
    item(
        relationship,
        "NUM",
        concept,
        vec![seq(tags::MEASURED_VALUE_SEQUENCE, vec![measured])],
        vec![],
    )
}

fn sop_reference(image: &SourceImage) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, image.sop_class_uid.as_str()),
        el(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            image.sop_instance_uid.as_str(),
        ),
    ])
}

fn image_item(relationship: &str, concept: &Code, image: &SourceImage) -> InMemDicomObject {
    item(
        relationship,
        "IMAGE",
        concept,
        vec![seq(tags::REFERENCED_SOP_SEQUENCE, vec![sop_reference(image)])],
        vec![],
    )
}

fn scoord_point(relationship: &str, concept: &Code, key: &KeyImage) -> InMemDicomObject {
    item(
        relationship,
        "SCOORD",
        concept,
        vec![
            el(tags::GRAPHIC_TYPE, VR::CS, "POINT"),
            DataElement::new(
                tags::GRAPHIC_DATA,
                VR::FL,
                PrimitiveValue::F32([key.point.0, key.point.1].into_iter().collect()),
            ),
        ],
        vec![image_item(
            "SELECTED FROM",
            &code("121112", "DCM", "Source of Measurement"),
            &key.image,
        )],
    )
}

fn measurement_group(f: &SrFinding, input: &SrInput) -> InMemDicomObject {
    let codes = input.codes;
    let finding = f.finding;
    let mut site_children = Vec::new();
    if let Some(side) = codes.laterality(&finding.side) {
        site_children.push(coded(
            "HAS CONCEPT MOD",
            &code("272741003", "SCT", "Laterality"),
            &side,
            vec![],
        ));
    }
    let mut finding_children = Vec::new();
    if let Some(sev) = codes.severity(&finding.severity) {
        finding_children.push(coded(
            "HAS CONCEPT MOD",
            &code("246112005", "SCT", "Severity"),
            &sev,
            vec![],
        ));
    }
    let mut children = vec![
        text(
            "HAS OBS CONTEXT",
            &code("112039", "DCM", "Tracking Identifier"),
            &format!("{} {}", finding.level, finding.condition),
        ),
        uidref(
            "HAS OBS CONTEXT",
            &code("112040", "DCM", "Tracking Unique Identifier"),
            &f.tracking_uid,
        ),
        coded(
            "HAS CONCEPT MOD",
            &code("363698007", "SCT", "Finding Site"),
            &codes.level(&finding.level),
            site_children,
        ),
        coded(
            "CONTAINS",
            &code("121071", "DCM", "Finding"),
            &codes.condition(&finding.condition),
            finding_children,
        ),
        num(
            "CONTAINS",
            &code("PROBABILITY", LOCAL_SCHEME, "Probability of finding"),
            finding.probability,
            &code("1", "UCUM", "no units"),
        ),
        text(
            "HAS CONCEPT MOD",
            &code("111001", "DCM", "Algorithm Name"),
            &input.algorithm_name,
        ),
        text(
            "HAS CONCEPT MOD",
            &code("111003", "DCM", "Algorithm Version"),
            &input.algorithm_version,
        ),
    ];
    if let Some(key) = &f.key_image {
        children.push(scoord_point("CONTAINS", &code("111030", "DCM", "Image Region"), key));
    }
    container("CONTAINS", &code("125007", "DCM", "Measurement Group"), children)
}

fn content(input: &SrInput) -> Vec<InMemDicomObject> {
    let mut root = vec![
        coded(
            "HAS CONCEPT MOD",
            &code("121049", "DCM", "Language of Content Item and Descendants"),
            &code("eng", "RFC5646", "English"),
            vec![],
        ),
        coded(
            "HAS OBS CONTEXT",
            &code("121005", "DCM", "Observer Type"),
            &code("121007", "DCM", "Device"),
            vec![],
        ),
        uidref(
            "HAS OBS CONTEXT",
            &code("121012", "DCM", "Device Observer UID"),
            &input.device_uid,
        ),
        text(
            "HAS OBS CONTEXT",
            &code("121013", "DCM", "Device Observer Name"),
            "spineagent",
        ),
        coded(
            "HAS CONCEPT MOD",
            &code("121058", "DCM", "Procedure reported"),
            &code("MR_SPINE", LOCAL_SCHEME, "MRI of spine"),
            vec![],
        ),
    ];
    let groups = input.findings.iter().map(|f| measurement_group(f, input)).collect();
    root.push(container(
        "CONTAINS",
        &code("126010", "DCM", "Imaging Measurements"),
        groups,
    ));
    root.push(container(
        "CONTAINS",
        &code("121070", "DCM", "Findings"),
        vec![text(
            "CONTAINS",
            &code("121071", "DCM", "Finding"),
            &input.report.findings,
        )],
    ));
    root.push(container(
        "CONTAINS",
        &code("121072", "DCM", "Impressions"),
        vec![text(
            "CONTAINS",
            &code("121073", "DCM", "Impression"),
            &input.report.impression,
        )],
    ));
    let category = input.report.category;
    root.push(coded(
        "CONTAINS",
        &code("ACR_CATEGORY", LOCAL_SCHEME, "ACR actionable finding category"),
        &code(
            &format!("ACR_CAT{}", category as u8),
            LOCAL_SCHEME,
            &format!("Category {} ({})", category as u8, category.as_str()),
        ),
        vec![],
    ));
    root.push(text(
        "CONTAINS",
        &code("TEXT_SOURCE", LOCAL_SCHEME, "Report text source"),
        &input.text_source,
    ));
    for (description, reason) in &input.skipped {
        root.push(text(
            "CONTAINS",
            &code("SKIPPED_SERIES", LOCAL_SCHEME, "Series not analyzed"),
            &format!("{description}: {reason}"),
        ));
    }
    root
}

fn evidence(input: &SrInput, study_uid: &str) -> InMemDicomObject {
    let mut by_series: Vec<(String, Vec<InMemDicomObject>)> = Vec::new();
    for img in &input.evidence {
        match by_series.iter_mut().find(|(s, _)| *s == img.series_instance_uid) {
            Some((_, refs)) => refs.push(sop_reference(img)),
            None => by_series.push((img.series_instance_uid.clone(), vec![sop_reference(img)])),
        }
    }
    let series = by_series
        .into_iter()
        .map(|(uid, refs)| {
            InMemDicomObject::from_element_iter([
                el(tags::SERIES_INSTANCE_UID, VR::UI, uid),
                seq(tags::REFERENCED_SOP_SEQUENCE, refs),
            ])
        })
        .collect();
    InMemDicomObject::from_element_iter([
        el(tags::STUDY_INSTANCE_UID, VR::UI, study_uid),
        seq(tags::REFERENCED_SERIES_SEQUENCE, series),
    ])
}

pub fn build_sr(input: &SrInput) -> Result<FileDicomObject<InMemDicomObject>, SrError> {
    let mut e = vec![
        el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        el(tags::INSTANCE_CREATION_DATE, VR::DA, input.date.as_str()),
        el(tags::INSTANCE_CREATION_TIME, VR::TM, input.time.as_str()),
        el(tags::SOP_CLASS_UID, VR::UI, COMPREHENSIVE_3D_SR),
        el(tags::SOP_INSTANCE_UID, VR::UI, input.sop_instance_uid.as_str()),
        el(tags::MODALITY, VR::CS, "SR"),
        el(tags::SERIES_INSTANCE_UID, VR::UI, input.series_instance_uid.as_str()),
        el(tags::SERIES_NUMBER, VR::IS, input.series_number.to_string()),
        el(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            "spineagent draft report (SYNTHETIC model)",
        ),
        seq(tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, vec![]),
        el(tags::MANUFACTURER, VR::LO, "spineagent"),
        el(tags::MANUFACTURER_MODEL_NAME, VR::LO, input.algorithm_name.as_str()),
        el(tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION")),
        el(tags::INSTANCE_NUMBER, VR::IS, "1"),
        el(tags::CONTENT_DATE, VR::DA, input.date.as_str()),
        el(tags::CONTENT_TIME, VR::TM, input.time.as_str()),
        el(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"),
        el(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"),
        seq(tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]),
        el(tags::VALUE_TYPE, VR::CS, "CONTAINER"),
        seq(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code_item(&code("126000", "DCM", "Imaging Measurement Report"))],
        ),
        el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
        seq(
            tags::CONTENT_TEMPLATE_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                el(tags::MAPPING_RESOURCE, VR::CS, "DCMR"),
                el(tags::TEMPLATE_IDENTIFIER, VR::CS, "1500"),
            ])],
        ),
        seq(tags::CONTENT_SEQUENCE, content(input)),
        seq(
            tags::CONTRIBUTING_EQUIPMENT_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                el(tags::MANUFACTURER, VR::LO, "spineagent"),
                el(tags::MANUFACTURER_MODEL_NAME, VR::LO, input.algorithm_name.as_str()),
                el(tags::SOFTWARE_VERSIONS, VR::LO, input.algorithm_version.as_str()),
                el(tags::DEVICE_UID, VR::UI, input.device_uid.as_str()),
                seq(
                    tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                    vec![code_item(&code("1630", "99IHE", "Processing Algorithm"))],
                ),
            ])],
        ),
    ];
    copy(input.source, &mut e, PATIENT_AND_STUDY);
    let study_uid = input
        .source
        .element(tags::STUDY_INSTANCE_UID)
        .ok()
        .and_then(|e| e.to_str().ok().map(|s| s.trim_end_matches('\0').to_string()))
        .unwrap_or_default();
    e.push(seq(
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![evidence(input, &study_uid)],
    ));
    let meta = file_meta(COMPREHENSIVE_3D_SR, &input.sop_instance_uid).map_err(SrError::Meta)?;
    Ok(InMemDicomObject::from_element_iter(e).with_exact_meta(meta))
}
