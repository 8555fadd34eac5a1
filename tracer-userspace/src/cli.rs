//! Command-line options (report contract v1: --pid, -- COMMAND, --duration, --json, --min-age)
//! as clap parses them ([`Options`]), and the checked settings a session runs with
//! ([`Config`]), as ripgrep separates its low-level and high-level arguments.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

/// The largest stack copy the kernel side can make, in KiB.
const STACK_COPY_MAX_KIB: u32 = (tracer_common::STACK_TOP_BYTES / 1024) as u32;

/// Find descriptor leaks in live processes: attach eBPF probes to a process tree and report
/// what is still open, grouped by the user-space stack that opened it.
#[derive(Debug, Parser)]
#[command(name = "tracer", version, arg_required_else_help = true)]
pub struct Options {
    /// Attach to this running process, its threads, its current descendants and every process
    /// it forks from then on. Repeat it to follow several.
    #[arg(long, short, value_name = "PID", conflicts_with = "command")]
    pub pid: Vec<u32>,

    /// Follow every process named NAME (its comm: at most 15 bytes), those running now and
    /// those that exec it later, each from its exec, with their descendants. Repeatable.
    #[arg(long, value_name = "NAME", conflicts_with = "command")]
    pub comm: Vec<String>,

    /// Follow every process in this cgroup v2 directory (under /sys/fs/cgroup, or relative
    /// to it, as /proc/PID/cgroup shows it) and below it: those in it now, and those that
    /// exec or move into it later. Repeatable.
    #[arg(long, value_name = "PATH", conflicts_with = "command")]
    pub cgroup: Vec<PathBuf>,

    /// Follow the processes of a container (docker, containerd, podman): its cgroup is the
    /// one whose name contains ID. Repeatable.
    #[arg(long, value_name = "ID", conflicts_with = "command")]
    pub container: Vec<String>,

