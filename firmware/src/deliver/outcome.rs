//! What one delivery attempt means for the job: done, try again later, or
//! never (dead letter). Kept apart from the sending so the rules can be
//! read and tested on their own.

use crate::dimse;
use crate::scu::{ScuError, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every file acknowledged (success or warning).
    Delivered,
    /// Worth retrying: the peer is down, busy, out of resources, timed out.
    Transient(String),
    /// Retrying cannot help: the peer refused the association for good, does
    /// not take the SOP class, or says the object itself is wrong.
    Permanent(String),
}

/// PS3.4 Annex B C-STORE failures that depend on the object, not the
/// moment: SOP class not supported (0x0122), data set does not match SOP
/// class (0xA9xx), cannot understand (0xCxxx).
fn status_is_permanent(status: u16) -> bool {
    status == dimse::status::SOP_CLASS_NOT_SUPPORTED || (status & 0xFF00) == 0xA900 || (status & 0xF000) == 0xC000
}

/// Classifies the per-file answers of one association.
pub fn from_results(results: &[StoreResult]) -> Outcome {
    let mut transient = None;
    for r in results {
        if r.stored() {
            continue;
        }
        let name = r
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let why = format!(
            "{name}: C-STORE status 0x{:04X}{}",
            r.status,
            r.error_comment
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default()
        );
        if status_is_permanent(r.status) {
            return Outcome::Permanent(why);
        }
        transient.get_or_insert(why);
    }
    match transient {
        Some(why) => Outcome::Transient(why),
        None => Outcome::Delivered,
    }
}

/// Classifies an attempt that failed as a whole.
pub fn from_error(e: &ScuError) -> Outcome {
    use dicom_ul::association::Error as Ul;
    use dicom_ul::pdu::AssociationRJResult;
    let why = format!("{e}{}", source_text(e));
    match e {
        ScuError::Associate { source, .. } => match source {
            Ul::Rejected { association_rj, .. } if association_rj.result == AssociationRJResult::Permanent => {
                Outcome::Permanent(why)
            }
            Ul::NoAcceptedPresentationContexts { .. } => Outcome::Permanent(why),
            _ => Outcome::Transient(why),
        },
        // The report's own files are unreadable: no retry brings them back.
        ScuError::File { .. } | ScuError::TooManyContexts(_) => Outcome::Permanent(why),
        _ => Outcome::Transient(why),
    }
}

fn source_text(e: &ScuError) -> String {
    let mut out = String::new();
    let mut cur = std::error::Error::source(e);
    while let Some(s) = cur {
        out.push_str(&format!(": {s}"));
        cur = s.source();
    }
    out
}

/// Seconds to wait before attempt `attempts + 1`, after `attempts` failures:
/// initial, 2x, 4x ... capped.
pub fn backoff(attempts: u32, initial: f64, max: f64) -> f64 {
    let exp = attempts.saturating_sub(1).min(30) as i32;
    (initial * 2f64.powi(exp)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn result(status: u16) -> StoreResult {
        StoreResult {
            path: PathBuf::from("/r/sr.dcm"),
            sop_instance_uid: "1.2".into(),
            status,
            error_comment: None,
        }
    }

    #[test]
    fn statuses_are_classified_by_ps3_4() {
        assert_eq!(from_results(&[result(0x0000), result(0xB000)]), Outcome::Delivered);
        assert!(matches!(from_results(&[result(0xA700)]), Outcome::Transient(_)));
        assert!(matches!(from_results(&[result(0x0110)]), Outcome::Transient(_)));
        for s in [0x0122, 0xA900, 0xA950, 0xC000, 0xC123] {
            let o = from_results(&[result(0x0000), result(s)]);
            assert!(
                matches!(&o, Outcome::Permanent(w) if w.contains("sr.dcm")),
                "{s:04X}: {o:?}"
            );
        }
        // A permanent refusal wins over a transient one in the same attempt.
        assert!(matches!(
            from_results(&[result(0xA700), result(0xA900)]),
            Outcome::Permanent(_)
        ));
    }

    #[test]
    fn unreadable_report_files_are_permanent() {
        let e = ScuError::File {
            path: "/r/sr.dcm".into(),
            reason: "gone".into(),
        };
        assert!(matches!(from_error(&e), Outcome::Permanent(_)));
        assert!(matches!(
            from_error(&ScuError::Protocol("reset".into())),
            Outcome::Transient(_)
        ));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1, 5.0, 300.0), 5.0);
        assert_eq!(backoff(2, 5.0, 300.0), 10.0);
        assert_eq!(backoff(4, 5.0, 300.0), 40.0);
        assert_eq!(backoff(20, 5.0, 300.0), 300.0);
        assert_eq!(backoff(u32::MAX, 5.0, 300.0), 300.0);
    }
}
