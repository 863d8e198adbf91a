//! spineagent-engine: the inference core. [`bundle`] opens and verifies
//! model bundles; [`runtime`] loads ONNX Runtime at run time; [`model`]
//! wraps one model as a checked, shared session; [`check`] runs a bundle's
//! golden tests; [`decode`] turns DICOM slices into the preprocessing
//! kernels' input ([`spineagent_kernels`] does the transform).
//! No sockets, config files or metrics here.

pub mod analysis;
pub mod bundle;
pub mod check;
pub mod decode;
pub mod lm;
pub mod model;
pub mod npy;
pub mod providers;
pub mod report;
pub mod runtime;
pub mod structure;

pub use bundle::{Bundle, BundleError};
pub use model::{Model, ModelError, SessionOptions};
pub use runtime::{Runtime, RuntimeError};
