//! Model bundles: a directory with `bundle.toml` naming every model (ONNX
//! file, sha256, inputs and outputs with named dynamic axes, dtypes, golden
//! data), the preprocessing spec, label maps and the agent roster. Opening a
//! bundle checks that every file exists and matches its hash; loading its
//! models ([`crate::model`]) checks the ONNX graphs against the manifest.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use spineagent_kernels::PreprocessSpec;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("bundle {dir}: no bundle.toml")]
    NoManifest { dir: PathBuf },
    #[error("bundle manifest {path} is invalid")]
    Manifest {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("bundle file {path} is missing")]
    MissingFile { path: PathBuf },
    #[error("bundle file {path}: sha256 {actual} does not match the manifest's {expected}")]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bundle {dir}: {problem}")]
    Invalid { dir: PathBuf, problem: String },
}

/// One dimension: a fixed size or a named dynamic axis ("batch").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(i64),
    Named(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Named(s) => write!(f, "{s}"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<Dim>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub file: PathBuf,
    pub sha256: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub golden_input: Option<PathBuf>,
    pub golden_input_sha256: Option<String>,
    pub golden_output: Option<PathBuf>,
    pub golden_output_sha256: Option<String>,
    /// Golden data of multi-input/-output models, in manifest order.
    #[serde(default)]
    pub golden_inputs: Vec<FileRef>,
    #[serde(default)]
    pub golden_outputs: Vec<FileRef>,
    /// Largest absolute difference from the golden output that passes.
    #[serde(default = "default_tolerance")]
    pub tolerance: f32,
}

/// A bundle file and its sha256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    pub file: PathBuf,
    pub sha256: String,
}

impl ModelSpec {
    /// Golden input and output files (single- or multi-tensor form).
    pub fn golden(&self) -> Option<(Vec<PathBuf>, Vec<PathBuf>)> {
        if let (Some(i), Some(o)) = (&self.golden_input, &self.golden_output) {
            return Some((vec![i.clone()], vec![o.clone()]));
        }
        if self.golden_inputs.is_empty() || self.golden_outputs.is_empty() {
            return None;
        }
        Some((
            self.golden_inputs.iter().map(|f| f.file.clone()).collect(),
            self.golden_outputs.iter().map(|f| f.file.clone()).collect(),
        ))
    }
}

fn default_tolerance() -> f32 {
    1e-4
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub preprocess: PreprocessSpec,
    #[serde(rename = "model")]
    pub models: Vec<ModelSpec>,
    /// Label maps (conditions, levels, grades, anatomy classes ...).
    #[serde(default)]
    pub labels: BTreeMap<String, Vec<String>>,
    /// The agent roster: agent name to the model(s) it runs.
    #[serde(default)]
    pub agents: BTreeMap<String, Vec<String>>,
    /// Other data the stages need (retrieval index, report texts), hashed.
    #[serde(default)]
    pub files: BTreeMap<String, FileRef>,
    /// Reporting threshold per condition (chosen on validation data).
    #[serde(default)]
    pub thresholds: BTreeMap<String, f32>,
}

/// An opened, hash-verified bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

pub fn sha256_file(path: &Path) -> Result<String, BundleError> {
    let mut f = std::fs::File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            BundleError::MissingFile { path: path.to_owned() }
        } else {
            BundleError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|source| BundleError::Io {
            path: path.to_owned(),
            source,
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn verify(dir: &Path, file: &Path, expected: &str) -> Result<PathBuf, BundleError> {
    let path = dir.join(file);
    let actual = sha256_file(&path)?;
    if !actual.eq_ignore_ascii_case(expected.trim()) {
        return Err(BundleError::HashMismatch {
            path,
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(path)
}

impl Bundle {
    /// Reads `dir/bundle.toml` and verifies every file's hash.
    pub fn open(dir: &Path) -> Result<Bundle, BundleError> {
        let path = dir.join("bundle.toml");
        let text = std::fs::read_to_string(&path).map_err(|_| BundleError::NoManifest { dir: dir.to_owned() })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|source| BundleError::Manifest { path, source })?;
        let invalid = |problem: String| BundleError::Invalid {
            dir: dir.to_owned(),
            problem,
        };
        manifest
            .preprocess
            .validate()
            .map_err(|e| invalid(format!("preprocess: {e}")))?;
        if manifest.models.is_empty() {
            return Err(invalid("no models".into()));
        }
        for m in &manifest.models {
            verify(dir, &m.file, &m.sha256)?;
            for (file, hash) in [
                (&m.golden_input, &m.golden_input_sha256),
                (&m.golden_output, &m.golden_output_sha256),
            ] {
                match (file, hash) {
                    (Some(f), Some(h)) => {
                        verify(dir, f, h)?;
                    }
                    (Some(f), None) => return Err(invalid(format!("model {}: {} has no sha256", m.name, f.display()))),
                    _ => {}
                }
            }
            for g in m.golden_inputs.iter().chain(&m.golden_outputs) {
                verify(dir, &g.file, &g.sha256)?;
            }
            if !m.golden_inputs.is_empty() && m.golden_inputs.len() != m.inputs.len() {
                return Err(invalid(format!(
                    "model {}: golden inputs do not match its inputs",
                    m.name
                )));
            }
            if !m.golden_outputs.is_empty() && m.golden_outputs.len() != m.outputs.len() {
                return Err(invalid(format!(
                    "model {}: golden outputs do not match its outputs",
                    m.name
                )));
            }
        }
        for f in manifest.files.values() {
            verify(dir, &f.file, &f.sha256)?;
        }
        for (agent, models) in &manifest.agents {
            for m in models {
                if !manifest.models.iter().any(|x| &x.name == m) {
                    return Err(invalid(format!("agent {agent} names unknown model {m}")));
                }
            }
        }
        Ok(Bundle {
            dir: dir.to_owned(),
            manifest,
        })
    }

    /// The path of a named data file (`[files]`), hash already verified.
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        self.manifest.files.get(name).map(|f| self.dir.join(&f.file))
    }

    /// A label map, or an error naming it.
    pub fn labels(&self, name: &str) -> Result<&[String], BundleError> {
        self.manifest
            .labels
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| BundleError::Invalid {
                dir: self.dir.clone(),
                problem: format!("no label map {name}"),
            })
    }

    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.manifest.models.iter().find(|m| m.name == name)
    }
}
