//! spineagent-kernels: slice preprocessing, stored values to the models'
//! input tensors. [`spec`] states the transform; [`cpu`] implements it
//! (always built); [`cuda`] implements it with NVRTC-compiled kernels
//! behind the `cuda` feature and a runtime check, so the same binary runs
//! where no CUDA library exists.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod spec;

pub use spec::{PreprocessSpec, Slice, SpecError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PreprocessError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("slice {slice}: {rows}x{cols} needs {} values, got {values}", rows * cols)]
    Shape {
        slice: usize,
        rows: usize,
        cols: usize,
        values: usize,
    },
    #[error("CUDA unavailable: {0}")]
    CudaUnavailable(String),
    #[error("CUDA error: {0}")]
    Cuda(String),
    #[error("this build has no CUDA support (feature `cuda` off)")]
    CudaNotCompiled,
}

#[cfg(test)]
mod tests;
