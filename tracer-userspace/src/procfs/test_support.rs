//! Helpers shared by the procfs tests that look at this test process itself.

use std::{fs, path::PathBuf};

use super::FdTarget;

/// pid_max is at most 2^22, so this pid cannot exist.
pub(super) const GONE_PID: u32 = (1 << 22) + 1;

pub(super) fn me() -> u32 {
    std::process::id()
}

pub(super) fn fd_of(fds: &[FdTarget], fd: i32) -> &FdTarget {
    fds.iter()
        .find(|t| t.fd == fd)
        .unwrap_or_else(|| panic!("fd {fd} not listed in {fds:#?}"))
}

/// A scratch directory unique to one test, removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);
impl TempDir {
    pub(super) fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "procfs-test-{}-{tag}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