    /// Watch every process on the host: count what each creates and closes in the kernel (no
    /// events, no stacks), rank them by how fast their descriptors, threads, zombies and
    /// CLOSE_WAIT sockets grow, and name those leaking now. Prints a line every few seconds.
    #[arg(
        long,
        conflicts_with_all = ["pid", "comm", "cgroup", "container", "command"]
    )]
    pub all: bool,

    /// With --all: follow the N fastest growers with full tracing (stacks) once they are seen
    /// leaking, as --pid would, without restarting anything.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub follow_top: Option<u32>,

    /// Stop after SECS seconds and print the report (default: on Ctrl-C or SIGTERM, or when
    /// every followed process has exited).
    #[arg(long, value_name = "SECS", value_parser = positive_seconds)]
    pub duration: Option<f64>,

    /// Print the final report as one JSON document on stdout (human text goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Also list, one by one, every descriptor a process still held when it exited
    /// (`at_exit: true` in the JSON). By default those are only counted per stack: a server
    /// whose workers come and go would otherwise make the report, and the tracer's memory,
    /// grow with every worker that ever lived.
    #[arg(long)]
    pub at_exit_descriptors: bool,

    /// Report only descriptors open for at least SECS seconds.
    #[arg(long, value_name = "SECS", default_value_t = 0.0, value_parser = non_negative_seconds)]
    pub min_age: f64,

    /// Size of the kernel-to-user ring buffer in MiB (a power of two). Raise it if the report
    /// says events were lost. Each descriptor event carries up to --stack-copy-kib of stack,
    /// so the default holds about 7 500 of them: some 40 ms of a process that does nothing
    /// but open and close, time for the reader to be scheduled on a busy machine.
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = ring_buffer_mib)]
    pub ring_buffer_mib: u32,

    /// KiB of user stack copied at each descriptor's creation (0 to 8), from which stacks
    /// are unwound through code without frame pointers. The copy is most of the per-event
    /// cost; less of it shortens stacks of code without frame pointers.
    #[arg(
        long,
        value_name = "KIB",
        default_value_t = STACK_COPY_MAX_KIB,
        value_parser = clap::value_parser!(u32).range(0..=i64::from(STACK_COPY_MAX_KIB))
    )]
    pub stack_copy_kib: u32,

    /// Do not capture CPython frames: Python processes get native stacks only, and pay what
    /// any other process does (one map lookup per event with a stack) instead of the walk of
    /// the interpreter's frames.
    #[arg(long)]
    pub no_python_frames: bool,

    /// Show the N largest groups of descriptors (by creating stack) in full in the text
    /// report; the JSON report always has every group.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub top: u32,

    /// Also write an SVG flame graph of the descriptors still open, by the stack that
    /// created them, to FILE.
    #[arg(long, value_name = "FILE")]
    pub flamegraph: Option<PathBuf>,

    /// Write a snapshot (the full report, and what grew since the previous one) every SECS
    /// seconds while tracing goes on; `kill -USR1` writes one at any time.
    #[arg(long, value_name = "SECS", value_parser = positive_seconds)]
    pub interval: Option<f64>,

    /// Write each snapshot into DIR, as a text and a JSON file named by the time it was
    /// taken, instead of to stdout; the newest --keep are kept.
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,

    /// How many snapshots --report-dir keeps (the oldest go first).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: u32,

    /// Write a snapshot when a followed process holds PERCENT of its descriptor limit
    /// (RLIMIT_NOFILE, re-read from /proc/PID/limits); 0 turns this trigger off.
    #[arg(long, value_name = "PERCENT", default_value_t = 80, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub nofile_trigger: u32,

    /// Write a snapshot when the system's open file handles reach PERCENT of fs.file-max
    /// (/proc/sys/fs/file-nr); decimals allowed (fs.file-max is often in the millions);
    /// 0 turns this trigger off.
    #[arg(long, value_name = "PERCENT", default_value_t = 90.0, value_parser = percent)]
    pub file_max_trigger: f64,

    /// Write a snapshot when a group of descriptors (by creating stack) grows faster than
    /// RATE per minute, over the last minute (off by default).
    #[arg(long, value_name = "RATE", value_parser = positive_rate)]
    pub growth_trigger: Option<f64>,

    /// Show a live view, refreshed every second: events/s, lost events and the groups
    /// growing fastest. q or Ctrl-C stops and prints the final report.
    #[arg(long)]
    pub live: bool,
    /// Serve /metrics (Prometheus), /debug/pprof/open_fds (a pprof profile of the open
    /// descriptors by creating stack) and /report (the JSON report) over HTTP on ADDR, an
    /// IP:PORT such as 127.0.0.1:9464 or [::]:9464, while tracing.
    #[arg(long, value_name = "ADDR", value_parser = listen_address)]
    pub serve: Option<SocketAddr>,

    /// Start COMMAND with its arguments and follow it from its first syscall.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// What to trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A running process (or a thread of one) and its descendants.
    Pid(u32),
    /// A command to start, with its arguments (never empty).
    Command(Vec<String>),
    /// Several processes, or processes chosen by name or cgroup, now and later.
    Select(Selection),
    /// Every process on the host (`--all`), following the `follow_top` fastest growers.
    All { follow_top: usize },
}

/// Processes chosen by pid, name, cgroup or container (at least one of them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub cgroups: Vec<PathBuf>,
    pub containers: Vec<String>,
}

/// The settings of a session, checked and in the units the session uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub target: Target,
    /// Stop after this many seconds.
    pub duration: Option<f64>,
    pub json: bool,
    pub min_age_s: f64,
    pub ring_bytes: u32,
    pub stack_copy_bytes: u64,
    /// Capture CPython frames in Python processes (off with --no-python-frames).
    pub python_frames: bool,
    /// Groups shown in full in the text report.
    pub top: usize,
    pub flamegraph: Option<PathBuf>,
    /// List every descriptor held at exit, and keep every exited process, for the report.
    pub at_exit_descriptors: bool,
    /// Snapshots while tracing goes on, their triggers, and the live view.
    pub snapshots: SnapshotConfig,
    /// Where to serve the metrics, the profile and the report.
    pub serve: Option<SocketAddr>,
}

/// When to write snapshots while tracing, and where.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotConfig {
    /// Seconds between periodic snapshots.
    pub interval: Option<f64>,
    pub report_dir: Option<PathBuf>,
    /// Snapshots kept in `report_dir`.
    pub keep: usize,
    /// Fractions (0 to 1; 0 = off) of RLIMIT_NOFILE and fs.file-max that trigger a snapshot.
    pub nofile_fraction: f64,
    pub file_max_fraction: f64,
    /// Descriptors per minute that one stack group must gain to trigger a snapshot.
    pub growth_per_minute: Option<f64>,
    pub live: bool,
}

