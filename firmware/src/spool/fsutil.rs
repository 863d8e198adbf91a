//! Small filesystem helpers for durability and disk accounting.

use std::io;
use std::path::Path;

/// fsync a directory, making a rename or create inside it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, fsyncing each parent that gained an
/// entry, so a later rename into `dir` cannot vanish with its directory.
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Usage of the filesystem holding `path`.
#[derive(Debug, Clone, Copy)]
pub struct DiskUsage {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

impl DiskUsage {
    pub fn used_percent(&self) -> f64 {
        if self.total_bytes == 0 {
            return 100.0;
        }
        100.0 * (self.total_bytes - self.available_bytes.min(self.total_bytes)) as f64 / self.total_bytes as f64
    }
}

pub fn disk_usage(path: &Path) -> io::Result<DiskUsage> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out-pointer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = stat.f_frsize as u64;
    Ok(DiskUsage {
        total_bytes: stat.f_blocks as u64 * frsize,
        // f_bavail: what an unprivileged writer may still use.
        available_bytes: stat.f_bavail as u64 * frsize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_is_sane() {
        let u = disk_usage(Path::new(".")).unwrap();
        assert!(u.total_bytes > 0);
        let p = u.used_percent();
        assert!((0.0..=100.0).contains(&p));
    }

    #[test]
    fn creates_nested_dirs() {
        let d = tempfile::tempdir().unwrap();
        let nested = d.path().join("a/b/c");
        create_dir_durable(&nested).unwrap();
        assert!(nested.is_dir());
        create_dir_durable(&nested).unwrap();
    }
}
