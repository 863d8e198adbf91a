//! The CUDA implementation of [`crate::spec`]: `cuda/preprocess.cu`
//! compiled at run time by NVRTC and launched through `cudarc`, whose
//! libraries are dlopened, so a machine without CUDA builds and runs this
//! binary and gets [`PreprocessError::CudaUnavailable`] here.
//!
//! The result stays in device memory ([`CudaPreprocessor::preprocess_on_device`])
//! for the inference engine's CUDA/TensorRT providers; [`CudaPreprocessor::preprocess`]
//! copies it back, for parity tests and benchmarks.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use crate::PreprocessError;
use crate::spec::{PreprocessSpec, Slice, axis_weights, rank_for};

const SOURCE: &str = include_str!("../cuda/preprocess.cu");
const HIST_BINS: usize = 98304;
const HIST_OFFSET: i32 = 32768;

/// Whether the CUDA driver and NVRTC libraries can be loaded, and why not.
pub fn available() -> Result<(), String> {
    // SAFETY: these only try to dlopen the libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("libcuda (the NVIDIA driver) not found".into());
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("libnvrtc (CUDA runtime compiler) not found".into());
    }
    Ok(())
}

fn cuda<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> PreprocessError + '_ {
    move |e| PreprocessError::Cuda(format!("{what}: {e:?}"))
}

pub struct CudaPreprocessor {
    pub device_name: String,
    stream: Arc<CudaStream>,
    histogram: CudaFunction,
    thresholds: CudaFunction,
    horizontal: CudaFunction,
    vertical: CudaFunction,
}

fn grid(n: usize, slices: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256) as u32, slices as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaPreprocessor {
    /// Loads the driver, compiles the kernels for device `ordinal`.
    pub fn new(ordinal: usize) -> Result<CudaPreprocessor, PreprocessError> {
        available().map_err(PreprocessError::CudaUnavailable)?;
        let ctx = CudaContext::new(ordinal).map_err(cuda("open device"))?;
        let device_name = ctx.name().unwrap_or_else(|_| format!("cuda:{ordinal}"));
        let ptx = cudarc::nvrtc::compile_ptx(SOURCE).map_err(cuda("compile kernels"))?;
        let module = ctx.load_module(ptx).map_err(cuda("load kernels"))?;
        let f = |name: &str| module.load_function(name).map_err(cuda("load kernel"));
        Ok(CudaPreprocessor {
            device_name,
            stream: ctx.default_stream(),
            histogram: f("histogram")?,
            thresholds: f("thresholds")?,
            horizontal: f("horizontal")?,
            vertical: f("vertical")?,
        })
    }

    /// Preprocesses one series (slices of one shape); the tensor stays on the GPU.
    pub fn preprocess_on_device(
        &self,
        slices: &[Slice],
        spec: &PreprocessSpec,
    ) -> Result<CudaSlice<f32>, PreprocessError> {
        spec.validate()?;
        let Some(first) = slices.first() else {
            return self.stream.alloc_zeros::<f32>(0).map_err(cuda("alloc"));
        };
        let (rows, cols) = (first.rows, first.cols);
        let mut host = Vec::with_capacity(slices.len() * rows * cols);
        for (i, s) in slices.iter().enumerate() {
            if s.rows != rows || s.cols != cols || s.values.len() != rows * cols {
                return Err(PreprocessError::Shape {
                    slice: i,
                    rows: s.rows,
                    cols: s.cols,
                    values: s.values.len(),
                });
            }
            if s.invert != first.invert {
                return Err(PreprocessError::Cuda(
                    "one batch must share its photometric interpretation".into(),
                ));
            }
            if s.values.iter().any(|v| !(-HIST_OFFSET..=65535).contains(v)) {
                return Err(PreprocessError::Cuda("values beyond 16 bits: use the CPU path".into()));
            }
            host.extend_from_slice(s.values);
        }
        let n = slices.len();
        let per = rows * cols;
        let side = rows.max(cols);
        let (off_r, off_c) = (((side - rows) / 2) as i32, ((side - cols) / 2) as i32);
        let c0 = ((spec.resize - spec.crop) / 2) as i32;
        let crop = spec.crop as i32;
        let w = axis_weights(side, spec.resize);
        let as_i32 = |v: &[u32]| v.iter().map(|x| *x as i32).collect::<Vec<i32>>();
        let s = &self.stream;
        let x = s.clone_htod(&host).map_err(cuda("upload"))?;
        let start = s.clone_htod(&as_i32(&w.start)).map_err(cuda("upload"))?;
        let len = s.clone_htod(&as_i32(&w.len)).map_err(cuda("upload"))?;
        let woff = s.clone_htod(&as_i32(&w.offset)).map_err(cuda("upload"))?;
        let weights = s.clone_htod(&w.weights).map_err(cuda("upload"))?;
        let mut hist = s.alloc_zeros::<i32>(n * HIST_BINS).map_err(cuda("alloc"))?;
        let mut lo = s.alloc_zeros::<i32>(n).map_err(cuda("alloc"))?;
        let mut hi = s.alloc_zeros::<i32>(n).map_err(cuda("alloc"))?;
        let mut tmp = s.alloc_zeros::<f32>(n * rows * spec.crop).map_err(cuda("alloc"))?;
        let mut out = s
            .alloc_zeros::<f32>(n * 3 * spec.crop * spec.crop)
            .map_err(cuda("alloc"))?;
        let (rank_lo, rank_hi) = (
            rank_for(spec.low_percentile, per) as i32,
            rank_for(spec.high_percentile, per) as i32,
        );
        let (per_i, rows_i, cols_i, invert) = (per as i32, rows as i32, cols as i32, first.invert as i32);
        let [m0, m1, m2] = spec.mean;
        let [s0, s1, s2] = spec.std;
        // SAFETY: argument lists match the kernels in preprocess.cu; every
        // index is bounds-checked there against the sizes passed here.
        unsafe {
            s.launch_builder(&self.histogram)
                .arg(&x)
                .arg(&per_i)
                .arg(&mut hist)
                .launch(grid(per, n))
                .map_err(cuda("histogram"))?;
            s.launch_builder(&self.thresholds)
                .arg(&hist)
                .arg(&rank_lo)
                .arg(&rank_hi)
                .arg(&mut lo)
                .arg(&mut hi)
                .launch(LaunchConfig {
                    grid_dim: (n as u32, 1, 1),
                    block_dim: (1024, 1, 1),
                    shared_mem_bytes: 0,
                })
                .map_err(cuda("thresholds"))?;
            s.launch_builder(&self.horizontal)
                .arg(&x)
                .arg(&rows_i)
                .arg(&cols_i)
                .arg(&lo)
                .arg(&hi)
                .arg(&invert)
                .arg(&off_c)
                .arg(&c0)
                .arg(&crop)
                .arg(&start)
                .arg(&len)
                .arg(&woff)
                .arg(&weights)
                .arg(&mut tmp)
                .launch(grid(rows * spec.crop, n))
                .map_err(cuda("horizontal"))?;
            s.launch_builder(&self.vertical)
                .arg(&tmp)
                .arg(&rows_i)
                .arg(&off_r)
                .arg(&c0)
                .arg(&crop)
                .arg(&start)
                .arg(&len)
                .arg(&woff)
                .arg(&weights)
                .arg(&m0)
                .arg(&m1)
                .arg(&m2)
                .arg(&s0)
                .arg(&s1)
                .arg(&s2)
                .arg(&mut out)
                .launch(grid(spec.crop * spec.crop, n))
                .map_err(cuda("vertical"))?;
        }
        Ok(out)
    }

    /// Preprocesses on the GPU into a batch that an inference runtime on the
    /// same device reads in place: the kernels are finished when this
    /// returns, because the runtime reads the memory from its own stream.
    pub fn preprocess_to_batch(&self, slices: &[Slice], spec: &PreprocessSpec) -> Result<DeviceBatch, PreprocessError> {
        let data = self.preprocess_on_device(slices, spec)?;
        self.synchronize()?;
        Ok(DeviceBatch {
            shape: [slices.len(), 3, spec.crop, spec.crop],
            ordinal: self.stream.context().ordinal(),
            data,
        })
    }

    /// Preprocesses on the GPU and copies the tensor back.
    pub fn preprocess(&self, slices: &[Slice], spec: &PreprocessSpec) -> Result<Vec<f32>, PreprocessError> {
        let out = self.preprocess_on_device(slices, spec)?;
        self.stream.clone_dtoh(&out).map_err(cuda("download"))
    }
}

