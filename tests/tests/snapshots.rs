//! Snapshots while tracing goes on: SIGUSR1 and --interval write the full report with what
//! grew since the previous snapshot, the RLIMIT_NOFILE and fs.file-max triggers fire once
//! per crossing, --report-dir keeps the newest --keep, and bad snapshot options fail before
//! attaching.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use tracer_tests::{
    ATTACH_TIMEOUT, Fixture, Report, Tracer, build_fixture, fd_count, require_root,
    run_with_timeout, signal, tracer_command, unique_dir, wait_until,
};

/// How long a snapshot (or the trigger's check, once a second) may take to come; the test VM's
/// guests are 5-20 times slower than a host.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// The JSON snapshots in `dir`, oldest first, with their sequence numbers.
#[track_caller]
fn snapshots(dir: &Path) -> Vec<(u64, Report)> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("snapshot-"))
        })
        .collect();
    files.sort();
    let mut out: Vec<(u64, Report)> = files
        .iter()
        .filter_map(|p| {
            // While the tracer runs, --keep may prune a file between the listing and the read.
            let text = match fs::read_to_string(p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                other => other.unwrap(),
            };
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            let seq = json["snapshot"]["sequence"]
                .as_u64()
                .unwrap_or_else(|| panic!("{} has no snapshot.sequence", p.display()));
            Some((seq, Report::new(json)))
        })
        .collect();
    out.sort_by_key(|(seq, _)| *seq);
    out
}

/// The leaking group's open_count in a report (0 when it holds nothing).
#[track_caller]
fn leaked(report: &Report) -> u64 {
    let groups = report.stacks_with_frame("leak_one");
    assert!(groups.len() <= 1, "{}", report.context());
    groups
        .first()
        .map_or(0, |g| g["open_count"].as_u64().unwrap())
}

/// The snapshot's growth entry for the leaking group: (then, now).
#[track_caller]
fn leak_growth(report: &Report) -> Option<(u64, u64)> {
    let stacks = report.json["snapshot"]["growth"]["stacks"]
        .as_array()
        .unwrap_or_else(|| panic!("no snapshot.growth.stacks\n{}", report.context()));
    stacks
        .iter()
        .find(|s| s["call_site"].as_str().unwrap_or("").contains("`leak_one`"))
        .map(|s| (s["then"].as_u64().unwrap(), s["now"].as_u64().unwrap()))
}

/// The snapshot's growth entry for a process: (then, now).
fn process_growth(report: &Report, pid: u32) -> Option<(u64, u64)> {
    report.json["snapshot"]["growth"]["processes"]
        .as_array()?
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .map(|p| (p["then"].as_u64().unwrap(), p["now"].as_u64().unwrap()))
}

/// "DONE total=T open=O" -> (T, O).
fn done_counts(line: &str) -> (u64, u64) {
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    (field("total="), field("open="))
}

fn start_fixture(ulimit: Option<u32>) -> Fixture {
    let bin = build_fixture("steady_leak", &[]);
    let mut fixture = match ulimit {
        Some(n) => Fixture::spawn(
            "sh",
            &["-c", &format!("ulimit -n {n} && exec {}", bin.display())],
        ),
        None => Fixture::spawn(&bin, &[]),
    };
    fixture.wait_for_line("READY", LINE_TIMEOUT);
    fixture
}

#[track_caller]
fn leak(fixture: &mut Fixture, n: u64) -> (u64, u64) {
    fixture.send_line(&format!("leak {n}"));
    done_counts(&fixture.wait_for_line("DONE ", LINE_TIMEOUT))
}

