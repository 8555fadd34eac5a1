//! Loading the eBPF object, writing this kernel's tracepoint offsets into it, attaching every
//! program, and the map operations the session needs (follow a pid, read stacks and losses).

use std::{
    cell::{Cell, RefCell},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, ProgramArray, RingBuf, StackTraceMap},
    programs::{
        ProgramError, RawTracePoint, RawTracePointRunOptions, TestRun, TracePoint,
        trace_point::TracePointLink,
    },
};
use tracer_common::{
    FOLLOW_PROGRAM, FOLLOWED_NO_BASE, FSBASE_GLOBAL, HELD_FLUSH_BATCH, HELD_FLUSH_PROGRAM,
    HOST_WIDE_GLOBAL, KERNEL_OFFSETS_GLOBAL, KernelOffsets, MATCH_TARGETS_GLOBAL, MAX_FOLLOWED,
    MEMOS_TAKEN_BACK_PROGRAM, OFFSETS_GLOBAL, STACK_COPY_GLOBAL, StackMemo, StackMemoKey,
    WAKEUP_GLOBAL, map_names, python::PyProcConfig,
};

use super::{
    btf,
    host::HostCountsMap,
    kernel_log::{KernelLog, kernel_log_level},
    python_walk,
    targets::TargetMaps,
    tracefs::{self, Formats, TracefsError},
    verifier::program_error,
};

/// `BPF_EXIST` from linux/bpf.h: a map update that only replaces an existing entry.
const BPF_EXIST: u64 = 2;

/// The eBPF object built by build.rs (aya-build) from the tracer-ebpf crate.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Where the kernel publishes its BTF; `TRACER_BTF_PATH` overrides it (tests use this to
/// check the error a BTF-less kernel gives).
const SYSFS_BTF: &str = "/sys/kernel/btf/vmlinux";

/// A tracepoint program: its category, its name (program and tracepoint share it), and
/// whether the tracer can work without it.
struct Probe {
    category: &'static str,
    name: &'static str,
    required: bool,
}

const fn probe(category: &'static str, name: &'static str, required: bool) -> Probe {
    Probe {
        category,
        name,
        required,
    }
}

/// Every program in the object. Optional ones are missing on some architectures (arm64 has
/// no open, creat, pipe, dup2) or older kernels (openat2). Exit probes read the syscall's
/// arguments from the saved user registers, so only close and close_range, which act as they
/// start, have enter probes (close's tells there whether its descriptor is open, so a close
/// that will fail with EBADF needs no exit probe); fork and clone are seen through
/// sched_process_fork.
const PROBES: &[Probe] = &[
    probe("syscalls", "sys_exit_open", false),
    probe("syscalls", "sys_exit_openat", true),
    probe("syscalls", "sys_exit_openat2", false),
    probe("syscalls", "sys_exit_creat", false),
    probe("syscalls", "sys_exit_socket", true),
    probe("syscalls", "sys_exit_accept", false),
    probe("syscalls", "sys_exit_accept4", true),
    probe("syscalls", "sys_exit_dup", true),
    probe("syscalls", "sys_exit_dup2", false),
    probe("syscalls", "sys_exit_dup3", true),
    probe("syscalls", "sys_exit_pipe", false),
    probe("syscalls", "sys_exit_pipe2", true),
    probe("syscalls", "sys_exit_socketpair", true),
    probe("syscalls", "sys_enter_close", true),
    probe("syscalls", "sys_exit_eventfd", false),
    probe("syscalls", "sys_exit_epoll_create", false),
    probe("syscalls", "sys_exit_pidfd_open", false),
    probe("syscalls", "sys_exit_inotify_init", false),
    probe("syscalls", "sys_exit_io_uring_setup", false),
    probe("syscalls", "sys_exit_chdir", false),
    probe("syscalls", "sys_exit_fchdir", false),
    probe("syscalls", "sys_exit_eventfd2", false),
    probe("syscalls", "sys_exit_epoll_create1", false),
    probe("syscalls", "sys_exit_timerfd_create", false),
    probe("syscalls", "sys_exit_signalfd", false),
    probe("syscalls", "sys_exit_signalfd4", false),
    probe("syscalls", "sys_exit_memfd_create", false),
    probe("syscalls", "sys_exit_pidfd_getfd", false),
    probe("syscalls", "sys_exit_inotify_init1", false),
    probe("syscalls", "sys_exit_fanotify_init", false),
    probe("syscalls", "sys_exit_userfaultfd", false),
    probe("syscalls", "sys_exit_perf_event_open", false),
    probe("syscalls", "sys_exit_open_by_handle_at", false),
    probe("syscalls", "sys_exit_fcntl", false),
    probe("syscalls", "sys_enter_close_range", false),
    probe("syscalls", "sys_exit_unshare", false),
    probe("syscalls", "sys_exit_recvmsg", false),
    probe("sched", "sched_process_fork", true),
    probe("sched", "sched_process_exit", true),
    probe("sched", "sched_process_exec", true),
    probe("sock", "inet_sock_set_state", false),
];

