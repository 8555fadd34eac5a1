//! One tracing session: check the environment, start or find the target, load and attach,
//! follow the target tree, apply events until told to stop, then build the report.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    io::{self, Write as _},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{Signal, SignalKind, signal},
    time::{Instant, interval, sleep_until},
};
use tracer_common::CLONE_THREAD;

use crate::{
    aggregator::{Aggregator, ProcessSnapshot, SnapshotFd, StackRef},
    cli::Options,
    events::{self, Decoded, Event},
    loader::{self, EventRing, Probes},
    procfs::{self, Direction, SocketTable},
    reconciler::Reconciler,
    report::{self, DescriptorEntry, Report, Resolver, SessionFacts},
    stacks::StackStore,
    symbolize::Frame,
    tcp::{TcpTracker, TcpTransition},
};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no such process: {0}")]
    NoSuchProcess(u32),
    #[error("cannot run `{0}`: command not found")]
    CommandNotFound(String),
}

/// Why the event loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Signal(&'static str),
    Duration,
    AllExited,
}

/// How often to reap a started command and check that followed processes still exist.
const HOUSEKEEPING: Duration = Duration::from_millis(250);
/// How often the ring buffer is read when nobody woke us: producers only wake the reader once
/// an eighth of the ring is full, which is cheaper for them than a wakeup per event.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// Events applied per turn of the event loop before it looks at signals and timers again.
const DRAIN_BUDGET: usize = 65_536;
/// The smallest record in the ring buffer (an exec event plus the ring's 8-byte header).
const MIN_EVENT_BYTES: usize = 32;

