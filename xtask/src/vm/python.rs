//! Python interpreters for the test VM, at the paths the tests look for them: Debian's
//! `/usr/bin/python3` (3.11 on Debian 12) and every pyenv CPython from 3.10 on under
//! `$(pyenv root)/versions`, each with its shared libraries (libpython, and those of the
//! standard library's extension modules) and its standard library, minus what no test
//! imports (the interpreter's own test suite, tkinter, IDLE, pip's wheels, site-packages, the
//! static libpython of `config-*`, optimized `.opt-N.pyc`): 30–45 MiB each. Also the Python
//! fixtures, at their host paths.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use super::{cpio::Archive, elf::add_elf};
use crate::process;

/// Debian's interpreter (a symlink to `python3.X`).
const DEBIAN_PYTHON: &str = "/usr/bin/python3";
/// The oldest pyenv minor version copied into the guest.
const OLDEST_PYENV_MINOR: u32 = 10;
/// Parts of a standard library that no test needs.
const SKIPPED_DIRS: &[&str] = &[
    "test",
    "tests",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "site-packages",
    "dist-packages",
    "pydoc_data",
];

/// One interpreter put into the guest.
pub(super) struct GuestPython {
    /// What the guest runs, at the host's path.
    pub program: PathBuf,
}

/// Adds every interpreter found on the host; the pyenv root (for the guest's `PYENV_ROOT`)
/// and what was added.
pub(super) fn add_pythons(archive: &mut Archive) -> Result<(Option<PathBuf>, Vec<GuestPython>)> {
    let mut added = Vec::new();
    let debian = Path::new(DEBIAN_PYTHON);
    if let Ok(program) = fs::canonicalize(debian) {
        let minor = program
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix("python3."))
            .map(str::to_owned);
        if let Some(minor) = minor {
            add_elf(archive, debian, None)?;
            add_library(archive, &PathBuf::from(format!("/usr/lib/python3.{minor}")))?;
            added.push(GuestPython {
                program: debian.to_path_buf(),
            });
        }
    }
    let root = pyenv_root();
    for (minor, dir) in root.as_deref().map(pyenv_versions).unwrap_or_default() {
        let program = dir.join(format!("bin/python3.{minor}"));
        if !program.exists() {
            continue;
        }
        add_elf(archive, &program, None)?;
        add_library(archive, &dir.join(format!("lib/python3.{minor}")))?;
        added.push(GuestPython { program });
    }
    Ok((root, added))
}

/// Adds the Python fixtures (`tests/fixtures/*.py`) at their host paths, where the tests
/// look for them (under the workspace directory they were built in).
pub(super) fn add_scripts(archive: &mut Archive) -> Result<()> {
    let dir = process::workspace_root().join("tests/fixtures");
    let entries = fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "py") {
            archive.file(&path.to_string_lossy(), &path)?;
        }
    }
    Ok(())
}

/// `$PYENV_ROOT`, else what `pyenv root` says, else `~/.pyenv`, when it has versions.
fn pyenv_root() -> Option<PathBuf> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| process::probe(Command::new("pyenv").arg("root")).map(|out| out.trim().into()))
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".pyenv")))?;
    let root = fs::canonicalize(root).ok()?;
    root.join("versions").is_dir().then_some(root)
}

/// pyenv's CPython 3.10+ installations: (minor version, directory), oldest first.
fn pyenv_versions(root: &Path) -> Vec<(u32, PathBuf)> {
    let mut versions: Vec<((u32, u32), PathBuf)> = fs::read_dir(root.join("versions"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut parts = name.split('.');
            let major: u32 = parts.next()?.parse().ok()?;
            let minor: u32 = parts.next()?.parse().ok()?;
            let patch: u32 = parts.next()?.parse().ok()?;
            let dir = fs::canonicalize(entry.path()).ok()?;
            (major == 3 && minor >= OLDEST_PYENV_MINOR).then_some(((minor, patch), dir))
        })
        .collect();
    versions.sort();
    versions
        .into_iter()
        .map(|((minor, _), dir)| (minor, dir))
        .collect()
}

/// Adds a standard library directory at its host path: its files and symlinks, and its
/// extension modules with the shared libraries they load.
fn add_library(archive: &mut Archive, dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let at = path.to_string_lossy().into_owned();
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            let target = fs::read_link(&path)?;
            archive.symlink(&at, &target.to_string_lossy())?;
        } else if kind.is_dir() {
            if !SKIPPED_DIRS.contains(&name.as_str()) && !name.starts_with("config-") {
                add_library(archive, &path)?;
            }
        } else if name.ends_with(".opt-1.pyc")
            || name.ends_with(".opt-2.pyc")
            || name.starts_with("_tkinter")
            || name.starts_with("_test")
        {
            continue;
        } else if name.ends_with(".so") {
            add_elf(archive, &path, Some(&at))?;
        } else if !archive.contains(&at) {
            archive.file(&at, &path)?;
        }
    }
    Ok(())
}
