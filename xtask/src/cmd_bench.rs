//! `cargo xtask bench`: what the tracer costs, next to what users would use instead.

use std::{fs, process::ExitCode, time::Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::{
    bench::{
        budgets, capacity,
        micro::{self, Settings},
        nginx, procstat, profile,
        stats::Summary,
        table::{self, Table},
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
/// above it, memory with a million open descriptors, time to attach.
///
/// Installs what it uses when missing (apt-get: gcc, strace, bpftrace, bpftool, nginx,
/// wrk). Takes about 5 minutes on 2 cores (2.5 with --quick). Needs root. Not part of
/// `cargo xtask test` or CI: benchmarks are not tests.
#[derive(Args)]
pub struct Options {
    /// Fewer runs (3), shorter loops, 250 000 held descriptors instead of 1 000 000
    #[arg(long)]
    pub quick: bool,

    /// Runs of each case (default 5, 3 with --quick)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=50))]
    pub runs: Option<u32>,

    /// Only these parts (comma-separated); all by default
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PARTS")]
    pub only: Vec<Part>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Micro,
    Nginx,
    Capacity,
    Profile,
}

pub fn run(options: Options) -> Result<ExitCode> {
    if !is_root() {
        bail!("the bench needs root (it loads eBPF programs): run `cargo xtask bench` as root");
    }
    let wants = |part: Part| options.only.is_empty() || options.only.contains(&part);
    let started = Instant::now();
    bootstrap::run(Needs {
        c_compiler: true,
        vm: false,
    })?;
    tools::ensure()?;
    tools::ensure_tracefs()?;
    let tracer = build_tracer(Profile::Release)?;
    let out_dir = target_dir().join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut workload = Workload::build(&out_dir)?;
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
    let runs = options.runs.unwrap_or(if options.quick { 3 } else { 5 }) as usize;
    let settings = Settings {
        tracer: &tracer,
        runs,
        scale: if options.quick { 0.4 } else { 1.0 },
        bpftrace_problem: bpftrace_problem.clone(),
    };

    let mut micros = Vec::new();
    if wants(Part::Micro) {
        eprintln!("==> micro benchmarks ({runs} runs of each case, interleaved)");
        for micro in Micro::ALL {
            micros.push(micro::run(&settings, &mut workload, micro)?);
        }
    }
    let nginx = if wants(Part::Nginx) {
        let seconds = if options.quick { 3 } else { 5 };
        eprintln!("==> nginx under wrk ({runs} runs of {seconds}s each, untraced and traced)");
        Some(nginx::run(&tracer, &out_dir, runs, seconds)?)
    } else {
        None
    };
    let (rates, memory) = if wants(Part::Capacity) {
        let seconds = if options.quick { 2 } else { 3 };
        eprintln!("==> capacity: paced open+close under the tracer ({seconds}s per rate)");
        let rates = capacity::rates(&tracer, &mut workload, seconds)?;
        let count = if options.quick { 250_000 } else { 1_000_000 };
        eprintln!("==> capacity: tracer memory with {count} descriptors open");
        let memory = capacity::memory(&tracer, &mut workload, count)?;
        (Some(rates), Some(memory))
    } else {
        (None, None)
    };
    let bpf_profile = if wants(Part::Profile) {
        eprintln!("==> BPF program run time (kernel.bpf_stats_enabled)");
        Some(profile::run(
            &tracer,
            &mut workload,
            bpftrace_problem.is_none(),
        )?)
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
    let verdicts = budgets::check(&micros, nginx.as_ref().and_then(|n| n.ratio));

    let results = json!({
        "machine": machine,
        "other_tracepoint_programs_at_start": other_tracers,
        "runs": runs,
        "quick": options.quick,
        "bpftrace": bpftrace_problem.as_deref().map_or("ok".to_owned(), |p| format!("unavailable: {p}")),
        "micro": micros,
        "nginx": nginx,
        "capacity": {
            "rates": rates,
            "max_zero_loss_events_per_s": rates.as_deref().and_then(capacity::max_zero_loss),
            "memory": memory,
            "attach_s": attach,
        },
        "bpf_profile": bpf_profile,
        "budgets": verdicts,
        "total_s": started.elapsed().as_secs_f64(),
    });
    let path = out_dir.join("results.json");
    fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;

    println!("Machine: {machine}");
    if !other_tracers.is_empty() {
        println!(
            "Other BPF tracepoint programs were attached when the bench started ({}): every case, untraced included, paid for them",
            other_tracers.join(", ")
        );
    }
    if !micros.is_empty() {
        println!();
        println!(
            "Micro: µs per iteration, median of {runs} runs (± half the range), and the ratio to untraced"
        );
        println!();
        print!("{}", table::micro(&micros));
        for result in &micros {
            if let Some(followed) = result.cases.iter().find(|c| c.case == "tracer_followed") {
                println!(
                    "{}: tracer lost {} events, {} false leaks over all followed runs",
                    result.description,
                    followed.lost_events.unwrap_or(0),
                    followed.false_leaks.unwrap_or(0)
                );
            }
        }
    }
    for result in &micros {
        let median = |key: &str| {
            result
                .cases
                .iter()
                .find(|c| c.case == key)
                .and_then(|c| c.ns_per_iter.as_ref())
                .map(|s| s.median)
        };
        if let (Some(copy), Some(frame_pointers)) = (
            median("tracer_followed"),
            median("tracer_followed_frame_pointers"),
        ) {
            println!(
                "{}: stack capture cost, copy of the user stack over frame pointers only: {:+.2} µs per iteration",
                result.description,
                (copy - frame_pointers) / 1000.0
            );
        }
    }
    if let Some(nginx) = &nginx {
        println!();
        println!(
            "Macro: nginx (1 worker) on 127.0.0.1 under wrk (1 thread, {} connections, {}s runs)",
            nginx.connections, nginx.seconds_per_run
        );
        println!();
        let mut t = Table::new(&["", "requests/s", "× untraced"]);
        t.row(vec![
            "untraced".to_owned(),
            table::median_spread(&nginx.untraced_rps, 1.0, 0),
            "1.00".to_owned(),
        ]);
        t.row(vec![
            "tracer attached".to_owned(),
            table::median_spread(&nginx.traced_rps, 1.0, 0),
            nginx.ratio.map_or("-".to_owned(), |r| format!("{r:.3}")),
        ]);
        print!("{}", t.render());
        println!(
            "tracer lost {} events over the traced runs; the tracer process itself used {:.2} cores (median) while wrk ran",
            nginx.lost_events, nginx.tracer_cores.median
        );
    }
    if let Some(rates) = &rates {
        println!();
        println!("Capacity: open+close from 2 processes, paced, under the tracer");
        println!();
        print!("{}", table::rates(rates));
        match capacity::max_zero_loss(rates) {
            Some(rate) => println!("highest rate with no lost events: {rate:.0} events/s"),
            None => println!("every paced run lost events"),
        }
    }
    if let Some(memory) = &memory {
        println!(
            "memory: {:.0} MiB attached, {:.0} MiB with {} descriptors open in {} processes (opened at {}/s; {:.0} bytes each), peak {:.0} MiB; report and detach took {:.1}s",
            memory.rss_attached_mib,
            memory.rss_holding_mib,
            memory.descriptors,
            memory.processes,
            memory.opened_per_s,
            memory.bytes_per_descriptor,
            memory.peak_mib,
            memory.report_s
        );
        match (memory.received, memory.lost) {
            (Some(received), Some(0)) => {
                println!("memory run: {received} events received, none lost")
            }
            (Some(received), Some(lost)) => println!(
                "memory run: WARNING {lost} events lost ({received} received): the tables missed descriptors, so the memory is understated"
            ),
            _ => println!("memory run: the report's event counts could not be read"),
        }
    }
    if let Some(attach) = &attach {
        println!(
            "time from start to `attached` (--pid): median {:.2}s (min {:.2}s, max {:.2}s, {} runs)",
            attach.median,
            attach.min,
            attach.max,
            attach.runs.len()
        );
    }
    if let Some(profile) = &bpf_profile {
        println!();
        println!(
            "BPF run time per program run during unpaced open+close (bpf_stats; runs count every process, and unfollowed ones return early)"
        );
        println!();
        print!("{}", table::profile(profile));
        if let Some(ns) = profile.tracer_process_ns_per_open {
            println!(
                "the tracer process itself used {:.2} µs of CPU per followed open+close (reading, decoding, stacks, tables)",
                ns / 1000.0
            );
        }
    }
    if !verdicts.is_empty() {
        println!();
        println!("Budgets");
        println!();
        print!("{}", table::budgets(&verdicts));
    }
    println!();
    println!(
        "Results: {} ({:.0}s in all)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