#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error(
        "tracer needs root (CAP_BPF and CAP_PERFMON) to load its eBPF programs: run it as root"
    )]
    NotRoot,
    #[error(
        "this kernel exposes no BTF at {0} (it needs CONFIG_DEBUG_INFO_BTF=y); tracer cannot load its programs without it"
    )]
    NoBtf(PathBuf),
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("this kernel lacks the tracepoint {0}, which tracer cannot work without")]
    MissingTracepoint(String),
    #[error("loading the eBPF object failed")]
    Object(#[from] aya::EbpfError),
    #[error("the eBPF object has no {0}; the build is broken")]
    MissingInObject(&'static str),
    #[error("the kernel refused program {program}: {reason}")]
    Program {
        program: &'static str,
        reason: String,
    },
    #[error("cannot use map {map}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("the kernel side follows {0} processes already, as many as it can")]
    FollowedFull(u32),
    #[error("cannot forward the eBPF programs' log: {0}")]
    KernelLog(String),
}

/// Events the kernel side could not deliver, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LostCounts {
    /// Events dropped because the ring buffer was full.
    pub ring_full: u64,
    /// Events lost in flight: a program the Python frame walker could not resume (see
    /// python_walk.rs; the loader installs every one, so this stays 0 unless that breaks).
    pub in_flight_full: u64,
    /// Children that could not be followed (followed-process map full).
    pub follow_full: u64,
}

impl LostCounts {
    pub(crate) fn total(&self) -> u64 {
        self.ring_full + self.in_flight_full + self.follow_full
    }
}

/// The loaded and attached programs and the maps userspace uses. Dropping it detaches all.
pub(crate) struct Probes {
    /// Written while events are applied (processes adopted later), through a shared
    /// reference.
    /// Followed processes, and their main threads' stack bases (see `set_stack_base`).
    followed: RefCell<HashMap<MapData, u32, u64>>,
    /// The names and cgroups followed from their exec (`--comm`, `--cgroup`).
    pub(crate) targets: RefCell<TargetMaps>,
    /// `--all`: what unfollowed processes created and closed.
    pub(crate) host_counts: HostCountsMap,
    listen_ports: RefCell<HashMap<MapData, u16, u32>>,
    stacks: StackTraceMap<MapData>,
    lost: PerCpuArray<MapData, u64>,
    /// Open+close pairs the kernel settled without sending them (tracer-ebpf/src/held.rs).
    paired: PerCpuArray<MapData, u64>,
    /// Learned thread stack bases (see `stacks/bases.rs`); written while events are applied,
    /// through a shared reference.
    stack_bases: RefCell<HashMap<MapData, u32, u64>>,
    /// Walks the kernel recognises stacks by (tracer-ebpf/src/memo.rs).
    stack_memos: RefCell<HashMap<MapData, StackMemoKey, StackMemo>>,
    /// Interpreter layouts of the CPython processes (see tracer-ebpf/src/python.rs).
    python: RefCell<HashMap<MapData, u32, PyProcConfig>>,
    /// Set before the first layout goes into `python`: until then the kernel skips that
    /// lookup (tracer-ebpf/src/python.rs, PYTHON_SEEN).
    python_seen: RefCell<Array<MapData, u32>>,
    /// Whether `python_seen` was set already.
    python_seen_set: Cell<bool>,
    /// tid -> PyThreadState address, seeded for the threads an interpreter already has.
    python_threads: RefCell<HashMap<MapData, u32, u64>>,
    /// The frame walker and the programs it returns to; held so the kernel keeps them.
    _python_programs: ProgramArray<MapData>,
    /// Tracepoints attached (this kernel may lack optional ones: see `without`).
    pub(crate) attached: Vec<&'static str>,
    /// One per attached program; dropping one detaches it (see `Drop`).
    links: Vec<TracePointLink>,
    /// Forwards the programs' log records; dropped after the programs are detached.
    _kernel_log: KernelLog,
    /// Owns the programs.
    ebpf: Ebpf,
}

