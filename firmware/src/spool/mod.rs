//! The durable spool: where received instances live.
//!
//! Layout under the spool root:
//! ```text
//! incoming/<sop>.<n>.tmp          data set streaming in (never acknowledged)
//! studies/<study>/<series>/<sop>.dcm    acknowledged instances (Part 10 files)
//! studies/<study>/<series>/series.json  written when the series completed
//! studies/<study>/study.json            written when the study completed
//! ```
//! The acknowledgement contract: a C-STORE gets Success only after its file
//! is fsync'd, renamed into `studies/` and the directory fsync'd
//! ([`PendingInstance::commit`]). A crash before that leaves only a `.tmp`,
//! which [`Spool::open`] deletes: the sender never got Success for it and
//! will resend.

mod fsutil;
pub mod header;
pub mod scan;
pub mod validate;

/// The bounded structural walk of data sets lives with the DICOM decoding
/// in the engine; the spool uses it before acknowledging.
pub use spineagent_engine::structure;
pub use spineagent_engine::structure::{open_instance, parse_instance};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::OpenFileOptions;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use std::io::Write;

pub use fsutil::{DiskUsage, create_dir_durable, disk_usage, sync_dir};
pub use header::InstanceHeader;
pub use validate::Rejection;

use crate::dimse::status;

/// Identifies this implementation in the file meta of files we write.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.13493611182740034146872123961892678137";
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("SPINEAGENT_", env!("CARGO_PKG_VERSION"));

pub const SERIES_MANIFEST: &str = "series.json";
pub const STUDY_MANIFEST: &str = "study.json";

#[derive(Debug)]
struct Paths {
    root: PathBuf,
    incoming: PathBuf,
    studies: PathBuf,
}

/// Handle to the spool; cheap to clone.
#[derive(Debug, Clone)]
pub struct Spool {
    paths: Arc<Paths>,
    max_instance_bytes: u64,
    /// Data sets up to this size are also kept in memory while they stream
    /// to disk, so validation needs no read-back.
    in_memory_bytes: u64,
    watermark_percent: f64,
}

/// An instance now durably in the spool.
#[derive(Debug, Clone)]
pub struct StoredInstance {
    pub header: InstanceHeader,
    pub path: PathBuf,
    pub bytes: u64,
    /// The SOP Instance UID was already stored; the earlier file is kept.
    pub duplicate: bool,
}

/// Size limits of the spool (from `[limits]` and `[spool]`).
#[derive(Debug, Clone, Copy)]
pub struct SpoolLimits {
    pub max_instance_bytes: u64,
    pub in_memory_instance_bytes: u64,
    pub watermark_percent: f64,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn io_rejection(what: &str, e: std::io::Error) -> Rejection {
    let reason = if e.raw_os_error() == Some(libc::ENOSPC) {
        "disk_full"
    } else {
        "io_error"
    };
    Rejection::new(status::OUT_OF_RESOURCES, reason, format!("{what}: {e}"))
}

impl Spool {
    /// Opens (creating if needed) the spool at `root` and deletes partial
    /// files left by a crash.
    pub fn open(root: &Path, limits: SpoolLimits) -> std::io::Result<Spool> {
        let paths = Paths {
            root: root.to_owned(),
            incoming: root.join("incoming"),
            studies: root.join("studies"),
        };
        create_dir_durable(&paths.incoming)?;
        create_dir_durable(&paths.studies)?;
        for entry in std::fs::read_dir(&paths.incoming)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(Spool {
            paths: Arc::new(paths),
            max_instance_bytes: limits.max_instance_bytes,
            in_memory_bytes: limits.in_memory_instance_bytes.min(limits.max_instance_bytes),
            watermark_percent: limits.watermark_percent,
        })
    }

    pub fn root(&self) -> &Path {
        &self.paths.root
    }

    pub fn studies_dir(&self) -> &Path {
        &self.paths.studies
    }

    /// Callers pass validated UIDs only (see [`crate::uid::validate`]).
    pub fn study_dir(&self, study_uid: &str) -> PathBuf {
        self.paths.studies.join(study_uid)
    }

    pub fn series_dir(&self, study_uid: &str, series_uid: &str) -> PathBuf {
        self.study_dir(study_uid).join(series_uid)
    }

    pub fn disk_usage(&self) -> std::io::Result<DiskUsage> {
        disk_usage(&self.paths.root)
    }

