//! The one TOML configuration file: types, defaults and validation.
//!
//! Parsing is strict (`deny_unknown_fields`): a misspelt key is an error, not a
//! silently ignored setting. [`Config::validate`] is pure (no IO) and runs
//! before any port binds, so `spineagent check-config` and `spineagent serve`
//! reject exactly the same files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The documented default configuration, compiled in so that `serve` runs on a
/// fresh machine without any file.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config/spineagent.toml");

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("config: {key}: {problem}")]
    Invalid { key: &'static str, problem: String },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub dicom: DicomConfig,
    pub limits: LimitsConfig,
    pub spool: SpoolConfig,
    pub assembly: AssemblyConfig,
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub report: ReportConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Where reports go (`[[destination]]` tables); none = reports stay in
    /// the spool.
    #[serde(default, rename = "destination")]
    pub destinations: Vec<DestinationConfig>,
    /// Directory the file was read from; relative paths in the file resolve
    /// against it. Not a key of the file.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// The DICOM node: who we are and who may talk to us.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomConfig {
    /// Our AE title; associations calling another title are refused
    /// ("called AE title not recognized").
    pub ae_title: String,
    /// TCP address the SCP listens on.
    pub listen: SocketAddr,
    /// Calling AE titles allowed to associate. Empty = accept any.
    #[serde(default)]
    pub allowed_calling_ae_titles: Vec<String>,
    /// Largest P-DATA PDU we accept (bytes). Offered to the peer in
    /// negotiation; PDUs above it abort the association.
    pub max_pdu_bytes: u32,
}

/// Fixed resource limits. Together they bound the receiver's memory:
/// at most `max_associations` instances are in flight (one per association,
/// no asynchronous operations window), each buffered at most one PDU in memory
/// while its data set streams to a temporary file of at most
/// `max_instance_bytes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Concurrent associations; one more is refused with "local limit exceeded".
    pub max_associations: usize,
    /// Seconds a read (the next PDU) may take before the association is
    /// aborted, so a hung peer never holds a slot forever.
    pub read_timeout_seconds: u64,
    /// Seconds a write may take before the association is aborted.
    pub write_timeout_seconds: u64,
    /// Largest data set accepted in one C-STORE; bigger ones get 0xA700.
    pub max_instance_bytes: u64,
    /// Largest DIMSE command set (they are a few hundred bytes in practice).
    pub max_command_bytes: usize,
    /// Data sets up to this size are also held in memory while they stream
    /// to disk, so validation needs no read-back (larger ones are read back).
    pub in_memory_instance_bytes: u64,
    /// Depth of the queue from the receiver to the assembler. When full, the
    /// receiver waits before acknowledging, which slows the sender.
    pub assembler_queue_depth: usize,
    /// Depth of the queue of series/study events to the analysis stages.
    pub event_queue_depth: usize,
    /// Seconds SIGTERM waits for in-flight instances before exiting.
    pub shutdown_grace_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Where received instances are kept (relative paths resolve against the
    /// config file's directory).
    pub dir: PathBuf,
    /// Filesystem usage (percent) above which new associations are refused
    /// and C-STORE answers 0xA700 Out of Resources.
    pub disk_high_watermark_percent: f64,
    /// Days a study (its instances and its report) is kept after its report
    /// reached every destination (or was written, when none is configured).
    /// 0 = kept until removed by hand. Dead-lettered reports are never
    /// removed: they need a person.
    #[serde(default)]
    pub retention_days: f64,
}

