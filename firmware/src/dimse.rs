//! DIMSE command sets (PS3.7): decoding requests and encoding responses.
//!
//! `dicom-ul` stops at PDUs; everything above (which command, which status)
//! lives here as pure functions over bytes, so the association handler and
//! the SCU share one codec and tests can feed it crafted bytes.
//! Command sets are always Implicit VR Little Endian.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

/// CommandField values we handle.
pub mod command_field {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_ECHO_RSP: u16 = 0x8030;
}

/// CommandDataSetType: "no data set present".
pub const NO_DATA_SET: u16 = 0x0101;

/// Status codes (PS3.7 Annex C, PS3.4 B.2.3).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: SOP class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Unrecognized operation (a command we do not implement).
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    /// Refused: Out of Resources (storage).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: Data Set does not match SOP Class.
    pub const DATA_SET_MISMATCH: u16 = 0xA900;
    /// Error: Cannot understand.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DimseError {
    #[error("command set is not a valid implicit VR little endian data set: {0}")]
    Decode(String),
    #[error("command set lacks {0}")]
    Missing(&'static str),
    #[error("cannot encode command set: {0}")]
    Encode(String),
}

/// A decoded request command set (the fields this node acts on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command_field: u16,
    pub message_id: u16,
    pub affected_sop_class_uid: String,
    /// Only C-STORE has one.
    pub affected_sop_instance_uid: Option<String>,
    pub has_data_set: bool,
}

/// A decoded response command set (what the SCU side reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub command_field: u16,
    pub message_id_responded_to: u16,
    pub status: u16,
    pub error_comment: Option<String>,
}

fn read_command(bytes: &[u8]) -> Result<InMemDicomObject, DimseError> {
    InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| DimseError::Decode(e.to_string()))
}

fn get_u16(obj: &InMemDicomObject, tag: Tag, name: &'static str) -> Result<u16, DimseError> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<u16>().ok())
        .ok_or(DimseError::Missing(name))
}

fn get_uid(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let e = obj.element_opt(tag).ok().flatten()?;
    let s = e.to_str().ok()?;
    let s = s.trim_end_matches(['\0', ' ']).to_string();
    (!s.is_empty()).then_some(s)
}

pub fn decode_request(bytes: &[u8]) -> Result<Request, DimseError> {
    let obj = read_command(bytes)?;
    let command_field = get_u16(&obj, tags::COMMAND_FIELD, "CommandField (0000,0100)")?;
    let message_id = get_u16(&obj, tags::MESSAGE_ID, "MessageID (0000,0110)")?;
    let data_set_type = get_u16(&obj, tags::COMMAND_DATA_SET_TYPE, "CommandDataSetType (0000,0800)")?;
    let affected_sop_class_uid = get_uid(&obj, tags::AFFECTED_SOP_CLASS_UID).unwrap_or_default();
    Ok(Request {
        command_field,
        message_id,
        affected_sop_class_uid,
        affected_sop_instance_uid: get_uid(&obj, tags::AFFECTED_SOP_INSTANCE_UID),
        has_data_set: data_set_type != NO_DATA_SET,
    })
}

pub fn decode_response(bytes: &[u8]) -> Result<Response, DimseError> {
    let obj = read_command(bytes)?;
    let error_comment = obj
        .element_opt(tags::ERROR_COMMENT)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| s.trim().to_string()));
    Ok(Response {
        command_field: get_u16(&obj, tags::COMMAND_FIELD, "CommandField (0000,0100)")?,
        message_id_responded_to: get_u16(
            &obj,
            tags::MESSAGE_ID_BEING_RESPONDED_TO,
            "MessageIDBeingRespondedTo (0000,0120)",
        )?,
        status: get_u16(&obj, tags::STATUS, "Status (0000,0900)")?,
        error_comment,
    })
}

/// Encodes elements (group 0000) with the leading CommandGroupLength.
fn encode(elements: Vec<DataElement<InMemDicomObject>>) -> Result<Vec<u8>, DimseError> {
    let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let body_obj = InMemDicomObject::from_element_iter(elements);
    let mut body = Vec::with_capacity(256);
    body_obj
        .write_dataset_with_ts(&mut body, &ts)
        .map_err(|e| DimseError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(body.len() + 12);
    // (0000,0000) UL, implicit VR: tag, 4-byte length, value.
    out.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0]);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

fn uid_element(tag: Tag, uid: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::UI, PrimitiveValue::from(uid))
}

