//! The kernels `cargo xtask test --vm` boots: Debian kernel packages fetched by name with
//! `apt-get download`, unpacked with `dpkg-deb -x` into a cache (nothing is installed), so a
//! second run finds them without the network.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::process::{self, probe};

/// Packages named like this are the 6.1 LTS kernels built for VMs (Debian 12's cloud
/// flavour); the newest ABI among them is the default kernel.
const DEFAULT_KERNEL_PREFIX: &str = "linux-image-6.1.0-";
const DEFAULT_KERNEL_SUFFIX: &str = "-cloud-amd64";

/// A kernel ready to boot.
pub(super) struct Kernel {
    /// The package it came from (e.g. linux-image-6.1.0-56-cloud-amd64).
    pub package: String,
    /// The package's version (e.g. 6.1.192-2).
    pub version: String,
    /// The unpacked `boot/vmlinuz-*`.
    pub vmlinuz: PathBuf,
}

/// Where kernel packages are kept between runs: `$XDG_CACHE_HOME/tracer/vm`, else
/// `~/.cache/tracer/vm`, so `cargo clean` does not throw them away (`target/vm/cache`
/// without a home directory).
pub(super) fn cache_dir() -> Result<PathBuf> {
    let nonempty = |name| env::var_os(name).filter(|dir| !dir.is_empty());
    let dir = match (nonempty("XDG_CACHE_HOME"), nonempty("HOME")) {
        (Some(cache), _) => PathBuf::from(cache).join("tracer").join("vm"),
        (None, Some(home)) => PathBuf::from(home).join(".cache/tracer/vm"),
        (None, None) => process::target_dir().join("vm").join("cache"),
    };
    Ok(dir)
}

/// The package names to boot: those given, or the default 6.1 LTS cloud kernel.
pub(super) fn requested(names: &[String]) -> Result<Vec<String>> {
    if !names.is_empty() {
        return Ok(names.to_vec());
    }
    Ok(vec![default_kernel()?])
}

/// The newest `linux-image-6.1.0-N-cloud-amd64` apt knows (refreshing its lists once when
/// it knows none).
fn default_kernel() -> Result<String> {
    let search = || {
        probe(Command::new("apt-cache").args(["pkgnames", DEFAULT_KERNEL_PREFIX]))
            .and_then(|names| newest_abi(&names))
    };
    if let Some(name) = search() {
        return Ok(name);
    }
    apt_get_update()?;
    search().with_context(|| {
        format!(
            "apt knows no {DEFAULT_KERNEL_PREFIX}N{DEFAULT_KERNEL_SUFFIX} package: add Debian 12 \
             (bookworm and bookworm-security) to the apt sources, or name a kernel package: \
             `cargo xtask test --vm PACKAGE`"
        )
    })
}

/// The package of the highest ABI number N among `linux-image-6.1.0-N-cloud-amd64` lines.
fn newest_abi(names: &str) -> Option<String> {
    names
        .lines()
        .filter_map(|name| {
            let abi = name
                .strip_prefix(DEFAULT_KERNEL_PREFIX)?
                .strip_suffix(DEFAULT_KERNEL_SUFFIX)?;
            Some((abi.parse::<u32>().ok()?, name))
        })
        .max()
        .map(|(_, name)| name.to_owned())
}

/// Fetches (or finds in the cache) the kernel of package `name`. A metapackage such as
/// `linux-image-cloud-amd64` is followed to the versioned image it depends on.
pub(super) fn fetch(name: &str) -> Result<Kernel> {
    let mut package = resolve_metapackage(name)?;
    if !is_cached(&package)?
        && let Err(first) = download_and_unpack(&package)
    {
        // Stale package lists name a version the archive no longer has (the security
        // archive keeps only the newest): refresh them and resolve the name again.
        eprintln!("{first:#}; refreshing the package lists and retrying");
        apt_get_update()?;
        package = resolve_metapackage(name)?;
        if !is_cached(&package)? {
            download_and_unpack(&package)?;
        }
    }
    let dir = cache_dir()?.join(&package);
    let done = dir.join(UNPACKED);
    let version = fs::read_to_string(&done)
        .with_context(|| format!("cannot read {}", done.display()))?
        .trim()
        .to_owned();
    let vmlinuz = find_vmlinuz(&dir)?;
    eprintln!(
        "kernel {package} {version}: {} (cached in {})",
        vmlinuz.display(),
        dir.display()
    );
    Ok(Kernel {
        package,
        version,
        vmlinuz,
    })
}

