//! One tracing session: check the environment, start or find the target, load and attach,
//! follow the target tree, apply events until told to stop, then build the report.
//!
//! `run` reads as those steps; each lives in a module of its own: `child` starts a command
//! held at a gate, `attach` follows the tree and reads what it already holds, `pipeline`
//! applies events until the stop, `reconcile` compares the tables with /proc now and then,
//! and `resolver` lets the report look at the live system.

mod attach;
mod child;
mod deferral;
mod host;
mod live;
mod pipeline;
mod prepare;
mod reconcile;
mod resolver;
mod snapshots;
mod targets;
mod triggers;

use std::{
    fs::File,
    io::{self, Write as _},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use child::PausedChild;
use pipeline::{ReportRequests, State, StopSignals};
use resolver::{LiveResolver, still_in_time_wait};
use snapshots::{ReportFacts, Snapshots, check_settings, handle_sigusr1};
use targets::Roots;
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    capture::{self, Probes},
    cli::{Config, Target},
    clock::monotonic_ns,
    export, procfs,
    report::{self, Report, SessionFacts, growth::Counts},
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("no such process: {0}")]
    NoSuchProcess(u32),
    #[error("cannot run `{0}`: command not found")]
    CommandNotFound(String),
}

/// Runs a session and prints the report (JSON on stdout with --json, text otherwise).
pub fn run(config: &Config) -> Result<()> {
    // A flame graph that cannot be written is refused before anything runs.
    let flamegraph = config
        .flamegraph
        .as_ref()
        .map(|path| {
            File::create(path)
                .map(|file| (path.clone(), file))
                .with_context(|| format!("cannot create {}", path.display()))
        })
        .transpose()?;
    // So are a snapshot directory that cannot be written and --live without a terminal.
    check_settings(&config.snapshots)?;
    // So is an address the endpoint cannot listen on.
    let listener = config.serve.map(export::bind).transpose()?;
    let (mut roots, given_pids) = match &config.target {
        Target::Pid(pid) => (Roots::default(), vec![process_of(*pid)?]),
        Target::Select(selection) => Roots::resolve(selection)?,
        Target::Command(_) | Target::All { .. } => (Roots::default(), Vec::new()),
    };
    let tracefs_root = capture::preflight()?;
    // A report without what a target holds would pass for one of a process holding nothing:
    // refused before anything is attached (after preflight, which tells a user without root
    // that it needs root).
    for &pid in &given_pids {
        procfs::check_fds_readable(pid).map_err(anyhow::Error::msg)?;
    }
    let mut child = match &config.target {
        Target::Command(argv) => Some(PausedChild::spawn(argv)?),
        _ => None,
    };

    // Ctrl-C and SIGTERM must mean "report now" from the moment `attached` is printed, so
    // their handlers go in before anything is attached.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    let _runtime_context = runtime.enter();
    let stop_signals = StopSignals::install()?;
    let sigusr1 = handle_sigusr1()?;
    let serving = listener.map(export::start).transpose()?;

    let (probes, ring) = capture::load(
        &tracefs_root,
        config.ring_bytes,
        config.stack_copy_bytes,
        roots.watches(),
        matches!(config.target, Target::All { .. }),
    )
    .context("cannot attach the probes")?;
    let started_ns = monotonic_ns();
    match (&child, &config.target) {
        (Some(child), Target::Command(argv)) => {
            roots.add_with_command(child.pid, argv.clone(), "command".to_owned(), None);
        }
        _ => {
            for &pid in &given_pids {
                roots.add(pid, "pid".to_owned(), None);
            }
        }
    }
    roots.arm(&probes)?;
    for (pid, why) in roots.matching_now(&probes, true) {
        if !given_pids.contains(&pid) {
            roots.add(pid, why, None);
        }
    }
    let tree = attach::follow_tree(&probes, &roots.pids())?;
    let descendants = tree.followed.len() - roots.pids().len().min(tree.followed.len());
    let mut state = State::new(&probes, config.at_exit_descriptors, config.python_frames);
    state.roots = roots;
    if let Target::All { follow_top } = config.target {
        state.host = Some(host::HostSession::new(follow_top, started_ns));
    }
    tree.seed(&mut state, started_ns);
    let mut snapshots = Snapshots::new(
        ReportFacts {
            config: config.clone(),
            started_ns,
        },
        sigusr1,
        Counts::of(&state.agg),
    )?;
    announce(&state, probes.attached.len(), &config.target, descendants);
    if let Some((addr, _)) = &serving {
        eprintln!("tracer: serving http://{addr}/metrics, /debug/pprof/open_fds and /report");
    }
    if let (Some(child), Target::Command(command)) = (&mut child, &config.target) {
        child.release(&command[0])?;
    }
    snapshots.start_live()?;

    // SAFETY: the ring buffer owns its descriptor and keeps it open until the AsyncFd (which
    // owns the ring) is dropped, as register() requires.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
        .context("cannot poll the ring buffer")?;
    // --serve: the event loop answers with the report of the tables as they stand.
    let report_now = |state: &mut State<'_>, min_age_s: Option<f64>| {
        let min_age_s = min_age_s.unwrap_or(config.min_age_s);
        build_report(state, &probes, min_age_s, started_ns)
    };
    let requests = serving.map(|(_, receiver)| ReportRequests {
        receiver,
        build: &report_now,
    });
    let stop = runtime.block_on(pipeline::event_loop(
        &mut ring,
        &mut state,
        child.as_mut(),
        config.duration,
        &mut snapshots,
        stop_signals,
        requests,
    ))?;
    snapshots.end_live();
    let ring_capacity = config.ring_bytes as usize;
    state.finish(ring.into_inner(), ring_capacity, stop, child.as_mut());

    let report = build_report(&mut state, &probes, config.min_age_s, started_ns);
    print_report(&report, config.json, config.top)?;
    if let Some((path, file)) = flamegraph {
        write_flamegraph(&report, &path, file)?;
    }
    Ok(())
}