/// The report text: language model (optional) or composer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// GGUF of the report agent's language model; omitted = the
    /// deterministic composer writes every report.
    #[serde(default)]
    pub language_model: Option<PathBuf>,
    /// LoRA adapters for the language model (safetensors, see
    /// `engine::lm::load_loras`); applied at load time. Omitted: the
    /// model bundle's `report_adapter`, if it has one (trained with the
    /// bundle's visual projector, for SmolLM2-135M-Instruct).
    #[serde(default)]
    pub adapter: Option<PathBuf>,
    /// alpha / rank of the adapters.
    #[serde(default = "default_adapter_scale")]
    pub adapter_scale: f64,
    /// Seconds the language model may take per report (all drafts); past
    /// it the composer's text is used.
    #[serde(default = "default_report_budget")]
    pub budget_seconds: f64,
    /// Longest draft, in tokens.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Steer the model while it writes with the verifier's reading of
    /// each clause (`engine::report::grounding`); the finished draft is
    /// verified either way.
    #[serde(default = "default_true")]
    pub grounded_decoding: bool,
    /// Penalty on the logits of recently written tokens (1.0: none; see
    /// `engine::lm::DEFAULT_REPEAT_PENALTY` for why none).
    #[serde(default = "default_repeat_penalty")]
    pub repeat_penalty: f32,
}

pub fn default_repeat_penalty() -> f32 {
    spineagent_engine::lm::DEFAULT_REPEAT_PENALTY
}

fn default_true() -> bool {
    true
}

fn default_adapter_scale() -> f64 {
    1.0
}

pub fn default_report_budget() -> f64 {
    120.0
}

pub fn default_max_new_tokens() -> usize {
    320
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            language_model: None,
            adapter: None,
            adapter_scale: default_adapter_scale(),
            budget_seconds: default_report_budget(),
            max_new_tokens: default_max_new_tokens(),
            grounded_decoding: true,
            repeat_penalty: default_repeat_penalty(),
        }
    }
}

/// How reports are delivered (C-STORE of the SR and SEG).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// First retry after a transient failure (seconds); doubles each time.
    #[serde(default = "default_retry_initial")]
    pub retry_initial_seconds: f64,
    /// Longest wait between retries (seconds).
    #[serde(default = "default_retry_max")]
    pub retry_max_seconds: f64,
    /// A report still failing this long after it was queued goes to the
    /// dead-letter directory (hours).
    #[serde(default = "default_give_up")]
    pub give_up_after_hours: f64,
    /// Connect, read and write timeout of one association (seconds).
    #[serde(default = "default_delivery_timeout")]
    pub timeout_seconds: u64,
}

fn default_retry_initial() -> f64 {
    5.0
}
fn default_retry_max() -> f64 {
    300.0
}
fn default_give_up() -> f64 {
    72.0
}
fn default_delivery_timeout() -> u64 {
    30
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            retry_initial_seconds: default_retry_initial(),
            retry_max_seconds: default_retry_max(),
            give_up_after_hours: default_give_up(),
            timeout_seconds: default_delivery_timeout(),
        }
    }
}

/// A PACS (or any storage SCP) that receives every report.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Short name: names its outbox directory and its metrics label.
    pub name: String,
    /// The destination's AE title (our calling title is `dicom.ae_title`).
    pub ae_title: String,
    /// HOST:PORT.
    pub address: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssemblyConfig {
    /// A series is complete after this many seconds without a new instance
    /// (or earlier, when its expected instance count is known and reached).
    pub series_idle_seconds: f64,
    /// A study is complete when all its series are and no instance arrived for
    /// this many seconds.
    pub study_idle_seconds: f64,
    /// Series classification rules; empty = the built-in table
    /// (`config/series_rules.toml` compiled in).
    #[serde(default)]
    pub rules_file: Option<PathBuf>,
    /// Slice normals within this many degrees of an axis get that axis's
    /// plane; beyond it the plane is "oblique". Spine axials are angled along
    /// each disc (up to ~30 degrees), hence the generous default.
    pub oblique_threshold_degrees: f64,
    /// Series with fewer slices are skipped (too few for the models).
    pub min_slices: usize,
    /// Analyze series whose region the tags do not state (no BodyPartExamined
    /// and no region in the descriptions). Off by default: a knee sent here by
    /// mistake must not be reported as a spine.
    #[serde(default)]
    pub accept_unknown_region: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint serving /metrics, /healthz and /readyz.
    pub listen: SocketAddr,
}

