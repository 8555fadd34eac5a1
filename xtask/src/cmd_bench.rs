//! `cargo xtask bench`: what the tracer costs, next to what users would use instead.

use std::{fs, path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::{
    bench::{
        budgets::{self, Measured, Verdict},
        capacity::{self, MemoryResult, RateStep},
        forks,
        load::{self, CpuTimes, Load},
        micro::{self, MicroResult, Settings},
        nginx::{self, NginxResult, RequestCost},
        print, procstat,
        profile::{self, ProfileResult},
        python::{self, PythonResult},
        soak::{self, SoakResult},
        stats::Summary,
        tools,
        workload::{Micro, Workload},
    },
    bootstrap::{self, Needs},
    cmd_build::{Profile, build_tracer},
    process::{is_root, target_dir},
};

/// Measure the tracer's cost: micro loops, nginx under wrk, capacity, BPF run time; prints
/// tables and writes target/bench/results.json.
///
/// Micro: open+close, socket+close and loopback connect+accept+close, in µs per iteration,
/// untraced, followed by the tracer, with the tracer following another process, under
/// empty BPF programs on the same tracepoints (the floor), under bpftrace keeping an
/// open-descriptor map (with and without ustack) and under strace -f. Macro: nginx on
/// 127.0.0.1 under wrk, untraced and traced. Capacity: zero-loss event rate, what happens
/// above it, memory with a million open descriptors, time to attach. Forks and soak: the
/// tracer's memory while short-lived workers come and go (soak: with snapshots every 5 s,
/// RSS at start, middle and end). Python: a CPython loop of `os.close(os.open(...))` five
/// frames deep, and the C loop, untraced, under the tracer and under `--no-python-frames`:
/// what the frame walk adds per open+close (loop time, bpf_stats run time, tracer CPU).
///
/// Installs what it uses when missing (apt-get: gcc, strace, bpftrace, bpftool, nginx,
/// wrk). Takes about 5 minutes on 2 cores (2.5 with --quick). Needs root. Not part of
/// `cargo xtask test` or CI: benchmarks are not tests.
#[derive(Args)]
pub(crate) struct Options {
    /// Fewer runs (5), shorter loops, 250 000 held descriptors instead of 1 000 000
    #[arg(long)]
    pub quick: bool,

    /// Runs of each case, interleaved (default 7, 5 with --quick)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=50))]
    pub runs: Option<u32>,

    /// Only these parts (comma-separated); all by default
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PARTS")]
    pub only: Vec<Part>,

    /// Another tracer binary (e.g. one built from an earlier commit) measured beside this
    /// one in the same runs: micro, nginx and profile get its rows, for before/after numbers
    /// on a machine whose load drifts
    #[arg(long, value_name = "PATH")]
    pub baseline_tracer: Option<PathBuf>,
    /// Workers the soak part runs through (default 200 000, 50 000 with --quick; about
    /// 4 000 a second here, so a million takes some 5 minutes)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(100..))]
    pub soak_children: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Part {
    Micro,
    Nginx,
    Capacity,
    Profile,
    /// A Python loop of open+close five frames deep, and C's, under the tracer with and
    /// without Python frames (bpf_stats, tracer CPU)
    Python,
    Forks,
    Soak,
}

pub(crate) fn run(options: Options) -> Result<ExitCode> {
    if !is_root() {
        bail!("the bench needs root (it loads eBPF programs): run `cargo xtask bench` as root");
    }
    let started = Instant::now();
    if let Some(baseline) = &options.baseline_tracer
        && !baseline.is_file()
    {
        bail!("--baseline-tracer {}: no such file", baseline.display());
    }
    let mut setup = set_up(&options)?;
    // After the build, which would otherwise count as load.
    let load_at_start = load::now();
    let cpu_at_start = CpuTimes::now();
    let mut parts = collect(&options, &mut setup)?;
    let shares = cpu_at_start
        .zip(CpuTimes::now())
        .and_then(|(start, end)| load::shares(start, end));
    let load = Load {
        cpus: load::cpus(),
        at_start: load_at_start,
        at_end: load::now(),
        others_share: shares.map(|s| s.0),
        steal_share: shares.map(|s| s.1),
    };
    parts.verdicts = budgets::check(&Measured {
        micros: &parts.micros,
        nginx: parts.nginx.as_ref().and_then(NginxResult::ratios),
        nginx_programs_share: parts
            .nginx
            .as_ref()
            .and_then(|n| n.request_cost.as_ref())
            .and_then(RequestCost::programs_share),
        too_busy: load.too_busy(),
    });
    parts.load = Some(load);
    let path = write_json(&options, &setup, &parts, started)?;
    print_tables(&setup, &parts);
    println!();
    println!(
        "Results: {} ({:.0}s in all)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// What every part uses, made or found once before the first.
struct Setup {
    tracer: PathBuf,
    /// target/bench: the workload programs, nginx's files and results.json.
    out_dir: PathBuf,
    workload: Workload,
    machine: String,
    /// Other processes' BPF programs on tracepoints, as `pid (comm)`.
    other_tracers: Vec<String>,
    /// Why bpftrace cannot attach here, if it cannot.
    bpftrace_problem: Option<String>,
    runs: usize,
}

/// Installs the tools, builds the tracer and the workload, and looks at the machine.
fn set_up(options: &Options) -> Result<Setup> {
    bootstrap::run(Needs {
        c_compiler: true,
        servers: false,
        vm: false,
    })?;
    tools::ensure()?;
    tools::ensure_tracefs()?;
    let tracer = build_tracer(Profile::Release)?;
    let out_dir = target_dir().join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let workload = Workload::build(&out_dir)?;
    let machine = tools::machine();
    let other_tracers: Vec<String> = procstat::tracepoint_program_holders()
        .into_iter()
        .map(|(pid, comm)| format!("{pid} ({comm})"))
        .collect();
    if !other_tracers.is_empty() {
        eprintln!(
            "warning: other processes have BPF programs on tracepoints ({}): every case, untraced included, pays for them",
            other_tracers.join(", ")
        );
    }
    let bpftrace_problem = tools::bpftrace_problem();
    if let Some(problem) = &bpftrace_problem {
        eprintln!("bpftrace cannot attach on this kernel ({problem}); its rows say so");
    }
    let runs = options.runs.unwrap_or(if options.quick { 5 } else { 7 }) as usize;
    Ok(Setup {
        tracer,
        out_dir,
        workload,
        machine,
        other_tracers,
        bpftrace_problem,
        runs,
    })
}

/// What the parts measured (`None` or empty for a part left out with --only), and what
/// follows from it.
struct Parts {
    micros: Vec<MicroResult>,
    nginx: Option<NginxResult>,
    rates: Option<Vec<RateStep>>,
    memory: Option<MemoryResult>,
    bpf_profile: Option<ProfileResult>,
    python: Option<PythonResult>,
    forks: Option<Vec<forks::ForksResult>>,
    soak: Option<SoakResult>,
    /// Time to `attached` over the micro and nginx runs.
    attach: Option<Summary>,
    verdicts: Vec<Verdict>,
    /// The load average at the bench's start and end.
    load: Option<Load>,
}

/// Runs the parts the options ask for, in order.
fn collect(options: &Options, setup: &mut Setup) -> Result<Parts> {
    let wants = |part: Part| options.only.is_empty() || options.only.contains(&part);
    let (tracer, runs) = (&setup.tracer, setup.runs);
    let workload = &mut setup.workload;
    let settings = Settings {
        tracer,
        runs,
        scale: if options.quick { 0.4 } else { 1.0 },
        bpftrace_problem: setup.bpftrace_problem.clone(),
        baseline: options.baseline_tracer.as_deref(),
    };

    let mut micros = Vec::new();
    if wants(Part::Micro) {
        eprintln!("==> micro benchmarks ({runs} runs of each case, interleaved)");
        for micro in Micro::ALL {
            micros.push(micro::run(&settings, workload, micro)?);
        }
    }
    let nginx = if wants(Part::Nginx) {
        let seconds = if options.quick { 3 } else { 5 };
        eprintln!("==> nginx under wrk ({runs} runs of {seconds}s each, untraced and traced)");
        Some(nginx::run(
            tracer,
            options.baseline_tracer.as_deref(),
            &setup.out_dir,
            runs,
            seconds,
        )?)
    } else {
        None
    };
    let (rates, memory) = if wants(Part::Capacity) {
        let seconds = if options.quick { 2 } else { 3 };
        eprintln!("==> capacity: paced open+close under the tracer ({seconds}s per rate)");
        let rates = capacity::rates(tracer, workload, seconds)?;
        let count = if options.quick { 250_000 } else { 1_000_000 };
        eprintln!("==> capacity: tracer memory with {count} descriptors open");
        let memory = capacity::memory(tracer, workload, count)?;
        (Some(rates), Some(memory))
    } else {
        (None, None)
    };
    let bpf_profile = if wants(Part::Profile) {
        let rounds = if options.quick { 3 } else { 5 };
        eprintln!(
            "==> BPF program run time (kernel.bpf_stats_enabled, {rounds} interleaved rounds)"
        );
        Some(profile::run(
            tracer,
            options.baseline_tracer.as_deref(),
            workload,
            rounds,
        )?)
    } else {
        None
    };

    let python = if wants(Part::Python) {
        eprintln!(
            "==> Python and C open+close, with and without Python frames ({runs} runs, interleaved, bpf_stats on)"
        );
        Some(python::run(
            &python::Settings {
                tracer,
                baseline: options.baseline_tracer.as_deref(),
                runs,
                scale: settings.scale,
            },
            workload,
        )?)
    } else {
        None
    };

    let forks = if wants(Part::Forks) {
        let mut results = Vec::new();
        for children in [1_000, if options.quick { 20_000 } else { 100_000 }] {
            eprintln!("==> forks: {children} short-lived children under tracer --json");
            results.push(forks::run(tracer, workload, children)?);
        }
        Some(results)
    } else {
        None
    };

    let soak = if wants(Part::Soak) {
        let children =
            options
                .soak_children
                .unwrap_or(if options.quick { 50_000 } else { 200_000 });
        eprintln!("==> soak: {children} short-lived workers, snapshots every few seconds");
        Some(soak::run(tracer, workload, children, &setup.out_dir)?)
    } else {
        None
    };

    let mut attach_times: Vec<f64> = micros
        .iter()
        .flat_map(|m| m.attach_times_s.iter().copied())
        .collect();
    if let Some(nginx) = &nginx {
        attach_times.extend(&nginx.attach_times_s);
    }
    let attach = Summary::of(&attach_times);
    Ok(Parts {
        micros,
        nginx,
        rates,
        memory,
        bpf_profile,
        python,
        forks,
        soak,
        attach,
        verdicts: Vec::new(),
        load: None,
    })
}

/// Writes target/bench/results.json and returns its path.
fn write_json(
    options: &Options,
    setup: &Setup,
    parts: &Parts,
    started: Instant,
) -> Result<PathBuf> {
    let results = json!({
        "machine": setup.machine,
        "other_tracepoint_programs_at_start": setup.other_tracers,
        "runs": setup.runs,
        "quick": options.quick,
        "bpftrace": setup.bpftrace_problem.as_deref().map_or("ok".to_owned(), |p| format!("unavailable: {p}")),
        "micro": parts.micros,
        "nginx": parts.nginx,
        "capacity": {
            "rates": parts.rates,
            "max_zero_loss_events_per_s": parts.rates.as_deref().and_then(capacity::max_zero_loss),
            "memory": parts.memory,
            "attach_s": parts.attach,
        },
        "bpf_profile": parts.bpf_profile,
        "python": parts.python,
        "forks": parts.forks,
        "soak": parts.soak,
        "budgets": parts.verdicts,
        "load": parts.load,
        "total_s": started.elapsed().as_secs_f64(),
    });
    let path = setup.out_dir.join("results.json");
    fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Prints each part's table with its heading and the lines that go with it.
fn print_tables(setup: &Setup, parts: &Parts) {
    print::machine(&setup.machine, &setup.other_tracers);
    print::micro(&parts.micros, setup.runs);
    if let Some(nginx) = &parts.nginx {
        print::nginx(nginx);
    }
    if let Some(rates) = &parts.rates {
        print::rates(rates);
    }
    if let Some(memory) = &parts.memory {
        print::memory(memory);
    }
    if let Some(attach) = &parts.attach {
        print::attach(attach);
    }
    if let Some(profile) = &parts.bpf_profile {
        print::profile(profile);
    }
    if let Some(result) = &parts.python {
        print::python(result);
    }
    if let Some(results) = &parts.forks {
        forks::print(results);
    }
    if let Some(load) = &parts.load {
        print::load(load);
    }
    if let Some(result) = &parts.soak {
        soak::print(result);
    }
    if !parts.verdicts.is_empty() {
        print::budgets(&parts.verdicts);
    }
}
