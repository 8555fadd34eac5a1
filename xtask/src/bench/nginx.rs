//! Macro benchmark: Debian's nginx serving a static page on 127.0.0.1 under wrk, untraced
//! and with the tracer attached to its master (and so to its worker).
//!
//! One worker and one wrk thread: on a 2-core machine each gets a core. Every request opens
//! and closes the page (no open_file_cache), so the traced run pays for descriptor events
//! on every request; wrk's connections are kept alive, as a loaded server's clients' are.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{
    budgets::NginxRatios,
    child::Watched,
    cpu_share::{self, Shares},
    floor::{ALL_TRACEPOINTS, Floor},
    procstat::{TICKS_PER_SECOND, cpu_ticks},
    profile::{self, with_bpf_stats},
    stats::{Summary, paired_ratios, ratio},
    tools::path_of,
    tracer::{self, Attached},
};

#[derive(Debug, Serialize)]
pub(crate) struct NginxResult {
    pub seconds_per_run: u64,
    pub connections: u32,
    pub untraced_rps: Summary,
    pub traced_rps: Summary,
    /// Empty BPF programs on every tracepoint the tracer uses, filtered to nginx's processes:
    /// what any syscall-tracepoint tool must pay here.
    pub floor_rps: Option<Summary>,
    /// `--baseline-tracer` attached instead (before/after comparisons in one run).
    pub baseline_rps: Option<Summary>,
    /// Traced median over untraced median.
    pub ratio: Option<f64>,
    /// Traced best run over untraced best run: the ratio least disturbed by other work.
    pub best_ratio: Option<f64>,
    /// Floor median over untraced median.
    pub floor_ratio: Option<f64>,
    /// Baseline tracer's median over untraced median.
    pub baseline_ratio: Option<f64>,
    pub lost_events: u64,
    /// CPU the tracer itself used while wrk ran, in cores (1.0 = one core busy).
    pub tracer_cores: Summary,
    pub attach_times_s: Vec<f64>,
    /// Why the floor was not measured, if it was not.
    pub floor_unavailable: Option<String>,
    /// What a request costs, per request: steadier than the rates (see [`RequestCost`]).
    pub request_cost: Option<RequestCost>,
    /// The rates' ratios taken run by run (see [`Paired`]).
    pub paired: Paired,
    /// Where the worker's CPU went under each case, by perf's samples (see [`CpuShares`]).
    pub cpu_shares: Option<CpuShares>,
    /// Why those were not measured, if they were not.
    pub cpu_shares_unavailable: Option<String>,
}

/// The worker's CPU split by perf's samples ([`cpu_share`]) in [`SHARE_ROUNDS`] windows per
/// case while wrk runs, after the timed runs, with `kernel.bpf_stats_enabled` off.
#[derive(Debug, Serialize)]
pub(crate) struct CpuShares {
    pub window_seconds: u64,
    pub tracer: Vec<Shares>,
    pub floor: Vec<Shares>,
    pub baseline: Vec<Shares>,
}

impl CpuShares {
    /// The median over windows of programs and hooks together.
    pub(crate) fn tracing(windows: &[Shares]) -> Option<Summary> {
        Summary::of(&windows.iter().map(Shares::tracing).collect::<Vec<_>>())
    }
}

/// Windows per case for [`CpuShares`], and their length.
const SHARE_ROUNDS: usize = 3;
const SHARE_SECONDS: u64 = 4;

impl NginxResult {
    /// What the budget's verdict reads: the runs' own ratios where there are some.
    pub(crate) fn ratios(&self) -> Option<NginxRatios> {
        let median = |s: &Option<Summary>| s.as_ref().map(|s| s.median);
        Some(NginxRatios {
            traced: median(&self.paired.traced_over_untraced).or(self.ratio)?,
            best: self.best_ratio,
            floor: median(&self.paired.floor_over_untraced).or(self.floor_ratio),
            over_floor: median(&self.paired.traced_over_floor),
            tracing_share: self
                .cpu_shares
                .as_ref()
                .and_then(|c| CpuShares::tracing(&c.tracer))
                .map(|s| s.median),
            floor_tracing_share: self
                .cpu_shares
                .as_ref()
                .and_then(|c| CpuShares::tracing(&c.floor))
                .map(|s| s.median),
        })
    }
}