/// Runs a session and prints the report (JSON on stdout with --json, text otherwise).
pub fn run(opts: &Options) -> Result<()> {
    opts.validate().map_err(anyhow::Error::msg)?;
    // A flame graph that cannot be written is refused before anything runs.
    let flamegraph = opts
        .flamegraph
        .as_ref()
        .map(|path| {
            std::fs::File::create(path)
                .map(|file| (path, file))
                .with_context(|| format!("cannot create {}", path.display()))
        })
        .transpose()?;
    let pid = opts.pid.map(process_of).transpose()?;
    let tracefs_root = loader::preflight()?;

    // A command is started before anything is loaded, so it inherits no BPF descriptors,
    // and held at a gate until it is followed.
    let mut child = match pid {
        Some(_) => None,
        None => Some(PausedChild::spawn(&opts.command)?),
    };
    let (target, command) = match (&child, pid) {
        (Some(child), _) => (child.pid, opts.command.clone()),
        (None, Some(pid)) => (
            pid,
            procfs::process_info(pid)
                .map(|i| i.cmdline)
                .unwrap_or_default(),
        ),
        (None, None) => unreachable!("validate() requires --pid or a command"),
    };

    // Ctrl-C and SIGTERM must mean "report now" from the moment `attached` is printed, so
    // their handlers go in before anything is attached.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    let _runtime_context = runtime.enter();
    let stop_signals = StopSignals::install()?;

    let stack_copy_bytes = u64::from(opts.stack_copy_kib) * 1024;
    let (mut probes, ring) =
        loader::load(&tracefs_root, opts.ring_buffer_mib << 20, stack_copy_bytes)
            .context("cannot attach the probes")?;
    let started_ns = monotonic_ns();
    let followed = follow_tree(&mut probes, target)?;
    let snapshots: Vec<(ProcessSnapshot, Vec<u16>)> =
        followed.iter().filter_map(|&pid| snapshot(pid)).collect();
    // Sockets accepted on ports the tree already listens on are tracked from their handshake.
    for (process, listening) in &snapshots {
        for &port in listening {
            probes
                .listening(port, process.pid)
                .with_context(|| format!("cannot track TCP port {port}"))?;
        }
    }
    let mut state = State::new(&probes);
    for (process, _) in snapshots {
        state.agg.add_snapshot(process, started_ns);
    }
    for &pid in &followed {
        state.stacks.capture(pid);
    }
    // A started command has not exec'd yet: its comm is still ours, so name the command.
    let comm = match &child {
        Some(_) => opts.command[0].clone(),
        None => state
            .agg
            .process(target)
            .map(|p| p.comm.clone())
            .unwrap_or_default(),
    };
    eprintln!(
        "tracer: attached {} probes; following pid {target} ({comm}) and {} descendants. Ctrl-C to stop and report.",
        probes.attached.len(),
        followed.len() - 1
    );
    if let Some(child) = &mut child {
        child.release(&opts.command[0])?;
    }

    // SAFETY: the ring buffer owns its descriptor and keeps it open until the AsyncFd (which
    // owns the ring) is dropped, as register() requires.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
        .context("cannot poll the ring buffer")?;
    let stop = runtime.block_on(event_loop(
        &mut ring,
        &mut state,
        child.as_mut(),
        opts.duration,
        stop_signals,
    ))?;
    // Whatever the kernel emitted before we stopped still counts; what a busy target does
    // after that does not.
    let stopped_ns = monotonic_ns();
    let ring_capacity = (opts.ring_buffer_mib as usize) << 20;
    state.drain_until(
        &mut ring.into_inner(),
        ring_capacity / MIN_EVENT_BYTES,
        stopped_ns,
    );
    if let Some(child) = &mut child {
        child.try_reap();
    }
    // Descriptors whose births no event showed and that two listings agree on are learned
    // now; closes we missed are settled by the report's own look at /proc.
    // Events after the stop are not applied: nothing is read while listing.
    let listings = Reconciler::list(&state.agg, probes.lost().total(), || {});
    Reconciler::apply(&mut state.agg, &listings);
    log::info!(
        "stopped: {stop:?}; applied the last events in {:.3}s",
        (monotonic_ns() - stopped_ns) as f64 / 1e9
    );

    let now_ns = monotonic_ns();
    let lost = probes.lost();
    let facts = SessionFacts {
        target,
        command,
        duration_s: (now_ns - started_ns) as f64 / 1e9,
        now_ns,
        received: state.records.received,
        undecodable: state.records.undecodable,
        lost_ring_full: lost.ring_full,
        lost_in_flight_full: lost.in_flight_full,
        unfollowed_children: lost.follow_full,
        min_age_s: opts.min_age,
        time_wait: state.tcp.time_wait_groups(now_ns),
        time_wait_now: still_in_time_wait(&state.tcp, target),
    };
    let mut resolver = LiveResolver {
        tcp: &state.tcp,
        now_ns,
        stacks: &mut state.stacks,
        sockets: HashMap::new(),
    };
    let report = report::build(&state.agg, &facts, &mut resolver);
    log::info!(
        "built the report in {:.3}s",
        (monotonic_ns() - now_ns) as f64 / 1e9
    );
    print_report(&report, opts.json, opts.top as usize)?;
    if let Some((path, file)) = flamegraph {
        let mut out = io::BufWriter::new(file);
        report::flamegraph::write_svg(&report, &mut out)
            .and_then(|()| out.flush())
            .with_context(|| format!("cannot write the flame graph to {}", path.display()))?;
    }
    Ok(())
}

/// The process to follow for `--pid`: the pid itself, or the process a thread id belongs to.
fn process_of(pid: u32) -> Result<u32> {
    if !procfs::process_exists(pid) {
        bail!(SessionError::NoSuchProcess(pid));
    }
    match procfs::process_info(pid) {
        Ok(info) if info.tgid != pid => {
            eprintln!(
                "tracer: {pid} is a thread of process {}; following the process",
                info.tgid
            );
            Ok(info.tgid)
        }
        _ => Ok(pid),
    }
}

fn print_report(report: &Report, json: bool, top: usize) -> Result<()> {
    let text = report::text::render_top(report, top);
    if json {
        eprint!("{text}");
        let mut stdout = io::stdout().lock();
        serde_json::to_writer_pretty(&mut stdout, report).context("cannot write the report")?;
        writeln!(stdout).context("cannot write the report")?;
    } else {
        print!("{text}");
    }
    Ok(())
}

/// Follows the target and its current descendants; returns them, target first.
fn follow_tree(probes: &mut Probes, target: u32) -> Result<Vec<u32>> {
    let mut followed = vec![target];
    followed.extend(procfs::descendants(target));
    for &pid in &followed {
        probes
            .follow(pid)
            .with_context(|| format!("cannot follow pid {pid}"))?;
    }
    Ok(followed)
}

