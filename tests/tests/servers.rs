//! Real servers from Debian's packages, started by the test on private ports, under real
//! clients on loopback: PostgreSQL under `pgbench -C` (a backend forked per connection, living
//! milliseconds) and backends that end their own session, Redis under `redis-benchmark -k 0`
//! (clients close first) and clients that send QUIT (Redis closes first). The report's
//! TIME_WAIT must be the followed processes' own, as `ss` shows them on the server's side,
//! every backend's stacks must have symbols, and the live tables must equal /proc.
//!
//! `cargo xtask test` (and so `.ci/run`) installs postgresql, redis-server, redis-tools and
//! iproute2 when they are missing.

use std::{
    collections::BTreeSet,
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use tracer_tests::{
    ATTACH_TIMEOUT, Filter, Report, Tracer, require_root, serde_json::Value, wait_stopped,
    wait_until,
};

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

#[track_caller]
fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Sockets `ss` shows in TIME_WAIT (or FIN_WAIT2, the substate of a timewait socket still
/// waiting for the peer's FIN, which /proc shows the same way) whose local port is `port`:
/// the server's side of connections it closed first.
fn server_side_time_wait(port: u16) -> u64 {
    let out = run(Command::new("ss").args(["-Htan"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() >= 5
                && matches!(cols[0], "TIME-WAIT" | "FIN-WAIT-2")
                && cols[3].ends_with(&format!(":{port}"))
        })
        .count() as u64
}

/// Processes stopped with SIGSTOP (each waited for until it is), continued when dropped: their
/// descriptor tables stay as /proc shows them while they are.
struct Frozen(Vec<u32>);

impl Frozen {
    #[track_caller]
    fn new(pids: Vec<u32>) -> Frozen {
        for &pid in &pids {
            tracer_tests::signal(pid as i32, libc::SIGSTOP);
        }
        let frozen = Frozen(pids);
        for &pid in &frozen.0 {
            wait_stopped(pid, Duration::from_secs(30));
        }
        frozen
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &pid in &self.0 {
            tracer_tests::signal(pid as i32, libc::SIGCONT);
        }
    }
}

/// The report's TIME_WAIT groups.
fn time_wait_groups(report: &Report) -> Vec<&Value> {
    report.json["time_wait"]
        .as_array()
        .unwrap_or_else(|| panic!("no time_wait array\n{}", report.context()))
        .iter()
        .collect()
}

/// The descriptor numbers /proc shows open in `pid`.
fn proc_fds(pid: u32) -> BTreeSet<u64> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A PostgreSQL cluster of its own: initdb'd as the postgres user in a fresh directory,
/// listening on 127.0.0.1 at a free port and on a socket in that directory; stopped and
/// removed when dropped.
struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl Postgres {
    #[track_caller]
    fn start() -> Postgres {
        let bin = fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is not installed (cargo xtask test installs it)")
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .expect("no /usr/lib/postgresql/*/bin/initdb");
        let port = free_port();
        // Under /tmp: the postgres user must reach it, which the workspace may not allow.
        let dir = std::env::temp_dir().join(format!("tracer-pg-{}-{port}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the cluster directory");
        run(Command::new("chown").arg("postgres:postgres").arg(&dir));
        let pg = Postgres { dir, bin, port };
        pg.as_postgres(&format!(
            "{} -D {} -A trust -U postgres",
            pg.bin.join("initdb").display(),
            pg.data().display()
        ));
        // No autovacuum: its workers come and go on their own and would blur the tables.
        pg.as_postgres(&format!(
            "{} -D {} -w -l {} -o \"-p {port} -k {} -c listen_addresses=127.0.0.1 -c \
             autovacuum=off -c max_connections=20\" start",
            pg.bin.join("pg_ctl").display(),
            pg.data().display(),
            pg.dir.join("log").display(),
            pg.dir.display()
        ));
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    #[track_caller]
    fn as_postgres(&self, command: &str) -> Output {
        run(Command::new("su").args(["postgres", "-s", "/bin/sh", "-c", command]))
    }

    /// The postmaster: the first line of postmaster.pid.
    fn postmaster(&self) -> u32 {
        let text = fs::read_to_string(self.data().join("postmaster.pid")).expect("postmaster.pid");
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("a pid in postmaster.pid")
    }

    /// A client program of this version, connected over TCP to 127.0.0.1 (or the socket
    /// directory, `tcp` false).
    fn client(&self, program: &str, tcp: bool) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        let host = if tcp {
            "127.0.0.1".to_string()
        } else {
            self.dir.display().to_string()
        };
        cmd.args(["-h", &host, "-p", &self.port.to_string(), "-U", "postgres"]);
        cmd
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("su")
            .args(["postgres", "-s", "/bin/sh", "-c"])
            .arg(format!(
                "{} -D {} -m immediate stop",
                self.bin.join("pg_ctl").display(),
                self.data().display()
            ))
            .output();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// PostgreSQL under `pgbench -C`, then backends that end their own session (and so close the
/// connection first): the server's TIME_WAIT is found whole and belongs to the backends, never
/// to the postmaster, which closes no client connection; no client's TIME_WAIT is counted;
/// every backend's stacks have symbols, however short its life; the live processes' tables
/// equal /proc.
#[test]
fn postgres_pgbench_time_wait_and_stacks() {
    require_root();
    let pg = Postgres::start();
    // Over the socket: no TCP connection, no TIME_WAIT before the tracer attaches.
    let mut init = pg.client("pgbench", false);
    run(init.args(["-i", "-s", "1", "postgres"]));
    let postmaster = pg.postmaster();
    // The postmaster's own children (checkpointer, writers, launchers), and perhaps the
    // backend of pgbench -i still exiting: those that are not backends of the clients below.
    let auxiliary: BTreeSet<u32> = tracer_tests::children_of(postmaster).into_iter().collect();
    // The backends' own descriptors and process entries, listed one by one.
    let mut tracer = Tracer::attach(postmaster, &["--at-exit-descriptors"]);
    tracer.wait_attached(ATTACH_TIMEOUT);

    // A number of transactions, not a time: as many backends however fast the machine is.
    let mut bench = pg.client("pgbench", true);
    run(bench.args(["-C", "-c", "4", "-t", "50", "postgres"]));
    const TERMINATED: u64 = 10;
    for _ in 0..TERMINATED {
        // The backend ends its own session: it exits and closes first. psql then fails.
        let out = pg
            .client("psql", true)
            .args([
                "-c",
                "select pg_terminate_backend(pg_backend_pid())",
                "postgres",
            ])
            .output()
            .expect("run psql");
        assert!(
            !out.status.success(),
            "psql survived its terminated session"
        );
    }

    // What the kernel says, before the stop, once it is final: a terminated backend (and
    // pgbench's last ones) may still be exiting, and closing its socket, after its client saw
    // the error, so every client's backend is waited for until the postmaster reaped it. The
    // processes left are then frozen, so that their tables are what /proc shows until the
    // report is built.
    wait_until(
        Duration::from_secs(60),
        "the clients' backends to be reaped",
        || {
            tracer_tests::children_of(postmaster)
                .iter()
                .all(|pid| auxiliary.contains(pid))
        },
    );
    let server_side = server_side_time_wait(pg.port);
    let frozen = Frozen::new(
        std::iter::once(postmaster)
            .chain(tracer_tests::children_of(postmaster))
            .collect(),
    );
    let live: Vec<(u32, BTreeSet<u64>)> =
        frozen.0.iter().map(|&pid| (pid, proc_fds(pid))).collect();
    let report = tracer.stop();
    drop(frozen);
    let ctx = report.context();
    assert!(
        server_side >= TERMINATED,
        "ss shows {server_side} TIME_WAIT on port {}\n{ctx}",
        pg.port
    );

    let groups = time_wait_groups(&report);
    let server_local = format!("127.0.0.1:{}", pg.port);
    for g in &groups {
        assert_ne!(
            g["pid"].as_u64(),
            Some(u64::from(postmaster)),
            "TIME_WAIT blamed on the postmaster: {g}\n{ctx}"
        );
        assert_eq!(
            g["local"],
            server_local.as_str(),
            "a client's TIME_WAIT: {g}\n{ctx}"
        );
        let pid = g["pid"].as_u64().expect("pid") as u32;
        let backend = report.process(pid);
        assert!(
            backend.is_some_and(|p| p.v["ppid"].as_u64() == Some(u64::from(postmaster))),
            "TIME_WAIT of pid {pid}, not a backend of the postmaster: {g}\n{ctx}"
        );
    }
    // pgbench's client ports come back within a second: a new connection on a TIME_WAIT's
    // ports ends it, so ss shows those the report counts minus those it says ended early.
    let counted: u64 = groups.iter().filter_map(|g| g["count"].as_u64()).sum();
    let ended_early: u64 = groups
        .iter()
        .filter_map(|g| g["ended_early"].as_u64())
        .sum();
    assert_eq!(
        counted - ended_early,
        server_side,
        "every server-side TIME_WAIT, once ({counted} counted, {ended_early} ended early)\n{ctx}"
    );
    assert_eq!(
        report.json["tcp"]["TIME_WAIT"].as_u64().unwrap_or(0),
        server_side,
        "tcp.TIME_WAIT is what ss shows on the server's side\n{ctx}"
    );

    // Every stack of every backend that came and went has symbols, its innermost frame (the
    // libc wrapper) included.
    let exited: BTreeSet<u32> = report
        .processes()
        .iter()
        .filter(|p| p.exited())
        .map(|p| p.pid())
        .collect();
    assert!(exited.len() > 20, "few backends came and went\n{ctx}");
    let held = report.descriptors(&Filter::new().at_exit(true));
    let with_stack: Vec<_> = held
        .iter()
        .filter(|d| exited.contains(&d.pid()) && !d.stack_symbols().is_empty())
        .collect();
    assert!(with_stack.len() > 100, "few backend stacks to check\n{ctx}");
    for d in &with_stack {
        let symbols = d.stack_symbols();
        assert!(
            symbols[0] != "?" && d.v["stack"][0]["module"].is_string(),
            "pid {} fd {}: {:?}\n{ctx}",
            d.pid(),
            d.fd(),
            d.v["stack"]
        );
    }

    // The live processes' tables are what /proc showed while they were frozen for the stop.
    for (pid, frozen) in &live {
        let reported: BTreeSet<u64> = report
            .descriptors(&Filter::new().pid(*pid).at_exit(false))
            .iter()
            .map(|d| d.fd())
            .collect();
        assert_eq!(
            reported, *frozen,
            "pid {pid}: the report, and /proc while it was frozen for the stop\n{ctx}"
        );
    }
}

/// A Redis server of its own, in the foreground, on a free port, without persistence.
fn start_redis(dir: &Path, port: u16) -> Child {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is not installed (cargo xtask test installs it)");
    wait_until(Duration::from_secs(10), "redis-server listening", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    child
}

/// Redis under clients that close first (`redis-benchmark -k 0`: a connection per request),
/// then clients that send QUIT, on which Redis closes first. On loopback the clients' sockets
/// go to TIME_WAIT inside Redis's close(): none of them is Redis's. What is Redis's is what
/// `ss` shows on its side, and the report finds all of it.
#[test]
fn redis_time_wait_is_its_own() {
    require_root();
    let port = free_port();
    let dir = tracer_tests::unique_dir(None, "redis");
    let mut redis = start_redis(&dir, port);
    // The probe connection above left one TIME_WAIT on the client's side only.
    let pid = redis.id();
    let mut tracer = Tracer::attach(pid, &[]);
    tracer.wait_attached(ATTACH_TIMEOUT);

    run(Command::new("redis-benchmark").args([
        "-p",
        &port.to_string(),
        "-k",
        "0",
        "-c",
        "4",
        "-n",
        "2000",
        "-t",
        "ping",
        "-q",
    ]));
    const QUITS: u64 = 10;
    for _ in 0..QUITS {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(b"QUIT\r\n").expect("send QUIT");
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply)
            .expect("read until redis closes");
        assert!(
            reply.starts_with(b"+OK"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
    }

    // Each QUIT connection reaches TIME_WAIT on Redis's side when the client's FIN arrives,
    // which the client's close sent: waited for, so that the look is final.
    wait_until(
        Duration::from_secs(60),
        "Redis's side of the QUIT connections in TIME_WAIT",
        || server_side_time_wait(port) >= QUITS,
    );
    let server_side = server_side_time_wait(port);
    let report = tracer.stop();
    let _ = redis.kill();
    let _ = redis.wait();
    let ctx = report.context();
    assert_eq!(
        server_side, QUITS,
        "ss: Redis closed the QUIT connections first\n{ctx}"
    );

    let groups = time_wait_groups(&report);
    let local = format!("127.0.0.1:{port}");
    for g in &groups {
        assert_eq!(g["pid"].as_u64(), Some(u64::from(pid)), "{g}\n{ctx}");
        assert_eq!(
            g["local"],
            local.as_str(),
            "a client's TIME_WAIT: {g}\n{ctx}"
        );
    }
    let counted: u64 = groups.iter().filter_map(|g| g["count"].as_u64()).sum();
    assert_eq!(counted, QUITS, "Redis's TIME_WAIT, all of it\n{ctx}");
    assert_eq!(
        report.json["tcp"]["TIME_WAIT"].as_u64().unwrap_or(0),
        server_side,
        "tcp.TIME_WAIT is what ss shows on Redis's side\n{ctx}"
    );
}