/// Each run measures every case back to back, so a case's rate over the same run's untraced
/// rate shares that moment's machine speed; these ratios, summarised over the runs, move
/// less than the ratio of two medians of runs minutes apart. The tracer over the floor is
/// what the tracer costs beyond what any tool on these tracepoints pays.
#[derive(Debug, Serialize)]
pub(crate) struct Paired {
    pub traced_over_untraced: Option<Summary>,
    pub floor_over_untraced: Option<Summary>,
    pub baseline_over_untraced: Option<Summary>,
    pub traced_over_floor: Option<Summary>,
}

/// Where a request's time goes, measured after the timed runs in windows of their own with
/// `kernel.bpf_stats_enabled` on (which costs every program run two clock reads, so the
/// timed runs go without): the BPF programs' run time per request, against the worker's CPU
/// per request untraced. Both are per request, so the machine's speed, which moves requests
/// per second by a fifth between runs here, moves them far less, and the programs' time is
/// the part of the cost that differs between the tracer and the floor (the rest, the
/// syscall-tracing hooks' own work, is the same for both).
#[derive(Debug, Serialize)]
pub(crate) struct RequestCost {
    pub window_seconds: u64,
    /// The worker's CPU per request, untraced (µs).
    pub untraced_cpu_us: Summary,
    /// BPF programs' run time per request (µs), summed over the programs.
    pub tracer_programs_us: Summary,
    pub floor_programs_us: Option<Summary>,
    pub baseline_programs_us: Option<Summary>,
}

impl RequestCost {
    /// The tracer's and the floor's programs' time per request over the worker's untraced
    /// CPU per request (medians).
    pub(crate) fn programs_share(&self) -> Option<(f64, Option<f64>)> {
        let untraced = self.untraced_cpu_us.median;
        let tracer = ratio(self.tracer_programs_us.median, untraced)?;
        let floor = self
            .floor_programs_us
            .as_ref()
            .and_then(|floor| ratio(floor.median, untraced));
        Some((tracer, floor))
    }
}

/// Windows per case for [`RequestCost`], and their length.
const COST_ROUNDS: usize = 5;
const COST_SECONDS: u64 = 3;

const CONNECTIONS: u32 = 32;

/// One way of running nginx, measured in turn with the others in every run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Untraced,
    Traced,
    Floor,
    Baseline,
}

/// What the traced runs add up to besides their rates.
#[derive(Default)]
struct TracedRuns {
    lost: u64,
    attach_times_s: Vec<f64>,
    cores: Vec<f64>,
}

