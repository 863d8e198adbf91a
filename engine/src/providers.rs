//! Execution providers in configured order (default: CPU only). CUDA and
//! TensorRT are compiled in but used only when the loaded ONNX Runtime has
//! them and they register on this machine; otherwise the log says which
//! and why, and the next provider is tried. CPU always remains as the
//! fallback. TensorRT engines and timing caches live in a directory keyed
//! by GPU, ONNX Runtime library (which fixes the TensorRT version) and
//! model hash, so a restart reuses them and a new GPU, runtime or model
//! rebuilds.

use std::path::{Path, PathBuf};

use ort::ep::ExecutionProvider;
use ort::session::builder::SessionBuilder;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Cpu,
    Cuda,
    Tensorrt,
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Provider, String> {
        match s.to_lowercase().as_str() {
            "cpu" => Ok(Provider::Cpu),
            "cuda" => Ok(Provider::Cuda),
            "tensorrt" | "trt" => Ok(Provider::Tensorrt),
            _ => Err(format!("unknown execution provider {s:?} (cpu, cuda, tensorrt)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub order: Vec<Provider>,
    pub device_id: i32,
    /// Where TensorRT engines and timing caches are kept.
    pub cache_dir: PathBuf,
    /// TensorRT FP16 builder flag.
    pub fp16: bool,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            order: vec![Provider::Cpu],
            device_id: 0,
            cache_dir: PathBuf::from("var/engines"),
            fp16: false,
        }
    }
}

/// The TensorRT cache directory for one model on this machine.
pub fn engine_cache_dir(cfg: &ProviderConfig, library: &Path, model_sha256: &str) -> PathBuf {
    let gpu = cuda_device_name(cfg.device_id).unwrap_or_else(|| format!("gpu{}", cfg.device_id));
    let clean = |s: &str| {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' })
            .collect::<String>()
    };
    let runtime = library
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    cfg.cache_dir.join(format!(
        "{}__{}__{}",
        clean(&gpu),
        clean(&runtime),
        &model_sha256[..model_sha256.len().min(16)]
    ))
}

fn cuda_device_name(id: i32) -> Option<String> {
    spineagent_kernels::cuda::device_name(usize::try_from(id).ok()?)
}

/// Registers the configured providers on `builder`; returns the one that
/// took (the first that registered) and notes on those that did not.
pub fn register(
    builder: &mut SessionBuilder,
    cfg: &ProviderConfig,
    library: &Path,
    model_sha256: &str,
) -> (Provider, Vec<String>) {
    let mut notes = Vec::new();
    for p in &cfg.order {
        match p {
            Provider::Cpu => return (Provider::Cpu, notes),
            Provider::Cuda => {
                let ep = ort::ep::CUDA::default().with_device_id(cfg.device_id);
                match ort::ep::CUDA::is_available() {
                    Ok(true) => match ep.register(builder) {
                        Ok(()) => return (Provider::Cuda, notes),
                        Err(e) => notes.push(format!("CUDA provider did not register: {e}")),
                    },
                    _ => notes.push("CUDA provider unavailable: this ONNX Runtime library was built without it (use the onnxruntime-gpu build)".into()),
                }
            }
            Provider::Tensorrt => {
                if !matches!(ort::ep::TensorRT::is_available(), Ok(true)) {
                    notes.push("TensorRT provider unavailable: this ONNX Runtime library was built without it (use the onnxruntime-gpu build with TensorRT 10)".into());
                    continue;
                }
                let dir = engine_cache_dir(cfg, library, model_sha256);
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    notes.push(format!("TensorRT cache {} unusable: {e}", dir.display()));
                    continue;
                }
                let ep = ort::ep::TensorRT::default()
                    .with_device_id(cfg.device_id)
                    .with_engine_cache(true)
                    .with_engine_cache_path(dir.display())
                    .with_timing_cache(true)
                    .with_timing_cache_path(dir.display())
                    .with_fp16(cfg.fp16);
                match ep.register(builder) {
                    Ok(()) => return (Provider::Tensorrt, notes),
                    Err(e) => notes.push(format!("TensorRT provider did not register: {e}")),
                }
            }
        }
    }
    notes.push("falling back to CPU".into());
    (Provider::Cpu, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dirs_are_keyed_by_runtime_and_model() {
        let cfg = ProviderConfig {
            cache_dir: "/c".into(),
            ..Default::default()
        };
        let a = engine_cache_dir(&cfg, Path::new("/x/libonnxruntime.so.1.32.0"), &"a".repeat(64));
        let b = engine_cache_dir(&cfg, Path::new("/x/libonnxruntime.so.1.33.0"), &"a".repeat(64));
        let c = engine_cache_dir(&cfg, Path::new("/x/libonnxruntime.so.1.32.0"), &"b".repeat(64));
        assert!(a != b && a != c && b != c);
        assert!(a.starts_with("/c"));
        assert_eq!("TRT".parse::<Provider>().unwrap(), Provider::Tensorrt);
        assert!("npu".parse::<Provider>().is_err());
    }
}
