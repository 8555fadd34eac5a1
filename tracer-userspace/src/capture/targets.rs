//! The sets exec consults to follow processes chosen by name (`--comm`) or cgroup
//! (`--cgroup`, `--container`): a process that is not followed becomes followed in the
//! kernel, at its exec, when its new comm or its cgroup is in them.

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use tracer_common::map_names;

use super::{
    LoadError,
    loader::{map_error, take_map},
};

/// The kernel's `comm` is 16 bytes with the terminating NUL: names are cut to 15.
pub(crate) const COMM_LEN: usize = 16;

/// Handles on MATCH_COMMS and MATCH_CGROUPS.
pub(crate) struct TargetMaps {
    comms: HashMap<MapData, [u8; COMM_LEN], u8>,
    cgroups: HashMap<MapData, u64, u8>,
}

impl TargetMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Ok(Self {
            comms: HashMap::try_from(take_map(ebpf, map_names::MATCH_COMMS)?)
                .map_err(map_error(map_names::MATCH_COMMS))?,
            cgroups: HashMap::try_from(take_map(ebpf, map_names::MATCH_CGROUPS)?)
                .map_err(map_error(map_names::MATCH_CGROUPS))?,
        })
    }

    /// Follows every process that execs with this comm (its first 15 bytes).
    pub(crate) fn add_comm(&mut self, comm: &str) -> Result<(), LoadError> {
        self.comms
            .insert(comm_key(comm), 1, 0)
            .map_err(map_error(map_names::MATCH_COMMS))
    }

    /// Follows every process that execs in the cgroup with this id (the inode number of its
    /// directory in the cgroup v2 hierarchy).
    pub(crate) fn add_cgroup(&mut self, id: u64) -> Result<(), LoadError> {
        self.cgroups
            .insert(id, 1, 0)
            .map_err(map_error(map_names::MATCH_CGROUPS))
    }
}

/// A name as the kernel stores a comm: at most 15 bytes, NUL padded.
pub(crate) fn comm_key(comm: &str) -> [u8; COMM_LEN] {
    let mut key = [0; COMM_LEN];
    for (slot, byte) in key.iter_mut().zip(comm.bytes().take(COMM_LEN - 1)) {
        *slot = byte;
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names longer than the kernel keeps are cut at 15 bytes, as the kernel cuts them.
    #[test]
    fn comm_keys_are_cut_and_padded() {
        assert_eq!(&comm_key("sleep")[..6], b"sleep\0");
        let long = comm_key("a-very-long-process-name");
        assert_eq!(&long[..15], b"a-very-long-pro");
        assert_eq!(long[15], 0);
    }
}
