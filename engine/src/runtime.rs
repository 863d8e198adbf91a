//! The ONNX Runtime library, loaded at run time (`ort` with `load-dynamic`:
//! nothing is linked or downloaded at build time), and the execution
//! providers in configured order.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found (looked in: {looked}). Install it with `scripts/setup` (the PyPI onnxruntime \
         wheel carries libonnxruntime.so) or point ORT_DYLIB_PATH at a libonnxruntime.so (1.24 or newer)"
    )]
    NotFound { looked: String },
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("{0}")]
    Unavailable(String),
}

/// Where the library is looked for, in order: `ORT_DYLIB_PATH`, the
/// appliance's install location, next to the binary, the repository's
/// development virtualenv (filled by `scripts/setup`).
pub fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(p));
    }
    out.push(PathBuf::from("/usr/local/lib/spineagent/libonnxruntime.so"));
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            out.push(d.join("lib/libonnxruntime.so"));
            let capi = d.join(".venv/lib/python3.11/site-packages/onnxruntime/capi");
            if let Ok(rd) = std::fs::read_dir(&capi) {
                let mut libs: Vec<PathBuf> = rd
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so."))
                    })
                    .collect();
                libs.sort();
                out.extend(libs);
            }
            dir = d.parent().map(Path::to_path_buf);
        }
    }
    out
}

/// The loaded runtime. ONNX Runtime allows one environment per process:
/// get it with [`Runtime::global`]; sessions share it.
pub struct Runtime {
    pub library: PathBuf,
    pub(crate) environment: ort::environment::Environment,
}

static GLOBAL: std::sync::OnceLock<Result<Runtime, String>> = std::sync::OnceLock::new();

impl Runtime {
    /// The process's runtime, loaded on first use from [`candidates`].
    pub fn global() -> Result<&'static Runtime, RuntimeError> {
        GLOBAL
            .get_or_init(|| Runtime::load().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| RuntimeError::Unavailable(e.clone()))
    }

    fn load() -> Result<Runtime, RuntimeError> {
        // An explicit setting is obeyed, never silently replaced.
        if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from) {
            if !p.is_file() {
                return Err(RuntimeError::NotFound {
                    looked: format!("ORT_DYLIB_PATH={}", p.display()),
                });
            }
            return Self::load_from(&p);
        }
        let found = candidates().into_iter().find(|p| p.is_file());
        let Some(path) = found else {
            let looked = candidates()
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(RuntimeError::NotFound { looked });
        };
        Self::load_from(&path)
    }

    fn load_from(path: &Path) -> Result<Runtime, RuntimeError> {
        let builder = ort::init_from(path).map_err(|e| RuntimeError::Load {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let environment = builder
            .with_name("spineagent")
            .build()
            .map_err(|e| RuntimeError::Load {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        tracing::info!(library = %path.display(), "ONNX Runtime loaded");
        Ok(Runtime {
            library: path.to_owned(),
            environment,
        })
    }
}
