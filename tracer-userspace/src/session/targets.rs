//! The roots of what a session follows: processes chosen by pid, started as a command, or
//! chosen by name (`--comm`) or cgroup (`--cgroup`, `--container`), found when the probes
//! are attached and later. A process chosen by name or cgroup that starts later is followed
//! by the kernel at its exec (see `sched_process_exec`); one that moves into a watched cgroup
//! without exec is found by the next look at the cgroup (every housekeeping tick).

use std::{collections::HashSet, path::PathBuf};

use anyhow::{Context as _, Result};

use crate::{
    capture::{COMM_LEN, Probes},
    cli::Selection,
    procfs,
    report::TargetEntry,
};

/// A process followed as a root.
#[derive(Clone, Debug)]
pub(super) struct Root {
    pub(super) pid: u32,
    pub(super) command: Vec<String>,
    pub(super) matched_by: String,
    /// When following it began (CLOCK_MONOTONIC); `None` for what was found at attach.
    pub(super) since_ns: Option<u64>,
}

/// A watched cgroup: as given, its directory, and the ids of it and its sub-cgroups that
/// the kernel already knows.
#[derive(Debug)]
struct WatchedCgroup {
    label: String,
    dir: PathBuf,
    ids: HashSet<u64>,
}

/// The roots found so far, and what chooses more.
#[derive(Debug, Default)]
pub(super) struct Roots {
    found: Vec<Root>,
    /// Names, cut to what the kernel keeps of a comm.
    comms: Vec<String>,
    cgroups: Vec<WatchedCgroup>,
}