    /// Whether the spool's filesystem is above the configured watermark (an
    /// unreadable filesystem counts as full: refusing is safer than losing).
    pub fn over_watermark(&self) -> bool {
        self.disk_usage()
            .map(|u| u.used_percent() > self.watermark_percent)
            .unwrap_or(true)
    }

    /// Starts receiving one instance: a temporary file with the Part 10
    /// preamble and file meta, ready for the data set bytes.
    pub async fn begin(
        &self,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        transfer_syntax_uid: &str,
        calling_ae: &str,
    ) -> Result<PendingInstance, Rejection> {
        crate::uid::validate(sop_instance_uid)
            .map_err(|e| Rejection::new(status::CANNOT_UNDERSTAND, "invalid_uid", format!("SOPInstanceUID: {e}")))?;
        if self.over_watermark() {
            return Err(Rejection::new(
                status::OUT_OF_RESOURCES,
                "disk_watermark",
                "spool disk above high watermark",
            ));
        }
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(sop_class_uid)
            .media_storage_sop_instance_uid(sop_instance_uid)
            .transfer_syntax(transfer_syntax_uid)
            .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
            .source_application_entity_title(calling_ae)
            .build()
            .map_err(|e| Rejection::new(status::CANNOT_UNDERSTAND, "bad_meta", format!("file meta: {e}")))?;
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(&[0u8; 128]);
        head.extend_from_slice(b"DICM");
        meta.write(&mut head)
            .map_err(|e| Rejection::new(status::CANNOT_UNDERSTAND, "bad_meta", format!("file meta: {e}")))?;

        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .paths
            .incoming
            .join(format!("{sop_instance_uid}.{}.{n}.tmp", std::process::id()));
        let file = blocking(|| {
            let mut file = std::fs::File::create(&tmp).map_err(|e| io_rejection("create temporary file", e))?;
            file.write_all(&head).map_err(|e| io_rejection("write", e))?;
            Ok::<_, Rejection>(file)
        })?;
        let encapsulated = TransferSyntaxRegistry
            .get(transfer_syntax_uid)
            .map(|ts| ts.is_encapsulated_pixel_data())
            .unwrap_or(false);
        Ok(PendingInstance {
            file,
            tmp,
            received: Received {
                spool: self.clone(),
                written: 0,
                meta: head[128..].to_vec(),
                copy: Some(Vec::new()),
                transfer_syntax_uid: transfer_syntax_uid.to_string(),
                sop_class_uid: sop_class_uid.to_string(),
                sop_instance_uid: sop_instance_uid.to_string(),
                encapsulated,
            },
        })
    }

