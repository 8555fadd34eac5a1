//! The CPython frame walker's program array: the walker at its slot, and every attached program
//! that captures a stack at the slot it resumes at (tracer-ebpf/src/python.rs explains the
//! round trip). The walk is one program so that the verifier checks it once: inlined into
//! each of the 30 programs that capture a stack, it made loading ten times slower.

use aya::{
    Ebpf,
    maps::{MapData, ProgramArray},
    programs::{ProgramError, TracePoint},
};
use tracer_common::{
    Syscall, map_names,
    python::{PY_FORK_PROGRAM, PY_FORK_SLOT, PY_WALK_PROGRAM, PY_WALK_SLOT, py_resume_slot},
};

use super::{LoadError, verifier::program_error};

/// The slot at which the program `name` resumes after a walk, for the programs that may
/// ask for one: every syscall's exit program, close's enter program and the fork program.
/// (Installing a program that never asks costs nothing.)
pub(super) fn resume_slot(name: &str) -> Option<u32> {
    if name == PY_FORK_PROGRAM {
        return Some(PY_FORK_SLOT);
    }
    if name == "sys_enter_close" {
        return Some(py_resume_slot(Syscall::Close));
    }
    let syscall = name.strip_prefix("sys_exit_")?;
    (1..PY_FORK_SLOT)
        .filter_map(|raw| Syscall::try_from(raw).ok())
        .find(|candidate| candidate.name() == syscall)
        .map(py_resume_slot)
}

/// Loads the walker and fills the program array with it and the `attached` programs (all
/// already loaded). The returned map must live as long as the programs: the kernel empties
/// a program array when its last file descriptor in userspace is closed.
pub(super) fn install(
    ebpf: &mut Ebpf,
    attached: &[&'static str],
) -> Result<ProgramArray<MapData>, LoadError> {
    let map = ebpf
        .take_map(map_names::PY_PROGRAMS)
        .ok_or(LoadError::MissingInObject(map_names::PY_PROGRAMS))?;
    let mut programs = ProgramArray::try_from(map).map_err(|source| LoadError::Map {
        map: map_names::PY_PROGRAMS,
        source,
    })?;
    let walker = tracepoint(ebpf, PY_WALK_PROGRAM)?;
    walker
        .load()
        .map_err(|err| program_error(PY_WALK_PROGRAM, err))?;
    set(&mut programs, ebpf, PY_WALK_PROGRAM, PY_WALK_SLOT)?;
    for &name in attached {
        if let Some(slot) = resume_slot(name) {
            set(&mut programs, ebpf, name, slot)?;
        }
    }
    Ok(programs)
}

fn tracepoint<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut TracePoint, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingInObject(name))?
        .try_into()
        .map_err(|err: ProgramError| program_error(name, err))
}

fn set(
    programs: &mut ProgramArray<MapData>,
    ebpf: &Ebpf,
    name: &'static str,
    slot: u32,
) -> Result<(), LoadError> {
    let program: &TracePoint = ebpf
        .program(name)
        .ok_or(LoadError::MissingInObject(name))?
        .try_into()
        .map_err(|err: ProgramError| program_error(name, err))?;
    let fd = program.fd().map_err(|err| program_error(name, err))?;
    programs.set(slot, fd, 0).map_err(|source| LoadError::Map {
        map: map_names::PY_PROGRAMS,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_capturing_program_has_its_own_slot() {
        let names = [
            "sys_exit_open",
            "sys_exit_openat",
            "sys_exit_openat2",
            "sys_exit_creat",
            "sys_exit_memfd_create",
            "sys_exit_socket",
            "sys_exit_accept4",
            "sys_exit_dup2",
            "sys_exit_pipe2",
            "sys_exit_socketpair",
            "sys_exit_fcntl",
            "sys_exit_eventfd2",
            "sys_exit_open_by_handle_at",
            "sys_enter_close",
            "sched_process_fork",
        ];
        let mut slots: Vec<u32> = names
            .iter()
            .map(|name| resume_slot(name).unwrap_or_else(|| panic!("{name} has no slot")))
            .collect();
        assert!(slots.iter().all(|&slot| slot != PY_WALK_SLOT));
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), names.len());
        assert_eq!(resume_slot("sys_exit_openat"), Some(Syscall::Openat as u32));
        assert_eq!(resume_slot("sched_process_exit"), None);
        assert_eq!(resume_slot("sys_exit_nonesuch"), None);
    }
}