/// Two SIGUSR1 snapshots between batches of leaks: each is the full report (JSON and text
/// files), says what grew since the previous one with the counts /proc shows, and the final
/// report is what it would have been without them.
#[test]
fn sigusr1_snapshots_show_growth() {
    require_root();
    let mut fixture = start_fixture(None);
    let pid = fixture.pid();
    let dir = unique_dir(None, "snapshots-usr1");
    let mut tracer = Tracer::attach(pid, &["--report-dir", dir.to_str().unwrap()]);
    tracer.wait_attached(ATTACH_TIMEOUT);

    let (total, open_first) = leak(&mut fixture, 3);
    assert_eq!(total, 3);
    signal(tracer.pid() as i32, libc::SIGUSR1);
    wait_until(SNAPSHOT_TIMEOUT, "the first snapshot", || {
        snapshots(&dir).len() == 1
    });
    let (total, open) = leak(&mut fixture, 5);
    assert_eq!(total, 8);
    assert_eq!(
        fd_count(pid).unwrap() as u64,
        open,
        "the fixture's own count"
    );
    signal(tracer.pid() as i32, libc::SIGUSR1);
    wait_until(SNAPSHOT_TIMEOUT, "the second snapshot", || {
        snapshots(&dir).len() == 2
    });
    let report = tracer.stop();

    let snaps = snapshots(&dir);
    let (first, second) = (&snaps[0].1, &snaps[1].1);
    assert_eq!((snaps[0].0, snaps[1].0), (1, 2));
    for (_, s) in &snaps {
        assert_eq!(s.json["snapshot"]["reason"], "SIGUSR1", "{}", s.context());
    }
    assert_eq!(first.json["snapshot"]["growth"]["since"], "attach");
    assert_eq!(leak_growth(first), Some((0, 3)), "{}", first.context());
    assert_eq!(leaked(first), 3, "{}", first.context());
    assert_eq!(
        process_growth(first, pid).map(|(_, now)| now),
        Some(open_first),
        "{}",
        first.context()
    );
    assert_eq!(
        second.json["snapshot"]["growth"]["since"],
        "previous snapshot"
    );
    assert_eq!(leak_growth(second), Some((3, 8)), "{}", second.context());
    assert_eq!(leaked(second), 8, "{}", second.context());
    assert_eq!(
        process_growth(second, pid),
        Some((open - 5, open)),
        "{}",
        second.context()
    );
    // The text file of the second snapshot has the same growth, in its own section.
    let text_file = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "txt")
                && p.to_string_lossy().ends_with("-000002.txt")
        })
        .expect("the second snapshot's text file");
    let text = fs::read_to_string(&text_file).unwrap();
    assert!(
        text.contains("Grew since previous snapshot")
            && text.contains("3 -> 8")
            && text.contains("`leak_one` ← `leak_batch`")
            && text.contains("8 files opened in `leak_one`"),
        "{text}"
    );

    assert!(
        report.json.get("snapshot").is_none(),
        "the final report is no snapshot\n{}",
        report.context()
    );
    assert_eq!(leaked(&report), 8, "{}", report.context());
}

/// --interval snapshots keep coming while the fixture leaks: each one's growth starts where
/// the previous one's count ended, and the last shows everything leaked.
#[test]
fn interval_snapshots_chain_their_growth() {
    require_root();
    let mut fixture = start_fixture(None);
    let dir = unique_dir(None, "snapshots-interval");
    let mut tracer = Tracer::attach(
        fixture.pid(),
        &["--interval", "1", "--report-dir", dir.to_str().unwrap()],
    );
    tracer.wait_attached(ATTACH_TIMEOUT);
    leak(&mut fixture, 4);
    wait_until(SNAPSHOT_TIMEOUT, "a snapshot with 4 leaked", || {
        snapshots(&dir).iter().any(|(_, s)| leaked(s) == 4)
    });
    leak(&mut fixture, 6);
    wait_until(SNAPSHOT_TIMEOUT, "a snapshot with 10 leaked", || {
        snapshots(&dir).iter().any(|(_, s)| leaked(s) == 10)
    });
    tracer.stop();

    let snaps = snapshots(&dir);
    let mut before = 0;
    let mut grew = Vec::new();
    for (i, (seq, s)) in snaps.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "sequences follow each other");
        assert_eq!(s.json["snapshot"]["reason"], "interval", "{}", s.context());
        let now = leaked(s);
        let expected = (now > before).then_some((before, now));
        assert_eq!(leak_growth(s), expected, "snapshot {seq}\n{}", s.context());
        if let Some(g) = expected {
            grew.push(g);
        }
        before = now;
    }
    assert_eq!(before, 10);
    assert!(
        grew.len() >= 2,
        "the two batches show in at least two snapshots: {grew:?}"
    );
}

