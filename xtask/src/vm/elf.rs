//! Puts a host ELF program into the initramfs with what it needs to run there: the shared
//! libraries `ldd` names, the host's directory symlinks on the way to them, and their
//! detached debug files.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::cpio::Archive;
use crate::process;

/// Adds an ELF file at `guest_path` (default: its canonical host path) and the shared
/// libraries it loads at their canonical host paths, with the host's directory symlinks
/// (Debian's /lib -> usr/lib) so that the paths ld.so and `ldd` use resolve the same way.
pub(super) fn add_elf(archive: &mut Archive, path: &Path, guest_path: Option<&str>) -> Result<()> {
    let canonical =
        fs::canonicalize(path).with_context(|| format!("cannot find {}", path.display()))?;
    let at = match guest_path {
        Some(at) => at.to_owned(),
        None => canonical.to_string_lossy().into_owned(),
    };
    if !archive.contains(&at) {
        archive.file(&at, &canonical)?;
    }
    if guest_path.is_none() {
        add_symlinks_on_the_way(archive, path)?;
    }
    for library in shared_libraries(path)? {
        let canonical = fs::canonicalize(&library)
            .with_context(|| format!("cannot find library {}", library.display()))?;
        let canonical_str = canonical.to_string_lossy();
        if !archive.contains(&canonical_str) {
            archive.file(&canonical_str, &canonical)?;
        }
        add_symlinks_on_the_way(archive, &library)?;
        add_debug_file(archive, &canonical)?;
    }
    Ok(())
}

/// The detached debug file of `library` (Debian's `*-dbg` packages, under
/// /usr/lib/debug/.build-id), when the host has one: the tracer names glibc's internal
/// functions (`clone3`, `__clone_internal`) from it, and the tests check those names.
fn add_debug_file(archive: &mut Archive, library: &Path) -> Result<()> {
    let Some(build_id) = build_id(library) else {
        return Ok(());
    };
    if build_id.len() < 3 {
        return Ok(());
    }
    let debug = format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        &build_id[..2],
        &build_id[2..]
    );
    let Ok(canonical) = fs::canonicalize(&debug) else {
        return Ok(());
    };
    if !archive.contains(&debug) {
        archive.file(&debug, &canonical)?;
    }
    Ok(())
}

/// The GNU build id of an ELF file, as `readelf -n` prints it (hex).
fn build_id(path: &Path) -> Option<String> {
    let notes = process::probe(Command::new("readelf").arg("-n").arg(path))?;
    notes.lines().find_map(|line| {
        let id = line.trim().strip_prefix("Build ID:")?.trim();
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
    })
}

/// For each component of `path` that is a symlink on the host (a directory such as /lib64,
/// then what its target holds, such as usr/lib64/ld-linux-x86-64.so.2 -> ../lib/...), the
/// same symlink in the archive, so that `path` resolves in the guest as it does here.
fn add_symlinks_on_the_way(archive: &mut Archive, path: &Path) -> Result<()> {
    let mut path = path.to_path_buf();
    // A bound on symlinks followed, like the kernel's.
    for _ in 0..40 {
        let Some((link, rest)) = first_symlink(&path) else {
            return Ok(());
        };
        let target = fs::read_link(&link)?;
        let link_str = link.to_string_lossy();
        if !archive.contains(&link_str) {
            archive.symlink(&link_str, &target.to_string_lossy())?;
        }
        // The link's parent has no symlinks (it was the first), so ".." can be applied
        // lexically.
        let parent = link.parent().unwrap_or(Path::new("/"));
        path = lexically_normal(&parent.join(target).join(rest));
    }
    bail!("too many levels of symlinks in {}", path.display())
}

/// `path` with `.` and `..` applied to the components before them.
fn lexically_normal(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    normal
}

/// The first prefix of `path` that is a symlink, and what follows it.
fn first_symlink(path: &Path) -> Option<(PathBuf, PathBuf)> {
    let mut prefix = PathBuf::from("/");
    let components: Vec<_> = path.iter().skip(1).collect();
    for (i, component) in components.iter().enumerate() {
        prefix.push(component);
        let meta = fs::symlink_metadata(&prefix).ok()?;
        if meta.file_type().is_symlink() {
            let rest: PathBuf = components[i + 1..].iter().collect();
            return Some((prefix, rest));
        }
    }
    None
}

/// The libraries `ldd` resolves for `path` (none for a static binary).
fn shared_libraries(path: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(path)
        .output()
        .context("could not run ldd")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // ldd exits 1 with "not a dynamic executable" for static binaries.
        let text = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", path.display(), text.trim());
    }
    parse_ldd(&stdout).with_context(|| format!("libraries of {}", path.display()))
}

fn parse_ldd(output: &str) -> Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        if line.contains("statically linked") {
            continue;
        }
        let resolved = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("{} not found", name.trim());
                }
                rest
            }
            None => line,
        };
        // "/path (0xaddr)"; the vDSO has no path.
        let file = resolved.split(" (").next().unwrap_or_default().trim();
        if file.starts_with('/') {
            libraries.push(PathBuf::from(file));
        }
    }
    Ok(libraries)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolved libraries and the loader are kept, the vDSO is not; a missing library fails.
    #[test]
    fn parses_ldd_output() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                      \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f3f)\n\
                      \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3e)\n\
                      \t/lib64/ld-linux-x86-64.so.2 (0x00007f40)\n";
        assert_eq!(
            parse_ldd(output).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    /// `..` after a directory removes it; the root stays.
    #[test]
    fn applies_dot_dot() {
        assert_eq!(
            lexically_normal(Path::new("/usr/lib64/../lib/x86_64-linux-gnu/./ld.so")),
            PathBuf::from("/usr/lib/x86_64-linux-gnu/ld.so")
        );
        assert_eq!(
            lexically_normal(Path::new("/../lib")),
            PathBuf::from("/lib")
        );
    }
}
