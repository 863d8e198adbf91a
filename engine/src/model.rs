//! One model of a bundle as an ONNX Runtime session: created once, its real
//! inputs and outputs checked against the manifest, shared for inference.

use std::path::PathBuf;
use std::sync::Mutex;

use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};

use crate::bundle::{Bundle, Dim, ModelSpec, TensorSpec};
use crate::npy::ArrayF32;
use crate::providers::Provider;
use crate::runtime::Runtime;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("bundle has no model named {0}")]
    Unknown(String),
    #[error("cannot load {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("{path}: {kind} {tensor}: {problem}")]
    Mismatch {
        path: PathBuf,
        kind: &'static str,
        tensor: String,
        problem: String,
    },
    #[error("running {model}: {reason}")]
    Run { model: String, reason: String },
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Intra-op threads (the machine's cores by default).
    pub threads: usize,
    pub providers: crate::providers::ProviderConfig,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            providers: Default::default(),
        }
    }
}

impl SessionOptions {
    pub fn with_threads(threads: usize) -> SessionOptions {
        SessionOptions {
            threads,
            ..Default::default()
        }
    }
}

pub struct Model {
    pub spec: ModelSpec,
    pub path: PathBuf,
    /// The execution provider the session got.
    pub provider: crate::providers::Provider,
    /// `Session::run` takes `&mut`; inference calls serialize here, and each
    /// call uses all intra-op threads.
    session: Mutex<Session>,
}

fn dtype_name(t: TensorElementType) -> &'static str {
    match t {
        TensorElementType::Float32 => "float32",
        TensorElementType::Float16 => "float16",
        TensorElementType::Float64 => "float64",
        TensorElementType::Int64 => "int64",
        TensorElementType::Int32 => "int32",
        TensorElementType::Uint8 => "uint8",
        TensorElementType::Int8 => "int8",
        TensorElementType::Bool => "bool",
        _ => "other",
    }
}

/// Compares one real input/output with its manifest entry.
fn check_tensor(
    path: &PathBuf,
    kind: &'static str,
    want: &TensorSpec,
    name: &str,
    ty: &ValueType,
) -> Result<(), ModelError> {
    let mismatch = |problem: String| ModelError::Mismatch {
        path: path.clone(),
        kind,
        tensor: want.name.clone(),
        problem,
    };
    if name != want.name {
        return Err(mismatch(format!("the model has {name:?} in this position")));
    }
    let ValueType::Tensor {
        ty,
        shape,
        dimension_symbols,
    } = ty
    else {
        return Err(mismatch("not a tensor".into()));
    };
    if dtype_name(*ty) != want.dtype {
        return Err(mismatch(format!(
            "dtype is {}, manifest says {}",
            dtype_name(*ty),
            want.dtype
        )));
    }
    if shape.len() != want.shape.len() {
        return Err(mismatch(format!(
            "rank is {}, manifest says {}",
            shape.len(),
            want.shape.len()
        )));
    }
    for (i, (actual, expected)) in shape.iter().zip(&want.shape).enumerate() {
        let symbol = dimension_symbols.get(i).map(String::as_str).unwrap_or("");
        let ok = match expected {
            Dim::Fixed(n) => *actual == *n,
            Dim::Named(s) => *actual < 0 && (symbol.is_empty() || symbol == s),
        };
        if !ok {
            let got = if *actual < 0 {
                if symbol.is_empty() {
                    "dynamic".to_string()
                } else {
                    symbol.to_string()
                }
            } else {
                actual.to_string()
            };
            return Err(mismatch(format!("dimension {i} is {got}, manifest says {expected}")));
        }
    }
    Ok(())
}

impl Model {
    pub fn load(runtime: &Runtime, bundle: &Bundle, name: &str, options: &SessionOptions) -> Result<Model, ModelError> {
        let spec = bundle
            .model(name)
            .ok_or_else(|| ModelError::Unknown(name.to_string()))?
            .clone();
        let path = bundle.dir.join(&spec.file);
        let load = |reason: String| ModelError::Load {
            path: path.clone(),
            reason,
        };
        let mut builder = Session::builder(&runtime.environment).map_err(|e| load(e.to_string()))?;
        builder = builder
            .with_intra_threads(options.threads)
            .map_err(|e| load(e.to_string()))?;
        let (provider, notes) =
            crate::providers::register(&mut builder, &options.providers, &runtime.library, &spec.sha256);
        for note in notes {
            tracing::warn!(model = %spec.name, "{note}");
        }
        let session = builder.commit_from_file(&path).map_err(|e| load(e.to_string()))?;
        if session.inputs().len() != spec.inputs.len() {
            let tensor = spec.inputs.first().map(|t| t.name.clone()).unwrap_or_default();
            return Err(ModelError::Mismatch {
                path,
                kind: "input",
                tensor,
                problem: format!(
                    "the model has {} inputs, the manifest {}",
                    session.inputs().len(),
                    spec.inputs.len()
                ),
            });
        }
        if session.outputs().len() != spec.outputs.len() {
            let tensor = spec.outputs.first().map(|t| t.name.clone()).unwrap_or_default();
            return Err(ModelError::Mismatch {
                path,
                kind: "output",
                tensor,
                problem: format!(
                    "the model has {} outputs, the manifest {}",
                    session.outputs().len(),
                    spec.outputs.len()
                ),
            });
        }
        for (o, want) in session.inputs().iter().zip(&spec.inputs) {
            check_tensor(&path, "input", want, o.name(), o.dtype())?;
        }
        for (o, want) in session.outputs().iter().zip(&spec.outputs) {
            check_tensor(&path, "output", want, o.name(), o.dtype())?;
        }
        tracing::info!(model = %spec.name, provider = ?provider, "model loaded");
        Ok(Model {
            spec,
            path,
            provider,
            session: Mutex::new(session),
        })
    }