    /// Writes `bytes` to `path` with the same durability as an instance.
    pub fn write_file_durable(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let dir = path.parent().expect("manifest paths have a parent");
        create_dir_durable(dir)?;
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .paths
            .incoming
            .join(format!("manifest.{}.{n}.tmp", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    }
}

/// An instance whose data set is streaming into a temporary file.
/// Dropping it without [`commit`](Self::commit) leaves the temporary file for
/// [`discard`](Self::discard) or the next start-up to delete.
#[derive(Debug)]
pub struct PendingInstance {
    file: std::fs::File,
    tmp: PathBuf,
    received: Received,
}

/// What is known of an instance being received, and what its commit needs.
#[derive(Debug)]
struct Received {
    spool: Spool,
    written: u64,
    /// "DICM" and the file meta group we wrote.
    meta: Vec<u8>,
    /// The data set so far, while it fits in `Spool::in_memory_bytes`.
    copy: Option<Vec<u8>>,
    transfer_syntax_uid: String,
    sop_class_uid: String,
    sop_instance_uid: String,
    encapsulated: bool,
}

impl PendingInstance {
    pub fn bytes_written(&self) -> u64 {
        self.received.written
    }

    /// Appends data set bytes. Fails (0xA700) once the instance exceeds the
    /// size limit; the caller keeps draining the PDVs and answers with it.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), Rejection> {
        let r = &mut self.received;
        r.written += bytes.len() as u64;
        if r.written > r.spool.max_instance_bytes {
            return Err(Rejection::new(
                status::OUT_OF_RESOURCES,
                "too_large",
                format!("instance larger than {} bytes", r.spool.max_instance_bytes),
            ));
        }
        if r.written > r.spool.in_memory_bytes {
            r.copy = None;
        } else if let Some(copy) = r.copy.as_mut() {
            copy.extend_from_slice(bytes);
        }
        let file = &mut self.file;
        blocking(|| {
            file.write_all(bytes).map_err(|e| io_rejection("write", e))?;
            // Start writeback now, while the rest of the data set is still
            // on the wire, so the fdatasync before the acknowledgement has
            // little left to wait for.
            start_writeback(file);
            Ok(())
        })
    }

    pub async fn discard(self) {
        drop(self.file);
        blocking(|| {
            let _ = std::fs::remove_file(&self.tmp);
        });
    }

    /// Validates the data set, then makes it durable under its final name.
    /// Only an `Ok` here may be acknowledged with Success.
    pub async fn commit(self) -> Result<StoredInstance, Rejection> {
        let PendingInstance { file, tmp, received } = self;
        blocking(|| {
            let result = received.commit(file, &tmp);
            if result.as_ref().map(|s| s.duplicate).unwrap_or(true) {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        })
    }
}

impl Received {
    fn commit(self, file: std::fs::File, tmp: &Path) -> Result<StoredInstance, Rejection> {
        let unparseable = |comment: String| {
            Rejection::new(
                status::CANNOT_UNDERSTAND,
                "unparseable",
                format!("data set cannot be parsed: {comment}"),
            )
        };
        // Small instances were kept in memory; large ones are read back once.
        let data_set = match self.copy {
            Some(copy) => copy,
            None => {
                let bytes = std::fs::read(tmp).map_err(|e| io_rejection("read back", e))?;
                let start = structure::data_set_offset(&bytes).ok_or_else(|| unparseable("file meta".into()))?;
                bytes[start..].to_vec()
            }
        };
        // Bounded work whatever the input, before the full parser sees it.
        let walked = structure::check_structure(&data_set, &self.transfer_syntax_uid, self.spool.max_instance_bytes)
            .map_err(unparseable)?;
        // Only the attributes before Pixel Data are parsed: the walk already
        // measured the pixel data, and nothing needs a second copy of it.
        let obj = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .from_reader(std::io::Read::chain(&self.meta[..], &data_set[..walked.end]))
            .map_err(|e| unparseable(e.to_string()))?;
        drop(data_set);
        validate::validate(
            &obj,
            walked.pixel_data,
            &self.sop_class_uid,
            &self.sop_instance_uid,
            self.encapsulated,
        )?;
        let header = InstanceHeader::from_object(&obj, obj.meta().transfer_syntax());
        drop(obj);
        let dir = self
            .spool
            .series_dir(&header.study_instance_uid, &header.series_instance_uid);
        let dest = dir.join(format!("{}.dcm", self.sop_instance_uid));
        let bytes = self.written;
        if dest.exists() {
            return Ok(StoredInstance {
                header,
                path: dest,
                bytes,
                duplicate: true,
            });
        }
        // fdatasync: the data and the size; the name is made durable by the
        // directory fsync after the rename.
        file.sync_data().map_err(|e| io_rejection("fsync", e))?;
        drop(file);
        create_dir_durable(&dir).map_err(|e| io_rejection("create series directory", e))?;
        std::fs::rename(tmp, &dest).map_err(|e| io_rejection("rename into spool", e))?;
        sync_dir(&dir).map_err(|e| io_rejection("fsync directory", e))?;
        Ok(StoredInstance {
            header,
            path: dest,
            bytes,
            duplicate: false,
        })
    }
}

/// Runs blocking filesystem work from the async receiver. On the
/// multi-thread runtime `block_in_place` hands this worker's other tasks to
/// another thread instead of paying a thread hop per PDV (measured: a
/// `spawn_blocking` round trip per 128 KB PDV cost more than the write);
/// elsewhere (single-thread test runtimes) it simply runs inline.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Asks the kernel to begin writing the file's dirty pages (Linux
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: initiates, does not wait).
fn start_writeback(file: &std::fs::File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor; offset/len 0 = the whole file.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Reads the header of a spooled file without its pixel data.
pub fn read_header(path: &Path) -> Result<InstanceHeader, dicom_object::ReadError> {
    let obj = OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(path)?;
    Ok(InstanceHeader::from_object(&obj, obj.meta().transfer_syntax()))
}

#[cfg(test)]
mod tests;