/// The file that marks a complete unpacked package in the cache; it holds the version.
const UNPACKED: &str = ".unpacked";

fn is_cached(package: &str) -> Result<bool> {
    Ok(cache_dir()?.join(package).join(UNPACKED).is_file())
}

/// Follows `Depends: linux-image-...` from a metapackage to the package that holds the
/// kernel; a versioned image depends on no other image, so it is its own answer.
fn resolve_metapackage(name: &str) -> Result<String> {
    let mut current = name.to_owned();
    for _ in 0..4 {
        let Some(depends) = apt_cache_depends(&current)? else {
            return Ok(current);
        };
        match image_dependency(&depends) {
            Some(next) => current = next,
            None => return Ok(current),
        }
    }
    bail!("{name}: too many metapackage levels")
}

/// `apt-cache depends PACKAGE`, refreshing the lists once when apt does not know it; `None`
/// when apt knows it only after no refresh (a package already in the cache is fine).
fn apt_cache_depends(package: &str) -> Result<Option<String>> {
    let query = || probe(Command::new("apt-cache").args(["depends", package]));
    if let Some(out) = query() {
        return Ok(Some(out));
    }
    if is_cached(package)? {
        return Ok(None);
    }
    apt_get_update()?;
    match query() {
        Some(out) => Ok(Some(out)),
        None => bail!("apt does not know the package {package} (after apt-get update)"),
    }
}

/// The first `Depends: linux-image-*` of `apt-cache depends` output.
fn image_dependency(depends: &str) -> Option<String> {
    depends.lines().find_map(|line| {
        let dependency = line.trim().strip_prefix("Depends:")?.trim();
        dependency
            .starts_with("linux-image-")
            .then(|| dependency.to_owned())
    })
}

fn apt_get_update() -> Result<()> {
    eprintln!("refreshing apt's package lists (apt-get update)");
    process::run(Command::new("apt-get").arg("update")).context("apt-get update failed")
}

/// `apt-get download` into a scratch directory, `dpkg-deb -x` into the cache, then marks the
/// package complete (with its version) so an interrupted run starts over instead of using
/// half of it.
fn download_and_unpack(package: &str) -> Result<()> {
    eprintln!("fetching kernel package {package} (apt-get download)");
    let dir = cache_dir()?.join(package);
    let download = dir.with_extension("download");
    let _ = fs::remove_dir_all(&download);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&download)
        .with_context(|| format!("cannot create {}", download.display()))?;
    process::run(
        Command::new("apt-get")
            .args(["download", package])
            .current_dir(&download),
    )
    .with_context(|| format!("cannot download kernel package {package}"))?;
    let deb = fs::read_dir(&download)?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", download.display()))?;
    process::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    let version = probe(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Version"),
    )
    .context("cannot read the package's version")?;
    fs::write(dir.join(UNPACKED), format!("{version}\n"))?;
    fs::remove_dir_all(&download)?;
    Ok(())
}

/// The `boot/vmlinuz-*` of an unpacked kernel package.
fn find_vmlinuz(dir: &Path) -> Result<PathBuf> {
    let boot = dir.join("boot");
    fs::read_dir(&boot)
        .with_context(|| format!("{} has no boot/: not a kernel image package", dir.display()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The highest ABI wins, numerically (56 > 7), and other flavours are ignored.
    #[test]
    fn picks_newest_cloud_abi() {
        let names = "linux-image-6.1.0-7-cloud-amd64\n\
                     linux-image-6.1.0-56-cloud-amd64\n\
                     linux-image-6.1.0-60-amd64\n\
                     linux-image-6.1.0-56-cloud-amd64-dbg\n\
                     linux-image-6.1.0-47-cloud-amd64\n";
        assert_eq!(
            newest_abi(names).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(newest_abi("linux-image-6.1.0-60-amd64\n"), None);
    }

    /// A metapackage leads to its image; a versioned image's own dependencies do not.
    #[test]
    fn follows_image_dependency() {
        let meta = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            image_dependency(meta).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        let image = "linux-image-6.1.0-56-cloud-amd64\n  Depends: kmod\n  Depends: linux-base\n \
                     Recommends: firmware-linux-free\n";
        assert_eq!(image_dependency(image), None);
    }
}