/// A preprocessed float32 NCHW batch in device memory, complete (no kernel
/// still writes it). The memory is freed when the batch is dropped, so a
/// consumer holding [`DeviceBatch::device_ptr`] must borrow the batch.
pub struct DeviceBatch {
    data: CudaSlice<f32>,
    pub shape: [usize; 4],
    pub ordinal: usize,
}

impl DeviceBatch {
    /// The raw device address of the first element.
    pub fn device_ptr(&self) -> u64 {
        use cudarc::driver::DevicePtr;
        let stream = self.data.stream().clone();
        let (ptr, _sync) = self.data.device_ptr(&stream);
        ptr
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.len() == 0
    }

    /// Copies the batch to host memory (for checks).
    pub fn to_host(&self) -> Result<Vec<f32>, PreprocessError> {
        self.data.stream().clone_dtoh(&self.data).map_err(cuda("download"))
    }
}

/// The name of GPU `ordinal`, when CUDA is usable here.
pub fn device_name(ordinal: usize) -> Option<String> {
    available().ok()?;
    CudaContext::new(ordinal).ok()?.name().ok()
}

impl CudaPreprocessor {
    /// Waits for queued work.
    pub fn synchronize(&self) -> Result<(), PreprocessError> {
        self.stream.synchronize().map_err(cuda("synchronize"))
    }

    /// Theoretical memory bandwidth: 2 x memory clock x bus width.
    pub fn memory_bandwidth_gbps(&self) -> Option<f64> {
        use cudarc::driver::sys::CUdevice_attribute as A;
        let ctx = self.stream.context();
        let clock_khz = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE).ok()? as f64;
        let bus_bits = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH).ok()? as f64;
        Some(2.0 * clock_khz * 1e3 * bus_bits / 8.0 / 1e9)
    }
}
