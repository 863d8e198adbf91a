//! The SCU side: C-ECHO and C-STORE to a remote AE (`spineagent send`,
//! tests, the demo, and later report delivery).
//!
//! Files whose transfer syntax the peer accepts go out byte for byte (the
//! data set as it sits after the file meta); native files fall back to
//! Implicit/Explicit VR Little Endian when the peer accepts only those.

use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::meta::FileMetaTable;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::Pdu;
use dicom_ul::association::Association;
use dicom_ul::association::client::{AsyncClientAssociation, ClientAssociationOptions};
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use tokio::net::TcpStream;

use crate::dimse;
use crate::ingest::syntaxes::{EXPLICIT_VR_LE, IMPLICIT_VR_LE, VERIFICATION};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScuError {
    #[error("bad destination {0:?}: expected AET@HOST:PORT")]
    Address(String),
    #[error("cannot read {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("association with {peer} failed")]
    Associate {
        peer: String,
        source: dicom_ul::association::Error,
    },
    #[error("{0}")]
    Protocol(String),
    #[error("too many distinct SOP class / transfer syntax pairs ({0}); at most 128 presentation contexts")]
    TooManyContexts(usize),
}

/// AET@HOST:PORT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub ae_title: String,
    pub address: String,
}

impl std::str::FromStr for Destination {
    type Err = ScuError;
    fn from_str(s: &str) -> Result<Self, ScuError> {
        let (ae, addr) = s.split_once('@').ok_or_else(|| ScuError::Address(s.into()))?;
        if ae.is_empty() || ae.len() > 16 || !addr.contains(':') {
            return Err(ScuError::Address(s.into()));
        }
        Ok(Destination {
            ae_title: ae.to_string(),
            address: addr.to_string(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct ScuOptions {
    pub calling_ae_title: String,
    pub max_pdu_bytes: u32,
    pub timeout: Duration,
}

impl Default for ScuOptions {
    fn default() -> Self {
        ScuOptions {
            calling_ae_title: "SPINEAGENT".into(),
            max_pdu_bytes: 131_072,
            timeout: Duration::from_secs(60),
        }
    }
}

/// One file to send, read up front: its UIDs and where its data set starts.
#[derive(Debug)]
struct Outgoing {
    path: PathBuf,
    sop_class_uid: String,
    sop_instance_uid: String,
    transfer_syntax_uid: String,
}

/// The answer for one file.
#[derive(Debug, Clone)]
pub struct StoreResult {
    pub path: PathBuf,
    pub sop_instance_uid: String,
    pub status: u16,
    pub error_comment: Option<String>,
}

impl StoreResult {
    pub fn stored(&self) -> bool {
        dimse::is_stored(self.status)
    }
}

fn trim(uid: &str) -> String {
    crate::uid::trim(uid).to_string()
}

fn read_meta(path: &Path) -> Result<FileMetaTable, ScuError> {
    let err = |reason: String| ScuError::File {
        path: path.to_owned(),
        reason,
    };
    let mut f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut preamble = [0u8; 128];
    f.read_exact(&mut preamble).map_err(|e| err(e.to_string()))?;
    // from_reader checks the "DICM" magic itself.
    FileMetaTable::from_reader(std::io::BufReader::new(f)).map_err(|e| err(format!("not a DICOM Part 10 file: {e}")))
}

/// The data set bytes of a file, in `ts` (raw when it is the file's own).
fn data_set_bytes(o: &Outgoing, ts: &str) -> Result<Vec<u8>, ScuError> {
    let err = |reason: String| ScuError::File {
        path: o.path.clone(),
        reason,
    };
    if ts == o.transfer_syntax_uid {
        let bytes = std::fs::read(&o.path).map_err(|e| err(e.to_string()))?;
        let start =
            crate::spool::structure::data_set_offset(&bytes).ok_or_else(|| err("malformed file meta group".into()))?;
        return Ok(bytes[start..].to_vec());
    }
    let obj = dicom_object::open_file(&o.path).map_err(|e| err(e.to_string()))?;
    let target = TransferSyntaxRegistry
        .get(ts)
        .ok_or_else(|| err(format!("unknown transfer syntax {ts}")))?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, target)
        .map_err(|e| err(format!("cannot re-encode to {ts}: {e}")))?;
    Ok(out)
}

fn is_native(ts: &str) -> bool {
    TransferSyntaxRegistry
        .get(ts)
        .map(|t| !t.is_encapsulated_pixel_data() && ts != "1.2.840.10008.1.2.1.99")
        .unwrap_or(false)
}

/// Expands directories (recursively) into the files under them, sorted.
pub fn collect_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            entries.sort();
            out.extend(collect_files(&entries)?);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

async fn associate(
    dest: &Destination,
    opts: &ScuOptions,
    contexts: Vec<(String, Vec<String>)>,
) -> Result<AsyncClientAssociation<TcpStream>, ScuError> {
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(opts.calling_ae_title.clone())
        .called_ae_title(dest.ae_title.clone())
        .max_pdu_length(opts.max_pdu_bytes)
        .read_timeout(opts.timeout)
        .write_timeout(opts.timeout)
        .connection_timeout(opts.timeout);
    for (abstract_syntax, ts) in contexts {
        options =
            options.with_presentation_context(Cow::Owned(abstract_syntax), ts.into_iter().map(Cow::Owned).collect());
    }
    let mut assoc = options
        .establish_with_async(&dest.address)
        .await
        .map_err(|source| ScuError::Associate {
            peer: dest.address.clone(),
            source,
        })?;
    // dicom-ul never sets it; without it every instance stalls on Nagle.
    let _ = assoc.inner_stream().set_nodelay(true);
    Ok(assoc)
}

async fn send_command(
    assoc: &mut AsyncClientAssociation<TcpStream>,
    pc_id: u8,
    bytes: Vec<u8>,
) -> Result<(), ScuError> {
    assoc
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc_id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: bytes,
            }],
        })
        .await
        .map_err(|e| ScuError::Protocol(format!("send command: {e}")))
}

