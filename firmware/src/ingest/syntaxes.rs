//! What the receiver negotiates: SOP classes and transfer syntaxes.
//!
//! A transfer syntax is offered only if this build can decode its pixel
//! data (checked against the codec registry at start-up), so a study is
//! refused at negotiation rather than accepted and failed later.

use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

pub const VERIFICATION: &str = "1.2.840.10008.1.1";
pub const MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4";
pub const ENHANCED_MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4.1";

/// SOP classes we store.
pub const STORAGE_SOP_CLASSES: &[&str] = &[MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE];

pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// Transfer syntaxes we want, in our preference order: uncompressed first
/// (cheapest to store and decode), then the lossless compressions, then lossy.
///
/// JPEG Extended (1.2.840.10008.1.2.4.51) is deliberately absent: the
/// registry lists a decoder for it, but jpeg-decoder fails on 12-bit
/// samples ("Unsupported SamplePrecision(12)", found by the transfer syntax
/// integration test), and 12-bit is what MR scanners put in it.
pub const WANTED_TRANSFER_SYNTAXES: &[(&str, &str)] = &[
    (EXPLICIT_VR_LE, "Explicit VR Little Endian"),
    (IMPLICIT_VR_LE, "Implicit VR Little Endian"),
    ("1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian"),
    ("1.2.840.10008.1.2.2", "Explicit VR Big Endian"),
    ("1.2.840.10008.1.2.4.70", "JPEG Lossless SV1"),
    ("1.2.840.10008.1.2.4.57", "JPEG Lossless"),
    ("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless"),
    ("1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless"),
    ("1.2.840.10008.1.2.5", "RLE Lossless"),
    ("1.2.840.10008.1.2.4.50", "JPEG Baseline"),
    ("1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless"),
    ("1.2.840.10008.1.2.4.91", "JPEG 2000"),
];

/// The wanted transfer syntaxes this build can fully decode (data set and
/// pixel data), with the ones it cannot and why.
pub fn decodable_transfer_syntaxes() -> (Vec<&'static str>, Vec<(&'static str, &'static str)>) {
    let mut ok = Vec::new();
    let mut missing = Vec::new();
    for &(uid, name) in WANTED_TRANSFER_SYNTAXES {
        match TransferSyntaxRegistry.get(uid) {
            Some(ts) if ts.can_decode_all() => ok.push(uid),
            _ => missing.push((uid, name)),
        }
    }
    (ok, missing)
}

pub fn transfer_syntax_name(uid: &str) -> &'static str {
    WANTED_TRANSFER_SYNTAXES
        .iter()
        .find(|(u, _)| *u == uid)
        .map(|(_, n)| *n)
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wanted_syntax_is_decodable_in_this_build() {
        let (ok, missing) = decodable_transfer_syntaxes();
        assert!(missing.is_empty(), "codecs missing for {missing:?}");
        assert_eq!(ok.len(), WANTED_TRANSFER_SYNTAXES.len());
    }

    #[test]
    fn unknown_syntaxes_are_not_offered() {
        let (ok, _) = decodable_transfer_syntaxes();
        // HTJ2K, MPEG-2 and 12-bit JPEG Extended are not in the list.
        assert!(!ok.contains(&"1.2.840.10008.1.2.4.201"));
        assert!(!ok.contains(&"1.2.840.10008.1.2.4.51"));
        assert!(!ok.contains(&"1.2.840.10008.1.2.4.100"));
    }
}