    /// Runs the model on float32 inputs (in manifest order); returns the
    /// float32 outputs in manifest order. Inputs and outputs the manifest
    /// declares float16 are converted at the boundary (the preprocessing
    /// runs in f32; half precision halves the tensor a GPU provider reads).
    pub fn run(&self, inputs: Vec<ArrayF32>) -> Result<Vec<ArrayF32>, ModelError> {
        let err = |reason: String| ModelError::Run {
            model: self.spec.name.clone(),
            reason,
        };
        let mut values: Vec<(String, ort::value::DynValue)> = Vec::with_capacity(inputs.len());
        for (spec, a) in self.spec.inputs.iter().zip(inputs) {
            let value = if spec.dtype == "float16" {
                let data: Vec<half::f16> = a.data.iter().map(|v| half::f16::from_f32(*v)).collect();
                Tensor::from_array((a.shape.clone(), data))
                    .map_err(|e| err(e.to_string()))?
                    .into_dyn()
            } else {
                Tensor::from_array((a.shape.clone(), a.data))
                    .map_err(|e| err(e.to_string()))?
                    .into_dyn()
            };
            values.push((spec.name.clone(), value));
        }
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(values.iter().map(|(n, t)| (n.as_str(), t)).collect::<Vec<_>>())
            .map_err(|e| err(e.to_string()))?;
        self.extract(&outputs)
    }

    /// The outputs in manifest order as float32 host arrays.
    fn extract(&self, outputs: &ort::session::SessionOutputs<'_>) -> Result<Vec<ArrayF32>, ModelError> {
        let err = |reason: String| ModelError::Run {
            model: self.spec.name.clone(),
            reason,
        };
        self.spec
            .outputs
            .iter()
            .map(|o| {
                let value = &outputs[o.name.as_str()];
                let (shape, data) = if o.dtype == "float16" {
                    let (shape, data) = value
                        .try_extract_tensor::<half::f16>()
                        .map_err(|e| err(e.to_string()))?;
                    (shape.clone(), data.iter().map(|v| v.to_f32()).collect::<Vec<f32>>())
                } else {
                    let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| err(e.to_string()))?;
                    (shape.clone(), data.to_vec())
                };
                Ok(ArrayF32 {
                    shape: shape.iter().map(|d| *d as usize).collect(),
                    data,
                })
            })
            .collect()
    }

    /// Runs a single-input float32 model on a batch that the CUDA kernels
    /// left in device memory: ONNX Runtime's CUDA or TensorRT provider reads
    /// it in place, with no copy through host memory. Outputs come back to
    /// the host (they are small: embeddings and logits).
    #[cfg(feature = "gpu")]
    pub fn run_device(&self, batch: &spineagent_kernels::cuda::DeviceBatch) -> Result<Vec<ArrayF32>, ModelError> {
        use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
        use ort::value::TensorRefMut;
        let err = |reason: String| ModelError::Run {
            model: self.spec.name.clone(),
            reason,
        };
        if !matches!(self.provider, Provider::Cuda | Provider::Tensorrt) {
            return Err(err(format!(
                "a device batch needs the CUDA or TensorRT provider; this session runs on {:?}",
                self.provider
            )));
        }
        let [input] = self.spec.inputs.as_slice() else {
            return Err(err("a device batch feeds single-input models only".into()));
        };
        if input.dtype != "float32" {
            return Err(err(format!(
                "input {} is {}; the kernels write float32 (use run())",
                input.name, input.dtype
            )));
        }
        let info = MemoryInfo::new(
            AllocationDevice::CUDA,
            batch.ordinal as i32,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(|e| err(e.to_string()))?;
        let shape: Vec<i64> = batch.shape.iter().map(|d| *d as i64).collect();
        // SAFETY: the pointer is the batch's device allocation of exactly
        // shape.product() f32 on device `ordinal`; `batch` is borrowed for
        // the whole run, so the memory outlives the tensor view, and the
        // kernels that wrote it have finished (DeviceBatch guarantees it).
        let tensor =
            unsafe { TensorRefMut::<f32>::from_raw(info, batch.device_ptr() as usize as *mut _, shape.into()) }
                .map_err(|e| err(e.to_string()))?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(ort::inputs![input.name.as_str() => tensor])
            .map_err(|e| err(e.to_string()))?;
        self.extract(&outputs)
    }
}
