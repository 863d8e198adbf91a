//! The `spineagent` command: flags and glue only; the work is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use spineagent::assemble::AssemblyEvent;
use spineagent::config::{Config, LogFormat};
use spineagent::scu::{self, Destination, ScuOptions};

#[derive(Parser)]
#[command(
    name = "spineagent",
    version,
    about = "Spine MRI appliance: DICOM receiver, study assembly, analysis"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (DICOM SCP, assembly, metrics endpoint).
    Serve {
        /// Configuration file; without it the built-in defaults
        /// (config/spineagent.toml) apply.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override [dicom].listen's port.
        #[arg(long)]
        port: Option<u16>,
        /// Override [spool].dir.
        #[arg(long)]
        spool: Option<PathBuf>,
        /// Override [metrics].listen.
        #[arg(long)]
        metrics_addr: Option<SocketAddr>,
    },
    /// Validate a configuration file and its rule table; start nothing.
    CheckConfig { file: PathBuf },
    /// C-STORE files (directories are walked) to a remote AE.
    Send {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Destination as AET@HOST:PORT.
        #[arg(long)]
        to: Destination,
        /// Our (calling) AE title.
        #[arg(long, default_value = "SPINEAGENT")]
        aet: String,
        /// Largest PDU we receive.
        #[arg(long, default_value_t = 131072)]
        max_pdu: u32,
    },
    /// Read a report text as the report agent's verifier does: the
    /// findings it states (JSON), and with --analysis the discrepancies
    /// against that analysis's findings. Exit status 1 when any.
    VerifyReport {
        text: PathBuf,
        /// analysis.json from `spineagent analyze --out`.
        #[arg(long)]
        analysis: Option<PathBuf>,
    },
    /// Synthetic spine MRI studies with ground truth (phantoms).
    Phantom {
        #[command(subcommand)]
        command: PhantomCommand,
    },
    /// Decode and preprocess DICOM files (directories are walked) into
    /// float32 tensors, one .npy per series stack, plus index.json.
    /// Run the model bundle on one study's DICOM files (directories are
    /// walked): series embeddings, agents' findings, structured tokens.
    Analyze {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Bundle directory (default: models/spinefm-tiny).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Print the whole analysis as JSON.
        #[arg(long)]
        json: bool,
        /// Report findings at or above this probability (default: the
        /// bundle's per-condition thresholds).
        #[arg(long)]
        threshold: Option<f32>,
        /// Intra-op threads per model (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Also analyze series whose tags name no body region (series
        /// the tags place outside the spine are always skipped).
        #[arg(long)]
        accept_unknown_region: bool,
        /// The report agent's language model (GGUF); without it the
        /// deterministic composer writes the text.
        #[arg(long)]
        language_model: Option<PathBuf>,
        /// LoRA adapters for the language model (safetensors).
        #[arg(long)]
        lm_adapter: Option<PathBuf>,
        /// Seconds the report agent may take (all drafts).
        #[arg(long, default_value_t = spineagent::config::default_report_budget())]
        report_budget: f64,
        /// Longest draft of the report agent, in tokens.
        #[arg(long, default_value_t = spineagent::config::default_max_new_tokens())]
        max_new_tokens: usize,
        /// The language model writes without grounded decoding (only the
        /// verifier judges its drafts); for evaluating the model alone.
        #[arg(long)]
        unguided: bool,
        /// Penalty on the logits of recently written tokens (1.0: none).
        #[arg(long, default_value_t = spineagent::config::default_repeat_penalty())]
        repeat_penalty: f32,
        /// Write analysis.json, triage.json, report.txt, the DICOM SR
        /// (sr.dcm) and SEG (seg.dcm) and key-image PNGs here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    Preprocess {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Take the preprocessing spec from this bundle (default: the method's).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Override the spec's resize side (pixels).
        #[arg(long)]
        resize: Option<usize>,
        /// Override the spec's centre crop side (pixels).
        #[arg(long)]
        crop: Option<usize>,
    },
    /// Model bundles.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Inference engines (ONNX Runtime sessions, TensorRT engine caches).
    Engines {
        #[command(subcommand)]
        command: EnginesCommand,
    },
    /// C-ECHO a remote AE.
    Echo {
        /// AET@HOST:PORT.
        to: Destination,
        #[arg(long, default_value = "SPINEAGENT")]
        aet: String,
    },
}

