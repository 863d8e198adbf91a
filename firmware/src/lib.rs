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
//! [`scu`] is the sending side (`spineagent send`, report delivery).

pub mod analyze;
pub mod assemble;
pub mod config;
pub mod daemon;
pub mod dimse;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod models;
pub mod pipeline;
pub mod preprocess;
pub mod scu;
pub mod spool;
pub mod uid;