/// Under `ulimit -n 40`, passing 80% (32 descriptors) writes one `nofile` snapshot and one
/// log line; leaking more while above does not write another.
#[test]
fn nofile_trigger_fires_once() {
    require_root();
    let mut fixture = start_fixture(Some(40));
    let pid = fixture.pid();
    let dir = unique_dir(None, "snapshots-nofile");
    let mut tracer = Tracer::attach(
        pid,
        &["--interval", "1", "--report-dir", dir.to_str().unwrap()],
    );
    tracer.wait_attached(ATTACH_TIMEOUT);
    let (_, open) = leak(&mut fixture, 20);
    assert!(open < 32, "{open} open before the crossing");
    let (crossed_at, open) = leak(&mut fixture, 32 - open);
    assert_eq!(open, 32);
    wait_until(SNAPSHOT_TIMEOUT, "the nofile trigger", || {
        tracer.stderr().contains("trigger nofile")
    });
    let (total, _) = leak(&mut fixture, 4);
    // Two interval snapshots that saw the last batch: at least one check ran after it.
    wait_until(
        SNAPSHOT_TIMEOUT,
        "two snapshots after the last batch",
        || {
            snapshots(&dir)
                .iter()
                .filter(|(_, s)| s.json["snapshot"]["reason"] == "interval" && leaked(s) == total)
                .count()
                >= 2
        },
    );
    let stderr = tracer.stderr();
    tracer.stop();

    let triggered: Vec<Report> = snapshots(&dir)
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| s.json["snapshot"]["reason"] == "nofile")
        .collect();
    assert_eq!(triggered.len(), 1, "{stderr}");
    assert_eq!(stderr.matches("trigger nofile").count(), 1, "{stderr}");
    let trigger = triggered[0].json["snapshot"]["trigger"].as_str().unwrap();
    assert!(
        trigger.contains(&format!("pid {pid}")) && trigger.contains("limit 40"),
        "{trigger}"
    );
    assert_eq!(
        leaked(&triggered[0]),
        crossed_at,
        "{}",
        triggered[0].context()
    );
}

/// Allocated file handles and fs.file-max, from /proc/sys/fs/file-nr.
fn file_nr() -> (u64, u64) {
    let text = fs::read_to_string("/proc/sys/fs/file-nr").unwrap();
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    (fields[0], fields[2])
}

/// The snapshots the tracer said it wrote for `reason`, from its stderr lines `tracer:
/// snapshot N (REASON) written to STEM.{txt,json}`: (N, the JSON file).
fn written(stderr: &str, reason: &str) -> Vec<(u64, PathBuf)> {
    let tag = format!(" ({reason}) written to ");
    stderr
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("tracer: snapshot ")?;
            let (seq, stem) = rest.split_once(&tag)?;
            let stem = stem.strip_suffix(".{txt,json}")?;
            Some((seq.parse().ok()?, PathBuf::from(format!("{stem}.json"))))
        })
        .collect()
}