/// What /proc shows of a process right after it became followed, and the TCP ports it
/// listens on.
fn snapshot(pid: u32) -> Option<(ProcessSnapshot, Vec<u16>)> {
    let info = procfs::process_info(pid).ok()?;
    let sockets = SocketTable::load(pid);
    let fds = procfs::list_fds(pid, &sockets).unwrap_or_default();
    let threads = procfs::threads(pid).len().max(1) as u64;
    let listening = fds
        .iter()
        .filter_map(|fd| sockets.get(fd.inode?))
        .filter(|socket| socket.listening && socket.protocol.is_tcp())
        .filter_map(|socket| Some(socket.local_addr?.port()))
        .collect();
    let process = ProcessSnapshot {
        pid,
        ppid: info.ppid,
        comm: info.comm,
        zombie: info.zombie,
        cwd: procfs::cwd(pid),
        start_time: Some(info.start_time),
        threads,
        fds: fds
            .into_iter()
            .map(|target| SnapshotFd {
                cloexec: procfs::fd_is_cloexec(pid, target.fd),
                fd: target.fd,
                kind: target.kind,
                detail: target.detail,
                deleted: target.deleted,
                tcp_state: target.tcp_state,
            })
            .collect(),
    };
    Some((process, listening))
}

/// Userspace state the event loop updates.
struct State<'p> {
    probes: &'p Probes,
    agg: Aggregator,
    stacks: StackStore,
    tcp: TcpTracker,
    records: RecordCounts,
    reconciler: Reconciler,
}

impl<'p> State<'p> {
    fn new(probes: &'p Probes) -> Self {
        Self {
            probes,
            agg: Aggregator::new(),
            stacks: StackStore::new(),
            tcp: TcpTracker::new(),
            records: RecordCounts::default(),
            reconciler: Reconciler::new(),
        }
    }

    /// Compares the tables with /proc when a pass is due (see `reconciler`).
    fn reconcile_if_due(&mut self, ring: &mut EventRing) {
        let lost = self.probes.lost().total();
        let began = std::time::Instant::now();
        if !self.reconciler.due(began, lost) {
            return;
        }
        // Events are read while listing too, so the ring does not fill up meanwhile, and
        // prepared (stacks unwound, their bytes dropped); the tables they change, which the
        // listing borrows, get them afterwards.
        let mut pending_events = Vec::new();
        let (stacks, probes, records) = (&mut self.stacks, self.probes, &mut self.records);
        let listings = Reconciler::list(&self.agg, lost, || {
            for _ in 0..DRAIN_BUDGET {
                let Some(record) = ring.next() else {
                    break;
                };
                pending_events.extend(prepare(stacks, probes, records, &record));
            }
        });
        for event in pending_events {
            self.apply_event(event);
        }
        // Everything emitted before the listing began must be applied before comparing.
        // Events emitted since are applied too, which the comparison allows for.
        for _ in 0..16 {
            if self.drain(ring, DRAIN_BUDGET) {
                break;
            }
        }
        Reconciler::apply(&mut self.agg, &listings);
        self.reconciler.finished(began, lost);
    }

    /// Applies up to `budget` waiting events; true when the ring buffer was emptied. The
    /// budget keeps a process that produces events faster than we apply them from starving
    /// signals, the deadline and housekeeping.
    fn drain(&mut self, ring: &mut EventRing, budget: usize) -> bool {
        self.drain_until(ring, budget, u64::MAX)
    }

    /// Like [`Self::drain`], but stops after the first event stamped later than `until_ns`
    /// (CLOCK_MONOTONIC): the report describes the moment the session stopped, however busy
    /// the target still is.
    fn drain_until(&mut self, ring: &mut EventRing, budget: usize, until_ns: u64) -> bool {
        // Exits applied now compare this with when their table was last known exact.
        self.agg.lost_so_far = self.probes.lost().total();
        for _ in 0..budget {
            let Some(record) = ring.next() else {
                return true;
            };
            if self.apply_record(&record).is_some_and(|t| t > until_ns) {
                return false;
            }
        }
        false
    }

    /// Decodes and applies one ring buffer record; returns its timestamp.
    fn apply_record(&mut self, record: &[u8]) -> Option<u64> {
        let event = prepare(&mut self.stacks, self.probes, &mut self.records, record)?;
        let at = event.header().timestamp_ns;
        self.apply_event(event);
        Some(at)
    }

