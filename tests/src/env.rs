//! Where the tests find things and put things: the workspace, the tracer binary, scratch
//! directories; and the check that they run as root.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

/// The workspace root (the parent of this package).
#[track_caller]
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// Path of the tracer binary: `$TRACER_BIN` (set by `cargo xtask test`), else
/// `<workspace>/target/release/tracer`. Panics when it does not exist.
#[track_caller]
pub fn tracer_bin() -> PathBuf {
    let path = match std::env::var_os("TRACER_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_dir().join("target/release/tracer"),
    };
    if !path.is_file() {
        panic!(
            "tracer binary not found at {} (from TRACER_BIN or <workspace>/target/release/tracer); \
             run `cargo xtask test`, which builds it and sets TRACER_BIN",
            path.display()
        );
    }
    path
}

/// Integration tests load eBPF programs: they need root. Panics (does not skip) otherwise.
#[track_caller]
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!(
            "this test must run as root (euid is {euid}): the tracer loads eBPF programs; \
             run it through `cargo xtask test`, which runs the tests as root"
        );
    }
}

/// A directory for build products and scratch files of the tests.
///
/// `$CARGO_TARGET_TMPDIR` when set, else `<workspace>/target/tmp` (what Cargo uses for it),
/// else the system temporary directory.
#[track_caller]
pub fn scratch_dir() -> PathBuf {
    let candidates = [
        std::env::var_os("CARGO_TARGET_TMPDIR").map(PathBuf::from),
        Some(workspace_dir().join("target/tmp")),
        Some(std::env::temp_dir()),
    ];
    for dir in candidates.into_iter().flatten() {
        let dir = dir.join("tracer-tests");
        if std::fs::create_dir_all(&dir).is_ok() {
            return dir;
        }
    }
    panic!(
        "cannot create a scratch directory for the tests (tried $CARGO_TARGET_TMPDIR, \
         <workspace>/target/tmp and the system temporary directory)"
    );
}

/// A fresh, empty directory under [`scratch_dir`] (or `base` when given).
#[track_caller]
pub fn unique_dir(base: Option<&Path>, prefix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = match base {
        Some(base) => base.to_path_buf(),
        None => scratch_dir(),
    };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = base.join(format!("{prefix}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot create the scratch directory {}: {e}", dir.display());
    }
    dir
}