impl Drop for Probes {
    /// Detaching a tracepoint program waits for an RCU grace period; one after another, 34 of
    /// them took 2.5 s here. From parallel threads the waits overlap, partly (the kernel holds
    /// event_mutex across each): 1.1 s.
    fn drop(&mut self) {
        let started = std::time::Instant::now();
        let links = std::mem::take(&mut self.links);
        std::thread::scope(|scope| {
            for link in links {
                scope.spawn(move || drop(link));
            }
        });
        log::debug!(
            "detached the programs in {:.3}s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// What must hold before loading: root, BTF, tracefs. Checked before a command is started so
/// that a bad environment fails fast with one clear line.
pub(crate) fn preflight() -> Result<PathBuf, LoadError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LoadError::NotRoot);
    }
    let btf = btf_path();
    if !btf.is_file() {
        return Err(LoadError::NoBtf(btf));
    }
    Ok(tracefs::ensure_mounted()?)
}

fn btf_path() -> PathBuf {
    std::env::var_os("TRACER_BTF_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SYSFS_BTF))
}

/// Where sys_enter_close finds the calling task's descriptor table, inet_sock_set_state a
/// connection's TIME_WAIT socket and the Python walk a thread's fsbase, from this kernel's
/// BTF; without them, closes of descriptors that were not open go unreported, every close
/// from FIN_WAIT counts as TIME_WAIT and Python frames are not captured (said once).
fn kernel_layout() -> btf::KernelLayout {
    btf::kernel_layout(&btf_path()).unwrap_or_else(|err| {
        log::warn!(
            "cannot read this kernel's BTF ({err}): closes of descriptors that were not \
             open (EBADF) are not reported, connections closed without a TIME_WAIT \
             socket are counted as TIME_WAIT, and Python frames are not captured"
        );
        btf::KernelLayout {
            offsets: KernelOffsets::absent(),
            task_fsbase: None,
        }
    })
}

/// The ring buffer userspace reads events from.
pub(crate) type EventRing = RingBuf<MapData>;

/// Loads the object with this kernel's offsets and attaches every available program.
/// `stack_copy_bytes` caps the user stack copied per event; `match_targets` makes exec look
/// processes up by name and cgroup (see [`TargetMaps`]); `host_wide` makes the probes count
/// what unfollowed processes create and close (`--all`, see [`HostCountsMap`]). Runs inside the session's tokio
/// runtime, whose event loop forwards the programs' log records (see [`KernelLog`]).
pub(crate) fn load(
    tracefs_root: &Path,
    ring_bytes: u32,
    stack_copy_bytes: u64,
    match_targets: bool,
    host_wide: bool,
) -> Result<(Probes, EventRing), LoadError> {
    let names: Vec<(&str, &str)> = PROBES.iter().map(|p| (p.category, p.name)).collect();
    let formats = Formats::read(tracefs_root, &names)?;
    if let Some(missing) = PROBES.iter().find(|p| p.required && !formats.has(p.name)) {
        return Err(LoadError::MissingTracepoint(format!(
            "{}:{}",
            missing.category, missing.name
        )));
    }
    let offsets = formats.offsets()?;
    log::debug!("tracepoint offsets: {offsets:?}");
    let layout = kernel_layout();
    let kernel_offsets = layout.offsets;
    log::debug!("kernel struct offsets: {kernel_offsets:?}");

    // Producers wake the reader each time they have written another eighth of the ring (so
    // before an eighth waits unread); otherwise the session drains on a timer (see
    // `DRAIN_EVERY` in session/pipeline.rs).
    let wakeup_bytes = u64::from(ring_bytes / 8);
    let match_targets = u64::from(match_targets);
    let host_wide = u64::from(host_wide);
    let fsbase_offset = layout.task_fsbase.unwrap_or(u64::MAX);
    log::debug!("task_struct thread.fsbase at {fsbase_offset:#x}");
    let mut ebpf = EbpfLoader::new()
        .override_global(OFFSETS_GLOBAL, &offsets, true)
        .override_global(KERNEL_OFFSETS_GLOBAL, &kernel_offsets, true)
        .override_global(WAKEUP_GLOBAL, &wakeup_bytes, true)
        .override_global(STACK_COPY_GLOBAL, &stack_copy_bytes, true)
        .override_global(MATCH_TARGETS_GLOBAL, &match_targets, true)
        .override_global(HOST_WIDE_GLOBAL, &host_wide, true)
        .override_global(FSBASE_GLOBAL, &fsbase_offset, true)
        .override_global(aya_log::LEVEL, &kernel_log_level(), true)
        .map_max_entries(map_names::EVENTS, ring_bytes)
        .load(EBPF_OBJECT)?;
    // Before any program is loaded: they refer to the log's ring, which must stay open.
    let kernel_log = KernelLog::start(&mut ebpf)?;

    let mut attached = Vec::new();
    let mut links = Vec::new();
    for probe in PROBES {
        if !formats.has(probe.name) {
            log::warn!(
                "this kernel has no tracepoint {}:{}: {}",
                probe.category,
                probe.name,
                without(probe.name)
            );
            continue;
        }
        links.push(attach(&mut ebpf, probe)?);
        attached.push(probe.name);
    }
    // No Python process is configured yet, so no program asks for the walker before this.
    let python_programs = python_walk::install(&mut ebpf, &attached)?;
    load_held_flush(&mut ebpf)?;
    load_to_run(&mut ebpf, FOLLOW_PROGRAM)?;
    load_to_run(&mut ebpf, MEMOS_TAKEN_BACK_PROGRAM)?;

    let events = RingBuf::try_from(take_map(&mut ebpf, map_names::EVENTS)?)
        .map_err(map_error(map_names::EVENTS))?;
    let probes = Probes {
        followed: RefCell::new(
            HashMap::try_from(take_map(&mut ebpf, map_names::FOLLOWED)?)
                .map_err(map_error(map_names::FOLLOWED))?,
        ),
        targets: RefCell::new(TargetMaps::take(&mut ebpf)?),
        host_counts: HostCountsMap::take(&mut ebpf)?,
        listen_ports: RefCell::new(
            HashMap::try_from(take_map(&mut ebpf, map_names::LISTEN_PORTS)?)
                .map_err(map_error(map_names::LISTEN_PORTS))?,
        ),
        python: RefCell::new(
            HashMap::try_from(take_map(&mut ebpf, map_names::PY_PROCS)?)
                .map_err(map_error(map_names::PY_PROCS))?,
        ),
        python_seen: RefCell::new(
            Array::try_from(take_map(&mut ebpf, map_names::PYTHON_SEEN)?)
                .map_err(map_error(map_names::PYTHON_SEEN))?,
        ),
        python_seen_set: Cell::new(false),
        python_threads: RefCell::new(
            HashMap::try_from(take_map(&mut ebpf, map_names::PY_TSTATES)?)
                .map_err(map_error(map_names::PY_TSTATES))?,
        ),
        stacks: StackTraceMap::try_from(take_map(&mut ebpf, map_names::STACKS)?)
            .map_err(map_error(map_names::STACKS))?,
        stack_bases: RefCell::new(
            HashMap::try_from(take_map(&mut ebpf, map_names::STACK_BASES)?)
                .map_err(map_error(map_names::STACK_BASES))?,
        ),
        stack_memos: RefCell::new(
            HashMap::try_from(take_map(&mut ebpf, map_names::STACK_MEMOS)?)
                .map_err(map_error(map_names::STACK_MEMOS))?,
        ),
        _python_programs: python_programs,
        lost: PerCpuArray::try_from(take_map(&mut ebpf, map_names::LOST)?)
            .map_err(map_error(map_names::LOST))?,
        paired: PerCpuArray::try_from(take_map(&mut ebpf, map_names::PAIRED)?)
            .map_err(map_error(map_names::PAIRED))?,
        attached,
        links,
        _kernel_log: kernel_log,
        ebpf,
    };
    Ok((probes, events))
}

pub(super) fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::MissingInObject(name))
}

