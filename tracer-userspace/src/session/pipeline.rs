//! The event pipeline: records are read from the ring buffer, decoded and prepared (stacks
//! unwound while the process still lives), then applied to the descriptor tables and the TCP
//! tracker in ring buffer order, until a signal, the deadline or the last exit stops it.

use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc,
    time::{Instant, interval, sleep_until},
};
use tracer_common::CLONE_THREAD;

use super::{
    attach,
    child::PausedChild,
    deferral::Settle,
    host::{self, HostSession},
    prepare::{Prepared, RecordCounts, apply_python_updates, prepare, send_stack_updates},
    reconcile::{self, Reconciler},
    snapshots::Snapshots,
    targets::Roots,
};
use crate::{
    aggregator::Aggregator,
    capture::{EventRing, Probes},
    clock::monotonic_ns,
    events::{EventBody, TaskCreated, TaskExited, TcpState},
    export::ReportRequest,
    procfs,
    report::Report,
    stacks::{KernelStacks, StackStore},
    tcp::{TcpTracker, TcpTransition},
};

/// Why the event loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StopReason {
    Signal(&'static str),
    Duration,
    AllExited,
}

/// How often to reap a started command and check that followed processes still exist.
const HOUSEKEEPING: Duration = Duration::from_millis(250);
/// How often the ring buffer is read when nobody woke us: producers only wake the reader each
/// time they have written another eighth of the ring, which is cheaper for them than a wakeup
/// per event.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// Events applied per turn of the event loop before it looks at signals and timers again.
const DRAIN_BUDGET: usize = 65_536;
/// The smallest record in the ring buffer (an exec event plus the ring's 8-byte header).
const MIN_EVENT_BYTES: usize = 32;

/// Userspace state the event loop updates.
pub(super) struct State<'p> {
    pub(super) probes: &'p Probes,
    /// The processes followed as targets, and what chooses more of them.
    pub(super) roots: Roots,
    /// `--all`: every process on the host.
    pub(super) host: Option<HostSession>,
    pub(super) agg: Aggregator,
    pub(super) stacks: StackStore,
    pub(super) tcp: TcpTracker,
    pub(super) records: RecordCounts,
    reconciler: Reconciler,
}

impl<'p> State<'p> {
    pub(super) fn new(probes: &'p Probes, at_exit_descriptors: bool, python_frames: bool) -> Self {
        let mut stacks = StackStore::new();
        if !python_frames {
            stacks.without_python_frames();
        }
        Self {
            probes,
            roots: Roots::default(),
            host: None,
            agg: if at_exit_descriptors {
                Aggregator::keeping_at_exit_descriptors()
            } else {
                Aggregator::new()
            },
            stacks,
            tcp: TcpTracker::new(),
            records: RecordCounts::default(),
            reconciler: Reconciler::new(),
        }
    }