impl Roots {
    /// Checks a selection: each pid exists (a thread stands for its process), each cgroup
    /// exists, each container has one. Returns the roots and the pids given.
    pub(super) fn resolve(selection: &Selection) -> Result<(Self, Vec<u32>)> {
        let mut pids = Vec::new();
        for &pid in &selection.pids {
            let pid = super::process_of(pid)?;
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        let mut roots = Roots {
            comms: selection.comms.iter().map(|c| cut_comm(c)).collect(),
            ..Roots::default()
        };
        for given in &selection.cgroups {
            let dir = procfs::cgroup_dir(given)?;
            roots.watch_cgroup(format!("cgroup {}", given.display()), dir);
        }
        for id in &selection.containers {
            let dir = procfs::container_cgroup(id)?;
            roots.watch_cgroup(format!("container {id}"), dir);
        }
        Ok((roots, pids))
    }

    fn watch_cgroup(&mut self, label: String, dir: PathBuf) {
        self.cgroups.push(WatchedCgroup {
            label,
            dir,
            ids: HashSet::new(),
        });
    }

    /// Whether processes are chosen by name or cgroup: then more may come at any time, and
    /// the session does not end when every followed process has exited.
    pub(super) fn watches(&self) -> bool {
        !self.comms.is_empty() || !self.cgroups.is_empty()
    }

    /// Tells the kernel which names and cgroups to follow from their exec on. Done before
    /// the running processes are looked for, so that none slips between the two.
    pub(super) fn arm(&mut self, probes: &Probes) -> Result<()> {
        let mut maps = probes.targets.borrow_mut();
        for comm in &self.comms {
            maps.add_comm(comm)
                .with_context(|| format!("cannot watch for processes named {comm}"))?;
        }
        drop(maps);
        self.arm_new_cgroups(probes);
        Ok(())
    }

    /// Adds to the kernel's set the watched cgroups' sub-cgroups that appeared since.
    fn arm_new_cgroups(&mut self, probes: &Probes) {
        let mut maps = probes.targets.borrow_mut();
        for cgroup in &mut self.cgroups {
            for (dir, id) in procfs::cgroup_tree(&cgroup.dir) {
                if cgroup.ids.insert(id)
                    && let Err(err) = maps.add_cgroup(id)
                {
                    log::warn!("cannot watch cgroup {}: {err}", dir.display());
                    cgroup.ids.remove(&id);
                }
            }
        }
    }

    /// The processes that sit in a watched cgroup now and, with `by_name`, those that match a
    /// name (a walk of all /proc, done at attach: later ones are found at their exec), with
    /// why.
    pub(super) fn matching_now(&mut self, probes: &Probes, by_name: bool) -> Vec<(u32, String)> {
        self.arm_new_cgroups(probes);
        let mut out: Vec<(u32, String)> = Vec::new();
        for cgroup in &self.cgroups {
            for (dir, _) in procfs::cgroup_tree(&cgroup.dir) {
                out.extend(
                    procfs::cgroup_procs(&dir)
                        .into_iter()
                        .map(|pid| (pid, cgroup.label.clone())),
                );
            }
        }
        if by_name && !self.comms.is_empty() {
            for pid in procfs::all_pids() {
                if let Ok(info) = procfs::process_info(pid)
                    && !info.zombie
                    && self.comms.contains(&info.comm)
                {
                    out.push((pid, format!("comm {}", info.comm)));
                }
            }
        }
        let mut seen = HashSet::new();
        out.retain(|(pid, _)| seen.insert(*pid));
        out
    }

    /// Why a process that exec'd and that the kernel followed is one of the targets.
    pub(super) fn why(&self, pid: u32) -> String {
        if let Ok(info) = procfs::process_info(pid)
            && self.comms.contains(&info.comm)
        {
            return format!("comm {}", info.comm);
        }
        if let Ok(cgroup) = procfs::process_cgroup(pid) {
            let dir = procfs::cgroup_root().join(cgroup.trim_start_matches('/'));
            if let Some(watched) = self.cgroups.iter().find(|c| dir.starts_with(&c.dir)) {
                return watched.label.clone();
            }
        }
        "exec".to_owned()
    }

    /// Records a root; `since_ns` is `None` for what was found at attach.
    pub(super) fn add(&mut self, pid: u32, matched_by: String, since_ns: Option<u64>) {
        if self
            .found
            .iter()
            .any(|r| r.pid == pid && r.since_ns == since_ns)
        {
            return;
        }
        let command = procfs::process_info(pid)
            .map(|i| i.cmdline)
            .unwrap_or_default();
        self.add_with_command(pid, command, matched_by, since_ns);
    }

    pub(super) fn add_with_command(
        &mut self,
        pid: u32,
        command: Vec<String>,
        matched_by: String,
        since_ns: Option<u64>,
    ) {
        self.found.push(Root {
            pid,
            command,
            matched_by,
            since_ns,
        });
    }

    pub(super) fn first(&self) -> Option<&Root> {
        self.found.first()
    }

    pub(super) fn pids(&self) -> Vec<u32> {
        self.found.iter().map(|r| r.pid).collect()
    }

    /// What a session waits for when no process matched yet.
    pub(super) fn awaited(&self) -> String {
        let mut what: Vec<String> = self
            .comms
            .iter()
            .map(|c| format!("a process named {c}"))
            .collect();
        what.extend(
            self.cgroups
                .iter()
                .map(|c| format!("a process in {} ({})", c.label, c.dir.display())),
        );
        what.join(", or ")
    }

    /// The report's `targets`.
    pub(super) fn entries(&self, started_ns: u64) -> Vec<TargetEntry> {
        self.found
            .iter()
            .map(|root| {
                let placement = super::resolver::placement(root.pid);
                TargetEntry {
                    pid: root.pid,
                    command: root.command.clone(),
                    matched_by: root.matched_by.clone(),
                    followed_since_s: root.since_ns.map_or(0.0, |at| {
                        (at.saturating_sub(started_ns) as f64 / 1e6).round() / 1e3
                    }),
                    nspid: placement.nspid,
                    container: placement.container,
                }
            })
            .collect()
    }
}

/// A name as the kernel keeps it: at most 15 bytes (cut at a character boundary).
fn cut_comm(name: &str) -> String {
    let mut end = name.len().min(COMM_LEN - 1);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long names are cut as the kernel cuts a comm, and never inside a character.
    #[test]
    fn names_are_cut_like_comms() {
        assert_eq!(cut_comm("postgres"), "postgres");
        assert_eq!(cut_comm("a-very-long-process-name"), "a-very-long-pro");
        assert_eq!(cut_comm("ééééééééé"), "ééééééé");
    }

    /// What a session waits for names each name and cgroup.
    #[test]
    fn says_what_it_waits_for() {
        let mut roots = Roots {
            comms: vec!["nginx".into()],
            ..Roots::default()
        };
        roots.watch_cgroup("cgroup /x".into(), PathBuf::from("/sys/fs/cgroup/x"));
        assert_eq!(
            roots.awaited(),
            "a process named nginx, or a process in cgroup /x (/sys/fs/cgroup/x)"
        );
    }
}
