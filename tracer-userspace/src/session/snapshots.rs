//! Snapshots while tracing goes on: on SIGUSR1, every `--interval`, and when a trigger fires
//! (`triggers`). A snapshot is the report `build_report` makes of the tables as they stand
//! (the same engine as the final report, which it leaves unchanged: building reads the
//! tables and only fills the symbol caches), plus what grew since the previous snapshot. It
//! goes to stdout (JSON with --json), or with --report-dir to a text and a JSON file per
//! snapshot, named by the time it was taken, the newest --keep kept. The live view (`live`)
//! is refreshed from the same once-a-second check.

use std::{
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::{Interval, MissedTickBehavior, interval, interval_at},
};

use super::{
    build_report,
    live::Live,
    pipeline::{State, StopReason},
    triggers::{Fired, Rates, Triggers},
};
use crate::{
    capture::EventRing,
    cli::{Config, SnapshotConfig},
    report::{
        self, Report,
        growth::{Counts, Growth, SnapshotInfo, growth, growth_section, process_growth},
    },
};

/// Triggers are checked, and the live view redrawn, this often.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Events applied before a snapshot is built, at most (so that it describes the moment).
const DRAIN_BEFORE: usize = 1 << 20;
const PREFIX: &str = "snapshot-";

/// What woke the snapshot branch of the event loop.
pub(super) enum Tick {
    Signal,
    Interval,
    Check,
}

/// The session facts a report needs, kept for the snapshots.
pub(super) struct ReportFacts {
    pub config: Config,
    pub started_ns: u64,
}

pub(super) struct Snapshots {
    settings: SnapshotConfig,
    facts: ReportFacts,
    sigusr1: Signal,
    interval: Option<Interval>,
    check: Interval,
    triggers: Triggers,
    rates: Rates,
    live: Option<Live>,
    previous: Counts,
    previous_at: Instant,
    sequence: u64,
}

impl Snapshots {
    /// `sigusr1` is [`handle_sigusr1`]'s. `attached` holds what the tables held at attach:
    /// the first snapshot's growth is counted from there.
    pub(super) fn new(facts: ReportFacts, sigusr1: Signal, attached: Counts) -> Result<Self> {
        let settings = facts.config.snapshots.clone();
        let mut check = interval(CHECK_EVERY);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let interval = settings.interval.map(|secs| {
            let every = Duration::from_secs_f64(secs);
            let mut timer = interval_at(tokio::time::Instant::now() + every, every);
            timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
            timer
        });
        Ok(Self {
            triggers: Triggers::new(&settings),
            live: None,
            settings,
            facts,
            sigusr1,
            interval,
            check,
            rates: Rates::default(),
            previous: attached,
            previous_at: Instant::now(),
            sequence: 0,
        })
    }

    /// Starts the live view (--live), once the `attached` line is out.
    pub(super) fn start_live(&mut self) -> Result<()> {
        if self.settings.live {
            self.live = Some(Live::start()?);
        }
        Ok(())
    }

    /// Ends the live view before the final report is printed.
    pub(super) fn end_live(&mut self) {
        self.live = None;
    }