    /// Applies a [`prepare`]d event to the tables.
    fn apply_event(&mut self, event: Event) {
        if let Event::TaskCreated {
            header,
            child_tid,
            clone_flags: Some(flags),
            ..
        } = &event
            && flags & CLONE_THREAD == 0
        {
            self.retire_reused_pid(*child_tid, header.timestamp_ns);
        }
        if let Event::TcpState {
            header,
            skaddr,
            old,
            new,
            local,
            remote,
        } = &event
        {
            self.tcp.apply(&TcpTransition {
                owner: header.tgid,
                skaddr: *skaddr,
                old: *old,
                new: *new,
                local: *local,
                remote: *remote,
                at_ns: header.timestamp_ns,
            });
        }
        self.agg.apply(&event);
        match &event {
            Event::Exec { header } => {
                if let Ok(info) = procfs::process_info(header.tgid) {
                    self.agg.set_comm(header.tgid, info.comm);
                }
            }
            Event::CwdChanged { header } => {
                if let Some(cwd) = procfs::cwd(header.tgid) {
                    self.agg.set_cwd(header.tgid, cwd);
                }
            }
            Event::TaskCreated {
                child_tid,
                clone_flags: Some(flags),
                ..
            } if flags & CLONE_THREAD == 0 => {
                // Read now, while the child is young: later its pid may name another process.
                if let Some(start_time) = procfs::start_time(*child_tid) {
                    self.agg.set_start_time(*child_tid, start_time);
                }
            }
            _ => {}
        }
    }

    /// A fork created `pid` while we still think an earlier process with that pid lives (its
    /// exit event was lost): that one is retired first, so the two are never confused.
    fn retire_reused_pid(&mut self, pid: u32, now_ns: u64) {
        let earlier = self
            .agg
            .process(pid)
            .filter(|p| !p.exited())
            .and_then(|p| p.start_time);
        if let Some(start_time) = earlier
            && procfs::start_time(pid) != Some(start_time)
        {
            self.agg.mark_vanished(pid, now_ns);
        }
    }

    /// Processes we think are alive but /proc no longer has, or has as another process with
    /// the same pid (a different start time): their exit was lost.
    fn vanished(&self) -> Vec<u32> {
        self.agg
            .live_processes()
            .filter(|p| match p.start_time {
                Some(start_time) => procfs::start_time(p.pid) != Some(start_time),
                None => !procfs::process_exists(p.pid),
            })
            .map(|p| p.pid)
            .collect()
    }
}

async fn event_loop(
    ring: &mut AsyncFd<EventRing>,
    state: &mut State<'_>,
    mut child: Option<&mut PausedChild>,
    duration: Option<f64>,
    StopSignals {
        mut sigint,
        mut sigterm,
    }: StopSignals,
) -> Result<StopReason> {
    let far_future = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    let deadline = duration.map_or(far_future, |secs| {
        Instant::now() + Duration::from_secs_f64(secs)
    });
    let mut housekeeping = interval(HOUSEKEEPING);
    let mut drain_timer = interval(DRAIN_EVERY);
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = ready.context("ring buffer poll failed")?;
                // Left ready when the budget ran out, so the next turn reads on at once.
                if state.drain(guard.get_inner_mut(), DRAIN_BUDGET) {
                    guard.clear_ready();
                }
            }
            _ = drain_timer.tick() => {
                state.drain(ring.get_mut(), DRAIN_BUDGET);
            }
            _ = sigint.recv() => return Ok(StopReason::Signal("SIGINT")),
            _ = sigterm.recv() => return Ok(StopReason::Signal("SIGTERM")),
            _ = sleep_until(deadline) => return Ok(StopReason::Duration),
            _ = housekeeping.tick() => {
                if let Some(child) = child.as_deref_mut() {
                    child.try_reap();
                }
                let vanished = state.vanished();
                // Their exit events may still be in the ring: apply those first.
                state.drain(ring.get_mut(), DRAIN_BUDGET);
                let now = monotonic_ns();
                for pid in vanished {
                    state.agg.mark_vanished(pid, now);
                }
                state.reconcile_if_due(ring.get_mut());
                if state.agg.live_processes().next().is_none() {
                    return Ok(StopReason::AllExited);
                }
            }
        }
    }
}