pub(crate) fn run(
    tracer_bin: &Path,
    baseline: Option<&Path>,
    dir: &Path,
    runs: usize,
    seconds: u64,
) -> Result<NginxResult> {
    let root = prepare(dir)?;
    let port = free_port()?;
    let mut nginx = start(&root, port)?;
    let url = format!("http://127.0.0.1:{port}/index.html");
    let mut cases = vec![Case::Untraced, Case::Traced, Case::Floor];
    if baseline.is_some() {
        cases.push(Case::Baseline);
    }
    // Per run, one entry per case (`None` where the case was not measured), so that runs
    // line up across cases.
    let mut rates: Vec<Vec<Option<f64>>> = Vec::with_capacity(runs);
    let mut traced_runs = TracedRuns::default();
    let mut floor_unavailable = None;
    // A short warm-up, so the first measured run does not pay for cold caches.
    wrk(&url, 1)?;
    for run in 0..runs {
        eprintln!("  nginx run {}/{runs}", run + 1);
        let mut measured_now = vec![None; cases.len()];
        // Rotate which goes first, so a drift in machine load does not favour one.
        for turn in 0..cases.len() {
            let index = (turn + run) % cases.len();
            let measured = match cases[index] {
                Case::Untraced => wrk(&url, seconds),
                Case::Traced => traced(tracer_bin, nginx.pid(), &url, seconds, &mut traced_runs),
                Case::Baseline => traced(
                    baseline.unwrap_or(tracer_bin),
                    nginx.pid(),
                    &url,
                    seconds,
                    &mut TracedRuns::default(),
                ),
                Case::Floor if floor_unavailable.is_some() => continue,
                Case::Floor => match under_floor(nginx.pid(), &url, seconds) {
                    Err(err) => {
                        floor_unavailable = Some(format!("{err:#}"));
                        continue;
                    }
                    ok => ok,
                },
            };
            measured_now[index] = Some(measured?);
        }
        rates.push(measured_now);
    }
    let request_cost = with_bpf_stats(|| {
        request_cost(
            &cases,
            tracer_bin,
            baseline,
            nginx.pid(),
            &url,
            floor_unavailable.is_none(),
        )
    })?;
    let (cpu_shares, cpu_shares_unavailable) = match cpu_shares(
        &cases,
        tracer_bin,
        baseline,
        nginx.pid(),
        &url,
        &root,
        floor_unavailable.is_none(),
    ) {
        Ok(shares) => (Some(shares), None),
        Err(err) => (None, Some(format!("{err:#}"))),
    };
    nginx.signal(libc::SIGTERM);
    nginx.wait(Duration::from_secs(10))?;
    let runs_of = |case: Case| -> Vec<Option<f64>> {
        match cases.iter().position(|&c| c == case) {
            Some(index) => rates.iter().map(|run| run[index]).collect(),
            None => Vec::new(),
        }
    };
    let summary =
        |case: Case| Summary::of(&runs_of(case).iter().flatten().copied().collect::<Vec<_>>());
    let over = |case: Case, base: Case| paired_ratios(&runs_of(case), &runs_of(base));
    let paired = Paired {
        traced_over_untraced: over(Case::Traced, Case::Untraced),
        floor_over_untraced: over(Case::Floor, Case::Untraced),
        baseline_over_untraced: over(Case::Baseline, Case::Untraced),
        traced_over_floor: over(Case::Traced, Case::Floor),
    };
    let untraced_rps = summary(Case::Untraced).context("no nginx runs")?;
    let traced_rps = summary(Case::Traced).context("no nginx runs")?;
    let floor_rps = summary(Case::Floor);
    let baseline_rps = summary(Case::Baseline);
    let over_untraced = |s: &Option<Summary>| {
        s.as_ref()
            .and_then(|s| ratio(s.median, untraced_rps.median))
    };
    Ok(NginxResult {
        seconds_per_run: seconds,
        connections: CONNECTIONS,
        ratio: ratio(traced_rps.median, untraced_rps.median),
        best_ratio: ratio(traced_rps.max, untraced_rps.max),
        floor_ratio: over_untraced(&floor_rps),
        baseline_ratio: over_untraced(&baseline_rps),
        untraced_rps,
        traced_rps,
        floor_rps,
        baseline_rps,
        lost_events: traced_runs.lost,
        tracer_cores: Summary::of(&traced_runs.cores).context("no nginx runs")?,
        attach_times_s: traced_runs.attach_times_s,
        floor_unavailable,
        request_cost: Some(request_cost),
        paired,
        cpu_shares,
        cpu_shares_unavailable,
    })
}

/// [`RequestCost`]: [`COST_ROUNDS`] rounds of one window per case, interleaved.
fn request_cost(
    cases: &[Case],
    tracer_bin: &Path,
    baseline: Option<&Path>,
    master: u32,
    url: &str,
    with_floor: bool,
) -> Result<RequestCost> {
    eprintln!(
        "  nginx: time per request, {COST_ROUNDS} windows of {COST_SECONDS}s per case with bpf_stats on"
    );
    let mut per_case: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..COST_ROUNDS {
        for (index, &case) in cases.iter().enumerate() {
            let us = match case {
                Case::Untraced => worker_cpu_per_request(master, url)?,
                Case::Traced | Case::Baseline => {
                    let bin = match case {
                        Case::Baseline => baseline.unwrap_or(tracer_bin),
                        _ => tracer_bin,
                    };
                    let tracer = Attached::start(bin, master, &["--json"])?;
                    let us = programs_per_request(tracer.pid(), url);
                    tracer.stop()?;
                    us?
                }
                Case::Floor if !with_floor => continue,
                Case::Floor => {
                    let _floor = start_floor(master)?;
                    programs_per_request(std::process::id(), url)?
                }
            };
            per_case[index].push(us);
        }
    }
    let summary = |case: Case| {
        cases
            .iter()
            .position(|&c| c == case)
            .and_then(|index| Summary::of(&per_case[index]))
    };
    Ok(RequestCost {
        window_seconds: COST_SECONDS,
        untraced_cpu_us: summary(Case::Untraced).context("no untraced windows")?,
        tracer_programs_us: summary(Case::Traced).context("no traced windows")?,
        floor_programs_us: summary(Case::Floor),
        baseline_programs_us: summary(Case::Baseline),
    })
}