/// Options clap accepts but a session cannot run with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "say what to trace: --pid PID, --comm NAME, --cgroup PATH, --container ID, or -- COMMAND [ARGS...]"
    )]
    NoTarget,
    #[error("--comm {0}: a process name cannot be empty")]
    EmptyComm(String),
    #[error("--follow-top needs --all: it follows the fastest growers of the host-wide watch")]
    FollowTopWithoutAll,
}

impl Options {
    /// Checks what clap cannot express (exactly one of --pid and COMMAND) and converts the
    /// sizes to the units the session uses.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        if self.follow_top.is_some() && !self.all {
            return Err(ConfigError::FollowTopWithoutAll);
        }
        if let Some(empty) = self.comm.iter().find(|c| c.is_empty()) {
            return Err(ConfigError::EmptyComm(empty.clone()));
        }
        let selection = Selection {
            pids: self.pid,
            comms: self.comm,
            cgroups: self.cgroup,
            containers: self.container,
        };
        let target = match (selection, self.command.is_empty()) {
            _ if self.all => Target::All {
                follow_top: self.follow_top.unwrap_or(0) as usize,
            },
            (
                Selection {
                    pids,
                    comms,
                    cgroups,
                    containers,
                },
                _,
            ) if pids.len() == 1
                && comms.is_empty()
                && cgroups.is_empty()
                && containers.is_empty() =>
            {
                Target::Pid(pids[0])
            }
            (selection, _) if selection != Selection::default() => Target::Select(selection),
            (_, false) => Target::Command(self.command),
            (_, true) => return Err(ConfigError::NoTarget),
        };
        Ok(Config {
            target,
            duration: self.duration,
            json: self.json,
            min_age_s: self.min_age,
            ring_bytes: self.ring_buffer_mib << 20,
            stack_copy_bytes: u64::from(self.stack_copy_kib) * 1024,
            python_frames: !self.no_python_frames,
            top: self.top as usize,
            flamegraph: self.flamegraph,
            at_exit_descriptors: self.at_exit_descriptors,
            snapshots: SnapshotConfig {
                interval: self.interval,
                report_dir: self.report_dir,
                keep: self.keep as usize,
                nofile_fraction: f64::from(self.nofile_trigger) / 100.0,
                file_max_fraction: self.file_max_trigger / 100.0,
                growth_per_minute: self.growth_trigger,
                live: self.live,
            },
            serve: self.serve,
        })
    }
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => Ok(secs),
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

fn percent(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(percent) if (0.0..=100.0).contains(&percent) => Ok(percent),
        _ => Err(format!("`{text}` is not a percentage from 0 to 100")),
    }
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("`{text}` is not a positive number per minute")),
    }
}

fn non_negative_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Ok(secs),
        _ => Err(format!("`{text}` is not a number of seconds")),
    }
}

fn listen_address(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not an IP:PORT address such as 127.0.0.1:9464"))
}