pub(super) fn map_error(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> LoadError {
    move |source| LoadError::Map { map, source }
}

/// Loads a program that is never attached, only run from here with `BPF_PROG_TEST_RUN`:
/// the held opens' flush ([`Probes::flush_held`]) and [`Probes::follow`].
fn load_to_run<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut RawTracePoint, LoadError> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingInObject(name))?
        .try_into()
        .map_err(|err: ProgramError| program_error(name, err))?;
    program.load().map_err(|err| program_error(name, err))?;
    Ok(program)
}

/// Loads the program that sends the file opens the kernel holds back (run by
/// [`Probes::flush_held`]), and runs it once: without it they could stay unseen.
fn load_held_flush(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    load_to_run(ebpf, HELD_FLUSH_PROGRAM)?
        .test_run(RawTracePointRunOptions::new())
        .map_err(|err| program_error(HELD_FLUSH_PROGRAM, err))?;
    Ok(())
}

/// Loads and attaches one program; the caller owns the link.
fn attach(ebpf: &mut Ebpf, probe: &Probe) -> Result<TracePointLink, LoadError> {
    let program: &mut TracePoint = ebpf
        .program_mut(probe.name)
        .ok_or(LoadError::MissingInObject(probe.name))?
        .try_into()
        .map_err(|err: ProgramError| program_error(probe.name, err))?;
    program
        .load()
        .map_err(|err| program_error(probe.name, err))?;
    let link = program
        .attach(probe.category, probe.name)
        .map_err(|err| program_error(probe.name, err))?;
    program
        .take_link(link)
        .map_err(|err| program_error(probe.name, err))
}