async fn send_data(assoc: &mut AsyncClientAssociation<TcpStream>, pc_id: u8, data: &[u8]) -> Result<(), ScuError> {
    // The peer's max PDU bounds the PDU's variable part: 6 bytes of PDV header each.
    let peer_max = assoc.peer_max_pdu_length();
    let chunk = if peer_max == 0 {
        1 << 20
    } else {
        (peer_max as usize).saturating_sub(6).max(1)
    };
    let mut chunks = data.chunks(chunk).peekable();
    if chunks.peek().is_none() {
        return Err(ScuError::Protocol("empty data set".into()));
    }
    while let Some(part) = chunks.next() {
        assoc
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc_id,
                    value_type: PDataValueType::Data,
                    is_last: chunks.peek().is_none(),
                    data: part.to_vec(),
                }],
            })
            .await
            .map_err(|e| ScuError::Protocol(format!("send data: {e}")))?;
    }
    Ok(())
}

async fn receive_response(assoc: &mut AsyncClientAssociation<TcpStream>) -> Result<dimse::Response, ScuError> {
    let mut command = Vec::new();
    loop {
        match assoc.receive().await {
            Ok(Pdu::PData { data }) => {
                for pdv in data {
                    if pdv.value_type != PDataValueType::Command {
                        return Err(ScuError::Protocol("unexpected data PDV in response".into()));
                    }
                    command.extend_from_slice(&pdv.data);
                    if pdv.is_last {
                        return dimse::decode_response(&command).map_err(|e| ScuError::Protocol(e.to_string()));
                    }
                }
            }
            Ok(Pdu::AbortRQ { source }) => {
                return Err(ScuError::Protocol(format!("peer aborted: {source:?}")));
            }
            Ok(other) => {
                return Err(ScuError::Protocol(format!(
                    "unexpected PDU {}",
                    other.short_description()
                )));
            }
            Err(e) => return Err(ScuError::Protocol(format!("receive response: {e}"))),
        }
    }
}

/// C-ECHO; returns the status.
pub async fn echo(dest: &Destination, opts: &ScuOptions) -> Result<u16, ScuError> {
    let mut assoc = associate(dest, opts, vec![(VERIFICATION.into(), vec![IMPLICIT_VR_LE.into()])]).await?;
    let pc_id = assoc
        .presentation_contexts()
        .iter()
        .find(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| pc.id)
        .ok_or_else(|| ScuError::Protocol("Verification not accepted".into()))?;
    send_command(
        &mut assoc,
        pc_id,
        dimse::encode_echo_request(1).map_err(|e| ScuError::Protocol(e.to_string()))?,
    )
    .await?;
    let rsp = receive_response(&mut assoc).await?;
    let _ = assoc.release().await;
    Ok(rsp.status)
}

