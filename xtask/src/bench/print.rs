//! The bench's text output: each part's table with its heading and the lines that go with it
//! (the JSON file holds the same results).

use super::{
    budgets::Verdict,
    capacity::{self, MemoryResult, RateStep},
    load::Load,
    micro::MicroResult,
    nginx::{CpuShares, NginxResult, Paired, RequestCost},
    profile::ProfileResult,
    python::{self, PythonResult},
    stats::{Summary, ratio},
    table::{self, Table},
};

/// The machine, and other tracers that every case paid for.
pub(crate) fn machine(machine: &str, other_tracers: &[String]) {
    println!("Machine: {machine}");
    if !other_tracers.is_empty() {
        println!(
            "Other BPF tracepoint programs were attached when the bench started ({}): every case, untraced included, paid for them",
            other_tracers.join(", ")
        );
    }
}

/// The micro table, then per workload the followed runs' losses and the stack copy's cost.
pub(crate) fn micro(micros: &[MicroResult], runs: usize) {
    if !micros.is_empty() {
        println!();
        println!(
            "Micro: µs per iteration, median of {runs} runs (± half the range), and the ratio to untraced"
        );
        println!();
        print!("{}", table::micro(micros));
        for result in micros {
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
    for result in micros {
        let median = |key: &str| {
            result
                .cases
                .iter()
                .find(|c| c.case == key)
                .and_then(|c| c.ns_per_iter.as_ref())
                .map(|s| s.median)
        };
        let host_wide = result.cases.iter().find(|c| c.case == "tracer_all");
        if let (Some(all), Some(floor), Some(cores)) = (
            median("tracer_all"),
            median("empty_bpf_floor"),
            host_wide.and_then(|c| c.tracer_cores.as_ref()),
        ) {
            println!(
                "{}: tracer --all, counting this process without following it: {:+.0} ns per iteration over the floor; the tracer used {:.1}% of a core (median; max {:.1}%) while the loop ran at {:.0} iterations/s",
                result.description,
                all - floor,
                cores.median * 100.0,
                cores.max * 100.0,
                1e9 / all
            );
        }
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
}

/// Requests per second untraced and traced, and what the tracer lost and used.
pub(crate) fn nginx(nginx: &NginxResult) {
    println!();
    println!(
        "Macro: nginx (1 worker) on 127.0.0.1 under wrk (1 thread, {} connections, {}s runs)",
        nginx.connections, nginx.seconds_per_run
    );
    println!();
    let mut t = Table::new(&["", "requests/s (median, ±half range, min)", "× untraced"]);
    let show = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.3}"));
    t.row(vec![
        "untraced".to_owned(),
        table::median_spread(&nginx.untraced_rps, 1.0, 0),
        "1.00".to_owned(),
    ]);
    t.row(vec![
        "tracer attached".to_owned(),
        table::median_spread(&nginx.traced_rps, 1.0, 0),
        show(nginx.ratio),
    ]);
    match (&nginx.floor_rps, &nginx.floor_unavailable) {
        (Some(floor), _) => t.row(vec![
            "empty BPF programs, same tracepoints (floor)".to_owned(),
            table::median_spread(floor, 1.0, 0),
            show(nginx.floor_ratio),
        ]),
        (None, why) => t.row(vec![
            "empty BPF programs, same tracepoints (floor)".to_owned(),
            format!(
                "unavailable: {}",
                table::shorten(why.as_deref().unwrap_or("not run"), 60)
            ),
            "-".to_owned(),
        ]),
    }
    if let Some(baseline) = &nginx.baseline_rps {
        t.row(vec![
            "baseline tracer attached".to_owned(),
            table::median_spread(baseline, 1.0, 0),
            show(nginx.baseline_ratio),
        ]);
    }
    print!("{}", t.render());
    println!(
        "tracer/untraced by each side's best run: {}",
        show(nginx.best_ratio)
    );
    paired(&nginx.paired);
    println!(
        "tracer lost {} events over the traced runs; the tracer process itself used {:.2} cores (median) while wrk ran",
        nginx.lost_events, nginx.tracer_cores.median
    );
    if let Some(cost) = &nginx.request_cost {
        request_cost(cost);
    }
    match (&nginx.cpu_shares, &nginx.cpu_shares_unavailable) {
        (Some(shares), _) => cpu_shares(shares),
        (None, Some(why)) => println!("where the worker's CPU goes (perf): unavailable: {why}"),
        (None, None) => {}
    }
}

/// Per case, the worker's CPU in programs and in the hooks, and the bound on its rate.
fn cpu_shares(shares: &CpuShares) {
    println!();
    println!(
        "Where the worker's CPU goes under wrk (perf cpu-clock samples, {} windows of {}s per case; 1 - share bounds the rate ratio from above, and repeats where the rates do not)",
        shares.tracer.len(),
        shares.window_seconds
    );
    let mut t = Table::new(&[
        "",
        "in BPF programs",
        "in tracing hooks",
        "together (median, min, max)",
        "at most × untraced",
    ]);
    let percent = |values: Vec<f64>| {
        Summary::of(&values).map_or("-".to_owned(), |s| format!("{:.1}%", s.median * 100.0))
    };
    for (name, windows) in [
        ("tracer attached", &shares.tracer),
        ("empty BPF programs (floor)", &shares.floor),
        ("baseline tracer attached", &shares.baseline),
    ] {
        let Some(together) = CpuShares::tracing(windows) else {
            continue;
        };
        t.row(vec![
            name.to_owned(),
            percent(windows.iter().map(|w| w.programs).collect()),
            percent(windows.iter().map(|w| w.hooks).collect()),
            format!(
                "{:.1}% ({:.1}, {:.1})",
                together.median * 100.0,
                together.min * 100.0,
                together.max * 100.0
            ),
            format!("{:.3}", 1.0 - together.median),
        ]);
    }
    print!("{}", t.render());
}

/// The rates' ratios run by run: each run's cases ran back to back, so they share its speed.
fn paired(paired: &Paired) {
    let rows = [
        ("tracer/untraced", &paired.traced_over_untraced),
        ("floor/untraced", &paired.floor_over_untraced),
        ("baseline/untraced", &paired.baseline_over_untraced),
        ("tracer/floor", &paired.traced_over_floor),
    ];
    let shown: Vec<String> = rows
        .iter()
        .filter_map(|(name, summary)| {
            let s = summary.as_ref()?;
            Some(format!(
                "{name} {:.3} (min {:.3}, max {:.3})",
                s.median, s.min, s.max
            ))
        })
        .collect();
    if !shown.is_empty() {
        println!(
            "run by run (medians of each run's ratio): {}",
            shown.join("; ")
        );
    }
}

/// Per request: the BPF programs' time in each case against the worker's CPU untraced.
fn request_cost(cost: &RequestCost) {
    let untraced = cost.untraced_cpu_us.median;
    let share =
        |us: f64| ratio(us, untraced).map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0));
    println!();
    println!(
        "Per request ({} windows of {}s per case, bpf_stats on): nginx's worker used {} µs of CPU untraced",
        cost.untraced_cpu_us.runs.len(),
        cost.window_seconds,
        table::median_spread(&cost.untraced_cpu_us, 1.0, 2),
    );
    let mut t = Table::new(&["", "BPF programs µs per request", "share of untraced CPU"]);
    let mut row = |name: &str, us: &Summary| {
        t.row(vec![
            name.to_owned(),
            table::median_spread(us, 1.0, 3),
            share(us.median),
        ]);
    };
    row("tracer attached", &cost.tracer_programs_us);
    if let Some(floor) = &cost.floor_programs_us {
        row("empty BPF programs (floor)", floor);
    }
    if let Some(baseline) = &cost.baseline_programs_us {
        row("baseline tracer attached", baseline);
    }
    print!("{}", t.render());
}

