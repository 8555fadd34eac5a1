//! Running the tracer under the bench: following a command, or attached to another process,
//! and reading what its report says about events and leaks.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::child::{Ended, Watched};

/// What the bench reads from a tracer's JSON report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReportFacts {
    pub received: u64,
    pub lost: u64,
    /// Descriptors created while traced that the report calls open. The workloads close
    /// everything they open, so each one is a false leak.
    pub false_leaks: u64,
}

/// Reads the facts from a JSON report.
pub(crate) fn facts(report: &str) -> Result<ReportFacts> {
    let json: Value = serde_json::from_str(report).context("the tracer's report is not JSON")?;
    let count = |pointer: &str| json.pointer(pointer).and_then(Value::as_u64);
    let false_leaks = json["open_descriptors"]
        .as_array()
        .context("the report has no open_descriptors")?
        .iter()
        .filter(|d| {
            !matches!(
                d["opened_by"].as_str(),
                Some("pre-existing") | Some("inherited")
            )
        })
        .count() as u64;
    Ok(ReportFacts {
        received: count("/events/received").context("the report has no events.received")?,
        lost: count("/events/lost").context("the report has no events.lost")?,
        false_leaks,
    })
}

/// How long a tracer gets to attach, and to report and detach.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(180);

/// `tracer --json [extra] -- argv`: follows the command from its first syscall and exits
/// when it does; returns its report's facts.
pub(crate) fn follow(
    tracer: &Path,
    extra: &[&str],
    argv: &[String],
    timeout: Duration,
) -> Result<ReportFacts> {
    let mut cmd = Command::new(tracer);
    cmd.arg("--json").args(extra).arg("--").args(argv);
    let ended = Watched::spawn(&mut cmd)?.wait_success(timeout)?;
    facts(&ended.stdout)
}

/// A tracer attached with `--pid`, until `stop`.
pub(crate) struct Attached {
    tracer: Watched,
    /// From start to the `attached` line.
    pub attach_time: Duration,
}

impl Attached {
    /// Starts `tracer --pid PID [extra]` and waits for `attached`.
    pub(crate) fn start(tracer: &Path, pid: u32, extra: &[&str]) -> Result<Attached> {
        let pid = pid.to_string();
        let mut args = vec!["--pid", pid.as_str()];
        args.extend_from_slice(extra);
        Self::start_args(tracer, &args)
    }

    /// Starts `tracer ARGS` and waits for `attached`.
    pub(crate) fn start_args(tracer: &Path, args: &[&str]) -> Result<Attached> {
        let mut cmd = Command::new(tracer);
        cmd.args(args);
        let mut tracer = Watched::spawn(&mut cmd)?;
        let attach_time = tracer.wait_for_stderr("attached", ATTACH_TIMEOUT)?;
        Ok(Attached {
            tracer,
            attach_time,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.tracer.pid()
    }

    /// Ctrl-C: the tracer reports and exits.
    pub(crate) fn stop(mut self) -> Result<Ended> {
        self.tracer.signal(libc::SIGINT);
        self.tracer.wait_success(STOP_TIMEOUT)
    }
}

/// A process that does nothing: a target for a tracer whose cost on *other* processes is
/// measured.
pub(crate) struct Idle(Child);

impl Idle {
    pub(crate) fn start() -> Result<Idle> {
        Command::new("sleep")
            .arg("3600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map(Idle)
            .context("could not start `sleep 3600`")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Descriptors the tracer learned from /proc or by inheritance are not the workload's;
    /// anything else still open is a false leak.
    #[test]
    fn counts_false_leaks() {
        let report = r#"{"events": {"received": 600010, "lost": 12},
            "open_descriptors": [
                {"fd": 0, "opened_by": "pre-existing"},
                {"fd": 1, "opened_by": "inherited"},
                {"fd": 7, "opened_by": "openat"}]}"#;
        assert_eq!(
            facts(report).unwrap(),
            ReportFacts {
                received: 600010,
                lost: 12,
                false_leaks: 1
            }
        );
    }

    /// A report without the counters is an error, not zero losses.
    #[test]
    fn rejects_report_without_counts() {
        assert!(facts(r#"{"open_descriptors": []}"#).is_err());
        assert!(facts("tracer: error").is_err());
    }
}