/// Records read and records that could not be decoded.
#[derive(Default)]
struct RecordCounts {
    received: u64,
    undecodable: u64,
}

/// Decodes a record and does what needs no descriptor table, so that it can also run while
/// the tables are being listed: tells whether a task the kernel created by itself is a
/// thread, and replaces the stack (registers and copied bytes, which are not kept) with the
/// id of the unwound one. The event is then applied with `State::apply_event`.
fn prepare(
    stacks: &mut StackStore,
    probes: &Probes,
    records: &mut RecordCounts,
    record: &[u8],
) -> Option<Event> {
    records.received += 1;
    let Decoded {
        mut event,
        stack_top,
    } = events::decode(record)
        .map_err(|err| {
            records.undecodable += 1;
            log::warn!("undecodable event: {err}");
        })
        .ok()?;
    if let Event::TaskCreated {
        header,
        child_tid,
        clone_flags: clone_flags @ None,
        ..
    } = &mut event
    {
        // Created inside the kernel (no clone call seen): /proc says if it is a thread.
        let is_thread = procfs::process_info(*child_tid).is_ok_and(|i| i.tgid == header.tgid);
        *clone_flags = Some(if is_thread { CLONE_THREAD } else { 0 });
    }
    stacks.annotate(&mut event, stack_top, probes);
    for (tid, base) in stacks.take_stack_base_updates() {
        probes.set_stack_base(tid, base);
    }
    Some(event)
}

/// SIGINT and SIGTERM, caught: both stop the session and print the report.
struct StopSignals {
    sigint: Signal,
    sigterm: Signal,
}

impl StopSignals {
    /// Needs a Tokio runtime context.
    fn install() -> Result<Self> {
        Ok(Self {
            sigint: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            sigterm: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }
}

/// The report's view of the live system: stacks repaired and symbolized from what was
/// captured while processes lived; descriptors re-read from /proc.
struct LiveResolver<'a> {
    tcp: &'a TcpTracker,
    now_ns: u64,
    stacks: &'a mut StackStore,
    sockets: HashMap<u32, SocketTable>,
}

impl Resolver for LiveResolver<'_> {
    fn frames(&mut self, stack: StackRef) -> Vec<Frame> {
        self.stacks.frames(stack)
    }