/// [`CpuShares`]: [`SHARE_ROUNDS`] rounds of one perf window per traced case, interleaved.
fn cpu_shares(
    cases: &[Case],
    tracer_bin: &Path,
    baseline: Option<&Path>,
    master: u32,
    url: &str,
    dir: &Path,
    with_floor: bool,
) -> Result<CpuShares> {
    eprintln!(
        "  nginx: where the worker's CPU goes, {SHARE_ROUNDS} perf windows of {SHARE_SECONDS}s per case"
    );
    let worker = *children(master)
        .first()
        .context("nginx has no worker process")?;
    let data = dir.join("perf.data");
    let mut shares = CpuShares {
        window_seconds: SHARE_SECONDS,
        tracer: Vec::new(),
        floor: Vec::new(),
        baseline: Vec::new(),
    };
    for _ in 0..SHARE_ROUNDS {
        for &case in cases {
            match case {
                Case::Untraced => {}
                Case::Traced | Case::Baseline => {
                    let (bin, into) = match case {
                        Case::Baseline => (baseline.unwrap_or(tracer_bin), &mut shares.baseline),
                        _ => (tracer_bin, &mut shares.tracer),
                    };
                    let tracer = Attached::start(bin, master, &["--json"])?;
                    let measured = under_load(worker, url, &data);
                    tracer.stop()?;
                    into.push(measured?);
                }
                Case::Floor if !with_floor => {}
                Case::Floor => {
                    let _floor = start_floor(master)?;
                    shares.floor.push(under_load(worker, url, &data)?);
                }
            }
        }
    }
    Ok(shares)
}

/// perf's split of `worker`'s CPU over a window in the middle of a wrk run.
fn under_load(worker: u32, url: &str, data: &Path) -> Result<Shares> {
    thread::scope(|scope| {
        let load = scope.spawn(|| wrk(url, SHARE_SECONDS + 2));
        thread::sleep(Duration::from_secs(1));
        let shares = cpu_share::sample(worker, SHARE_SECONDS, data);
        load.join()
            .map_err(|_| anyhow::anyhow!("the wrk thread panicked"))??;
        shares
    })
}

/// The CPU nginx's worker used per request over one wrk window, in µs.
fn worker_cpu_per_request(master: u32, url: &str) -> Result<f64> {
    let worker = *children(master)
        .first()
        .context("nginx has no worker process")?;
    let ticks_before = cpu_ticks(worker)?;
    let started = Instant::now();
    let rps = wrk(url, COST_SECONDS)?;
    let requests = rps * started.elapsed().as_secs_f64();
    let ticks = cpu_ticks(worker)?.saturating_sub(ticks_before);
    Ok(ticks as f64 / TICKS_PER_SECOND * 1e6 / requests)
}

/// The run time of the BPF programs `holder` loaded, per request, over one wrk window, in µs.
fn programs_per_request(holder: u32, url: &str) -> Result<f64> {
    let before = profile::snapshot(holder)?;
    let started = Instant::now();
    let rps = wrk(url, COST_SECONDS)?;
    let requests = rps * started.elapsed().as_secs_f64();
    let after = profile::snapshot(holder)?;
    let ns: u64 = after
        .iter()
        .map(|(id, counters)| {
            let earlier = before.get(id).copied().unwrap_or_default();
            counters.run_time_ns.saturating_sub(earlier.run_time_ns)
        })
        .sum();
    Ok(ns as f64 / 1e3 / requests)
}

/// One wrk run with `tracer_bin` attached to nginx's master (and so to its worker).
fn traced(
    tracer_bin: &Path,
    nginx: u32,
    url: &str,
    seconds: u64,
    runs: &mut TracedRuns,
) -> Result<f64> {
    let attached = Attached::start(tracer_bin, nginx, &["--json"])?;
    runs.attach_times_s.push(attached.attach_time.as_secs_f64());
    let ticks_before = cpu_ticks(attached.pid())?;
    let wrk_started = Instant::now();
    let measured = wrk(url, seconds);
    let ticks = cpu_ticks(attached.pid())?.saturating_sub(ticks_before);
    runs.cores
        .push(ticks as f64 / TICKS_PER_SECOND / wrk_started.elapsed().as_secs_f64());
    let ended = attached.stop()?;
    runs.lost += tracer::facts(&ended.stdout)?.lost;
    measured
}

