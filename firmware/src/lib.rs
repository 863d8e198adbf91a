//! spineagent firmware: the appliance daemon next to the MRI scanner.
//!
//! How a study flows through this crate:
//!
//! 1. [`ingest`] accepts associations from scanners (C-ECHO, C-STORE SCP on
//!    `dicom-ul`), refusing what it cannot handle at negotiation or with a
//!    DIMSE failure status ([`dimse`] encodes and decodes command sets).
//! 2. Each data set streams into the [`spool`], is validated, fsync'd and
//!    renamed into place; only then is Success sent.
//! 3. [`assemble`] groups stored instances into series and studies, decides
//!    completeness by idle time (or expected count), orders slices along
//!    their normal, classifies each series from its tags
//!    (`config/series_rules.toml`) and emits [`assemble::AssemblyEvent`]s on
//!    a bounded queue for the analysis stages.
//! 4. [`http`] serves `/metrics`, `/healthz` and `/readyz`; [`metrics`] holds
//!    every metric. [`daemon`] wires it all from one [`config::Config`].
//!
//! 5. [`stream`] encodes the slices of usable series as they arrive;
//!    [`pipeline`] analyzes each completed study with the model bundle and
//!    writes its report (`spool/reports/<study>/`: SR, SEG, text, JSON,
//!    key-image PNGs); [`deliver`] sends SR and SEG to every destination
//!    from a durable outbox; [`retention`] removes finished studies.
//!
//! [`scu`] is the sending side (`spineagent send`, report delivery).

pub mod analyze;
pub mod assemble;
pub mod config;
pub mod daemon;
pub mod deliver;
pub mod dimse;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod models;
pub mod pipeline;
pub mod preprocess;
pub mod retention;
pub mod scu;
pub mod spool;
pub mod stream;
pub mod uid;