/// What the tracer cannot see on a kernel without the optional tracepoint `name`: said when
/// it starts, so a missing line in the report is not taken for the absence of a leak.
fn without(name: &str) -> String {
    let syscall = name
        .strip_prefix("sys_enter_")
        .or_else(|| name.strip_prefix("sys_exit_"));
    match (name, syscall) {
        ("inet_sock_set_state", _) => {
            "TCP states and their ages come from /proc at report time only, and TIME_WAIT is \
             not counted"
                .to_owned()
        }
        (_, Some("close_range")) => "closes by close_range() are not seen as they happen \
                                     (descriptors are checked against /proc before they are \
                                     reported)"
            .to_owned(),
        (_, Some("fcntl")) => {
            "copies made with fcntl(F_DUPFD) are not tracked, nor close-on-exec set with F_SETFD"
                .to_owned()
        }
        (_, Some(call @ ("chdir" | "fchdir"))) => format!(
            "working directory changes by {call}() are not followed: relative paths opened \
             after one are shown as given"
        ),
        (_, Some(syscall)) => format!("descriptors created by {syscall}() are not tracked"),
        _ => "skipping it".to_owned(),
    }
}

impl Probes {
    /// A program loaded to be run from here with `BPF_PROG_TEST_RUN` (`load_to_run`).
    fn to_run(&self, name: &'static str) -> Result<&RawTracePoint, LoadError> {
        self.ebpf
            .program(name)
            .ok_or(LoadError::MissingInObject(name))?
            .try_into()
            .map_err(|err: ProgramError| program_error(name, err))
    }

    /// Follows a process from now on; its children are then followed by the kernel itself.
    /// The kernel does it (`follow_processes`, tracer-ebpf/src/followed.rs): the process's
    /// bit shares a word with 63 other pids, whose forks and exits change it meanwhile.
    pub(crate) fn follow(&self, tgid: u32) -> Result<(), LoadError> {
        let program = self.to_run(FOLLOW_PROGRAM)?;
        let mut run = RawTracePointRunOptions::new();
        run.args[0] = u64::from(tgid);
        let refused = program
            .test_run(run)
            .map_err(|err| program_error(FOLLOW_PROGRAM, err))?
            .return_value;
        if refused != 0 {
            return Err(LoadError::FollowedFull(MAX_FOLLOWED));
        }
        Ok(())
    }

    /// Tells the kernel side that `pid` listens on TCP `port`, so the sockets it accepts are
    /// tracked from their handshake on (the kernel adds ports that start listening later).
    pub(crate) fn listening(&self, port: u16, pid: u32) -> Result<(), LoadError> {
        self.listen_ports
            .borrow_mut()
            .insert(port, pid, 0)
            .map_err(map_error(map_names::LISTEN_PORTS))
    }