/// One wrk run with the floor's programs on all the tracer's tracepoints, filtered to
/// nginx's master and its workers.
fn under_floor(master: u32, url: &str, seconds: u64) -> Result<f64> {
    let _floor = start_floor(master)?;
    wrk(url, seconds)
}

/// The floor on every tracepoint of the tracer's, filtered to nginx's master and workers.
fn start_floor(master: u32) -> Result<Floor> {
    let mut pids = vec![master];
    pids.extend(children(master));
    Floor::attach(ALL_TRACEPOINTS, &pids)
}

/// The children of `pid` (nginx's workers), from /proc.
fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Writes the configuration and the page under `dir/nginx`; returns that directory.
fn prepare(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("nginx");
    let html = root.join("html");
    fs::create_dir_all(&html).with_context(|| format!("cannot create {}", html.display()))?;
    fs::create_dir_all(root.join("logs"))?;
    // About the size of nginx's welcome page.
    fs::write(html.join("index.html"), "<p>tracer bench</p>\n".repeat(30))?;
    Ok(root)
}

fn config(root: &Path, port: u16) -> String {
    let root = root.display();
    format!(
        "daemon off;
master_process on;
worker_processes 1;
user root;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ root {root}/html; }}
    }}
}}
"
    )
}

/// A port nothing listens on now (the kernel's pick for port 0).
fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Starts nginx in the foreground and waits until it accepts connections.
fn start(root: &Path, port: u16) -> Result<Watched> {
    let conf = root.join("nginx.conf");
    fs::write(&conf, config(root, port))?;
    let mut cmd = Command::new(path_of("nginx"));
    cmd.arg("-p")
        .arg(root)
        .arg("-c")
        .arg(&conf)
        .args(["-e", "stderr"]);
    let mut nginx = Watched::spawn(&mut cmd)?;
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let started = Instant::now();
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            let ended = nginx.wait(Duration::from_secs(1));
            let why = ended.map(|e| e.last_error_line()).unwrap_or_default();
            bail!("nginx did not start listening on {address}: {why}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(nginx)
}

/// Requests per second wrk reached in `seconds`.
fn wrk(url: &str, seconds: u64) -> Result<f64> {
    let mut cmd = Command::new(path_of("wrk"));
    cmd.args([
        "-t1",
        &format!("-c{CONNECTIONS}"),
        &format!("-d{seconds}s"),
        url,
    ]);
    let ended = Watched::spawn(&mut cmd)?.wait_success(Duration::from_secs(seconds + 30))?;
    requests_per_second(&ended.stdout)
}

/// The `Requests/sec:` line of wrk's output; errors wrk counted make the run invalid.
fn requests_per_second(output: &str) -> Result<f64> {
    if let Some(line) = output
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses"))
    {
        bail!("nginx answered with errors: {}", line.trim());
    }
    output
        .lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {}", output.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUTPUT: &str = "Running 5s test @ http://127.0.0.1:8080/index.html
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms  300.00us   5.00ms   90.00%
    Req/Sec    25.50k     1.20k   27.00k    80.00%
  126912 requests in 5.00s, 95.83MB read
Requests/sec:  25382.40
Transfer/sec:     19.17MB
";

    /// The rate is read from wrk's summary line.
    #[test]
    fn parses_requests_per_second() {
        assert_eq!(requests_per_second(WRK_OUTPUT).unwrap(), 25382.40);
    }

    /// Error responses and missing summaries are errors, not rates.
    #[test]
    fn rejects_errors_and_garbage() {
        let with_errors = WRK_OUTPUT.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 12\nRequests/sec",
        );
        assert!(requests_per_second(&with_errors).is_err());
        assert!(requests_per_second("unable to connect").is_err());
    }

    /// The server listens only on loopback, at the port given, without access logs.
    #[test]
    fn config_listens_on_loopback() {
        let text = config(Path::new("/b/nginx"), 8123);
        assert!(text.contains("listen 127.0.0.1:8123;"));
        assert!(text.contains("access_log off;"));
        assert!(text.contains("root /b/nginx/html;"));
    }
}
