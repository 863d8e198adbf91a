//! Wiring of the running daemon: spool, receiver, assembler, event queue and
//! the operations endpoint, from one validated [`Config`].
//!
//! ```text
//! scanner --C-STORE--> ingest (per association) --StoredInstance--> assemble
//!                       | durable spool write                         | series/study complete
//!                       v                                             v
//!                    spool/studies/...                     AssemblyEvent queue --> analysis
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::assemble::classify::{Rules, RulesError};
use crate::assemble::{Assembler, AssemblyEvent, AssemblySettings};
use crate::config::Config;
use crate::ingest::{IngestContext, ReceiverSettings};
use crate::metrics::Metrics;
use crate::spool::{Spool, SpoolLimits};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error("cannot open spool {path}")]
    Spool {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error("cannot listen on {addr} ({what})")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("spool recovery failed: {0}")]
    Recovery(std::io::Error),
    #[error("model bundle: {0}")]
    Models(String),
}

/// A daemon whose sockets are bound and whose spool is recovered, ready to run.
pub struct Daemon {
    config: Config,
    spool: Spool,
    metrics: Arc<Metrics>,
    dicom: TcpListener,
    ops: TcpListener,
    assembler: Assembler,
    /// The loaded model bundle, for the analysis stages (issue 6).
    pub models: Option<Arc<crate::models::LoadedModels>>,
    to_assembler: (mpsc::Sender<StoredSender>, mpsc::Receiver<StoredSender>),
}

type StoredSender = crate::spool::StoredInstance;

impl Daemon {
    /// Opens the spool, loads the rules, binds both listeners and recovers
    /// unfinished studies. Events go to the returned receiver.
    pub async fn bind(config: Config) -> Result<(Daemon, mpsc::Receiver<AssemblyEvent>), DaemonError> {
        let spool_dir = config.spool_dir();
        let spool = Spool::open(
            &spool_dir,
            SpoolLimits {
                max_instance_bytes: config.limits.max_instance_bytes,
                in_memory_instance_bytes: config.limits.in_memory_instance_bytes,
                watermark_percent: config.spool.disk_high_watermark_percent,
            },
        )
        .map_err(|source| DaemonError::Spool {
            path: spool_dir.clone(),
            source,
        })?;
        let rules = match config.rules_file() {
            Some(path) => Rules::load(&path)?,
            None => Rules::builtin(),
        };
        let metrics = Arc::new(Metrics::new());
        // Models load (and warm up) before any port binds: a daemon that
        // accepts studies can analyze them, or says why not at start.
        let models = crate::models::load(&config, &metrics)
            .map_err(DaemonError::Models)?
            .map(Arc::new);
        let dicom = TcpListener::bind(config.dicom.listen)
            .await
            .map_err(|source| DaemonError::Bind {
                what: "DICOM",
                addr: config.dicom.listen,
                source,
            })?;
        let ops = TcpListener::bind(config.metrics.listen)
            .await
            .map_err(|source| DaemonError::Bind {
                what: "metrics",
                addr: config.metrics.listen,
                source,
            })?;
        let (events_tx, events_rx) = mpsc::channel(config.limits.event_queue_depth);
        let settings = AssemblySettings {
            series_idle: Duration::from_secs_f64(config.assembly.series_idle_seconds),
            study_idle: Duration::from_secs_f64(config.assembly.study_idle_seconds),
            oblique_threshold_degrees: config.assembly.oblique_threshold_degrees,
            min_slices: config.assembly.min_slices,
            accept_unknown_region: config.assembly.accept_unknown_region,
        };
        let mut assembler = Assembler::new(settings, rules, spool.clone(), metrics.clone(), events_tx);
        let recovered = assembler
            .recover(tokio::time::Instant::now())
            .map_err(DaemonError::Recovery)?;
        tracing::info!(
            studies_resumed = recovered.studies_resumed,
            studies_already_complete = recovered.studies_already_complete,
            instances = recovered.instances,
            unreadable = recovered.unreadable,
            spool = %spool_dir.display(),
            "spool recovered"
        );
        let to_assembler = mpsc::channel(config.limits.assembler_queue_depth);
        Ok((
            Daemon {
                config,
                spool,
                metrics,
                dicom,
                ops,
                assembler,
                models,
                to_assembler,
            },
            events_rx,
        ))
    }

    pub fn dicom_addr(&self) -> SocketAddr {
        self.dicom.local_addr().expect("bound listener has an address")
    }

    pub fn ops_addr(&self) -> SocketAddr {
        self.ops.local_addr().expect("bound listener has an address")
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// A bounded queue of every newly stored instance (for the streaming
    /// encoder); call before `run`.
    pub fn tap_instances(&mut self, depth: usize) -> mpsc::Receiver<crate::stream::ArrivedInstance> {
        let (tx, rx) = mpsc::channel(depth.max(1));
        self.assembler.set_tap(tx);
        rx
    }

    /// Serves until `shutdown` turns true; then stops accepting, finishes
    /// in-flight instances and returns. Unfinished assembly state is in the
    /// spool and resumes at the next start.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let Daemon {
            config,
            spool,
            metrics,
            dicom,
            ops,
            assembler,
            models: _models,
            to_assembler: (tx, rx),
        } = self;
        let assembler_task = tokio::spawn(assembler.run(rx));
        let ops_task = tokio::spawn(crate::http::run(
            ops,
            crate::http::OpsState {
                metrics: metrics.clone(),
                spool: spool.clone(),
            },
            shutdown.clone(),
        ));
        let ctx = Arc::new(IngestContext {
            spool,
            metrics,
            to_assembler: tx,
            max_command_bytes: config.limits.max_command_bytes,
        });
        let settings = ReceiverSettings {
            ae_title: config.dicom.ae_title.clone(),
            allowed_calling_ae_titles: config.dicom.allowed_calling_ae_titles.clone(),
            max_pdu_bytes: config.dicom.max_pdu_bytes,
            max_associations: config.limits.max_associations,
            read_timeout: config.read_timeout(),
            write_timeout: config.write_timeout(),
            shutdown_grace: Duration::from_secs(config.limits.shutdown_grace_seconds),
        };
        crate::ingest::run(dicom, settings, ctx, shutdown).await;
        // All association tasks are done and the ingest context dropped with
        // them, so the assembler's input closes and it stops.
        let _ = assembler_task.await;
        let _ = ops_task.await;
        tracing::info!("daemon stopped");
    }
}
