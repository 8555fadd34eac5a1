//! The C workload (bench/workload.c): built with cc, run, and its result file read back.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::process::{self, workspace_root};

/// Micro workloads: one loop iteration each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Micro {
    /// open("/dev/null") + close
    Open,
    /// socket(AF_INET, SOCK_STREAM) + close
    Socket,
    /// loopback socket + connect + accept4 + close of both ends
    Connect,
}

impl Micro {
    pub(crate) const ALL: [Micro; 3] = [Micro::Open, Micro::Socket, Micro::Connect];

    /// The workload's mode argument, also the name in the table and JSON.
    pub(crate) fn mode(self) -> &'static str {
        match self {
            Micro::Open => "open",
            Micro::Socket => "socket",
            Micro::Connect => "connect",
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Micro::Open => "open+close /dev/null",
            Micro::Socket => "socket+close",
            Micro::Connect => "loopback connect+accept+close",
        }
    }

    /// Iterations for a full run: about a second untraced on a 2-core VM.
    pub(crate) fn iterations(self) -> u64 {
        match self {
            Micro::Open => 300_000,
            Micro::Socket => 150_000,
            Micro::Connect => 25_000,
        }
    }
}

/// The built workload binary and a scratch directory for its result files.
pub(crate) struct Workload {
    pub binary: PathBuf,
    scratch: PathBuf,
    next_result: u32,
}

impl Workload {
    /// Compiles bench/workload.c into `dir`.
    pub(crate) fn build(dir: &Path) -> Result<Workload> {
        let source = workspace_root().join("bench").join("workload.c");
        let binary = dir.join("workload");
        let scratch = dir.join("results");
        fs::create_dir_all(&scratch)
            .with_context(|| format!("cannot create {}", scratch.display()))?;
        process::run(
            Command::new("cc")
                .args(["-O2", "-g", "-fno-omit-frame-pointer", "-Wall", "-o"])
                .arg(&binary)
                .arg(&source),
        )
        .context("building the benchmark workload failed")?;
        Ok(Workload {
            binary,
            scratch,
            next_result: 0,
        })
    }

    /// A fresh result file path (removed if a previous bench left it).
    pub(crate) fn result_path(&mut self) -> PathBuf {
        self.next_result += 1;
        let path = self.scratch.join(format!("result-{}", self.next_result));
        let _ = fs::remove_file(&path);
        path
    }

    /// The arguments of a timed micro loop.
    pub(crate) fn micro_args(&self, micro: Micro, iterations: u64, result: &Path) -> Vec<String> {
        vec![
            self.binary.display().to_string(),
            micro.mode().to_owned(),
            iterations.to_string(),
            result.display().to_string(),
        ]
    }

    /// The arguments of a paced open+close run (`pairs_per_s` 0: unpaced).
    pub(crate) fn rate_args(
        &self,
        pairs_per_s: u64,
        seconds: u64,
        procs: u32,
        result: &Path,
    ) -> Vec<String> {
        vec![
            self.binary.display().to_string(),
            "rate".to_owned(),
            pairs_per_s.to_string(),
            seconds.to_string(),
            procs.to_string(),
            result.display().to_string(),
        ]
    }

    /// The arguments of a run that opens `count` descriptors at `per_s` a second and holds
    /// them open.
    pub(crate) fn hold_args(&self, count: u64, per_s: u64, result: &Path) -> Vec<String> {
        vec![
            self.binary.display().to_string(),
            "hold".to_owned(),
            count.to_string(),
            per_s.to_string(),
            result.display().to_string(),
        ]
    }
}

/// A command from an argument vector.
pub(crate) fn command(argv: &[String]) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

/// The `key=value` pairs of a result file.
pub(crate) fn read_result(path: &Path) -> Result<HashMap<String, f64>> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("the workload wrote no result to {}", path.display()))?;
    parse_result(&text).with_context(|| format!("bad workload result in {}", path.display()))
}

/// Waits up to `timeout` for a result file to appear, then reads it.
pub(crate) fn await_result(path: &Path, timeout: Duration) -> Result<HashMap<String, f64>> {
    let started = Instant::now();
    while !path.exists() {
        if started.elapsed() >= timeout {
            bail!(
                "the workload wrote no result to {} within {}s",
                path.display(),
                timeout.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    read_result(path)
}

fn parse_result(text: &str) -> Result<HashMap<String, f64>> {
    let mut values = HashMap::new();
    for pair in text.split_whitespace() {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("`{pair}` is not key=value"))?;
        let value: f64 = value
            .parse()
            .with_context(|| format!("`{value}` is not a number"))?;
        values.insert(key.to_owned(), value);
    }
    if values.is_empty() {
        bail!("empty result");
    }
    Ok(values)
}

/// One value of a result, or an error naming it.
pub(crate) fn value(result: &HashMap<String, f64>, key: &str) -> Result<f64> {
    result
        .get(key)
        .copied()
        .with_context(|| format!("the workload result has no `{key}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A result line becomes its key/value pairs.
    #[test]
    fn parses_result_line() {
        let values = parse_result("ns_per_iter=3512.5 iterations=300000 elapsed_s=1.05\n").unwrap();
        assert_eq!(values["ns_per_iter"], 3512.5);
        assert_eq!(values["iterations"], 300000.0);
        assert_eq!(value(&values, "elapsed_s").unwrap(), 1.05);
        assert!(value(&values, "pairs").is_err());
    }

    /// Garbage and empty files are errors, not zeros.
    #[test]
    fn rejects_bad_result() {
        assert!(parse_result("").is_err());
        assert!(parse_result("ns_per_iter").is_err());
        assert!(parse_result("ns_per_iter=fast").is_err());
    }
}
