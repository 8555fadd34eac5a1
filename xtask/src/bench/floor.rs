//! The floor: the least a tool with a program on the tracer's tracepoints must pay. Each
//! tracepoint gets a program that does what a pid filter does (reads the current pid and
//! compares it with the followed ones) and returns 0, loaded with bpf(2) and attached as
//! aya attaches the tracer's (a perf event on CPU 0 for all processes, the program set on it).
//!
//! It used to be bpftrace with empty probes. bpftrace (0.17 here) ends every tracepoint
//! program with `return 1`, and a non-zero return makes the kernel go on to perf's own
//! handling of the event (`perf_tp_event`, `perf_swevent_event`) after the program. perf
//! (cpu-clock samples of nginx's worker under wrk) put that at about 3% of the worker's CPU,
//! against 0.4% for bpftrace's programs themselves; the tracer's programs return 0 and never
//! pay it. So that floor stood above what a program on these tracepoints must cost, and
//! the tracer looked closer to it than it was.

use std::{
    fs, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{child::Watched, workload::Micro};

/// Tracepoints the tracer runs a program on during one iteration of `micro`.
pub(crate) fn tracepoints(micro: Micro) -> &'static [&'static str] {
    match micro {
        Micro::Open => &["syscalls:sys_exit_openat", "syscalls:sys_enter_close"],
        Micro::Socket => &["syscalls:sys_exit_socket", "syscalls:sys_enter_close"],
        Micro::Connect => &[
            "syscalls:sys_exit_socket",
            "syscalls:sys_exit_accept4",
            "syscalls:sys_enter_close",
            "sock:inet_sock_set_state",
        ],
    }
}

/// Every tracepoint the tracer attaches a program to (PROBES in
/// tracer-userspace/src/capture/loader.rs): for a floor under a process that makes many kinds
/// of syscall (nginx), where listing those that fire would miss some.
pub(crate) const ALL_TRACEPOINTS: &[&str] = &[
    "syscalls:sys_exit_open",
    "syscalls:sys_exit_openat",
    "syscalls:sys_exit_openat2",
    "syscalls:sys_exit_creat",
    "syscalls:sys_exit_socket",
    "syscalls:sys_exit_accept",
    "syscalls:sys_exit_accept4",
    "syscalls:sys_exit_dup",
    "syscalls:sys_exit_dup2",
    "syscalls:sys_exit_dup3",
    "syscalls:sys_exit_pipe",
    "syscalls:sys_exit_pipe2",
    "syscalls:sys_exit_socketpair",
    "syscalls:sys_enter_close",
    "syscalls:sys_exit_eventfd",
    "syscalls:sys_exit_epoll_create",
    "syscalls:sys_exit_pidfd_open",
    "syscalls:sys_exit_inotify_init",
    "syscalls:sys_exit_io_uring_setup",
    "syscalls:sys_exit_chdir",
    "syscalls:sys_exit_fchdir",
    "syscalls:sys_exit_eventfd2",
    "syscalls:sys_exit_epoll_create1",
    "syscalls:sys_exit_timerfd_create",
    "syscalls:sys_exit_signalfd",
    "syscalls:sys_exit_signalfd4",
    "syscalls:sys_exit_memfd_create",
    "syscalls:sys_exit_pidfd_getfd",
    "syscalls:sys_exit_inotify_init1",
    "syscalls:sys_exit_fanotify_init",
    "syscalls:sys_exit_userfaultfd",
    "syscalls:sys_exit_perf_event_open",
    "syscalls:sys_exit_open_by_handle_at",
    "syscalls:sys_exit_fcntl",
    "syscalls:sys_enter_close_range",
    "syscalls:sys_exit_unshare",
    "syscalls:sys_exit_recvmsg",
    "sched:sched_process_fork",
    "sched:sched_process_exit",
    "sched:sched_process_exec",
    "sock:inet_sock_set_state",
];

/// The floor's programs, attached while this lives; dropping it detaches and unloads them.
/// They are held by this process, so `profile::snapshot(std::process::id())` reads their
/// run times.
pub(crate) struct Floor {
    _events: Vec<OwnedFd>,
    _programs: Vec<OwnedFd>,
}

impl Floor {
    /// A program on each of `tracepoints` ("category:name") this kernel has, filtered to
    /// `pids`, each named after its tracepoint as the tracer's programs are.
    pub(crate) fn attach(tracepoints: &[&str], pids: &[u32]) -> Result<Floor> {
        let instructions = program(pids);
        let (mut events, mut programs) = (Vec::new(), Vec::new());
        for tracepoint in tracepoints {
            let Some(id) = tracepoint_id(tracepoint)? else {
                continue;
            };
            let name = tracepoint.rsplit(':').next().unwrap_or(tracepoint);
            let program =
                load(&instructions, name).with_context(|| format!("floor program {name}"))?;
            events.push(attach(&program, id).with_context(|| format!("attaching {tracepoint}"))?);
            programs.push(program);
        }
        if programs.is_empty() {
            bail!("none of the floor's tracepoints exists on this kernel");
        }
        Ok(Floor {
            _events: events,
            _programs: programs,
        })
    }
}

/// Runs `argv` with the floor on `tracepoints`, filtered to it, and waits for it to end well.
pub(crate) fn run_under(tracepoints: &[&str], argv: &[String], timeout: Duration) -> Result<()> {
    let (mut child, floor) = start_under(tracepoints, argv)?;
    child.wait_success(timeout)?;
    drop(floor);
    Ok(())
}

