//! Deleted files still held open (the logrotate incident): the disk space that `df` counts
//! and `du` cannot find, freed only when the last descriptor on the file closes.

use std::collections::BTreeMap;

use super::{DeletedFileEntry, DescriptorEntry};

/// One entry per deleted file (by device and inode) that live descriptors hold, largest first
/// (ties: by path).
pub(super) fn deleted_files(descriptors: &[DescriptorEntry]) -> Vec<DeletedFileEntry> {
    let mut files: BTreeMap<(u64, u64), DeletedFileEntry> = BTreeMap::new();
    for d in descriptors.iter().filter(|d| d.deleted && !d.at_exit) {
        let Some(held) = d.held_file else {
            continue;
        };
        let file = files
            .entry((held.dev, held.inode))
            .or_insert_with(|| DeletedFileEntry {
                path: d.detail.clone(),
                size_bytes: held.size,
                disk_bytes: held.allocated,
                descriptors: 0,
                pids: Vec::new(),
            });
        file.descriptors += 1;
        if !file.pids.contains(&d.pid) {
            file.pids.push(d.pid);
        }
    }
    let mut out: Vec<DeletedFileEntry> = files.into_values().collect();
    for file in &mut out {
        file.pids.sort_unstable();
    }
    out.sort_by(|a, b| {
        b.size_bytes
            .cmp(&a.size_bytes)
            .then_with(|| a.path.cmp(&b.path))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregator::{Descriptor, Origin},
        model::DescriptorKind,
        report::{HeldFile, entry::entry},
    };

    fn held(
        pid: u32,
        fd: i32,
        path: &str,
        file: Option<(u64, u64)>,
        at_exit: bool,
    ) -> DescriptorEntry {
        let d = Descriptor {
            fd,
            kind: DescriptorKind::File,
            detail: path.into(),
            origin: Origin::PreExisting,
            inherited: false,
            tid: pid,
            opened_at_ns: 0,
            stack: None,
            path_truncated: false,
            deleted: file.is_some(),
            tcp_state: None,
            cloexec: false,
        };
        let mut e = entry(pid, &d, 0, at_exit);
        e.held_file = file.map(|(inode, size)| HeldFile {
            dev: 1,
            inode,
            size,
            allocated: size,
        });
        e
    }

    /// One entry per file, whoever holds it and through how many descriptors; files that are
    /// not deleted, and what exited processes held, are not counted; largest first.
    #[test]
    fn one_entry_per_file_largest_first() {
        let descriptors = [
            held(7, 3, "/var/log/a.log", Some((10, 100)), false),
            held(8, 3, "/var/log/a.log", Some((10, 100)), false),
            held(8, 4, "/var/log/a.log", Some((10, 100)), false),
            held(7, 5, "/var/log/b.log", Some((11, 5000)), false),
            held(7, 6, "/var/log/c.log", None, false),
            held(9, 3, "/var/log/d.log", Some((12, 9000)), true),
        ];
        let files = deleted_files(&descriptors);
        let summary: Vec<(&str, u64, u64, Vec<u32>)> = files
            .iter()
            .map(|f| (f.path.as_str(), f.size_bytes, f.descriptors, f.pids.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                ("/var/log/b.log", 5000, 1, vec![7]),
                ("/var/log/a.log", 100, 3, vec![7, 8]),
            ]
        );
    }
}