fn u16_element(tag: Tag, v: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

/// Error comments are LO: at most 64 characters.
fn clip_comment(comment: &str) -> String {
    comment.chars().filter(|c| *c != '\\').take(64).collect()
}

/// A response to `request` with the given status.
pub fn encode_response(request: &Request, status: u16, error_comment: Option<&str>) -> Result<Vec<u8>, DimseError> {
    let mut elements = Vec::with_capacity(7);
    if !request.affected_sop_class_uid.is_empty() {
        elements.push(uid_element(
            tags::AFFECTED_SOP_CLASS_UID,
            &request.affected_sop_class_uid,
        ));
    }
    elements.push(u16_element(tags::COMMAND_FIELD, request.command_field | 0x8000));
    elements.push(u16_element(tags::MESSAGE_ID_BEING_RESPONDED_TO, request.message_id));
    elements.push(u16_element(tags::COMMAND_DATA_SET_TYPE, NO_DATA_SET));
    elements.push(u16_element(tags::STATUS, status));
    if let Some(comment) = error_comment.filter(|_| status != status::SUCCESS) {
        elements.push(DataElement::new(
            tags::ERROR_COMMENT,
            VR::LO,
            PrimitiveValue::from(clip_comment(comment)),
        ));
    }
    if let Some(uid) = &request.affected_sop_instance_uid {
        elements.push(uid_element(tags::AFFECTED_SOP_INSTANCE_UID, uid));
    }
    encode(elements)
}

pub fn encode_echo_request(message_id: u16) -> Result<Vec<u8>, DimseError> {
    encode(vec![
        uid_element(tags::AFFECTED_SOP_CLASS_UID, crate::ingest::syntaxes::VERIFICATION),
        u16_element(tags::COMMAND_FIELD, command_field::C_ECHO_RQ),
        u16_element(tags::MESSAGE_ID, message_id),
        u16_element(tags::COMMAND_DATA_SET_TYPE, NO_DATA_SET),
    ])
}

pub fn encode_store_request(
    message_id: u16,
    sop_class_uid: &str,
    sop_instance_uid: &str,
) -> Result<Vec<u8>, DimseError> {
    encode(vec![
        uid_element(tags::AFFECTED_SOP_CLASS_UID, sop_class_uid),
        u16_element(tags::COMMAND_FIELD, command_field::C_STORE_RQ),
        u16_element(tags::MESSAGE_ID, message_id),
        u16_element(tags::PRIORITY, 0x0000),
        // Any value other than 0x0101 means a data set follows.
        u16_element(tags::COMMAND_DATA_SET_TYPE, 0x0000),
        uid_element(tags::AFFECTED_SOP_INSTANCE_UID, sop_instance_uid),
    ])
}

/// Whether a status is a success or a warning (PS3.4: 0x0000, 0x0001,
/// 0xB000-0xBFFF), i.e. the instance was stored.
pub fn is_stored(status: u16) -> bool {
    status == status::SUCCESS || status == 0x0001 || (0xB000..=0xBFFF).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_request_round_trips() {
        let bytes = encode_store_request(7, "1.2.840.10008.5.1.4.1.1.4", "1.2.3.4").unwrap();
        let req = decode_request(&bytes).unwrap();
        assert_eq!(req.command_field, command_field::C_STORE_RQ);
        assert_eq!(req.message_id, 7);
        assert_eq!(req.affected_sop_class_uid, "1.2.840.10008.5.1.4.1.1.4");
        assert_eq!(req.affected_sop_instance_uid.as_deref(), Some("1.2.3.4"));
        assert!(req.has_data_set);
        // group length covers exactly the rest of the command
        let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 12);
    }

    #[test]
    fn response_carries_status_and_clipped_comment() {
        let req = decode_request(&encode_store_request(3, "1.2.3", "1.2.3.4.5").unwrap()).unwrap();
        let long = "x".repeat(100);
        let rsp = decode_response(&encode_response(&req, status::CANNOT_UNDERSTAND, Some(&long)).unwrap()).unwrap();
        assert_eq!(rsp.command_field, command_field::C_STORE_RSP);
        assert_eq!(rsp.message_id_responded_to, 3);
        assert_eq!(rsp.status, status::CANNOT_UNDERSTAND);
        assert_eq!(rsp.error_comment.unwrap().len(), 64);
    }

    #[test]
    fn echo_has_no_data_set() {
        let req = decode_request(&encode_echo_request(1).unwrap()).unwrap();
        assert_eq!(req.command_field, command_field::C_ECHO_RQ);
        assert!(!req.has_data_set);
        assert!(req.affected_sop_instance_uid.is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_request(&[0xff; 7]).is_err());
        assert!(decode_request(&[]).is_err());
        let mut truncated = encode_echo_request(1).unwrap();
        truncated.truncate(20);
        assert!(decode_request(&truncated).is_err());
    }

    #[test]
    fn warnings_count_as_stored() {
        assert!(is_stored(0x0000) && is_stored(0xB007));
        assert!(!is_stored(0xA700) && !is_stored(0xC000));
    }
}