/// Starts `argv` with the floor on `tracepoints` attached and filtered to it before its first
/// syscall (see [`Watched::spawn_gated`]); the floor stays while the returned [`Floor`] lives.
pub(crate) fn start_under(tracepoints: &[&str], argv: &[String]) -> Result<(Watched, Floor)> {
    let mut gated = Watched::spawn_gated(argv)?;
    let floor = match Floor::attach(tracepoints, &[gated.pid()]) {
        Ok(floor) => floor,
        Err(err) => {
            gated.signal(libc::SIGKILL);
            let _ = gated.wait(Duration::from_secs(10));
            return Err(err);
        }
    };
    gated.release()?;
    Ok((gated, floor))
}

/// `call bpf_get_current_pid_tgid; r0 >>= 32; if r0 == pid goto matched (each pid);
/// r0 = 0; exit; matched: r0 = 0; exit`: a pid filter's work, then the return that ends
/// the kernel's handling of the event, as the tracer's programs return.
fn program(pids: &[u32]) -> Vec<Insn> {
    const GET_CURRENT_PID_TGID: i32 = 14;
    let mut insns = vec![
        Insn::new(0x85, 0, 0, GET_CURRENT_PID_TGID), // call
        Insn::new(0x77, 0, 0, 32),                   // r0 >>= 32 (the tgid)
    ];
    let n = pids.len();
    for (i, &pid) in pids.iter().enumerate() {
        // To the second `r0 = 0`, past the rest of the comparisons and the first exit.
        let skip = (n - i - 1 + 2) as i16;
        insns.push(Insn::new(0x15, 0, skip, pid as i32)); // if r0 == pid goto +skip
    }
    for _ in 0..2 {
        insns.push(Insn::new(0xb7, 0, 0, 0)); // r0 = 0
        insns.push(Insn::new(0x95, 0, 0, 0)); // exit
    }
    insns
}

/// One eBPF instruction as the kernel reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Insn {
    code: u8,
    /// dst_reg in the low four bits, src_reg in the high four.
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    const fn new(code: u8, regs: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs,
            off,
            imm,
        }
    }
}

/// The BPF_PROG_LOAD part of `union bpf_attr`, up to the fields used; the kernel takes a
/// shorter attr than its own and zeroes the rest.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;

fn load(insns: &[Insn], name: &str) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_TRACEPOINT,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    // The kernel takes [A-Za-z0-9_.] names of up to 15 bytes.
    for (slot, byte) in attr.prog_name[..15].iter_mut().zip(name.bytes()) {
        *slot = byte;
    }
    // SAFETY: `attr` and what it points at (instructions, license, log) outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw mut attr,
            size_of::<ProgLoadAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        let err = io::Error::last_os_error();
        let said = String::from_utf8_lossy(&log);
        let said = said.trim_end_matches('\0').trim();
        bail!("the kernel refused it: {err} {said}");
    }
    // SAFETY: the bpf syscall returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `perf_event_attr`, as far as its first published size (PERF_ATTR_SIZE_VER0, 64 bytes).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `_IOW('$', 8, __u32)` and `_IO('$', 0)`.
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;

/// A perf event on tracepoint `id` for every process on CPU 0 (a tracepoint's programs run
/// on every CPU whichever CPU the event is opened on), with `program` set on it.
fn attach(program: &OwnedFd, id: u64) -> Result<OwnedFd> {
    let attr = PerfEventAttr {
        kind: PERF_TYPE_TRACEPOINT,
        size: size_of::<PerfEventAttr>() as u32,
        config: id,
        wakeup_events: 1,
        ..PerfEventAttr::default()
    };
    // SAFETY: `attr` outlives the call; pid -1 with cpu 0 is every process on that CPU.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &raw const attr,
            -1 as libc::c_int,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("perf_event_open");
    }
    // SAFETY: as above, a new descriptor nothing else owns.
    let event = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: ioctls on the descriptor just opened; SET_BPF takes the program's fd.
    unsafe {
        if libc::ioctl(
            event.as_raw_fd(),
            PERF_EVENT_IOC_SET_BPF,
            program.as_raw_fd(),
        ) != 0
        {
            return Err(io::Error::last_os_error()).context("PERF_EVENT_IOC_SET_BPF");
        }
        if libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) != 0 {
            return Err(io::Error::last_os_error()).context("PERF_EVENT_IOC_ENABLE");
        }
    }
    Ok(event)
}

/// The id of tracepoint "category:name" from tracefs, `None` when this kernel lacks it.
fn tracepoint_id(tracepoint: &str) -> Result<Option<u64>> {
    let relative = tracepoint.replace(':', "/");
    for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        let events = Path::new(root).join("events");
        if !events.is_dir() {
            continue;
        }
        let Ok(text) = fs::read_to_string(events.join(&relative).join("id")) else {
            return Ok(None);
        };
        return text
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("tracepoint {tracepoint}: id {text:?}"));
    }
    bail!("tracefs is not mounted (neither /sys/kernel/tracing nor /sys/kernel/debug/tracing)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every comparison jumps to the second `r0 = 0`, and both paths return 0.
    #[test]
    fn filter_jumps_land_on_the_matched_return() {
        let insns = program(&[10, 11, 12]);
        assert_eq!(insns.len(), 2 + 3 + 4);
        for (i, insn) in insns[2..5].iter().enumerate() {
            let at = 2 + i;
            assert_eq!(insn.code, 0x15);
            let target = at as i64 + 1 + insn.off as i64;
            assert_eq!(target, 7, "comparison {i}");
        }
        assert_eq!(insns[5], Insn::new(0xb7, 0, 0, 0));
        assert_eq!(insns[7], Insn::new(0xb7, 0, 0, 0));
        assert_eq!(insns[8].code, 0x95);
    }
}
