//! The accept loop: TCP_NODELAY on every socket, admission (slots, disk),
//! negotiation with `dicom-ul`, one task per association.

use std::sync::Arc;
use std::time::Duration;

use dicom_ul::association::Error as UlError;
use dicom_ul::association::server::ServerAssociationOptions;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::access::{AeAccess, Congestion, refuse};
use super::association::{Ending, Handler, IngestContext};
use super::syntaxes::{STORAGE_SOP_CLASSES, VERIFICATION, decodable_transfer_syntaxes};

/// Receiver settings (from `[dicom]` and `[limits]`).
#[derive(Debug, Clone)]
pub struct ReceiverSettings {
    pub ae_title: String,
    pub allowed_calling_ae_titles: Vec<String>,
    pub max_pdu_bytes: u32,
    pub max_associations: usize,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub shutdown_grace: Duration,
}

/// Serves associations on `listener` until `shutdown` turns true, then stops
/// accepting, lets in-flight instances finish (up to the grace period) and
/// returns.
pub async fn run(
    listener: TcpListener,
    settings: ReceiverSettings,
    ctx: Arc<IngestContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (transfer_syntaxes, missing) = decodable_transfer_syntaxes();
    for (uid, name) in missing {
        tracing::warn!(uid, name, "no codec for transfer syntax in this build; not offered");
    }
    let settings = Arc::new(settings);
    let transfer_syntaxes = Arc::new(transfer_syntaxes);
    let slots = Arc::new(Semaphore::new(settings.max_associations));
    // Refusals are answered by their own small tasks; bound them as well.
    let refusals = Arc::new(Semaphore::new(16));
    let mut tasks = JoinSet::new();

    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        // Reap finished association tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = socket.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        let congestion = if ctx.spool.over_watermark() {
            Some(Congestion::DiskWatermark)
        } else {
            None
        };
        let permit = match congestion {
            None => slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| Congestion::TooManyAssociations),
            Some(c) => Err(c),
        };
        let permit = match permit {
            Ok(p) => p,
            Err(why) => {
                ctx.metrics
                    .associations_refused_total
                    .with_label_values(&[why.metric_reason()])
                    .inc();
                tracing::warn!(%peer, reason = why.metric_reason(), "association refused");
                if let Ok(r) = refusals.clone().try_acquire_owned() {
                    let max_pdu = settings.max_pdu_bytes;
                    tokio::spawn(async move {
                        refuse(socket, why, max_pdu).await;
                        drop(r);
                    });
                }
                continue;
            }
        };
        let settings = settings.clone();
        let transfer_syntaxes = transfer_syntaxes.clone();
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            serve_connection(socket, peer, &settings, &transfer_syntaxes, ctx, shutdown).await;
            drop(permit);
        });
    }

    tracing::info!(open = tasks.len(), "stopped accepting; finishing open associations");
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(settings.shutdown_grace, drain).await.is_err() {
        tracing::warn!("shutdown grace period over; aborting remaining associations");
        tasks.abort_all();
    }
}

async fn serve_connection(
    socket: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    settings: &ReceiverSettings,
    transfer_syntaxes: &[&str],
    ctx: Arc<IngestContext>,
    shutdown: watch::Receiver<bool>,
) {
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(AeAccess {
            allowed_calling: settings.allowed_calling_ae_titles.clone(),
        })
        .ae_title(settings.ae_title.clone())
        .max_pdu_length(settings.max_pdu_bytes)
        .read_timeout(settings.read_timeout)
        .write_timeout(settings.write_timeout)
        .with_abstract_syntax(VERIFICATION);
    for class in STORAGE_SOP_CLASSES {
        options = options.with_abstract_syntax(*class);
    }
    for ts in transfer_syntaxes {
        options = options.with_transfer_syntax(*ts);
    }
    let assoc = match options.establish_async(socket).await {
        Ok(a) => a,
        Err(e) => {
            let reason = match &e {
                UlError::Rejected { association_rj, .. } => match association_rj.source {
                    dicom_ul::pdu::AssociationRJSource::ServiceUser(
                        dicom_ul::pdu::AssociationRJServiceUserReason::CallingAETitleNotRecognized,
                    ) => "calling_ae_not_recognized",
                    dicom_ul::pdu::AssociationRJSource::ServiceUser(
                        dicom_ul::pdu::AssociationRJServiceUserReason::CalledAETitleNotRecognized,
                    ) => "called_ae_not_recognized",
                    _ => "negotiation_rejected",
                },
                UlError::Timeout { .. } => "negotiation_timeout",
                _ => "negotiation_failed",
            };
            ctx.metrics
                .associations_refused_total
                .with_label_values(&[reason])
                .inc();
            tracing::warn!(%peer, reason, error = %e, "association not established");
            return;
        }
    };
    let calling = {
        use dicom_ul::association::Association;
        assoc.peer_ae_title().trim().to_string()
    };
    let accepted_contexts = assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance)
        .count();
    ctx.metrics.associations_total.inc();
    ctx.metrics.associations_active.inc();
    let span = tracing::info_span!("association", %peer, calling_ae = %calling);
    let ending = {
        let _enter = span.enter();
        tracing::info!(accepted_contexts, "association established");
        drop(_enter);
        tracing::Instrument::instrument(Handler::new(assoc, ctx.clone()).run(shutdown), span.clone()).await
    };
    ctx.metrics.associations_active.dec();
    match ending {
        Ending::Released => tracing::info!(parent: &span, "association released"),
        Ending::AbortedByPeer => {
            ctx.metrics
                .associations_aborted_total
                .with_label_values(&["peer"])
                .inc();
            tracing::warn!(parent: &span, "association aborted by peer");
        }
        Ending::AbortedByUs(why) => {
            ctx.metrics.associations_aborted_total.with_label_values(&[why]).inc();
            tracing::warn!(parent: &span, why, "association aborted");
        }
        Ending::ConnectionLost => {
            ctx.metrics
                .associations_aborted_total
                .with_label_values(&["connection_lost"])
                .inc();
            tracing::warn!(parent: &span, "connection lost");
        }
    }
}