/// The inference engine: which model bundle, on which providers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Model bundle directory (optional until the default bundle ships).
    /// When set, every model is loaded, checked against the manifest and
    /// warmed up before the daemon reports ready; a bad bundle stops start-up.
    #[serde(default)]
    pub bundle: Option<PathBuf>,
    /// Execution providers in order of preference: tensorrt, cuda, cpu.
    #[serde(default = "default_providers")]
    pub providers: Vec<String>,
    /// Intra-op threads per model.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// TensorRT engine and timing caches.
    #[serde(default = "default_engine_cache")]
    pub engine_cache_dir: PathBuf,
    /// TensorRT FP16.
    #[serde(default)]
    pub fp16: bool,
    /// Slice encodings and slice agents' results kept while their study is
    /// still arriving (about 0.27 MB each with the default bundle 0.6.0);
    /// 0 = everything at completion.
    #[serde(default = "default_stream_cache")]
    pub stream_cache_slices: usize,
}

fn default_stream_cache() -> usize {
    4096
}

fn default_providers() -> Vec<String> {
    vec!["cpu".into()]
}

fn default_threads() -> usize {
    2
}

fn default_engine_cache() -> PathBuf {
    PathBuf::from("var/engines")
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            bundle: None,
            providers: default_providers(),
            threads: default_threads(),
            engine_cache_dir: default_engine_cache(),
            fp16: false,
            stream_cache_slices: default_stream_cache(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log shippers.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `spineagent=debug`. `RUST_LOG` wins.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_string()
}

impl Config {
    /// The built-in defaults (the documented `config/spineagent.toml`), with
    /// relative paths resolved against the working directory.
    pub fn builtin() -> Result<Config, ConfigError> {
        Self::from_toml_str(DEFAULT_CONFIG_TOML, Path::new("<built-in>"), PathBuf::from("."))
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_toml_str(&text, path, base)
    }

    pub fn from_toml_str(text: &str, origin: &Path, base_dir: PathBuf) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_owned(),
            source,
        })?;
        config.base_dir = base_dir;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; pure, no IO.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_ae_title("dicom.ae_title", &self.dicom.ae_title)?;
        for ae in &self.dicom.allowed_calling_ae_titles {
            validate_ae_title("dicom.allowed_calling_ae_titles", ae)?;
        }
        // PS3.8: the smallest max PDU a node may announce is 4096 bytes; we
        // cap at 1 MiB because one PDU is the unit we hold in memory.
        if !(4096..=1 << 20).contains(&self.dicom.max_pdu_bytes) {
            return Err(invalid("dicom.max_pdu_bytes", "must be between 4096 and 1048576"));
        }
        let l = &self.limits;
        positive("limits.max_associations", l.max_associations as u64)?;
        positive("limits.read_timeout_seconds", l.read_timeout_seconds)?;
        positive("limits.write_timeout_seconds", l.write_timeout_seconds)?;
        positive("limits.assembler_queue_depth", l.assembler_queue_depth as u64)?;
        positive("limits.event_queue_depth", l.event_queue_depth as u64)?;
        if l.max_instance_bytes < 1024 {
            return Err(invalid("limits.max_instance_bytes", "must be at least 1024"));
        }
        if !(256..=1 << 20).contains(&l.max_command_bytes) {
            return Err(invalid("limits.max_command_bytes", "must be between 256 and 1048576"));
        }
        if self.spool.dir.as_os_str().is_empty() {
            return Err(invalid("spool.dir", "must not be empty"));
        }
        let wm = self.spool.disk_high_watermark_percent;
        if !(wm > 0.0 && wm <= 100.0) {
            return Err(invalid("spool.disk_high_watermark_percent", "must be in (0, 100]"));
        }
        let a = &self.assembly;
        if !(a.series_idle_seconds > 0.0 && a.series_idle_seconds.is_finite()) {
            return Err(invalid("assembly.series_idle_seconds", "must be a positive number"));
        }
        if !(a.study_idle_seconds >= a.series_idle_seconds && a.study_idle_seconds.is_finite()) {
            return Err(invalid(
                "assembly.study_idle_seconds",
                "must be a number at least assembly.series_idle_seconds",
            ));
        }
        if !(a.oblique_threshold_degrees > 0.0 && a.oblique_threshold_degrees < 45.0) {
            return Err(invalid("assembly.oblique_threshold_degrees", "must be in (0, 45)"));
        }
        positive("assembly.min_slices", a.min_slices as u64)?;
        for p in &self.engine.providers {
            if !matches!(p.as_str(), "cpu" | "cuda" | "tensorrt") {
                return Err(invalid(
                    "engine.providers",
                    format!("unknown provider {p:?} (tensorrt, cuda, cpu)"),
                ));
            }
        }
        positive("engine.threads", self.engine.threads as u64)?;
        if !(self.report.budget_seconds > 0.0 && self.report.budget_seconds.is_finite()) {
            return Err(invalid("report.budget_seconds", "must be a positive number"));
        }
        positive("report.max_new_tokens", self.report.max_new_tokens as u64)?;
        if !(1.0..=2.0).contains(&self.report.repeat_penalty) {
            return Err(invalid("report.repeat_penalty", "must be between 1.0 and 2.0"));
        }
        let r = self.spool.retention_days;
        if !(r >= 0.0 && r.is_finite()) {
            return Err(invalid("spool.retention_days", "must be a number >= 0"));
        }
        let d = &self.delivery;
        if !(d.retry_initial_seconds > 0.0 && d.retry_initial_seconds.is_finite()) {
            return Err(invalid("delivery.retry_initial_seconds", "must be a positive number"));
        }
        if !(d.retry_max_seconds >= d.retry_initial_seconds && d.retry_max_seconds.is_finite()) {
            return Err(invalid(
                "delivery.retry_max_seconds",
                "must be a number at least delivery.retry_initial_seconds",
            ));
        }
        if !(d.give_up_after_hours > 0.0 && d.give_up_after_hours.is_finite()) {
            return Err(invalid("delivery.give_up_after_hours", "must be a positive number"));
        }
        positive("delivery.timeout_seconds", d.timeout_seconds)?;
        for (i, dest) in self.destinations.iter().enumerate() {
            let name_ok = !dest.name.is_empty()
                && dest.name.len() <= 64
                && dest
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                return Err(invalid(
                    "destination.name",
                    format!("{:?}: 1-64 characters of A-Z a-z 0-9 - _", dest.name),
                ));
            }
            if self.destinations[..i].iter().any(|o| o.name == dest.name) {
                return Err(invalid("destination.name", format!("{:?} appears twice", dest.name)));
            }
            validate_ae_title("destination.ae_title", &dest.ae_title)?;
            let port_ok = dest
                .address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return Err(invalid(
                    "destination.address",
                    format!("{:?}: expected HOST:PORT", dest.address),
                ));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", e.to_string()));
        }
        Ok(())
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.base_dir.join(&self.spool.dir)
    }

    pub fn engine_bundle(&self) -> Option<PathBuf> {
        self.engine.bundle.as_ref().map(|p| self.base_dir.join(p))
    }

    pub fn report_language_model(&self) -> Option<PathBuf> {
        self.report.language_model.as_ref().map(|p| self.base_dir.join(p))
    }

    pub fn report_adapter(&self) -> Option<PathBuf> {
        self.report.adapter.as_ref().map(|p| self.base_dir.join(p))
    }

    pub fn engine_cache_dir(&self) -> PathBuf {
        self.base_dir.join(&self.engine.engine_cache_dir)
    }

    pub fn rules_file(&self) -> Option<PathBuf> {
        self.assembly.rules_file.as_ref().map(|p| self.base_dir.join(p))
    }

    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.read_timeout_seconds)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.write_timeout_seconds)
    }
}