    /// Waits for the next signal, period or check (cancel-safe: a `select!` branch).
    pub(super) async fn next(&mut self) -> Tick {
        let interval = async {
            match &mut self.interval {
                Some(timer) => timer.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.sigusr1.recv() => Tick::Signal,
            _ = interval => Tick::Interval,
            _ = self.check.tick() => Tick::Check,
        }
    }

    /// Writes the snapshot the tick asks for, checks the triggers and redraws the live view;
    /// `Some` when the live view was told to stop.
    pub(super) fn handle(
        &mut self,
        tick: Tick,
        state: &mut State<'_>,
        ring: &mut EventRing,
    ) -> Result<Option<StopReason>> {
        match tick {
            Tick::Signal => self.take(state, ring, "SIGUSR1", None)?,
            Tick::Interval => self.take(state, ring, "interval", None)?,
            Tick::Check => {
                let now = Instant::now();
                if self.triggers.wants_counts() || self.live.is_some() {
                    // Counted per final stack: the deferred ones are unwound (or dropped) now.
                    state.settle_stacks(u64::MAX);
                    self.rates.update(Counts::of(&state.agg), now);
                }
                let rates = (self.triggers.wants_counts()).then_some(&self.rates);
                // A plain run keeps its one report on stdout (the contract's --json): there, a
                // trigger only says so on stderr.
                let long_running =
                    self.settings.report_dir.is_some() || self.settings.interval.is_some();
                for Fired {
                    reason,
                    what,
                    rearmed,
                } in self.triggers.check(&state.agg, rates, now)
                {
                    if rearmed {
                        eprintln!("tracer: trigger {reason} re-armed: {what}");
                        continue;
                    }
                    eprintln!("tracer: trigger {reason}: {what}");
                    if long_running {
                        self.take(state, ring, reason, Some(what))?;
                    }
                }
                if let Some(live) = &mut self.live {
                    if live.quit_asked() {
                        return Ok(Some(StopReason::Signal("q")));
                    }
                    live.draw(state, &self.rates)?;
                }
            }
        }
        Ok(None)
    }

    /// Builds and writes one snapshot.
    fn take(
        &mut self,
        state: &mut State<'_>,
        ring: &mut EventRing,
        reason: &str,
        trigger: Option<String>,
    ) -> Result<()> {
        state.flush_held();
        state.drain(ring, DRAIN_BEFORE);
        let f = &self.facts;
        let probes = state.probes();
        let mut report = build_report(state, probes, f.config.min_age_s, f.started_ns);
        let now = Counts::of(&state.agg);
        self.sequence += 1;
        let growth = Growth {
            since: if self.sequence == 1 {
                "attach"
            } else {
                "previous snapshot"
            }
            .to_string(),
            since_s: (self.previous_at.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            stacks: growth(&self.previous, &now, &report),
            processes: process_growth(&self.previous, &now),
        };
        let taken = SystemTime::now();
        report.snapshot = Some(SnapshotInfo {
            sequence: self.sequence,
            reason: reason.to_string(),
            trigger,
            taken_at: taken
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
            growth,
        });
        self.previous = now;
        self.previous_at = Instant::now();
        log::debug!(
            "snapshot {}: kept processes {}, stacks: {}",
            self.sequence,
            state.agg.processes().count(),
            state.stacks.sizes()
        );
        match self.settings.report_dir.clone() {
            Some(dir) => self.write_files(&report, &dir, taken),
            None if self.live.is_some() => Ok(()),
            None => write_stdout(&report, f.config.json, f.config.top),
        }
    }

    fn write_files(&self, report: &Report, dir: &Path, taken: SystemTime) -> Result<()> {
        let stem = format!("{PREFIX}{}-{:06}", utc_stamp(taken), self.sequence);
        let text = text_of(report, self.facts.config.top);
        let json = serde_json::to_vec_pretty(report).context("cannot encode the snapshot")?;
        for (ext, bytes) in [("txt", text.as_bytes()), ("json", &json[..])] {
            let path = dir.join(format!("{stem}.{ext}"));
            write_atomically(&path, bytes)
                .with_context(|| format!("cannot write the snapshot {}", path.display()))?;
        }
        if self.live.is_none() {
            eprintln!(
                "tracer: snapshot {} ({}) written to {}.{{txt,json}}",
                self.sequence,
                report.snapshot.as_ref().map_or("", |s| s.reason.as_str()),
                dir.join(&stem).display()
            );
        }
        prune(dir, self.settings.keep);
        Ok(())
    }
}

/// Catches SIGUSR1 (needs the Tokio runtime), before the slow loading of the programs: its
/// default action would end the tracer, and a snapshot asked for then is written once
/// tracing has begun.
pub(super) fn handle_sigusr1() -> Result<Signal> {
    signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")
}

/// Refuses a --report-dir that cannot be written, and --live without a terminal, before
/// anything is attached.
pub(super) fn check_settings(config: &SnapshotConfig) -> Result<()> {
    if config.live && !io::IsTerminal::is_terminal(&io::stdout()) {
        anyhow::bail!("--live needs a terminal on stdout");
    }
    let Some(dir) = &config.report_dir else {
        return Ok(());
    };
    let probe = dir.join(format!(".{PREFIX}probe-{}", std::process::id()));
    fs::create_dir_all(dir)
        .and_then(|()| fs::write(&probe, b""))
        .and_then(|()| fs::remove_file(&probe))
        .with_context(|| format!("cannot write snapshots to --report-dir {}", dir.display()))
}

fn text_of(report: &Report, top: usize) -> String {
    let mut text = report
        .snapshot
        .as_ref()
        .map(growth_section)
        .unwrap_or_default();
    text.push_str(&report::text::render_top(report, top));
    text
}

fn write_stdout(report: &Report, json: bool, top: usize) -> Result<()> {
    let mut stdout = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut stdout, report).context("cannot write the snapshot")?;
        writeln!(stdout).context("cannot write the snapshot")?;
    } else {
        write!(stdout, "{}", text_of(report, top)).context("cannot write the snapshot")?;
    }
    stdout.flush().context("cannot write the snapshot")
}

/// Written under a temporary name and renamed, so a reader never sees half a snapshot.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.set_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// Removes all but the newest `keep` snapshots (a text and a JSON file each) from `dir`.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut stems: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(PREFIX))
        .filter_map(|name| {
            let (stem, ext) = name.rsplit_once('.')?;
            matches!(ext, "txt" | "json").then(|| stem.to_string())
        })
        .collect();
    stems.sort();
    stems.dedup();
    let excess = stems.len().saturating_sub(keep);
    for stem in &stems[..excess] {
        for ext in ["txt", "json"] {
            let path = dir.join(format!("{stem}.{ext}"));
            if let Err(err) = fs::remove_file(&path)
                && err.kind() != io::ErrorKind::NotFound
            {
                log::warn!("cannot remove the old snapshot {}: {err}", path.display());
            }
        }
    }
}

/// `20261128T081512.345Z`: UTC, sorts as time does.
fn utc_stamp(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// File names carry the UTC time, and sort as it does.
    #[test]
    fn stamps() {
        let at = UNIX_EPOCH + Duration::from_millis(1_795_853_712_345);
        assert_eq!(utc_stamp(at), "20261128T081512.345Z");
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000.000Z");
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    /// Pruning keeps the newest N snapshots (both files of each) and nothing else is touched.
    #[test]
    fn prunes_oldest() {
        let dir = std::env::temp_dir().join(format!("tracer-prune-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..5 {
            for ext in ["txt", "json"] {
                fs::write(dir.join(format!("{PREFIX}2026-{i:06}.{ext}")), b"x").unwrap();
            }
        }
        fs::write(dir.join("other.txt"), b"x").unwrap();
        prune(&dir, 2);
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            left,
            [
                "other.txt",
                "snapshot-2026-000003.json",
                "snapshot-2026-000003.txt",
                "snapshot-2026-000004.json",
                "snapshot-2026-000004.txt"
            ]
        );
    }
}
