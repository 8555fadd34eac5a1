//! `--all`: the kernel's per-process counts of descriptor births and deaths (HOST_COUNTS),
//! read as a whole every look.

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use tracer_common::{HostCounts, map_names};

use super::{
    LoadError,
    loader::{map_error, take_map},
};

/// Handle on HOST_COUNTS.
pub(crate) struct HostCountsMap {
    map: HashMap<MapData, u32, HostCounts>,
}

impl HostCountsMap {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Ok(Self {
            map: HashMap::try_from(take_map(ebpf, map_names::HOST_COUNTS)?)
                .map_err(map_error(map_names::HOST_COUNTS))?,
        })
    }

    /// Every process's totals: (tgid, opened, closed, sockets opened). Entries that vanish
    /// while being read (the process exited) are skipped.
    pub(crate) fn read_all(&self) -> Vec<(u32, (u64, u64, u64))> {
        self.map
            .iter()
            .filter_map(Result::ok)
            .map(|(tgid, c)| (tgid, (c.opened, c.closed, c.sockets)))
            .collect()
    }
}
