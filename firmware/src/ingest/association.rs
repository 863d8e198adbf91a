//! One accepted association: reassembles DIMSE messages from P-DATA PDVs,
//! answers C-ECHO, streams C-STORE data sets into the spool and acknowledges
//! each only after it is durable. Decoding commands ([`crate::dimse`]),
//! storing ([`crate::spool`]) and replying are separate steps; this module
//! only sequences them.

use std::sync::Arc;
use std::time::Instant;

use dicom_ul::Pdu;
use dicom_ul::association::Error as UlError;
use dicom_ul::association::server::AsyncServerAssociation;
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, PDataValue, PDataValueType, PresentationContextResultReason,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::syntaxes::STORAGE_SOP_CLASSES;
use crate::dimse::{self, Request, command_field, status};
use crate::metrics::Metrics;
use crate::spool::{PendingInstance, Rejection, Spool, StoredInstance};

/// What every association handler shares.
pub struct IngestContext {
    pub spool: Spool,
    pub metrics: Arc<Metrics>,
    pub to_assembler: mpsc::Sender<StoredInstance>,
    pub max_command_bytes: usize,
}

/// How an association ended (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Released,
    AbortedByPeer,
    /// We sent A-ABORT: protocol violation, timeout or shutdown.
    AbortedByUs(&'static str),
    ConnectionLost,
}

/// The DIMSE message being received.
enum Phase {
    Idle,
    /// Command PDVs arriving.
    Command {
        pc_id: u8,
        bytes: Vec<u8>,
    },
    /// A C-STORE's data set arriving.
    Data(Box<Store>),
}

struct Store {
    pc_id: u8,
    request: Request,
    /// None once refused: the remaining PDVs are drained, then `refused` is sent.
    pending: Option<PendingInstance>,
    refused: Option<Rejection>,
    /// When the command arrived: the data set's transfer time is measured from here.
    started: Instant,
}