#[derive(Subcommand)]
enum EnginesCommand {
    /// Build every model of a bundle for this machine ahead of time (TensorRT
    /// engines go to the cache, reused at start-up); reports per-model time.
    Build {
        bundle: PathBuf,
        /// Providers in order of preference: tensorrt, cuda, cpu.
        #[arg(long, default_value = "tensorrt,cuda,cpu", value_delimiter = ',')]
        providers: Vec<spineagent_engine::providers::Provider>,
        /// TensorRT engine and timing cache directory.
        #[arg(long, default_value = "var/engines")]
        cache: PathBuf,
        /// TensorRT FP16.
        #[arg(long)]
        fp16: bool,
        #[arg(long, default_value_t = 0)]
        device: i32,
    },
}

fn engines(command: EnginesCommand) -> Result<()> {
    let EnginesCommand::Build {
        bundle,
        providers,
        cache,
        fp16,
        device,
    } = command;
    init_logging(&LogFormat::Text, "warn");
    let b = spineagent_engine::Bundle::open(&bundle)?;
    let runtime = spineagent_engine::Runtime::global()?;
    let options = spineagent_engine::SessionOptions {
        providers: spineagent_engine::providers::ProviderConfig {
            order: providers,
            device_id: device,
            cache_dir: cache,
            fp16,
        },
        ..Default::default()
    };
    let total = b.manifest.models.len();
    for (i, spec) in b.manifest.models.iter().enumerate() {
        let started = std::time::Instant::now();
        let model = spineagent_engine::Model::load(runtime, &b, &spec.name, &options)?;
        println!(
            "[{}/{total}] {}: {:?} in {:.2} s",
            i + 1,
            spec.name,
            model.provider,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Verify a bundle: hashes, every model's inputs and outputs against the
    /// manifest, and each model's golden output.
    Check {
        dir: PathBuf,
        /// Intra-op threads per model.
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn bundle(command: BundleCommand) -> Result<()> {
    match command {
        BundleCommand::Check { dir, threads } => {
            let mut options = spineagent_engine::SessionOptions::default();
            // (CPU provider; `engines build` chooses GPU providers.)
            if let Some(t) = threads {
                options.threads = t;
            }
            let reports = spineagent_engine::check::check_bundle(&dir, &options)?;
            for r in &reports {
                match r.max_abs_diff {
                    Some(d) => println!(
                        "{}: ok (load {:.2} s, golden run {:.3} s, max abs diff {d:.2e})",
                        r.name, r.load_seconds, r.run_seconds
                    ),
                    None => println!("{}: ok (load {:.2} s, no golden data)", r.name, r.load_seconds),
                }
            }
            println!("{}: {} models ok", dir.display(), reports.len());
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum PhantomCommand {
    /// One study: DICOM series, label volumes, truth.json, report.txt.
    Study {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// cervical, thoracic, lumbar, whole_spine (default: drawn from the seed).
        #[arg(long)]
        region: Option<spineagent_phantom::levels::Region>,
        /// siemens, ge, philips, canon (default: drawn from the seed).
        #[arg(long)]
        vendor: Option<spineagent_phantom::vendor::Vendor>,
        /// 1.5 or 3 (tesla).
        #[arg(long)]
        field: Option<f64>,
        /// Force findings (repeatable): CONDITION:LEVEL[:SIDE][:SEVERITY][:SUBTYPE];
        /// `--finding none` for a normal study.
        #[arg(long = "finding")]
        findings: Vec<String>,
        /// Add Dixon water/fat/in/opposed series.
        #[arg(long)]
        dixon: bool,
        /// Add a T1 post-contrast series.
        #[arg(long)]
        contrast: bool,
        /// Add a sagittal proton-density series.
        #[arg(long)]
        pd: bool,
        /// The standard protocol only (localizer, sagittal T1, T2, STIR,
        /// axial T2): no Dixon, contrast or PD series unless asked for.
        #[arg(long)]
        standard: bool,
        /// Condition probabilities when findings are drawn, e.g. herniation=0.5,canal_stenosis=0.4.
        #[arg(long, default_value = "")]
        prevalence: String,
    },
    /// A reproducible train/validation/test dataset with one vendor held out.
    Dataset {
        #[arg(long)]
        count: usize,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The vendor style kept out of training (test_heldout_vendor split).
        #[arg(long, default_value = "canon")]
        held_out_vendor: spineagent_phantom::vendor::Vendor,
        /// Condition probabilities, e.g. herniation=0.5,canal_stenosis=0.4.
        #[arg(long, default_value = "")]
        prevalence: String,
    },
}

fn phantom(command: PhantomCommand) -> Result<()> {
    use spineagent_phantom::findings::{Finding, Prevalence};
    let started = std::time::Instant::now();
    match command {
        PhantomCommand::Study {
            seed,
            out,
            region,
            vendor,
            field,
            findings,
            dixon,
            contrast,
            pd,
            standard,
            prevalence,
        } => {
            let forced = if findings.is_empty() {
                None
            } else if findings.iter().any(|f| f == "none") {
                Some(Vec::new())
            } else {
                Some(
                    findings
                        .iter()
                        .map(|f| f.parse::<Finding>())
                        .collect::<Result<Vec<_>, _>>()?,
                )
            };
            let spec = spineagent_phantom::StudySpec {
                seed,
                region,
                vendor,
                field_t: field,
                findings: forced,
                // Extras not asked for are drawn from the seed, or left out
                // with --standard.
                dixon: if standard { Some(dixon) } else { dixon.then_some(true) },
                contrast: if standard {
                    Some(contrast)
                } else {
                    contrast.then_some(true)
                },
                pd: if standard { Some(pd) } else { pd.then_some(true) },
                prevalence: Prevalence::default()
                    .with_overrides(&prevalence)
                    .map_err(anyhow::Error::msg)?,
                ..Default::default()
            };
            let truth = spineagent_phantom::generate(&spec, &out)?;
            let slices: usize = truth.series.iter().map(|s| s.slices).sum();
            println!(
                "SYNTHETIC {} study ({:?}, {} T): {} series, {slices} slices, {} findings in {} ({:.1} s, {:.0} slices/s)",
                truth.region.as_str(),
                truth.vendor,
                truth.field_strength_t,
                truth.series.len(),
                truth.findings.len(),
                out.display(),
                started.elapsed().as_secs_f64(),
                slices as f64 / started.elapsed().as_secs_f64()
            );
        }
        PhantomCommand::Dataset {
            count,
            out,
            seed,
            held_out_vendor,
            prevalence,
        } => {
            let prevalence = Prevalence::default()
                .with_overrides(&prevalence)
                .map_err(anyhow::Error::msg)?;
            let m = spineagent_phantom::dataset::generate_dataset(count, seed, &out, held_out_vendor, &prevalence)?;
            let slices: usize = m.studies.iter().map(|s| s.slices).sum();
            println!(
                "SYNTHETIC dataset: {count} studies, {slices} slices in {} ({:.1} s, {:.0} slices/s); held-out vendor {:?}",
                out.display(),
                started.elapsed().as_secs_f64(),
                slices as f64 / started.elapsed().as_secs_f64(),
                held_out_vendor
            );
        }
    }
    Ok(())
}

fn init_logging(format: &LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        // A one-shot command piped into `head` should end quietly, as other
        // command-line tools do, not panic on EPIPE. The daemon keeps Rust's
        // SIGPIPE = ignore: a peer closing a socket must be an error value.
        // SAFETY: called before any thread exists; SIG_DFL is a valid handler.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            port,
            spool,
            metrics_addr,
        } => {
            let mut cfg = match &config {
                Some(path) => Config::load(path)?,
                None => Config::builtin()?,
            };
            if let Some(port) = port {
                cfg.dicom.listen.set_port(port);
            }
            if let Some(spool) = spool {
                // An override given on the command line is relative to the working directory.
                cfg.spool.dir = std::path::absolute(spool)?;
            }
            if let Some(addr) = metrics_addr {
                cfg.metrics.listen = addr;
            }
            cfg.validate()?;
            init_logging(&cfg.log.format, &cfg.log.level);
            serve(cfg).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            let cfg = Config::load(&file)?;
            if let Some(rules) = cfg.rules_file() {
                spineagent::assemble::classify::Rules::load(&rules)?;
            }
            if let Some(bundle) = cfg.engine_bundle() {
                // Hashes and manifest; the models themselves load at `serve`.
                spineagent_engine::Bundle::open(&bundle)?;
            }
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            paths,
            to,
            aet,
            max_pdu,
        } => {
            let files = scu::collect_files(&paths).context("listing files")?;
            if files.is_empty() {
                bail!("no files to send");
            }
            let opts = ScuOptions {
                calling_ae_title: aet,
                max_pdu_bytes: max_pdu,
                ..Default::default()
            };
            let started = std::time::Instant::now();
            let results = scu::store_files(&to, &opts, &files).await?;
            let failed: Vec<_> = results.iter().filter(|r| !r.stored()).collect();
            for r in &failed {
                eprintln!(
                    "{}: status {:#06X} {}",
                    r.path.display(),
                    r.status,
                    r.error_comment.as_deref().unwrap_or("")
                );
            }
            println!(
                "sent {} of {} instances to {} in {:.2} s",
                results.len() - failed.len(),
                results.len(),
                to.address,
                started.elapsed().as_secs_f64()
            );
            Ok(if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Analyze {
            paths,
            bundle,
            json,
            threshold,
            threads,
            accept_unknown_region,
            language_model,
            lm_adapter,
            report_budget,
            max_new_tokens,
            unguided,
            repeat_penalty,
            out,
        } => {
            anyhow::ensure!(
                (1.0..=2.0).contains(&repeat_penalty),
                "--repeat-penalty must be between 1.0 and 2.0, not {repeat_penalty}"
            );
            let files = scu::collect_files(&paths).context("listing files")?;
            let bundle = bundle.unwrap_or_else(spineagent::analyze::default_bundle);
            let mut options = spineagent_engine::SessionOptions::default();
            if let Some(t) = threads {
                options.threads = t;
            }
            let started = std::time::Instant::now();
            let (models, analyzed) =
                spineagent::analyze::load_and_analyze(&files, &bundle, &options, threshold, accept_unknown_region)
                    .with_context(|| format!("analyzing with {}", bundle.display()))?;
            let agent = match &language_model {
                Some(path) => Some(std::sync::Mutex::new(spineagent::analyze::report_agent(
                    path,
                    spineagent::analyze::chosen_adapter(lm_adapter, 1.0, &models.bundle),
                    report_budget,
                    max_new_tokens,
                    !unguided,
                    repeat_penalty,
                )?)),
                None => None,
            };
            if let Some(dir) = &out {
                let report = spineagent::analyze::write_outputs(
                    &models,
                    &analyzed,
                    dir,
                    &spineagent_engine::report::Triage::builtin(),
                    &spineagent_engine::report::codes::Codes::builtin(),
                    agent.as_ref(),
                )?;
                if let Some(slices) = &analyzed.analysis.slice_embeddings {
                    spineagent_engine::npy::write_f32(&dir.join("slice_embeddings.npy"), slices)
                        .context("writing slice_embeddings.npy")?;
                }
                eprintln!(
                    "wrote {} (triage category {}: {})",
                    dir.display(),
                    report.category as u8,
                    report.category.as_str()
                );
            }
            let analysis = &analyzed.analysis;
            if json {
                println!("{}", serde_json::to_string_pretty(analysis)?);
            } else {
                print!("{}", spineagent::analyze::summary(analysis));
                println!("({:.1} s)", started.elapsed().as_secs_f64());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Preprocess {
            paths,
            out,
            bundle,
            resize,
            crop,
        } => {
            let files = scu::collect_files(&paths).context("listing files")?;
            let mut spec = match bundle {
                Some(dir) => spineagent_engine::Bundle::open(&dir)?.manifest.preprocess,
                None => spineagent_kernels::PreprocessSpec::default(),
            };
            spec.resize = resize.unwrap_or(spec.resize);
            spec.crop = crop.unwrap_or(spec.crop);
            spec.validate().context("preprocessing spec")?;
            let started = std::time::Instant::now();
            let index = spineagent::preprocess::run(&files, &out, &spec)?;
            let slices: usize = index.iter().map(|s| s.shape[0]).sum();
            println!(
                "{} series stacks, {slices} slices -> {} ({:.1} s)",
                index.len(),
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Engines { command } => {
            engines(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bundle { command } => {
            bundle(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::VerifyReport { text, analysis } => {
            use spineagent_engine::report::verify;
            let body = std::fs::read_to_string(&text).with_context(|| format!("reading {}", text.display()))?;
            let stated: Vec<serde_json::Value> = verify::stated_findings(&body)
                .into_iter()
                .map(|s| {
                    serde_json::json!({
                        "condition": s.condition, "level": s.level, "side": s.side, "severity": s.severity
                    })
                })
                .collect();
            let discrepancies: Vec<String> = match &analysis {
                Some(path) => {
                    let a: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
                    let findings: Vec<spineagent_engine::analysis::Finding> =
                        serde_json::from_value(a["findings"].clone()).context("findings of the analysis")?;
                    verify::verify(&body, &findings).iter().map(|d| d.to_string()).collect()
                }
                None => Vec::new(),
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"stated": stated, "discrepancies": discrepancies}))?
            );
            Ok(if discrepancies.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Phantom { command } => {
            phantom(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Echo { to, aet } => {
            let opts = ScuOptions {
                calling_ae_title: aet,
                ..Default::default()
            };
            let status = scu::echo(&to, &opts).await?;
            println!("C-ECHO {}: status {status:#06X}", to.address);
            Ok(if status == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
    }
}

/// The report stage, when the configured bundle is a SpineFM bundle; it
/// runs on the models the daemon loaded and warmed up.
fn report_stage(
    cfg: &Config,
    loaded: Option<&spineagent::models::LoadedModels>,
    metrics: std::sync::Arc<spineagent::metrics::Metrics>,
    delivery: Option<std::sync::Arc<spineagent::deliver::Delivery>>,
    encoded: Option<std::sync::Arc<spineagent::stream::EncodeCache>>,
) -> Result<Option<spineagent::pipeline::ReportStage>> {
    let Some(loaded) = loaded else {
        return Ok(None);
    };
    if loaded.bundle.model("conditions").is_none() {
        tracing::info!("bundle has no condition agents: studies are assembled, not reported");
        return Ok(None);
    }
    let models = spineagent_engine::analysis::SpineModels::from_loaded(loaded.bundle.clone(), &loaded.models)?;
    Ok(Some(spineagent::pipeline::ReportStage {
        models: std::sync::Arc::new(models),
        spool: cfg.spool_dir(),
        triage: spineagent_engine::report::Triage::builtin(),
        codes: spineagent_engine::report::codes::Codes::builtin(),
        threshold: None,
        accept_unknown_region: cfg.assembly.accept_unknown_region,
        agent: match cfg.report_language_model() {
            Some(path) => Some(std::sync::Arc::new(std::sync::Mutex::new(
                spineagent::analyze::report_agent(
                    &path,
                    spineagent::analyze::chosen_adapter(cfg.report_adapter(), cfg.report.adapter_scale, &loaded.bundle),
                    cfg.report.budget_seconds,
                    cfg.report.max_new_tokens,
                    cfg.report.grounded_decoding,
                    cfg.report.repeat_penalty,
                )?,
            ))),
            None => None,
        },
        metrics,
        delivery,
        encoded,
    }))
}

async fn serve(cfg: Config) -> Result<()> {
    let cfg_for_stage = cfg.clone();
    let (mut daemon, mut events) = spineagent::daemon::Daemon::bind(cfg).await?;
    tracing::info!(dicom = %daemon.dicom_addr(), metrics = %daemon.ops_addr(), "spineagent listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });
    // Reports go to the configured destinations (also those left in the
    // outbox by an earlier run, with or without a bundle now).
    let delivery = if cfg_for_stage.destinations.is_empty() {
        None
    } else {
        let delivery = spineagent::deliver::Delivery::new(&cfg_for_stage, daemon.metrics());
        tokio::spawn(delivery.clone().run(stop_rx.clone()));
        Some(delivery)
    };
    if cfg_for_stage.spool.retention_days > 0.0 {
        let retention = spineagent::retention::Retention {
            spool: cfg_for_stage.spool_dir(),
            retention: std::time::Duration::from_secs_f64(cfg_for_stage.spool.retention_days * 86_400.0),
            destinations: cfg_for_stage.destinations.iter().map(|d| d.name.clone()).collect(),
        };
        tokio::spawn(retention.run(stop_rx.clone()));
    }
    // With a model bundle configured, completed studies are analyzed and
    // reported; without one, the study summary is logged.
    let stage = report_stage(
        &cfg_for_stage,
        daemon.models.as_deref(),
        daemon.metrics(),
        delivery,
        None,
    )?;
    match stage {
        Some(mut stage) => {
            // Encode slices as they arrive (the report stage uses them).
            let slices = cfg_for_stage.engine.stream_cache_slices;
            if slices > 0 {
                let cache = std::sync::Arc::new(spineagent::stream::EncodeCache::new(slices));
                let encoder = spineagent::stream::StreamEncoder {
                    models: stage.models.clone(),
                    cache: cache.clone(),
                    rules: match cfg_for_stage.rules_file() {
                        Some(path) => spineagent::assemble::classify::Rules::load(&path)?,
                        None => spineagent::assemble::classify::Rules::builtin(),
                    },
                    oblique_threshold_degrees: cfg_for_stage.assembly.oblique_threshold_degrees,
                    accept_unknown_region: cfg_for_stage.assembly.accept_unknown_region,
                    metrics: daemon.metrics(),
                };
                let arrivals = daemon.tap_instances(cfg_for_stage.limits.event_queue_depth);
                tokio::spawn(encoder.run(arrivals));
                stage.encoded = Some(cache);
            }
            tokio::spawn(stage.run(events, stop_rx.clone()));
        }
        None => {
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    if let AssemblyEvent::StudyComplete(study) = event {
                        for s in &study.series {
                            tracing::info!(
                                study = %study.study_instance_uid,
                                series_number = ?s.series_number,
                                family = s.class.family.as_str(),
                                plane = s.class.plane.map(|p| p.as_str()).unwrap_or("none"),
                                region = s.class.region.as_str(),
                                slices = s.slice_count(),
                                skipped = s.class.skip_reason.map(|r| r.as_str()).unwrap_or("no"),
                                "study series"
                            );
                        }
                    }
                }
            });
        }
    }
    daemon.run(stop_rx).await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