fn ring_buffer_mib(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(mib) if mib.is_power_of_two() && mib <= 1024 => Ok(mib),
        _ => Err(format!("`{text}` is not a power of two between 1 and 1024")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// --pid and a command are alternatives; options before `--` belong to tracer.
    #[test]
    fn parses_both_modes() {
        let opts =
            Options::try_parse_from(["tracer", "--pid", "7", "--json", "--duration", "2"]).unwrap();
        assert_eq!(
            (opts.pid, opts.json, opts.duration),
            (vec![7], true, Some(2.0))
        );
        let opts =
            Options::try_parse_from(["tracer", "--min-age", "1", "--", "./srv", "--port", "80"])
                .unwrap();
        assert_eq!(opts.command, vec!["./srv", "--port", "80"]);
        assert_eq!((opts.top, opts.flamegraph, opts.serve), (10, None, None));
        let opts = Options::try_parse_from(["tracer", "--serve", "[::1]:9464", "--", "x"]).unwrap();
        assert_eq!(opts.serve, Some("[::1]:9464".parse().unwrap()));
        let opts =
            Options::try_parse_from(["tracer", "--top", "3", "--flamegraph", "fds.svg", "--", "x"])
                .unwrap();
        assert_eq!(
            (opts.top, opts.flamegraph),
            (3, Some(PathBuf::from("fds.svg")))
        );
        assert!(Options::try_parse_from(["tracer", "--pid", "7", "--", "x"]).is_err());
    }

    /// Sizes come out in bytes, and the target is the one option given.
    #[test]
    fn converts_to_config() {
        let config = Options::try_parse_from(["tracer", "--ring-buffer-mib", "2", "--", "x", "y"])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(config.target, Target::Command(vec!["x".into(), "y".into()]));
        assert_eq!(config.ring_bytes, 2 << 20);
        assert_eq!(config.stack_copy_bytes, 8192);
        assert!(config.python_frames);
        let config = Options::try_parse_from([
            "tracer",
            "--pid",
            "7",
            "--stack-copy-kib",
            "1",
            "--no-python-frames",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(
            (config.target, config.stack_copy_bytes, config.python_frames),
            (Target::Pid(7), 1024, false)
        );
        assert_eq!(config.snapshots.file_max_fraction, 0.9);
        // fs.file-max is often in the millions: a fraction of a percent can be set.
        let config = Options::try_parse_from(["tracer", "--file-max-trigger", "0.25", "--", "x"])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(config.snapshots.file_max_fraction, 0.0025);
    }

    /// Nonsense values are refused with an error, not a panic.
    #[test]
    fn refuses_bad_values() {
        for bad in [
            ["--duration", "0"],
            ["--duration", "nan"],
            ["--ring-buffer-mib", "3"],
            ["--pid", "-4"],
            ["--top", "0"],
            ["--stack-copy-kib", "9"],
            ["--top", "x"],
            ["--interval", "0"],
            ["--keep", "0"],
            ["--nofile-trigger", "101"],
            ["--file-max-trigger", "100.5"],
            ["--file-max-trigger", "-0.1"],
            ["--file-max-trigger", "nan"],
            ["--growth-trigger", "-1"],
            ["--serve", "localhost"],
            ["--serve", "127.0.0.1"],
            ["--serve", "127.0.0.1:99999"],
        ] {
            assert!(
                Options::try_parse_from(["tracer", bad[0], bad[1]]).is_err(),
                "{bad:?}"
            );
        }
        let opts = Options::try_parse_from(["tracer", "--json"]).unwrap();
        assert_eq!(opts.into_config(), Err(ConfigError::NoTarget));
        for bad in [["--comm", "x"], ["--cgroup", "/x"], ["--container", "abc"]] {
            assert!(
                Options::try_parse_from(["tracer", bad[0], bad[1], "--", "cmd"]).is_err(),
                "{bad:?}"
            );
        }
        let opts = Options::try_parse_from(["tracer", "--comm", ""]).unwrap();
        assert!(matches!(opts.into_config(), Err(ConfigError::EmptyComm(_))));
    }

    /// --all stands alone: with a pid, name, cgroup, container or command it is refused;
    /// --follow-top needs it.
    #[test]
    fn all_stands_alone() {
        let config = Options::try_parse_from(["tracer", "--all", "--follow-top", "2"])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(config.target, Target::All { follow_top: 2 });
        for bad in [
            &["--all", "--pid", "1"][..],
            &["--all", "--comm", "x"],
            &["--all", "--cgroup", "/x"],
            &["--all", "--container", "x"],
            &["--all", "--", "cmd"],
            &["--all", "--follow-top", "0"],
        ] {
            let args = std::iter::once("tracer").chain(bad.iter().copied());
            assert!(Options::try_parse_from(args).is_err(), "{bad:?}");
        }
        let opts = Options::try_parse_from(["tracer", "--follow-top", "1", "--pid", "1"]).unwrap();
        assert_eq!(opts.into_config(), Err(ConfigError::FollowTopWithoutAll));
    }

    /// Repeated --pid, and --comm, --cgroup and --container, select processes together; a
    /// single --pid stays what it was.
    #[test]
    fn selects_several_targets() {
        let config = Options::try_parse_from([
            "tracer",
            "--pid",
            "7",
            "--pid",
            "8",
            "--comm",
            "nginx",
            "--cgroup",
            "/a/b",
            "--container",
            "4f1e",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(
            config.target,
            Target::Select(Selection {
                pids: vec![7, 8],
                comms: vec!["nginx".into()],
                cgroups: vec![PathBuf::from("/a/b")],
                containers: vec!["4f1e".into()],
            })
        );
        let config = Options::try_parse_from(["tracer", "--comm", "sleep"])
            .unwrap()
            .into_config()
            .unwrap();
        assert!(matches!(config.target, Target::Select(_)));
    }
}