    /// The loaded programs (their maps and lost-event counters).
    pub(super) fn probes(&self) -> &'p Probes {
        self.probes
    }

    /// Applies what the kernel emitted before the stop (what a busy target does after that
    /// does not count), then compares the tables with /proc one last time.
    pub(super) fn finish(
        &mut self,
        mut ring: EventRing,
        ring_capacity: usize,
        stop: StopReason,
        child: Option<&mut PausedChild>,
    ) {
        let stopped_ns = monotonic_ns();
        // Held opens keep the times they happened at, before the stop.
        self.flush_held();
        self.drain_until(&mut ring, ring_capacity / MIN_EVENT_BYTES, stopped_ns);
        if let Some(child) = child {
            child.try_reap();
        }
        // Descriptors whose births no event showed and that two listings agree on are learned
        // now; closes we missed are settled by the report's own look at /proc.
        // Events after the stop are not applied: nothing is read while listing.
        let listings = reconcile::list_tables(&self.agg, self.probes.lost().total(), || {});
        reconcile::apply_listings(&mut self.agg, &listings);
        reconcile::forget_reaped(&mut self.reconciler, &mut self.agg, &mut self.stacks);
        log::debug!(
            "kept: processes {}, stacks: {}, tcp: {}",
            self.agg.processes().count(),
            self.stacks.sizes(),
            self.tcp.sizes()
        );
        log::info!(
            "stopped: {stop:?}; applied the last events in {:.3}s",
            (monotonic_ns() - stopped_ns) as f64 / 1e9
        );
    }

    /// The tables and stacks, to settle deferred stacks against (see `session/deferral.rs`).
    fn settle(&mut self) -> Settle<'_, Probes> {
        Settle {
            agg: &mut self.agg,
            stacks: &mut self.stacks,
            kernel: self.probes,
        }
    }

    /// Unwinds the deferred stacks whose window has passed at `now_ns`, or all of them
    /// (u64::MAX): the tables then hold only final stacks, as a report needs.
    pub(super) fn settle_stacks(&mut self, now_ns: u64) {
        self.settle().due(now_ns);
        send_stack_updates(&mut self.stacks, self.probes);
    }

    /// A process gone without its exit event: its table's pending stacks are unwound first.
    fn mark_vanished(&mut self, pid: u32, now_ns: u64) {
        self.settle().table(pid);
        self.agg.mark_vanished(pid, now_ns);
    }

    /// Writes the interpreter layouts found since the last call into the kernel's map.
    pub(super) fn configure_python(&mut self) {
        apply_python_updates(self.probes, self.stacks.take_python_updates());
    }

    /// Has the kernel send the file opens it holds back (tracer-ebpf/src/held.rs) for every
    /// live process: before the tables are compared with /proc or reported, and every
    /// housekeeping tick, so a descriptor that stays open while its process does nothing
    /// else is seen within [`HOUSEKEEPING`] (plus the drain that reads it).
    pub(super) fn flush_held(&self) {
        self.probes
            .flush_held(self.agg.live_processes().map(|process| process.pid));
    }

    /// Compares the tables with /proc when a pass is due (see `session/reconcile.rs`).
    fn reconcile_if_due(&mut self, ring: &mut EventRing) {
        let lost = self.probes.lost().total();
        let began = std::time::Instant::now();
        if !self.reconciler.due(began, lost) {
            return;
        }
        // Before the listing begins: what the kernel holds was opened before it.
        self.flush_held();
        // Events are read while listing too, so the ring does not fill up meanwhile, and
        // prepared (stacks unwound, their bytes dropped); the tables they change, which the
        // listing borrows, get them afterwards.
        let mut pending_events = Vec::new();
        let (stacks, probes, records) = (&mut self.stacks, self.probes, &mut self.records);
        let listings = reconcile::list_tables(&self.agg, lost, || {
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
        reconcile::apply_listings(&mut self.agg, &listings);
        reconcile::forget_reaped(&mut self.reconciler, &mut self.agg, &mut self.stacks);
        reconcile::drop_unused_stacks(&mut self.reconciler, &self.agg, &mut self.stacks);
        self.reconciler.finished(began, lost);
    }

    /// Applies up to `budget` waiting events; true when the ring buffer was emptied. The
    /// budget keeps a process that produces events faster than we apply them from starving
    /// signals, the deadline and housekeeping.
    pub(super) fn drain(&mut self, ring: &mut EventRing, budget: usize) -> bool {
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
        let prepared = prepare(&mut self.stacks, self.probes, &mut self.records, record)?;
        let at = prepared.event.header.timestamp_ns;
        self.apply_event(prepared);
        Some(at)
    }

    /// Applies a [`prepare`]d event to the tables, and settles the deferred stacks whose
    /// window has passed by its time.
    fn apply_event(
        &mut self,
        Prepared {
            mut event,
            deferred,
        }: Prepared,
    ) {
        self.settle().before(&event);
        let header = event.header;
        if matches!(event.body, EventBody::Exec)
            && self.roots.watches()
            && self.agg.process(header.tgid).is_none_or(|p| p.exited())
        {
            // The kernel followed it at its exec (a name or cgroup asked for): its table is
            // read now, as it stands after the exec.
            let why = self.roots.why(header.tgid);
            attach::adopt(self, header.tgid, why, header.timestamp_ns);
            return;
        }
        if let EventBody::TaskCreated(TaskCreated {
            child_tid,
            clone_flags: Some(flags),
            ..
        }) = &event.body
            && flags & CLONE_THREAD == 0
        {
            self.retire_reused_pid(*child_tid, header.timestamp_ns);
        }
        if let EventBody::TcpState(state) = &event.body {
            let TcpState {
                skaddr,
                old,
                new,
                local,
                remote,
                time_wait,
            } = &**state;
            self.tcp.apply(&TcpTransition {
                owner: header.tgid,
                skaddr: *skaddr,
                old: *old,
                new: *new,
                local: *local,
                remote: *remote,
                at_ns: header.timestamp_ns,
                time_wait: *time_wait,
            });
        }
        self.agg.apply(&mut event);
        match &event.body {
            EventBody::Exec => {
                if let Ok(info) = procfs::process_info(header.tgid) {
                    self.agg.set_comm(header.tgid, info.comm);
                }
            }
            EventBody::CwdChanged => {
                if let Some(cwd) = procfs::cwd(header.tgid) {
                    self.agg.set_cwd(header.tgid, cwd);
                }
            }
            EventBody::TaskCreated(TaskCreated {
                child_tid,
                clone_flags: Some(flags),
                ..
            }) if flags & CLONE_THREAD == 0 => {
                // Read now, while the child is young: later its pid may name another process.
                if let Some(start_time) = procfs::start_time(*child_tid) {
                    self.agg.set_start_time(*child_tid, start_time);
                }
            }
            EventBody::TaskExited(TaskExited { group_dead })
                if group_dead.unwrap_or(header.tid == header.tgid)
                    && self.reconciler.process_exited() =>
            {
                reconcile::forget_reaped(&mut self.reconciler, &mut self.agg, &mut self.stacks);
            }
            _ => {}
        }
        self.settle()
            .after(deferred.map(|d| *d), event.header.timestamp_ns);
        send_stack_updates(&mut self.stacks, self.probes);
    }

    /// Follows the processes that moved into a watched cgroup without an exec.
    fn adopt_new_targets(&mut self) {
        if !self.roots.watches() {
            return;
        }
        let now = monotonic_ns();
        for (pid, why) in self.roots.matching_now(self.probes, false) {
            attach::adopt(self, pid, why, now);
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
            self.mark_vanished(pid, now_ns);
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

pub(super) async fn event_loop(
    ring: &mut AsyncFd<EventRing>,
    state: &mut State<'_>,
    mut child: Option<&mut PausedChild>,
    duration: Option<f64>,
    snapshots: &mut Snapshots,
    StopSignals {
        mut sigint,
        mut sigterm,
    }: StopSignals,
    mut requests: Option<ReportRequests<'_>>,
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
                state.settle_stacks(monotonic_ns());
            }
            tick = snapshots.next() => {
                if let Some(stop) = snapshots.handle(tick, state, ring.get_mut())? {
                    return Ok(stop);
                }
            }
            _ = sigint.recv() => return Ok(StopReason::Signal("SIGINT")),
            _ = sigterm.recv() => return Ok(StopReason::Signal("SIGTERM")),
            _ = sleep_until(deadline) => return Ok(StopReason::Duration),
            request = next_request(&mut requests) => {
                // What is waiting in the ring goes in first, so the answer includes it.
                state.flush_held();
                state.drain(ring.get_mut(), DRAIN_BUDGET);
                if let Some(requests) = &requests {
                    let report = (requests.build)(state, request.min_age_s());
                    request.answer(report);
                }
            }
            _ = housekeeping.tick() => {
                if let Some(child) = child.as_deref_mut() {
                    child.try_reap();
                }
                let vanished = state.vanished();
                state.flush_held();
                // Their exit events may still be in the ring: apply those first.
                state.drain(ring.get_mut(), DRAIN_BUDGET);
                let now = monotonic_ns();
                for pid in vanished {
                    state.mark_vanished(pid, now);
                }
                state.reconcile_if_due(ring.get_mut());
                state.adopt_new_targets();
                host::tick(state);
                let open_ended = state.roots.watches() || state.host.is_some();
                if !open_ended && state.agg.live_processes().next().is_none() {
                    return Ok(StopReason::AllExited);
                }
            }
        }
    }
}

/// Requests for the report of the tables as they stand (`--serve`), answered between reads of
/// the ring buffer by `build`, the session's report builder.
pub(super) struct ReportRequests<'a> {
    pub(super) receiver: mpsc::Receiver<ReportRequest>,
    pub(super) build: &'a dyn Fn(&mut State<'_>, Option<f64>) -> Report,
}

/// The next request, or never when there is no server (or it is gone).
async fn next_request(requests: &mut Option<ReportRequests<'_>>) -> ReportRequest {
    if let Some(requests) = requests
        && let Some(request) = requests.receiver.recv().await
    {
        return request;
    }
    std::future::pending().await
}

/// SIGINT and SIGTERM, caught: both stop the session and print the report.
pub(super) struct StopSignals {
    sigint: Signal,
    sigterm: Signal,
}

impl StopSignals {
    /// Needs a Tokio runtime context.
    pub(super) fn install() -> Result<Self> {
        Ok(Self {
            sigint: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            sigterm: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }
}

impl KernelStacks for Probes {
    fn stack(&self, id: u32) -> Option<Vec<u64>> {
        Probes::stack(self, id)
    }
}