    /// Sets (Some) or deletes (None) where a thread's stack copy stops. A failure costs only
    /// a fuller copy, so it is logged, not returned.
    ///
    /// A process's main thread (the tid that is a followed tgid) has its base in FOLLOWED
    /// too (the kernel reads it there when it copies a stack it has no remembered walk for);
    /// the update is made only if the process is still there (`BPF_EXIST`), so that a
    /// process that exited meanwhile leaves no entry behind.
    pub(crate) fn set_stack_base(&self, tid: u32, base: Option<u64>) {
        let mut map = self.stack_bases.borrow_mut();
        let result = match base {
            Some(base) => map.insert(tid, base, 0),
            None => map.remove(&tid),
        };
        if let Err(err) = result {
            log::debug!("cannot update the stack base of thread {tid}: {err}");
        }
        // ENOENT: the tid is no followed process's main thread (or it exited).
        let _ = self
            .followed
            .borrow_mut()
            .insert(tid, base.unwrap_or(FOLLOWED_NO_BASE), BPF_EXIST);
    }

    /// Gives the kernel a remembered walk to recognise stacks by (`Some`), or takes it back.
    /// A walk the kernel does not get costs only the copies it would have saved.
    pub(crate) fn set_stack_memo(&self, key: StackMemoKey, memo: Option<&StackMemo>) {
        let mut map = self.stack_memos.borrow_mut();
        let result = match memo {
            Some(memo) => map.insert(key, *memo, 0),
            None => map.remove(&key),
        };
        if let Err(err) = result {
            log::debug!(
                "cannot update the remembered walk of pid {}: {err}",
                key.tgid
            );
        }
    }

    /// Makes every CPU's copies of the remembered walks stale (tracer-ebpf/src/memo.rs): run
    /// after walks were taken back from the kernel's map. If it fails, a copy may go on
    /// naming a walk taken back, whose stack is then lost after a second: logged.
    pub(crate) fn memos_taken_back(&self) {
        let Ok(program) = self.to_run(MEMOS_TAKEN_BACK_PROGRAM) else {
            return;
        };
        if let Err(err) = program.test_run(RawTracePointRunOptions::new()) {
            log::warn!("cannot tell the kernel that remembered walks were taken back: {err}");
        }
    }

    /// Tells the kernel where `tgid`'s interpreter keeps its frames: from now on its stacks
    /// carry Python frames. A failure costs only those frames, so it is logged.
    pub(crate) fn set_python(&self, tgid: u32, config: &PyProcConfig) {
        if !self.python_seen_set.get() {
            if let Err(err) = self.python_seen.borrow_mut().set(0, 1, 0) {
                log::warn!("pid {tgid}: cannot configure Python frames: {err}");
                return;
            }
            self.python_seen_set.set(true);
        }
        if let Err(err) = self.python.borrow_mut().insert(tgid, *config, 0) {
            log::warn!("pid {tgid}: cannot configure Python frames: {err}");
        }
    }

    /// Tells the kernel which `PyThreadState` a thread has (it checks it at each use).
    pub(crate) fn set_python_thread(&self, tid: u32, tstate: u64) {
        if let Err(err) = self.python_threads.borrow_mut().insert(tid, tstate, 0) {
            log::debug!("thread {tid}: cannot seed its Python thread state: {err}");
        }
    }