/// The fs.file-max trigger, without touching fs.file-max: the threshold, a fraction of a
/// percent, is set half a batch of leaks above the handles the system holds now, a batch far
/// larger than what the host's other processes open and close meanwhile. Crossing it writes
/// one snapshot and one line; staying above writes nothing more (two --interval snapshots
/// later, a check ran meanwhile: both are once a second); falling back (the fixture closes
/// its leaks) re-arms it with a line; crossing again writes the second snapshot. --min-age
/// keeps the tens of thousands of descriptors out of the snapshot files.
#[test]
fn file_max_trigger_fires_once_per_crossing() {
    require_root();
    // Under QEMU TCG, opening tens of thousands of descriptors with the tracer attached and
    // building a snapshot of them each second take 10-20 times longer than on a host.
    const BATCH_TIMEOUT: Duration = Duration::from_secs(300);
    let mut nofile = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct passed and nothing else.
    let status = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) };
    assert_eq!(status, 0);
    let (used, max) = file_nr();
    // As many as the hard limit lets the fixture hold (without CAP_SYS_RESOURCE).
    let batch = 30_000.min((max - used) / 4).min(nofile.rlim_max - 100);
    let threshold = used + batch / 2;
    let percent = format!("{:e}", 100.0 * threshold as f64 / max as f64);
    let mut fixture = start_fixture(Some(batch as u32 + 100));
    let dir = unique_dir(None, "snapshots-file-max");
    let mut tracer = Tracer::attach(
        fixture.pid(),
        &[
            "--interval",
            "1",
            "--min-age",
            "1000000",
            "--report-dir",
            dir.to_str().unwrap(),
            "--nofile-trigger",
            "0",
            "--file-max-trigger",
            &percent,
        ],
    );
    tracer.wait_attached(ATTACH_TIMEOUT);
    let crossings = |tracer: &Tracer| tracer.stderr().matches("trigger file-max:").count();

    for round in 1..=2 {
        fixture.send_line(&format!("leak {batch}"));
        fixture.wait_for_line("DONE ", BATCH_TIMEOUT);
        wait_until(BATCH_TIMEOUT, "the file-max trigger", || {
            written(&tracer.stderr(), "file-max").len() == round
        });
        let (seq, _) = written(&tracer.stderr(), "file-max").pop().unwrap();
        wait_until(BATCH_TIMEOUT, "two interval snapshots", || {
            written(&tracer.stderr(), "interval")
                .iter()
                .filter(|(n, _)| *n > seq)
                .count()
                >= 2
        });
        assert_eq!(crossings(&tracer), round, "{}", tracer.stderr());
        if round == 1 {
            fixture.send_line("close");
            fixture.wait_for_line("CLOSED ", BATCH_TIMEOUT);
            wait_until(BATCH_TIMEOUT, "the file-max trigger re-armed", || {
                tracer
                    .stderr()
                    .contains("trigger file-max re-armed: back below")
            });
        }
    }
    let stderr = tracer.stderr();
    tracer.stop();

    assert_eq!(stderr.matches("trigger file-max:").count(), 2, "{stderr}");
    assert_eq!(
        stderr.matches("trigger file-max re-armed").count(),
        1,
        "{stderr}"
    );
    let triggered = written(&stderr, "file-max");
    assert_eq!(triggered.len(), 2, "{stderr}");
    for (_, path) in &triggered {
        let json: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(json["snapshot"]["reason"], "file-max");
        let trigger = json["snapshot"]["trigger"].as_str().unwrap();
        let handles: u64 = trigger
            .strip_prefix("the system has ")
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no handle count in {trigger:?}"));
        assert!(handles >= threshold, "{trigger} (threshold {threshold})");
        assert!(
            trigger.contains(&format!("of fs.file-max {max} (threshold ")),
            "{trigger}"
        );
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// --keep 3: however many snapshots were written, the directory holds the newest three, a
/// text and a JSON file each.
#[test]
fn report_dir_keeps_the_newest() {
    require_root();
    let fixture = start_fixture(None);
    let dir = unique_dir(None, "snapshots-keep");
    let mut tracer = Tracer::attach(
        fixture.pid(),
        &[
            "--interval",
            "0.2",
            "--keep",
            "3",
            "--report-dir",
            dir.to_str().unwrap(),
        ],
    );
    tracer.wait_attached(ATTACH_TIMEOUT);
    wait_until(SNAPSHOT_TIMEOUT, "seven snapshots", || {
        snapshots(&dir).last().is_some_and(|(seq, _)| *seq >= 7)
    });
    tracer.stop();
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let seqs: Vec<u64> = snapshots(&dir).iter().map(|(seq, _)| *seq).collect();
    let last = *seqs.last().unwrap();
    assert_eq!(seqs, vec![last - 2, last - 1, last], "{names:?}");
    assert_eq!(names.len(), 6, "{names:?}");
    assert_eq!(names.iter().filter(|n| n.ends_with(".txt")).count(), 3);
}

/// A --report-dir that cannot be written, a zero --interval, --live without a terminal: one
/// line, non-zero exit, before anything is attached.
#[test]
fn bad_snapshot_options_fail_before_attaching() {
    require_root();
    let fixture = start_fixture(None);
    let pid = fixture.pid().to_string();
    let out = run_with_timeout(
        tracer_command(&["--pid", &pid, "--report-dir", "/dev/null/snapshots"]),
        Duration::from_secs(30),
    );
    out.assert_clean_failure(&["cannot write snapshots", "/dev/null/snapshots"]);
    assert!(!out.stderr.contains("attached"), "{}", out.context());
    let out = run_with_timeout(
        tracer_command(&["--pid", &pid, "--interval", "0"]),
        Duration::from_secs(30),
    );
    out.assert_clean_failure(&["--interval", "not a positive number"]);
    assert!(!out.stderr.contains("attached"), "{}", out.context());
    // The harness's stdout is a pipe.
    let out = run_with_timeout(
        tracer_command(&["--pid", &pid, "--live"]),
        Duration::from_secs(30),
    );
    out.assert_clean_failure(&["--live needs a terminal"]);
    assert!(!out.stderr.contains("attached"), "{}", out.context());
}