/// The line that says tracing has begun (scripts wait for `attached`).
fn announce(state: &State<'_>, probes: usize, target: &Target, descendants: usize) {
    let roots = state.roots.pids();
    let named: Vec<String> = roots
        .iter()
        .map(|&pid| {
            // A started command has not exec'd yet: its comm is still ours, so name the
            // command.
            let comm = match target {
                Target::Command(argv) => argv[0].clone(),
                _ => state
                    .agg
                    .process(pid)
                    .map(|p| p.comm.clone())
                    .unwrap_or_default(),
            };
            format!("pid {pid} ({comm})")
        })
        .collect();
    if let (Target::All { follow_top }, true) = (target, named.is_empty()) {
        let follow = match follow_top {
            0 => String::new(),
            n => format!(", and following the {n} fastest growers with stacks once they leak"),
        };
        eprintln!(
            "tracer: attached {probes} probes; watching every process on the host{follow}. Ctrl-C to stop and report."
        );
        return;
    }
    if named.is_empty() {
        eprintln!(
            "tracer: attached {probes} probes; no process matches yet: waiting for {}. Ctrl-C to stop and report.",
            state.roots.awaited()
        );
        return;
    }
    let waiting = if state.roots.watches() {
        format!("; and from now on {}", state.roots.awaited())
    } else {
        String::new()
    };
    eprintln!(
        "tracer: attached {probes} probes; following {} and {descendants} descendants{waiting}. Ctrl-C to stop and report.",
        named.join(", ")
    );
}

/// The process to follow for `--pid`: the pid itself, or the process a thread id belongs to.
pub(super) fn process_of(pid: u32) -> Result<u32> {
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

/// The report of the tables as they stand now, with what the live system adds to them.
fn build_report(state: &mut State<'_>, probes: &Probes, min_age_s: f64, started_ns: u64) -> Report {
    // Stacks whose unwinding was deferred are unwound now if their descriptors are open.
    state.settle_stacks(u64::MAX);
    let now_ns = monotonic_ns();
    let lost = probes.lost();
    let (target, command) = state
        .roots
        .first()
        .map(|root| (root.pid, root.command.clone()))
        .unwrap_or_default();
    let facts = SessionFacts {
        target,
        command,
        targets: state.roots.entries(started_ns),
        host: state
            .host
            .as_mut()
            .map(|host| host::section(host, probes, started_ns)),
        duration_s: (now_ns - started_ns) as f64 / 1e9,
        now_ns,
        received: state.records.received,
        undecodable: state.records.undecodable,
        lost_ring_full: lost.ring_full,
        lost_in_flight_full: lost.in_flight_full,
        unfollowed_children: lost.follow_full,
        paired_in_kernel: probes.paired(),
        min_age_s,
        time_wait: state.tcp.time_wait_groups(now_ns),
        time_wait_now: still_in_time_wait(&state.tcp, &state.roots.pids()),
    };
    let mut resolver = LiveResolver::new(&state.tcp, now_ns, &mut state.stacks);
    let report = report::build(&state.agg, &facts, &mut resolver);
    log::info!(
        "built the report in {:.3}s",
        (monotonic_ns() - now_ns) as f64 / 1e9
    );
    report
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

fn write_flamegraph(report: &Report, path: &Path, file: File) -> Result<()> {
    let mut out = io::BufWriter::new(file);
    report::flamegraph::write_svg(report, &mut out)
        .and_then(|()| out.flush())
        .with_context(|| format!("cannot write the flame graph to {}", path.display()))
}
