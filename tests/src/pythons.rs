//! The CPython interpreters pyenv installed, as the tests run them: `bin/python3.X` of each
//! version under `$(pyenv root)/versions`. That name, not `bin/python3`, because it is the one
//! every installation has and the only one `cargo xtask test --vm` packs into the guests.

use std::path::PathBuf;

/// pyenv's root: `$PYENV_ROOT` (set in the `--vm` guests), else what `pyenv root` says, else
/// `~/.pyenv`.
pub fn pyenv_root() -> PathBuf {
    if let Some(root) = std::env::var_os("PYENV_ROOT").filter(|r| !r.is_empty()) {
        return root.into();
    }
    std::process::Command::new("pyenv")
        .arg("root")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .filter(|root| !root.as_os_str().is_empty())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".pyenv")))
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"))
}

/// One pyenv CPython installation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PyenvPython {
    /// (major, minor, patch), from the version directory's name.
    pub version: (u32, u32, u32),
    /// The version directory's name, as `3.12.1`.
    pub name: String,
    /// `<root>/versions/<name>/bin/python3.<minor>`.
    pub program: PathBuf,
}

/// pyenv's CPython 3 installations of minor version `min_minor` or later whose
/// `bin/python3.X` exists, oldest first. Versions directories that are not `3.X.Y` (a
/// virtualenv, `3.13t`, ...) are not looked at.
pub fn pyenv_pythons(min_minor: u32) -> Vec<PyenvPython> {
    let root = pyenv_root();
    let mut found: Vec<PyenvPython> = std::fs::read_dir(root.join("versions"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut parts = name.split('.');
            let major: u32 = parts.next()?.parse().ok()?;
            let minor: u32 = parts.next()?.parse().ok()?;
            let patch: u32 = parts.next()?.parse().ok()?;
            if parts.next().is_some() || major != 3 || minor < min_minor {
                return None;
            }
            let program = entry.path().join(format!("bin/python{major}.{minor}"));
            program.exists().then_some(PyenvPython {
                version: (major, minor, patch),
                name,
                program,
            })
        })
        .collect();
    found.sort();
    if found.is_empty() {
        eprintln!(
            "[python] no pyenv CPython 3.{min_minor} or later under {}/versions",
            root.display()
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every interpreter found runs and is the version its directory says.
    #[test]
    fn found_interpreters_are_their_versions() {
        for python in pyenv_pythons(0) {
            let out = std::process::Command::new(&python.program)
                .arg("--version")
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let (major, minor, patch) = python.version;
            assert_eq!(
                said,
                format!("Python {major}.{minor}.{patch}"),
                "{python:?}"
            );
        }
    }
}
