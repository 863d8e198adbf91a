//! The DICOM receiver (C-ECHO and C-STORE SCP).
//!
//! [`server::run`] accepts and admits connections; each association runs in
//! an [`association::Handler`]; [`syntaxes`] says what is negotiated and
//! [`access`] who may associate.

pub mod access;
pub mod association;
pub mod server;
pub mod syntaxes;

pub use association::IngestContext;
pub use server::{ReceiverSettings, run};
