//! cgroup v2 and PID namespaces as /proc and /sys/fs/cgroup show them: a cgroup path given
//! by the user to its directory, the directories below it with their ids, the processes in
//! one, a container id to its cgroup, a process's cgroup and container, and its pid in its
//! own PID namespace (`NSpid`).

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Where the cgroup v2 hierarchy is mounted on most systems (`/sys/fs/cgroup/unified` on
/// hybrid ones: see [`cgroup_root`]).
pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How deep below the root a container's cgroup is looked for.
const CONTAINER_SEARCH_DEPTH: usize = 6;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CgroupError {
    #[error("no such cgroup: {0} (give a cgroup v2 directory, under {1} or relative to it)")]
    NoSuchCgroup(String, String),
    #[error("no container {0}: no cgroup under {1} has it in its name")]
    NoSuchContainer(String, String),
    #[error("container id {0} is ambiguous: it names {1}")]
    AmbiguousContainer(String, String),
}

/// Where the cgroup v2 hierarchy is mounted: the first `cgroup2` mount in /proc/self/mounts
/// (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid systems).
pub(crate) fn cgroup_root() -> PathBuf {
    fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|mounts| {
            mounts.lines().find_map(|line| {
                let mut fields = line.split_whitespace();
                let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
                (kind == "cgroup2").then(|| PathBuf::from(dir))
            })
        })
        .unwrap_or_else(|| PathBuf::from(CGROUP_ROOT))
}

/// The directory of a cgroup given as `ROOT/a/b`, `/a/b` or `a/b` (as /proc/PID/cgroup and
/// systemd print them), where ROOT is where cgroup v2 is mounted.
pub(crate) fn cgroup_dir(given: &Path) -> Result<PathBuf, CgroupError> {
    cgroup_dir_under(&cgroup_root(), given)
}

fn cgroup_dir_under(root: &Path, given: &Path) -> Result<PathBuf, CgroupError> {
    let candidate = if given.starts_with(root) {
        given.to_path_buf()
    } else {
        let relative = given.strip_prefix("/").unwrap_or(given);
        root.join(relative)
    };
    if candidate.join("cgroup.procs").is_file() {
        Ok(candidate)
    } else {
        Err(CgroupError::NoSuchCgroup(
            given.display().to_string(),
            root.display().to_string(),
        ))
    }
}

/// A cgroup and every cgroup below it, each with its id (the inode number of its directory,
/// which is what `bpf_get_current_cgroup_id()` returns).
pub(crate) fn cgroup_tree(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        if let Ok(entries) = fs::read_dir(&dir) {
            pending.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        out.push((dir, meta.ino()));
    }
    out
}

/// The processes in one cgroup (not below it).
pub(crate) fn cgroup_procs(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The cgroup of a container: the directory under the root whose name contains `id`
/// (docker's `docker-ID.scope`, containerd's `cri-containerd-ID.scope`, podman's
/// `libpod-ID.scope`, cgroupfs drivers' `.../ID`). Podman's monitor (`libpod-conmon-ID`) and
/// cgroups nested in the container's own are not it.
pub(crate) fn container_cgroup(id: &str) -> Result<PathBuf, CgroupError> {
    let root = cgroup_root();
    let mut found = Vec::new();
    let mut pending = vec![(root.clone(), 0)];
    while let Some((dir, depth)) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains(id) && !name.contains("conmon") {
                found.push(entry.path());
            } else if depth + 1 < CONTAINER_SEARCH_DEPTH {
                pending.push((entry.path(), depth + 1));
            }
        }
    }
    found.sort();
    match found.as_slice() {
        [] => Err(CgroupError::NoSuchContainer(
            id.to_owned(),
            root.display().to_string(),
        )),
        [one] => Ok(one.clone()),
        many => Err(CgroupError::AmbiguousContainer(
            id.to_owned(),
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// The cgroup v2 path of a process (`0::/PATH` in /proc/PID/cgroup), as `/PATH`.
pub(crate) fn process_cgroup(pid: u32) -> io::Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or_else(|| io::Error::other("no cgroup v2 line"))
}

/// The container id in a cgroup path: the last component that is, or ends in, 64 hex digits
/// (with a `.scope` suffix and a `docker-`, `cri-containerd-`, `crio-` or `libpod-` prefix).
pub(crate) fn container_id(cgroup: &str) -> Option<String> {
    cgroup.rsplit('/').find_map(|component| {
        let name = component.strip_suffix(".scope").unwrap_or(component);
        let id = name.rsplit('-').next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !name.contains("conmon"))
            .then(|| id.to_owned())
    })
}

/// The pid of a process in the innermost PID namespace it belongs to, when that is not the
/// tracer's (the last number of `NSpid:` in /proc/PID/status, when there are several).
pub(crate) fn nspid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_nspid(&status)
}

fn parse_nspid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let pids: Vec<u32> = line
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    match pids.as_slice() {
        [_, .., inner] => Some(*inner),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Container ids are found in the names the runtimes give their cgroups.
    #[test]
    fn container_ids_from_cgroup_paths() {
        let id = "4f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!("/kubepods/burstable/pod1/cri-containerd-{id}.scope"),
            format!("/machine.slice/libpod-{id}.scope/container"),
            format!("/docker/{id}"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(id), "{path}");
        }
        assert_eq!(
            container_id("/user.slice/user-0.slice/session-3.scope"),
            None
        );
        assert_eq!(
            container_id(&format!("/machine.slice/libpod-conmon-{id}.scope")),
            None
        );
    }

    /// NSpid names the innermost namespace's pid only for a process in a nested namespace.
    #[test]
    fn nspid_is_the_innermost_pid() {
        assert_eq!(parse_nspid("Name:\tx\nNSpid:\t4242\t7\n"), Some(7));
        assert_eq!(parse_nspid("Name:\tx\nNSpid:\t4242\n"), None);
        assert_eq!(parse_nspid("Name:\tx\n"), None);
    }

    /// A cgroup path that does not exist is refused whichever way it is written.
    #[test]
    fn missing_cgroups_are_refused() {
        let root = cgroup_root();
        for given in [
            PathBuf::from("/no/such/cgroup-x1"),
            PathBuf::from("no-such-cgroup-x2"),
            root.join("none-x3"),
        ] {
            assert!(matches!(
                cgroup_dir(&given),
                Err(CgroupError::NoSuchCgroup(..))
            ));
        }
        let dir = std::env::temp_dir().join(format!("cgroup-dir-test-{}", std::process::id()));
        fs::create_dir_all(dir.join("a/b")).unwrap();
        fs::write(dir.join("a/b/cgroup.procs"), "").unwrap();
        for given in ["/a/b", "a/b"] {
            assert_eq!(
                cgroup_dir_under(&dir, Path::new(given)),
                Ok(dir.join("a/b"))
            );
        }
        assert_eq!(
            cgroup_dir_under(&dir, &dir.join("a/b")),
            Ok(dir.join("a/b"))
        );
        assert!(cgroup_dir_under(&dir, Path::new("a")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