    /// Open+close pairs the kernel settled without sending them, summed over CPUs.
    pub(crate) fn paired(&self) -> u64 {
        self.paired
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// Has the kernel send the file opens it holds back for these processes (see
    /// tracer-ebpf/src/held.rs) into the ring, behind everything those processes sent
    /// before: one run of the flush program per [`HELD_FLUSH_BATCH`] processes.
    pub(crate) fn flush_held(&self, tgids: impl IntoIterator<Item = u32>) {
        let Ok(program) = self.to_run(HELD_FLUSH_PROGRAM) else {
            return;
        };
        let mut tgids = tgids.into_iter().filter(|&tgid| tgid != 0).peekable();
        while tgids.peek().is_some() {
            let mut run = RawTracePointRunOptions::new();
            for (arg, tgid) in run
                .args
                .iter_mut()
                .zip(tgids.by_ref().take(HELD_FLUSH_BATCH))
            {
                *arg = u64::from(tgid);
            }
            if let Err(err) = program.test_run(run) {
                log::warn!("cannot have the kernel send the opens it holds back: {err}");
                return;
            }
        }
    }

    pub(crate) fn lost(&self) -> LostCounts {
        let sum = |index: u32| -> u64 {
            self.lost
                .get(&index, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        LostCounts {
            ring_full: sum(0),
            in_flight_full: sum(1),
            follow_full: sum(2),
        }
    }

    /// Instruction pointers of a user stack, innermost first.
    pub(crate) fn stack(&self, id: u32) -> Option<Vec<u64>> {
        let trace = self.stacks.get(&id, 0).ok()?;
        Some(trace.frames().iter().map(|frame| frame.ip).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each cause is printed once under `{err:#}` (what main prints): the messages name what
    /// failed and leave the cause to `source()`.
    #[test]
    fn error_chains_print_each_cause_once() {
        let cause = || std::io::Error::other("CAUSE");
        let errors: Vec<anyhow::Error> = vec![
            LoadError::Object(aya::EbpfError::FileError {
                path: PathBuf::from("/obj"),
                error: cause(),
            })
            .into(),
            LoadError::Map {
                map: "EVENTS",
                source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_elem",
                    io_error: cause(),
                }),
            }
            .into(),
            LoadError::Tracefs(TracefsError::Read {
                path: PathBuf::from("/format"),
                source: cause(),
            })
            .into(),
        ];
        for err in errors {
            let links: Vec<String> = err.chain().map(ToString::to_string).collect();
            for pair in links.windows(2) {
                assert!(
                    !pair[0].contains(&pair[1]),
                    "{:?} repeats its source {:?}",
                    pair[0],
                    pair[1]
                );
            }
            assert_eq!(format!("{err:#}").matches("CAUSE").count(), 1, "{err:#}");
        }
    }

    /// PROBES names every program of the embedded object, each once: a program added to
    /// tracer-ebpf without a line there would never be attached, and a line without a program
    /// fails every load. (The object only names a program, not its tracepoint's category.)
    #[test]
    fn probes_are_the_programs_in_the_object() {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

        let object = object::File::parse(EBPF_OBJECT).expect("the eBPF object is an ELF file");
        let is_program_section =
            |name: &str| name == "tracepoint" || name.starts_with("tracepoint/");
        let mut in_object: Vec<&str> = object
            .symbols()
            .filter(|symbol| symbol.kind() == SymbolKind::Text && symbol.is_global())
            .filter(|symbol| {
                symbol
                    .section_index()
                    .and_then(|index| object.section_by_index(index).ok())
                    .and_then(|section| section.name().ok())
                    .is_some_and(is_program_section)
            })
            .map(|symbol| symbol.name().expect("program names are UTF-8"))
            // Reached by tail calls, never attached (see python_walk.rs).
            .filter(|name| *name != tracer_common::python::PY_WALK_PROGRAM)
            .collect();
        in_object.sort_unstable();
        let mut listed: Vec<&str> = PROBES.iter().map(|probe| probe.name).collect();
        listed.sort_unstable();
        assert!(!in_object.is_empty(), "no tracepoint program in the object");
        let unlisted: Vec<&str> = in_object
            .iter()
            .filter(|name| !listed.contains(name))
            .copied()
            .collect();
        let absent: Vec<&str> = listed
            .iter()
            .filter(|name| !in_object.contains(name))
            .copied()
            .collect();
        assert_eq!(
            listed, in_object,
            "PROBES (left) differs from the object's programs (right): PROBES lacks {unlisted:?}, \
             the object lacks {absent:?}, or PROBES names one twice"
        );
    }

    /// Each optional tracepoint says what is lost without it.
    #[test]
    fn says_what_a_missing_tracepoint_costs() {
        assert_eq!(
            without("sys_exit_openat2"),
            "descriptors created by openat2() are not tracked"
        );
        assert!(without("inet_sock_set_state").contains("TCP states"));
        assert!(without("sys_enter_close_range").starts_with("closes by close_range()"));
        assert!(without("sys_exit_fchdir").contains("relative paths"));
    }
}
