//! `spineagent bundle check`: open a bundle (hashes), load every model
//! (I/O against the manifest), run each on its golden input and compare
//! with its golden output.

use std::path::Path;
use std::time::Instant;

use crate::bundle::Bundle;
use crate::model::{Model, ModelError, SessionOptions};
use crate::npy;
use crate::runtime::Runtime;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Npy(#[from] npy::NpyError),
    #[error("model {model}: output differs from the golden output by {diff} (tolerance {tolerance})")]
    Golden { model: String, diff: f32, tolerance: f32 },
    #[error("model {model}: output shape {got:?}, golden {want:?}")]
    GoldenShape {
        model: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
}

#[derive(Debug, Clone)]
pub struct ModelReport {
    pub name: String,
    pub load_seconds: f64,
    pub run_seconds: f64,
    /// Largest absolute difference from the golden output, when there is one.
    pub max_abs_diff: Option<f32>,
}

pub fn check_bundle(dir: &Path, options: &SessionOptions) -> Result<Vec<ModelReport>, CheckError> {
    let bundle = Bundle::open(dir)?;
    let runtime = Runtime::global()?;
    let mut reports = Vec::new();
    for spec in &bundle.manifest.models {
        let started = Instant::now();
        let model = Model::load(runtime, &bundle, &spec.name, options)?;
        let load_seconds = started.elapsed().as_secs_f64();
        let (mut run_seconds, mut max_abs_diff) = (0.0, None);
        if let Some((inputs, outputs)) = spec.golden() {
            let inputs = inputs
                .iter()
                .map(|f| npy::read_f32(&bundle.dir.join(f)))
                .collect::<Result<Vec<_>, _>>()?;
            let wants = outputs
                .iter()
                .map(|f| npy::read_f32(&bundle.dir.join(f)))
                .collect::<Result<Vec<_>, _>>()?;
            let started = Instant::now();
            let gots = model.run(inputs)?;
            run_seconds = started.elapsed().as_secs_f64();
            let mut worst = 0f32;
            for (got, want) in gots.iter().zip(&wants) {
                if got.shape != want.shape {
                    return Err(CheckError::GoldenShape {
                        model: spec.name.clone(),
                        got: got.shape.clone(),
                        want: want.shape.clone(),
                    });
                }
                let diff = got
                    .data
                    .iter()
                    .zip(&want.data)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                if !(diff <= spec.tolerance) {
                    return Err(CheckError::Golden {
                        model: spec.name.clone(),
                        diff,
                        tolerance: spec.tolerance,
                    });
                }
                worst = worst.max(diff);
            }
            max_abs_diff = Some(worst);
        }
        reports.push(ModelReport {
            name: spec.name.clone(),
            load_seconds,
            run_seconds,
            max_abs_diff,
        });
    }
    Ok(reports)
}