    fn refresh(&mut self, pid: u32, descriptors: &mut [DescriptorEntry]) -> Vec<i32> {
        // If the process itself is gone, /proc tells nothing about its descriptors.
        if std::fs::read_dir(format!("/proc/{pid}/fd")).is_err() {
            return Vec::new();
        }
        let sockets = self
            .sockets
            .entry(pid)
            .or_insert_with(|| SocketTable::load(pid));
        let mut closed = Vec::new();
        for d in descriptors.iter_mut() {
            let direction = match d.opened_by {
                "accept" | "accept4" => Direction::Accepted,
                "socket" => Direction::Connected,
                "socketpair" => Direction::SocketPair,
                _ => Direction::Unknown,
            };
            match procfs::describe_fd(pid, d.fd, sockets, direction) {
                Ok(now) => {
                    d.tcp_state_age_s = tcp_state_age(self.tcp, sockets, &now, self.now_ns);
                    d.kind = now.kind;
                    d.detail = now.detail;
                    d.tcp_state = now.tcp_state;
                    d.deleted = now.deleted;
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => closed.push(d.fd),
                Err(err) => log::debug!("cannot describe fd {} of pid {pid}: {err}", d.fd),
            }
        }
        closed
    }

    fn is_zombie(&mut self, pid: u32, ppid: u32) -> bool {
        // The parent check keeps a reused pid from passing for our child.
        procfs::process_info(pid).is_ok_and(|info| info.zombie && info.ppid == ppid)
    }
}

/// How long a TCP socket has been in the state /proc shows, when the tracker saw it get there.
fn tcp_state_age(
    tcp: &TcpTracker,
    sockets: &SocketTable,
    described: &procfs::FdTarget,
    now_ns: u64,
) -> Option<f64> {
    let socket = sockets.get(described.inode?)?;
    let (state, since_ns) = tcp.state_since(socket.local_addr?, socket.remote_addr?)?;
    (tracer_common::abi::tcp_state::name(state) == described.tcp_state.as_deref())
        .then(|| (now_ns.saturating_sub(since_ns) as f64 / 1e6).round() / 1e3)
}

/// How many of the connections the followed processes left in TIME_WAIT are still in it,
/// per /proc/net/tcp of the target's network namespace (TIME_WAIT has no descriptor).
fn still_in_time_wait(tcp: &TcpTracker, target: u32) -> u64 {
    // A connection closed while waiting for the peer's FIN is already a timewait socket, but
    // /proc shows its substate, FIN_WAIT2, until that FIN arrives; it holds its port the same.
    let in_time_wait: HashSet<_> = SocketTable::load(target)
        .iter()
        .filter(|s| matches!(s.tcp_state, Some("TIME_WAIT" | "FIN_WAIT2")))
        .filter_map(|s| Some((s.local_addr?, s.remote_addr?)))
        .collect();
    // A reused address pair is one connection in /proc: count distinct pairs.
    let left: HashSet<_> = tcp.time_wait_pairs().collect();
    left.intersection(&in_time_wait).count() as u64
}

/// A command started by the tracer, stopped before execve until it is followed.
struct PausedChild {
    pid: u32,
    /// Writing to (or closing) this lets the child exec.
    gate: Option<OwnedFd>,
    /// Close-on-exec: reads EOF once execve succeeded, or the errno if it failed.
    exec_status: Option<OwnedFd>,
    reaped: bool,
}

impl PausedChild {
    fn spawn(argv: &[String]) -> Result<Self> {
        let program = &argv[0];
        if !program.contains('/') && which(program).is_none() {
            bail!(SessionError::CommandNotFound(program.clone()));
        }
        let args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()).context("arguments must not contain NUL bytes"))
            .collect::<Result<_>>()?;
        let mut argv_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());

        let (gate_read, gate_write) = cloexec_pipe().context("cannot create the start gate")?;
        let (status_read, status_write) =
            cloexec_pipe().context("cannot create the exec status pipe")?;

        // SAFETY: the child only makes async-signal-safe calls (close, read, execvp, write,
        // _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error()).context("cannot fork");
        }
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                libc::close(gate_write.as_raw_fd());
                libc::close(status_read.as_raw_fd());
                let mut byte = 0u8;
                while libc::read(gate_read.as_raw_fd(), (&raw mut byte).cast(), 1) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
                libc::execvp(argv_ptrs[0], argv_ptrs.as_ptr());
                let errno = (*libc::__errno_location()).to_ne_bytes();
                libc::write(status_write.as_raw_fd(), errno.as_ptr().cast(), errno.len());
                libc::_exit(127);
            }
        }
        drop(gate_read);
        drop(status_write);
        Ok(Self {
            pid: pid as u32,
            gate: Some(gate_write),
            exec_status: Some(status_read),
            reaped: false,
        })
    }

    /// Lets the command run, and waits until its execve has succeeded or failed.
    fn release(&mut self, program: &str) -> Result<()> {
        if let Some(gate) = self.gate.take() {
            let mut file = std::fs::File::from(gate);
            file.write_all(b"g").context("cannot start the command")?;
        }
        if let Some(status) = self.exec_status.take() {
            let mut errno = [0u8; 4];
            let mut file = std::fs::File::from(status);
            // EOF (0 bytes): the pipe closed at a successful execve.
            if let Ok(4) = io::Read::read(&mut file, &mut errno) {
                self.try_reap();
                let err = io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
                return Err(err).with_context(|| format!("cannot run `{program}`"));
            }
        }
        Ok(())
    }

    /// Collects the exit status once it has exited, so it does not linger as a zombie.
    fn try_reap(&mut self) {
        if self.reaped {
            return;
        }
        let mut status = 0;
        // SAFETY: plain waitpid on our own child.
        let rc = unsafe { libc::waitpid(self.pid as i32, &mut status, libc::WNOHANG) };
        if rc == self.pid as i32 {
            self.reaped = true;
        }
    }
}

impl Drop for PausedChild {
    fn drop(&mut self) {
        // A command we never released (a later step failed) must not be left waiting.
        if self.gate.is_some() {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(self.pid as i32, libc::SIGKILL);
                libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// A pipe whose ends close on exec: (read end, write end).
fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The first executable `program` in $PATH.
fn which(program: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