/// The paced rates and the highest one without a lost event.
pub(crate) fn rates(rates: &[RateStep]) {
    println!();
    println!("Capacity: open+close from 2 processes, paced, under the tracer");
    println!();
    print!("{}", table::rates(rates));
    match capacity::max_zero_loss(rates) {
        Some(rate) => println!("highest rate with no lost events: {rate:.0} events/s"),
        None => println!("every paced run lost events"),
    }
}

/// The tracer's memory while it holds many descriptors, and whether that run lost events.
pub(crate) fn memory(memory: &MemoryResult) {
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

/// Kernel time per BPF program run, and the tracer process's own CPU per open+close.
pub(crate) fn profile(profile: &ProfileResult) {
    println!();
    println!(
        "BPF run time per program run during unpaced open+close, ns: median of the interleaved rounds (± half the range, min) (bpf_stats; runs count every process, and unfollowed ones return early)"
    );
    println!();
    print!("{}", table::profile(profile));
    if let Some(ns) = &profile.tracer_process_ns_per_open {
        println!(
            "the tracer process itself used {} µs of CPU per followed open+close (reading, decoding, stacks, tables)",
            table::median_spread(ns, 1e-3, 2)
        );
    }
    if let Some(ns) = &profile.baseline_process_ns_per_open {
        println!(
            "the baseline tracer process used {} µs of CPU per followed open+close",
            table::median_spread(ns, 1e-3, 2)
        );
    }
}

/// How long the tracer took from start to `attached`.
pub(crate) fn attach(attach: &Summary) {
    println!(
        "time from start to `attached` (--pid): median {:.2}s (min {:.2}s, max {:.2}s, {} runs)",
        attach.median,
        attach.min,
        attach.max,
        attach.runs.len()
    );
}

/// The load average at the bench's start and end, the CPU time others took meanwhile, and
/// whether that was too busy.
pub(crate) fn load(load: &Load) {
    let show = |l: Option<f64>| l.map_or("unknown".to_owned(), |l| format!("{l:.2}"));
    let share = |s: Option<f64>| s.map_or("unknown".to_owned(), |s| format!("{:.1}%", s * 100.0));
    println!();
    println!(
        "load average (1 min): {} at start, {} at end (mostly the bench's own), on {} CPUs; \
         other processes used {} of the CPU time while it ran, the hypervisor stole {}",
        show(load.at_start),
        show(load.at_end),
        load.cpus,
        share(load.others_share),
        share(load.steal_share),
    );
    match load.too_busy() {
        Some(why) => println!("too noisy to judge the budgets ({why}): their notes say so"),
        None => println!("quiet enough to judge the budgets"),
    }
}

/// Each budget with its measured value and verdict.
pub(crate) fn budgets(verdicts: &[Verdict]) {
    println!();
    println!("Budgets");
    println!();
    print!("{}", table::budgets(verdicts));
}

/// The Python part: per loop and case, the loop's time, the BPF run time per run of the
/// programs an open+close runs, and the tracer's CPU, per open+close.
pub(crate) fn python(result: &PythonResult) {
    println!();
    println!(
        "Python: open+close of /dev/null five Python frames deep ({}, {} iterations) and in C ({} iterations), bpf_stats on in every case",
        result.interpreter.as_deref().unwrap_or("no interpreter"),
        result.python_iterations,
        result.c_iterations
    );
    if let Some(why) = &result.skipped {
        println!("the Python loop was skipped: {why}");
    }
    println!();
    let mut header = vec!["loop", "case", "µs/iter (median, ±, min)", "+µs"];
    let columns: Vec<String> = python::PROGRAMS
        .iter()
        .map(|p| format!("{p} ns/run"))
        .collect();
    header.extend(columns.iter().map(String::as_str));
    header.extend(["all BPF µs/iter", "tracer CPU µs/iter", "lost"]);
    let mut t = Table::new(&header);
    let dash = || "-".to_owned();
    for case in &result.cases {
        let mut row = vec![
            case.program.to_owned(),
            case.label.to_owned(),
            case.ns_per_iter
                .as_ref()
                .map_or_else(dash, |s| table::median_spread(s, 1e-3, 2)),
            case.added_ns_per_iter
                .map_or_else(dash, |ns| format!("{:+.2}", ns / 1000.0)),
        ];
        for program in python::PROGRAMS {
            row.push(case.bpf_ns_per_run.get(program).map_or_else(dash, |s| {
                let runs = case.bpf_runs_per_iter.get(program).copied().unwrap_or(0.0);
                format!("{} ({runs:.2}/iter)", table::median_spread(s, 1.0, 0))
            }));
        }
        row.push(
            case.bpf_ns_per_iter
                .as_ref()
                .map_or_else(dash, |s| table::median_spread(s, 1e-3, 2)),
        );
        row.push(
            case.tracer_cpu_ns_per_iter
                .as_ref()
                .map_or_else(dash, |s| table::median_spread(s, 1e-3, 2)),
        );
        row.push(case.lost_events.map_or_else(dash, |l| l.to_string()));
        t.row(row);
    }
    print!("{}", t.render());
    println!(
        "runs count every process's calls (unfollowed ones return early); python_walk, reached by tail call, runs inside sys_exit_openat's accounting; the tracer's CPU is its user+sys time (10 ms ticks) over the timed loop"
    );
    let show = |ns: Option<f64>| ns.map_or("-".to_owned(), |ns| format!("{:+.2} µs", ns / 1000.0));
    for cost in &result.frames_cost {
        println!(
            "{}: Python frames over --no-python-frames, per open+close: loop {} (fastest runs {}), sys_exit_openat {} per run, all BPF {}, tracer CPU {}",
            cost.program,
            show(Some(cost.loop_ns)),
            show(cost.loop_min_ns),
            show(cost.sys_exit_openat_ns),
            show(cost.bpf_ns_per_iter),
            show(cost.tracer_cpu_ns_per_iter)
        );
    }
}
