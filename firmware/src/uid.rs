//! UID validation. A UID comes from the network and becomes a file name, so
//! it is checked against PS3.5 §9.1 before it touches the filesystem: digits
//! and dots only, no empty or leading-zero components, at most 64 characters.
//! That rules out `/`, `..` and every other path trick by construction.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid UID ({0})")]
pub struct InvalidUid(pub &'static str);

pub fn validate(uid: &str) -> Result<&str, InvalidUid> {
    if uid.is_empty() {
        return Err(InvalidUid("empty"));
    }
    if uid.len() > 64 {
        return Err(InvalidUid("longer than 64 characters"));
    }
    for component in uid.split('.') {
        if component.is_empty() {
            return Err(InvalidUid("empty component"));
        }
        if !component.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidUid("character other than digit or dot"));
        }
        if component.len() > 1 && component.starts_with('0') {
            return Err(InvalidUid("component with a leading zero"));
        }
    }
    Ok(uid)
}

/// Strips the NUL/space padding DICOM puts on odd-length UIDs.
pub fn trim(uid: &str) -> &str {
    uid.trim_end_matches(['\0', ' '])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_uids() {
        for uid in [
            "1.2.840.10008.5.1.4.1.1.4",
            "1.3.12.2.1107.5.2.30.25245.3.0",
            "0",
            "2.25.0",
        ] {
            assert!(validate(uid).is_ok(), "{uid}");
        }
    }

    #[test]
    fn rejects_path_tricks_and_malformed() {
        for uid in [
            "",
            "..",
            "../../etc/passwd",
            "1.2/3",
            "1..2",
            "1.2.",
            ".1",
            "1.02",
            "1.2a",
            "1 2",
        ] {
            assert!(validate(uid).is_err(), "{uid}");
        }
        assert!(validate(&"1.".repeat(40)).is_err());
    }

    #[test]
    fn trims_padding() {
        assert_eq!(trim("1.2.3\0"), "1.2.3");
    }
}
