//! `--serve ADDR`, read by real clients while the tracer follows `serve_leak`, a process that
//! leaks files in batches: `promtool check metrics` accepts /metrics and its values are what
//! /proc says; a Prometheus server (Debian's) scrapes it and its query API returns the
//! fixture's open-descriptor series with the value /proc/PID/fd shows, batch after batch;
//! `go tool pprof -raw` reads /debug/pprof/open_fds and finds the leaking function with the
//! count of the descriptors it leaked; /report is the JSON report. Addresses the endpoint
//! cannot listen on fail in one line before anything is attached.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tracer_tests::{
    ATTACH_TIMEOUT, Fixture, Report, Tracer, build_fixture, fd_count, require_root,
    run_with_timeout, serde_json::Value, tracer_command, unique_dir, wait_until,
};

/// The soft descriptor limit the fixture sets itself, for `process_max_fds`.
const LIMIT: u64 = 777;
/// How long a client may take; how long Prometheus may take to show a new value.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const SCRAPED_TIMEOUT: Duration = Duration::from_secs(90);

/// A leaking fixture followed by a tracer that serves on a port of its choosing.
struct Served {
    fixture: Fixture,
    tracer: Tracer,
    /// `127.0.0.1:PORT`
    addr: String,
    /// The file the fixture leaks descriptors of.
    file: PathBuf,
}

impl Served {
    #[track_caller]
    fn start(name: &str) -> Served {
        require_root();
        let bin = build_fixture("serve_leak", &[]);
        let file = unique_dir(None, name).join("leaked.conf");
        std::fs::write(&file, "x=1\n").unwrap();
        let mut fixture = Fixture::spawn(&bin, &[&LIMIT.to_string(), file.to_str().unwrap()]);
        fixture.wait_for_line("READY", Duration::from_secs(10));
        let mut tracer = Tracer::attach(fixture.pid(), &["--serve", "127.0.0.1:0"]);
        tracer.wait_attached(ATTACH_TIMEOUT);
        let mut addr = String::new();
        wait_until(Duration::from_secs(10), "the `serving` line", || {
            let stderr = tracer.stderr();
            match stderr.split_once("serving http://") {
                Some((_, rest)) => {
                    addr = rest.split('/').next().unwrap_or_default().to_owned();
                    true
                }
                None => false,
            }
        });
        Served {
            fixture,
            tracer,
            addr,
            file,
        }
    }

    fn pid(&self) -> u32 {
        self.fixture.pid()
    }

    /// Has the fixture leak `count` more; returns how many it has leaked in all.
    #[track_caller]
    fn leak(&mut self, count: u32) -> u64 {
        self.fixture.send_line(&format!("go {count}"));
        let done = self.fixture.wait_for_line("DONE ", Duration::from_secs(30));
        done["DONE ".len()..].trim().parse().unwrap()
    }

