//! From the agents' findings to the report: triage categories and the
//! deterministic composer.

pub mod agent;
pub mod codes;
pub mod compose;
mod elements;
pub mod grounding;
pub mod seg;
pub mod sr;
pub mod triage;
pub mod verify;

pub use compose::{Report, compose};
pub use triage::{Category, Triage};

pub mod key_images;
pub mod key_png;

use sha2::{Digest, Sha256};

/// A `2.25.` UID from a digest of `bytes` (the same bytes give the same UID).
pub fn uid_from(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut v = [0u8; 16];
    v.copy_from_slice(&d[..16]);
    format!("2.25.{}", u128::from_be_bytes(v) >> 1)
}

/// A fresh UID: random bytes from the OS, time and process as a fallback.
pub fn new_uid() -> String {
    let mut seed = Vec::with_capacity(48);
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let mut b = [0u8; 16];
        if std::io::Read::read_exact(&mut f, &mut b).is_ok() {
            seed.extend_from_slice(&b);
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    seed.extend_from_slice(&now.to_be_bytes());
    seed.extend_from_slice(&std::process::id().to_be_bytes());
    uid_from(&seed)
}

/// The UID that names a model bundle in the SR (Device UID): a digest of
/// every model's hash, so it changes with the models.
pub fn bundle_device_uid(bundle: &crate::Bundle) -> String {
    let joined: String = bundle.manifest.models.iter().map(|m| m.sha256.as_str()).collect();
    uid_from(joined.as_bytes())
}