fn positive(key: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(())
}

/// PS3.5: an AE title is 1-16 characters of the default repertoire, no
/// backslash or control characters, not all spaces.
pub fn validate_ae_title(key: &'static str, ae: &str) -> Result<(), ConfigError> {
    let trimmed = ae.trim();
    if trimmed.is_empty() || ae.len() > 16 {
        return Err(invalid(key, format!("AE title {ae:?} must be 1 to 16 characters")));
    }
    if ae.chars().any(|c| !c.is_ascii() || c.is_ascii_control() || c == '\\') {
        return Err(invalid(
            key,
            format!("AE title {ae:?} may hold only printable ASCII without backslash"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_defaults_are_valid() {
        let c = Config::builtin().unwrap();
        assert_eq!(c.dicom.ae_title, "SPINEAGENT");
        assert!(c.limits.max_associations > 0);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let text = DEFAULT_CONFIG_TOML.replace("[spool]", "[spool]\nfsync_off = true");
        let err = Config::from_toml_str(&text, Path::new("t.toml"), ".".into()).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("fsync_off"), "{chain}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let text =
            DEFAULT_CONFIG_TOML.replace("ae_title = \"SPINEAGENT\"", "ae_title = \"THIS TITLE IS FAR TOO LONG\"");
        let err = Config::from_toml_str(&text, Path::new("t.toml"), ".".into()).unwrap_err();
        assert!(err.to_string().contains("dicom.ae_title"), "{err}");

        let text = DEFAULT_CONFIG_TOML.replace(
            "disk_high_watermark_percent = 90.0",
            "disk_high_watermark_percent = 190.0",
        );
        let err = Config::from_toml_str(&text, Path::new("t.toml"), ".".into()).unwrap_err();
        assert!(err.to_string().contains("disk_high_watermark_percent"), "{err}");

        let text = DEFAULT_CONFIG_TOML.replace("repeat_penalty = 1.0", "repeat_penalty = 0.5");
        let err = Config::from_toml_str(&text, Path::new("t.toml"), ".".into()).unwrap_err();
        assert!(err.to_string().contains("report.repeat_penalty"), "{err}");
    }

    #[test]
    fn destinations_are_checked() {
        let with = |table: &str| format!("{DEFAULT_CONFIG_TOML}\n{table}");
        let ok = with("[[destination]]\nname = \"pacs\"\nae_title = \"PACS\"\naddress = \"10.0.0.5:104\"\n");
        let c = Config::from_toml_str(&ok, Path::new("t.toml"), ".".into()).unwrap();
        assert_eq!(c.destinations.len(), 1);
        assert_eq!(c.destinations[0].address, "10.0.0.5:104");
        for (bad, key) in [
            (
                "name = \"pacs\"\nae_title = \"PACS\"\naddress = \"10.0.0.5\"",
                "destination.address",
            ),
            (
                "name = \"p a\"\nae_title = \"PACS\"\naddress = \"h:104\"",
                "destination.name",
            ),
            (
                "name = \"p\"\nae_title = \"\"\naddress = \"h:104\"",
                "destination.ae_title",
            ),
        ] {
            let err = Config::from_toml_str(
                &with(&format!("[[destination]]\n{bad}\n")),
                Path::new("t.toml"),
                ".".into(),
            )
            .unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        let twice = format!("{ok}\n[[destination]]\nname = \"pacs\"\nae_title = \"B\"\naddress = \"h:1\"\n");
        let err = Config::from_toml_str(&twice, Path::new("t.toml"), ".".into()).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, DEFAULT_CONFIG_TOML).unwrap();
        let c = Config::load(&path).unwrap();
        assert!(c.spool_dir().starts_with(dir.path()));
    }
}