    /// Descriptors /proc shows open on the leaked file.
    fn leaked_in_proc(&self) -> u64 {
        proc_links(self.pid())
            .iter()
            .filter(|link| Path::new(link) == self.file)
            .count() as u64
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Where each of `pid`'s descriptors points, as /proc/PID/fd shows it.
fn proc_links(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// A response as curl got it.
struct Got {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Got {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// GET `url` with curl (and an Accept header, if given).
#[track_caller]
fn curl(url: &str, accept: Option<&str>) -> Got {
    let body_file = unique_dir(None, "curl").join("body");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-o"])
        .arg(&body_file)
        .args(["-w", "%{http_code} %{content_type}"]);
    if let Some(accept) = accept {
        cmd.args(["-H", &format!("Accept: {accept}")]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("curl runs (Debian package curl)");
    let written = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {url} failed: {}{written}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, content_type) = written.split_once(' ').unwrap_or((&written, ""));
    Got {
        status: status
            .parse()
            .unwrap_or_else(|_| panic!("curl wrote {written:?}")),
        content_type: content_type.to_owned(),
        body: std::fs::read(&body_file).unwrap(),
    }
}

/// The value of the sample `name{labels}` in a text exposition, if there is one.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// /metrics says what /proc says, in a format promtool accepts (and OpenMetrics to a client
/// that asks for it); /report is the JSON report; other paths are 404.
#[test]
fn metrics_pass_promtool_and_count_what_proc_lists() {
    let mut served = Served::start("serve-metrics");
    let pid = served.pid();
    let leaked = served.leak(5);
    let truth = fd_count(pid).unwrap() as f64;
    let files = proc_links(pid)
        .iter()
        .filter(|l| l.starts_with('/'))
        .count() as f64;
    let got = curl(&served.url("/metrics"), None);
    let text = got.text();
    assert_eq!(got.status, 200, "{text}");
    assert!(
        got.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        got.content_type
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package prometheus)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), &got.body).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let labels = format!(r#"{{pid="{pid}",comm="serve_leak"}}"#);
    let value = |name: &str| sample(&text, &format!("{name}{labels}"));
    assert_eq!(
        value("process_open_fds"),
        Some(truth),
        "/proc: {truth}\n{text}"
    );
    assert_eq!(value("process_max_fds"), Some(LIMIT as f64), "{text}");
    let file_kind = format!(r#"tracer_open_fds{{pid="{pid}",comm="serve_leak",kind="file"}}"#);
    assert_eq!(
        sample(&text, &file_kind),
        Some(files),
        "/proc: {files} files\n{text}"
    );
    assert_eq!(value("tracer_threads"), Some(1.0), "{text}");
    assert_eq!(value("tracer_zombies"), Some(0.0), "{text}");
    assert!(
        value("tracer_open_fds_growth_per_minute").is_some_and(|g| g > 0.0),
        "{text}"
    );
    assert!(
        sample(&text, "tracer_events_received_total").is_some_and(|n| n >= leaked as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tracer_events_lost_total"),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(&text, "tracer_resident_memory_bytes").is_some_and(|b| b > 0.0),
        "{text}"
    );

    let open = curl(
        &served.url("/metrics"),
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert!(
        open.content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        open.content_type
    );
    assert!(open.text().ends_with("# EOF\n"), "{}", open.text());

    let got = curl(&served.url("/report"), None);
    assert_eq!(
        (got.status, got.content_type.as_str()),
        (200, "application/json")
    );
    let json: Value = serde_json::from_slice(&got.body).expect("/report is JSON");
    let report = Report::new(json);
    assert_eq!(report.json["version"], 1, "{}", report.context());
    let open_now = report
        .open_descriptors()
        .iter()
        .filter(|d| d.v["pid"] == pid && d.v["at_exit"] == false)
        .count() as f64;
    assert_eq!(open_now, truth, "{}", report.context());
    let group = report.json["stacks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| {
            g["stack"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|f| f["symbol"] == "leak_file")
        })
        .unwrap_or_else(|| panic!("no group opened in leak_file\n{}", report.context()));
    assert_eq!(
        group["open_count"],
        served.leaked_in_proc(),
        "{}",
        report.context()
    );

    let missing = curl(&served.url("/nothing/here"), None);
    assert_eq!(missing.status, 404, "{}", missing.text());
    served.tracer.stop();
}

/// A Prometheus server, started with its own configuration and data directory; killed when
/// dropped.
struct Prometheus {
    child: Child,
    /// `127.0.0.1:PORT` of its web API.
    addr: String,
    log: PathBuf,
}

impl Prometheus {
    #[track_caller]
    fn start(scrape: &str) -> Prometheus {
        use std::os::unix::process::CommandExt as _;
        let dir = unique_dir(None, "prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: tracer\n    static_configs:\n      - targets: ['{scrape}']\n"
            ),
        )
        .unwrap();
        // A free port: bound by us, then released for Prometheus.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .expect("prometheus runs (Debian package prometheus)");
        Prometheus { child, addr, log }
    }

    /// The value of the one series `query` returns, if it returns one.
    fn query(&self, query: &str) -> Option<f64> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--data-urlencode"])
            .arg(format!("query={query}"))
            .arg(format!("http://{}/api/v1/query", self.addr))
            .output()
            .ok()?;
        let json: Value = serde_json::from_slice(&out.stdout).ok()?;
        let result = json["data"]["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// Waits until `query` returns `expected`; panics with what it last returned and the log.
    #[track_caller]
    fn wait_for(&self, query: &str, expected: f64) {
        let mut last = None;
        let deadline = std::time::Instant::now() + SCRAPED_TIMEOUT;
        while std::time::Instant::now() < deadline {
            last = self.query(query);
            if last == Some(expected) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "Prometheus: {query} returned {last:?}, not {expected}, within {SCRAPED_TIMEOUT:?}\nlog:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the process group we started; no memory is involved.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Prometheus scrapes the endpoint, and its query API returns the fixture's open-descriptor
/// series with the value /proc/PID/fd shows, after one batch and after the next.
#[test]
fn prometheus_scrapes_the_open_fds_series() {
    let mut served = Served::start("serve-prometheus");
    let pid = served.pid();
    let prometheus = Prometheus::start(&served.addr);
    let series = format!(r#"process_open_fds{{job="tracer",pid="{pid}",comm="serve_leak"}}"#);
    served.leak(3);
    prometheus.wait_for(&series, fd_count(pid).unwrap() as f64);
    served.leak(4);
    let truth = fd_count(pid).unwrap() as f64;
    prometheus.wait_for(&series, truth);
    prometheus.wait_for(&format!(r#"process_max_fds{{pid="{pid}"}}"#), LIMIT as f64);
    assert_eq!(served.leaked_in_proc(), 7);
    served.tracer.stop();
}

/// What `go tool pprof -raw` prints: each sample's count, its stack's function names and its
/// labels.
struct RawSample {
    count: u64,
    functions: Vec<String>,
    labels: String,
}

/// Parses `go tool pprof -raw`: the samples (`COUNT AGE: LOCATION-IDS`, then label lines),
/// then the locations (`ID: ADDR [M=N] FUNCTION FILE:LINE s=0`, inlined calls on lines of
/// their own after it).
fn parse_raw(raw: &str) -> Vec<RawSample> {
    let samples_at = raw.find("\nSamples:\n").expect("a Samples section");
    let locations_at = raw.find("\nLocations\n").expect("a Locations section");
    let mut functions_of: std::collections::HashMap<u64, Vec<String>> = Default::default();
    let mut current = None;
    for line in raw[locations_at..].lines().skip(2) {
        if line.starts_with("Mappings") {
            break;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(id) = words
            .first()
            .and_then(|w| w.strip_suffix(':'))
            .and_then(|w| w.parse().ok())
        {
            current = Some(id);
            let name_at = if words.get(2).is_some_and(|w| w.starts_with("M=")) {
                3
            } else {
                2
            };
            functions_of
                .entry(id)
                .or_default()
                .push(words[name_at..].join(" "));
        } else if let Some(id) = current {
            functions_of.entry(id).or_default().push(words.join(" "));
        }
    }
    let mut samples: Vec<RawSample> = Vec::new();
    for line in raw[samples_at..locations_at].lines().skip(3) {
        match line.split_once(':') {
            Some((values, ids)) if !line.contains(":[") => {
                let count = values.split_whitespace().next().unwrap().parse().unwrap();
                let functions = ids
                    .split_whitespace()
                    .filter_map(|id| functions_of.get(&id.parse().ok()?))
                    .flatten()
                    .cloned()
                    .collect();
                samples.push(RawSample {
                    count,
                    functions,
                    labels: String::new(),
                });
            }
            _ => {
                if let Some(last) = samples.last_mut() {
                    last.labels.push_str(line.trim());
                    last.labels.push(' ');
                }
            }
        }
    }
    samples
}

/// `go tool pprof -raw http://ADDR/debug/pprof/open_fds` reads the profile as it is and finds
/// the leaking function with the count of descriptors /proc shows on the leaked file.
#[test]
fn pprof_reads_the_open_fds_profile() {
    let mut served = Served::start("serve-pprof");
    let pid = served.pid();
    served.leak(6);
    let leaked = served.leaked_in_proc();
    let home = unique_dir(None, "pprof-home");
    let out = run_with_timeout(
        {
            let mut cmd = Command::new("go");
            cmd.args([
                "tool",
                "pprof",
                "-raw",
                &served.url("/debug/pprof/open_fds"),
            ])
            .env("HOME", &home)
            .env("PPROF_TMPDIR", &home);
            cmd
        },
        CLIENT_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "go tool pprof failed (Debian package golang-go)\n{}",
        out.context()
    );
    let samples = parse_raw(&out.stdout);
    let leaking: Vec<&RawSample> = samples
        .iter()
        .filter(|s| s.functions.iter().any(|f| f.starts_with("leak_file ")))
        .collect();
    let count: u64 = leaking.iter().map(|s| s.count).sum();
    assert_eq!(
        count, leaked,
        "/proc shows {leaked} on the file\n{}",
        out.stdout
    );
    for s in &leaking {
        assert!(
            s.functions
                .iter()
                .any(|f| f.starts_with("leak_batch ") && f.contains("serve_leak.c:")),
            "the caller with file and line\n{}",
            out.stdout
        );
        for label in [
            format!("pid:[{pid}]"),
            "comm:[serve_leak]".into(),
            "kind:[file]".into(),
        ] {
            assert!(s.labels.contains(&label), "{label}\n{}", out.stdout);
        }
    }
    assert!(
        out.stdout.contains("count/count[dflt] age/seconds"),
        "{}",
        out.stdout
    );
    served.tracer.stop();
}

/// An address in use, one not on this host, a privileged port without the capability and a
/// malformed address: one line, a non-zero exit, nothing attached.
#[test]
fn serve_refuses_bad_addresses() {
    require_root();
    let pid = std::process::id().to_string();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    // A privileged port nobody listens on (root may bind it; the tracer will not be allowed).
    let privileged = (600..1024)
        .find(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port below 1024");
    let privileged_addr = format!("127.0.0.1:{privileged}");

    let cases: Vec<(Command, &[&str])> = vec![
        (
            tracer_command(&["--pid", &pid, "--serve", &busy_addr]),
            &["cannot serve on", "already in use"],
        ),
        (
            tracer_command(&["--pid", &pid, "--serve", "192.0.2.1:9464"]),
            &["cannot serve on 192.0.2.1:9464", "no interface"],
        ),
        (
            {
                let mut cmd = Command::new("setpriv");
                cmd.args(["--bounding-set=-net_bind_service", "--"])
                    .arg(tracer_tests::tracer_bin())
                    .args(["--pid", &pid, "--serve", &privileged_addr]);
                cmd
            },
            &["cannot serve on", "permission denied"],
        ),
        (
            tracer_command(&["--pid", &pid, "--serve", "localhost:x"]),
            &["--serve", "not an IP:PORT address"],
        ),
    ];
    for (cmd, words) in cases {
        let out = run_with_timeout(cmd, CLIENT_TIMEOUT);
        out.assert_clean_failure(words);
        assert!(!out.stderr.contains("attached"), "{}", out.context());
    }
    drop(busy);
}
