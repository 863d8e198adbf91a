//! The daemon's models: the configured bundle opened, every model loaded
//! once on the configured providers, checked against its manifest and warmed
//! up (first inference pays for allocation and kernel selection) before the
//! daemon reports ready. The analysis stages share them.

use std::sync::Arc;
use std::time::Instant;

use spineagent_engine::bundle::Dim;
use spineagent_engine::npy::{ArrayF32, read_f32};
use spineagent_engine::providers::{Provider, ProviderConfig};
use spineagent_engine::{Bundle, Model, Runtime, SessionOptions};

use crate::config::Config;
use crate::metrics::Metrics;

pub struct LoadedModels {
    pub bundle: Bundle,
    pub models: Vec<Arc<Model>>,
}

/// Warm-up inputs: the golden inputs, or zeros with every named axis 1.
fn warmup_inputs(bundle: &Bundle, model: &Model) -> Vec<ArrayF32> {
    if let Some((files, _)) = model.spec.golden()
        && let Ok(inputs) = files
            .iter()
            .map(|f| read_f32(&bundle.dir.join(f)))
            .collect::<Result<Vec<_>, _>>()
    {
        return inputs;
    }
    model
        .spec
        .inputs
        .iter()
        .map(|input| {
            let shape: Vec<usize> = input
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n as usize,
                    Dim::Named(_) => 1,
                })
                .collect();
            ArrayF32 {
                data: vec![0.0; shape.iter().product()],
                shape,
            }
        })
        .collect()
}

pub fn load(config: &Config, metrics: &Metrics) -> Result<Option<LoadedModels>, String> {
    let Some(dir) = config.engine_bundle() else {
        tracing::info!("no model bundle configured; receiving and assembling only");
        return Ok(None);
    };
    let bundle = Bundle::open(&dir).map_err(|e| format!("{e}"))?;
    let runtime = Runtime::global().map_err(|e| e.to_string())?;
    let order = config
        .engine
        .providers
        .iter()
        .map(|p| p.parse::<Provider>())
        .collect::<Result<Vec<_>, _>>()?;
    let options = SessionOptions {
        threads: config.engine.threads,
        providers: ProviderConfig {
            order,
            device_id: 0,
            cache_dir: config.engine_cache_dir(),
            fp16: config.engine.fp16,
        },
    };
    let mut models = Vec::new();
    for spec in &bundle.manifest.models {
        let started = Instant::now();
        let model = Model::load(runtime, &bundle, &spec.name, &options).map_err(|e| e.to_string())?;
        model
            .run(warmup_inputs(&bundle, &model))
            .map_err(|e| format!("warming up {}: {e}", spec.name))?;
        let seconds = started.elapsed().as_secs_f64();
        metrics
            .model_ready_seconds
            .with_label_values(&[spec.name.as_str()])
            .set(seconds);
        tracing::info!(model = %spec.name, provider = ?model.provider, seconds, "model loaded and warmed up");
        models.push(Arc::new(model));
    }
    metrics.models_loaded.set(models.len() as i64);
    tracing::info!(bundle = %bundle.manifest.name, version = %bundle.manifest.version, models = models.len(), "model bundle ready");
    Ok(Some(LoadedModels { bundle, models }))
}
