//! spineagent-phantom: procedural multi-sequence spine MRI studies with
//! ground truth. Everything it makes is SYNTHETIC: no patient, no clinical
//! accuracy claim.
//!
//! How a study is made ([`study::generate`]):
//! 1. [`findings`] draws the subject's conditions (level, side, severity).
//! 2. [`anatomy::Subject`] builds C2 to S1 in patient coordinates with the
//!    findings applied; `voxel(p)` says what is at any point.
//! 3. [`plan`] lays out the acquisitions (sagittal stack, axial stacks
//!    angled through each disc, localizer); [`render`] samples each
//!    geometry once and turns it into each sequence's pixels with the
//!    signal equations of [`sequence`], noise, coil profile and the
//!    [`vendor`] style.
//! 4. [`dicom_out`] writes MR Image Storage files; label volumes, the
//!    ground truth JSON and the reference report ([`report`]) go beside them.
//!
//! [`dataset`] makes reproducible train/validation/test splits with one
//! vendor style held out.

pub mod anatomy;
pub mod dataset;
pub mod dicom_out;
pub mod findings;
pub mod levels;
pub mod plan;
pub mod render;
pub mod report;
pub mod rng;
pub mod sequence;
pub mod study;
pub mod tissue;
pub mod vendor;

pub use study::{StudySpec, StudyTruth, generate};