/// A protocol violation: we abort the association.
struct Violation(&'static str);

pub struct Handler {
    assoc: AsyncServerAssociation<TcpStream>,
    ctx: Arc<IngestContext>,
    phase: Phase,
    calling_ae: String,
}

impl Handler {
    pub fn new(assoc: AsyncServerAssociation<TcpStream>, ctx: Arc<IngestContext>) -> Handler {
        use dicom_ul::association::Association;
        let calling_ae = assoc.peer_ae_title().trim().to_string();
        Handler {
            assoc,
            ctx,
            phase: Phase::Idle,
            calling_ae,
        }
    }

    /// Serves the association until it ends. On shutdown, an idle
    /// association is aborted at once; one receiving an instance first
    /// finishes (and acknowledges) it.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Ending {
        loop {
            if *shutdown.borrow() && matches!(self.phase, Phase::Idle) {
                return self.abort("shutting_down").await;
            }
            let received = tokio::select! {
                r = self.assoc.receive() => r,
                _ = shutdown.changed(), if matches!(self.phase, Phase::Idle) && !*shutdown.borrow() => continue,
            };
            match received {
                Ok(Pdu::PData { data }) => {
                    for pdv in data {
                        if let Err(Violation(why)) = self.on_pdv(pdv).await {
                            return self.abort(why).await;
                        }
                    }
                }
                Ok(Pdu::ReleaseRQ) => {
                    self.drop_partial("release during a message").await;
                    let _ = self.assoc.send(&Pdu::ReleaseRP).await;
                    return Ending::Released;
                }
                Ok(Pdu::AbortRQ { .. }) => {
                    self.drop_partial("peer aborted").await;
                    return Ending::AbortedByPeer;
                }
                Ok(_) => return self.abort("unexpected_pdu").await,
                Err(UlError::ConnectionClosed { .. }) | Err(UlError::WireRead { .. }) => {
                    self.drop_partial("connection lost").await;
                    return Ending::ConnectionLost;
                }
                Err(UlError::Timeout { .. }) => return self.abort("read_timeout").await,
                Err(e) => {
                    tracing::warn!(error = %e, "malformed PDU");
                    return self.abort("malformed_pdu").await;
                }
            }
        }
    }

    async fn abort(mut self, why: &'static str) -> Ending {
        self.drop_partial(why).await;
        let _ = self
            .assoc
            .send(&Pdu::AbortRQ {
                source: AbortRQSource::ServiceProvider(match why {
                    "unexpected_pdu" => AbortRQServiceProviderReason::UnexpectedPdu,
                    "malformed_pdu" => AbortRQServiceProviderReason::InvalidPduParameter,
                    _ => AbortRQServiceProviderReason::ReasonNotSpecified,
                }),
            })
            .await;
        Ending::AbortedByUs(why)
    }

    /// An unfinished instance is never acknowledged, so its temporary file
    /// goes; the sender will resend it.
    async fn drop_partial(&mut self, why: &str) {
        if let Phase::Data(store) = std::mem::replace(&mut self.phase, Phase::Idle) {
            tracing::warn!(sop = ?store.request.affected_sop_instance_uid, why, "incomplete instance discarded");
            if let Some(p) = store.pending {
                p.discard().await;
            }
        }
    }

    async fn on_pdv(&mut self, pdv: PDataValue) -> Result<(), Violation> {
        match (&pdv.value_type, &mut self.phase) {
            (PDataValueType::Command, Phase::Idle) => {
                self.phase = Phase::Command {
                    pc_id: pdv.presentation_context_id,
                    bytes: Vec::new(),
                };
                self.on_command_fragment(pdv).await
            }
            (PDataValueType::Command, Phase::Command { .. }) => self.on_command_fragment(pdv).await,
            (PDataValueType::Data, Phase::Data(_)) => self.on_data_fragment(pdv).await,
            (PDataValueType::Command, Phase::Data(_)) => Err(Violation("command_during_data")),
            (PDataValueType::Data, _) => Err(Violation("data_without_command")),
        }
    }

    async fn on_command_fragment(&mut self, pdv: PDataValue) -> Result<(), Violation> {
        let Phase::Command { pc_id, bytes } = &mut self.phase else {
            unreachable!("checked by on_pdv")
        };
        if pdv.presentation_context_id != *pc_id {
            return Err(Violation("context_changed_mid_command"));
        }
        if bytes.len() + pdv.data.len() > self.ctx.max_command_bytes {
            return Err(Violation("command_too_large"));
        }
        bytes.extend_from_slice(&pdv.data);
        if !pdv.is_last {
            return Ok(());
        }
        let (pc_id, bytes) = (*pc_id, std::mem::take(bytes));
        self.phase = Phase::Idle;
        let request = match dimse::decode_request(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable command set");
                return Err(Violation("bad_command"));
            }
        };
        match request.command_field {
            command_field::C_ECHO_RQ => {
                self.ctx.metrics.echo_total.inc();
                self.respond(pc_id, &request, status::SUCCESS, None).await
            }
            command_field::C_STORE_RQ => self.begin_store(pc_id, request).await,
            _ => {
                // Requests with a data set would need draining; we answer
                // "unrecognized operation" and abort if data follows.
                self.respond(
                    pc_id,
                    &request,
                    status::UNRECOGNIZED_OPERATION,
                    Some("operation not supported"),
                )
                .await
            }
        }
    }

    async fn begin_store(&mut self, pc_id: u8, request: Request) -> Result<(), Violation> {
        let pc = self
            .assoc
            .presentation_contexts()
            .iter()
            .find(|pc| pc.id == pc_id && pc.reason == PresentationContextResultReason::Acceptance)
            .cloned()
            .ok_or(Violation("unaccepted_presentation_context"))?;
        if !request.has_data_set {
            return self
                .respond(
                    pc_id,
                    &request,
                    status::CANNOT_UNDERSTAND,
                    Some("C-STORE without a data set"),
                )
                .await;
        }
        let refusal = if !STORAGE_SOP_CLASSES.contains(&request.affected_sop_class_uid.as_str()) {
            Some(Rejection::new(
                status::SOP_CLASS_NOT_SUPPORTED,
                "sop_class",
                "SOP class not supported",
            ))
        } else if request.affected_sop_class_uid != pc.abstract_syntax.trim_end_matches('\0') {
            Some(Rejection::new(
                status::CANNOT_UNDERSTAND,
                "sop_class",
                "SOP class differs from the presentation context",
            ))
        } else if request.affected_sop_instance_uid.is_none() {
            Some(Rejection::new(
                status::CANNOT_UNDERSTAND,
                "missing_attribute",
                "no Affected SOP Instance UID",
            ))
        } else {
            None
        };
        let (pending, refused) = match refusal {
            Some(r) => (None, Some(r)),
            None => {
                let sop = request.affected_sop_instance_uid.as_deref().expect("checked above");
                match self
                    .ctx
                    .spool
                    .begin(
                        &request.affected_sop_class_uid,
                        sop,
                        &pc.transfer_syntax,
                        &self.calling_ae,
                    )
                    .await
                {
                    Ok(p) => (Some(p), None),
                    Err(r) => (None, Some(r)),
                }
            }
        };
        self.phase = Phase::Data(Box::new(Store {
            pc_id,
            request,
            pending,
            refused,
            started: Instant::now(),
        }));
        Ok(())
    }

    async fn on_data_fragment(&mut self, pdv: PDataValue) -> Result<(), Violation> {
        let Phase::Data(store) = &mut self.phase else {
            unreachable!("checked by on_pdv")
        };
        if pdv.presentation_context_id != store.pc_id {
            return Err(Violation("context_changed_mid_data"));
        }
        if let Some(pending) = store.pending.as_mut()
            && let Err(rejection) = pending.write(&pdv.data).await
        {
            store.refused = Some(rejection);
            if let Some(p) = store.pending.take() {
                p.discard().await;
            }
        }
        if !pdv.is_last {
            return Ok(());
        }
        let Phase::Data(store) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            unreachable!()
        };
        let Store {
            pc_id,
            request,
            pending,
            refused,
            started,
        } = *store;
        self.ctx
            .metrics
            .instance_receive_seconds
            .observe(started.elapsed().as_secs_f64());
        let outcome = match (pending, refused) {
            (_, Some(r)) => Err(r),
            (Some(p), None) => {
                let started = Instant::now();
                let result = p.commit().await;
                self.ctx
                    .metrics
                    .instance_store_seconds
                    .observe(started.elapsed().as_secs_f64());
                result
            }
            (None, None) => unreachable!("a store is either pending or refused"),
        };
        match outcome {
            Ok(stored) => {
                let m = &self.ctx.metrics;
                if stored.duplicate {
                    m.instances_duplicate_total.inc();
                    tracing::info!(sop = %stored.header.sop_instance_uid, "duplicate instance, earlier copy kept");
                } else {
                    m.instances_received_total.inc();
                    m.received_bytes_total.inc_by(stored.bytes);
                    tracing::debug!(sop = %stored.header.sop_instance_uid, bytes = stored.bytes, "instance stored");
                    // Waits when assembly lags: the sender is slowed, memory is not grown.
                    if self.ctx.to_assembler.send(stored).await.is_err() {
                        tracing::error!(
                            "assembler has stopped; instance is in the spool and will be recovered on restart"
                        );
                    }
                    m.observe_queue("assembler", &self.ctx.to_assembler);
                }
                self.respond(pc_id, &request, status::SUCCESS, None).await
            }
            Err(r) => {
                self.ctx
                    .metrics
                    .store_failures_total
                    .with_label_values(&[r.reason])
                    .inc();
                tracing::warn!(
                    sop = ?request.affected_sop_instance_uid,
                    status = format_args!("{:#06X}", r.status),
                    reason = r.reason,
                    comment = %r.comment,
                    "C-STORE refused"
                );
                self.respond(pc_id, &request, r.status, Some(&r.comment)).await
            }
        }
    }

    async fn respond(
        &mut self,
        pc_id: u8,
        request: &Request,
        status: u16,
        comment: Option<&str>,
    ) -> Result<(), Violation> {
        let bytes = dimse::encode_response(request, status, comment).map_err(|_| Violation("encode_response"))?;
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc_id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: bytes,
            }],
        };
        self.assoc.send(&pdu).await.map_err(|_| Violation("send_failed"))
    }
}