/// Sends every file over one association; returns one result per file, in
/// order. A file the peer refuses does not stop the others.
pub async fn store_files(
    dest: &Destination,
    opts: &ScuOptions,
    files: &[PathBuf],
) -> Result<Vec<StoreResult>, ScuError> {
    let mut outgoing = Vec::with_capacity(files.len());
    for path in files {
        let meta = read_meta(path)?;
        outgoing.push(Outgoing {
            path: path.clone(),
            sop_class_uid: trim(meta.media_storage_sop_class_uid()),
            sop_instance_uid: trim(meta.media_storage_sop_instance_uid()),
            transfer_syntax_uid: trim(meta.transfer_syntax()),
        });
    }
    // One context per (class, syntax); native syntaxes offer LE fallbacks.
    let mut contexts: Vec<(String, Vec<String>)> = Vec::new();
    for o in &outgoing {
        let mut ts = vec![o.transfer_syntax_uid.clone()];
        if is_native(&o.transfer_syntax_uid) {
            for fallback in [EXPLICIT_VR_LE, IMPLICIT_VR_LE] {
                if !ts.iter().any(|t| t == fallback) {
                    ts.push(fallback.into());
                }
            }
        }
        let entry = (o.sop_class_uid.clone(), ts);
        if !contexts.contains(&entry) {
            contexts.push(entry);
        }
    }
    if contexts.len() > 128 {
        return Err(ScuError::TooManyContexts(contexts.len()));
    }
    if contexts.is_empty() {
        return Ok(Vec::new());
    }
    let mut assoc = associate(dest, opts, contexts).await?;
    let accepted: Vec<(u8, String, String)> = assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| (pc.id, trim(&pc.abstract_syntax), trim(&pc.transfer_syntax)))
        .collect();

    let mut results = Vec::with_capacity(outgoing.len());
    for (i, o) in outgoing.iter().enumerate() {
        let message_id = (i % 0xFFFF) as u16 + 1;
        let exact = accepted
            .iter()
            .find(|(_, a, t)| *a == o.sop_class_uid && *t == o.transfer_syntax_uid);
        let fallback = || {
            accepted
                .iter()
                .find(|(_, a, t)| *a == o.sop_class_uid && is_native(&o.transfer_syntax_uid) && is_native(t))
        };
        let Some((pc_id, _, ts)) = exact.or_else(fallback) else {
            results.push(StoreResult {
                path: o.path.clone(),
                sop_instance_uid: o.sop_instance_uid.clone(),
                status: dimse::status::SOP_CLASS_NOT_SUPPORTED,
                error_comment: Some("no accepted presentation context for this SOP class and transfer syntax".into()),
            });
            continue;
        };
        let data = data_set_bytes(o, ts)?;
        let command = dimse::encode_store_request(message_id, &o.sop_class_uid, &o.sop_instance_uid)
            .map_err(|e| ScuError::Protocol(e.to_string()))?;
        send_command(&mut assoc, *pc_id, command).await?;
        send_data(&mut assoc, *pc_id, &data).await?;
        let rsp = receive_response(&mut assoc).await?;
        if rsp.message_id_responded_to != message_id {
            return Err(ScuError::Protocol(format!(
                "response to message {} while waiting for {message_id}",
                rsp.message_id_responded_to
            )));
        }
        results.push(StoreResult {
            path: o.path.clone(),
            sop_instance_uid: o.sop_instance_uid.clone(),
            status: rsp.status,
            error_comment: rsp.error_comment,
        });
    }
    let _ = assoc.release().await;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_destinations() {
        let d: Destination = "PACS@127.0.0.1:4242".parse().unwrap();
        assert_eq!(d.ae_title, "PACS");
        assert_eq!(d.address, "127.0.0.1:4242");
        assert!("127.0.0.1:4242".parse::<Destination>().is_err());
        assert!("@host:1".parse::<Destination>().is_err());
        assert!("A@host".parse::<Destination>().is_err());
    }
}
