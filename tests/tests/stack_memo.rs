//! Stacks met again: the tracer remembers the walks it made, and gives the kernel the words
//! that decided each, so that a stack it has walked before is sent without its copy
//! (tracer-userspace/src/stacks/given.rs). Recognising a stack must stay exact: two stacks
//! that differ in one return address are two stacks, whichever of them the kernel knows.

use std::time::Duration;

use tracer_tests::{
    ATTACH_TIMEOUT, Fixture, Tracer, build_fixture, fd_count, require_root, unique_dir,
};

/// Opens of each caller in the measured round, and how often each keeps one.
const OPENS: u64 = 2_000;
const KEEP_EVERY: u64 = 10;
/// A round of the fixture under QEMU's emulation takes seconds.
const ROUND_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether a line of the tracer's is "pid P: walk H given to the kernel (W deciding words
/// of C bytes)".
fn is_given(line: &str) -> bool {
    line.contains("given to the kernel (")
}

/// (H, U) of the tracer's last debug line "... given to the kernel N (H hits, U unknown)":
/// stacks the kernel sent as the handle of a walk it was given, and handles it sent that
/// named no walk the tracer still knew (their stacks are lost).
fn kernel_hits(stderr: &str) -> (u64, u64) {
    stderr
        .lines()
        .rev()
        .find_map(|l| {
            let (_, rest) = l.split_once("given to the kernel ")?;
            let (_, rest) = rest.split_once('(')?;
            let (hits, rest) = rest.split_once(" hits, ")?;
            let unknown = rest.split_once(" unknown")?.0;
            Some((hits.parse().ok()?, unknown.parse().ok()?))
        })
        .unwrap_or_else(|| panic!("no count of given walks' hits in:\n{stderr}"))
}

/// The two_callers fixture, started, and the tracer attached to it with the debug lines
/// that say which walks it gives the kernel; the fixture has made the opens that teach the
/// tracer its walks: the first walks teach the thread's stack base and are given to the
/// kernel; the copy then ends at that base, and the walk of that shorter copy is given in
/// its place. Returns the fixture, the tracer, the path it opens and its descriptors then.
fn taught_two_callers(name: &str) -> (Fixture, Tracer, String, usize) {
    require_root();
    let bin = build_fixture("two_callers", &["-O2", "-fomit-frame-pointer"]);
    let path = unique_dir(None, name).join("data");
    std::fs::write(&path, "x").unwrap();
    let path = path.to_str().unwrap().to_owned();
    let mut fixture = Fixture::spawn(&bin, &[&path]);
    fixture.wait_for_line("READY", Duration::from_secs(10));
    let pid = fixture.pid();
    let before = fd_count(pid).expect("fd count");

    let args: Vec<String> = ["--json", "--pid", &pid.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let log = "tracer::stacks=debug,tracer::session::pipeline=debug";
    let mut tracer = Tracer::spawn(&args, &[("RUST_LOG", log)]);
    tracer.wait_attached(ATTACH_TIMEOUT);

    fixture.send_line("round 200 0");
    fixture.wait_for_line("ROUND", ROUND_TIMEOUT);
    let first = tracer.wait_for_stderr("a walk given to the kernel", ROUND_TIMEOUT, is_given);
    let first_length = first
        .rsplit_once(" of ")
        .map(|(_, length)| length.to_owned())
        .expect("the copy's length");
    fixture.send_line("round 200 0");
    fixture.wait_for_line("ROUND", ROUND_TIMEOUT);
    tracer.wait_for_stderr("the walk of the shorter copy given", ROUND_TIMEOUT, |l| {
        is_given(l) && !l.ends_with(&first_length)
    });
    (fixture, tracer, path, before)
}

/// Makes `OPENS` opens through each caller, keeping every `KEEP_EVERY`-th, and checks that
/// /proc has them; returns how many each caller kept.
fn round_that_keeps(fixture: &mut Fixture, before: usize) -> usize {
    fixture.send_line(&format!("round {OPENS} {KEEP_EVERY}"));
    let kept = fixture.wait_for_line("ROUND", ROUND_TIMEOUT);
    let each = OPENS / KEEP_EVERY;
    assert_eq!(kept, format!("ROUND a={each} b={each}"));
    let open_now = fd_count(fixture.pid()).expect("fd count");
    assert_eq!(open_now, before + 2 * each as usize);
    each as usize
}

/// Stops the tracer; checks that the kernel sent no handle of a walk the tracer had
/// forgotten (and, with `kernel_recognised`, that it did send stacks as walks it knew),
/// nothing was lost, and that the report has each caller's kept descriptors of `path` under
/// `open_here <- via_X <- main`, `each` of them.
fn assert_each_under_its_caller(tracer: Tracer, path: &str, each: usize, kernel_recognised: bool) {
    let out = {
        tracer_tests::signal(tracer.pid() as i32, libc::SIGINT);
        tracer.wait_output(tracer_tests::STOP_TIMEOUT)
    };
    assert!(out.status.success(), "{}", out.stderr);
    let (hits, unknown) = kernel_hits(&out.stderr);
    assert!(
        hits > 0 || !kernel_recognised,
        "the kernel sent every stack with its copy:\n{}",
        out.stderr
    );
    assert_eq!(
        unknown, 0,
        "the kernel sent handles of walks taken back:\n{}",
        out.stderr
    );
    let report = out.report();
    let ctx = report.context();
    assert_eq!(report.events_lost(), 0, "{ctx}");
    let of_path: Vec<_> = report
        .open_descriptors()
        .into_iter()
        .filter(|d| d.detail() == Some(path))
        .collect();
    assert_eq!(of_path.len(), 2 * each, "{ctx}");
    for via in ["via_a", "via_b"] {
        let through = of_path
            .iter()
            .filter(|d| {
                let symbols = d.stack_symbols();
                symbols.iter().any(|s| s == "open_here")
                    && symbols.iter().any(|s| s == via)
                    && symbols.iter().any(|s| s == "main")
            })
            .count();
        assert_eq!(through, each, "descriptors opened through {via}\n{ctx}");
    }
}

/// `open_here <- via_a <- main` and `open_here <- via_b <- main` open at the same
/// instruction and stack pointer, so one of them is the walk the kernel recognises: every
/// descriptor each kept is still reported under its own caller, exactly as many as /proc
/// holds, and the kernel did send stacks as walks it knew.
#[test]
fn stacks_that_differ_in_one_return_address_stay_apart() {
    let (mut fixture, tracer, path, before) = taught_two_callers("two_callers");
    let each = round_that_keeps(&mut fixture, before);
    assert_each_under_its_caller(tracer, &path, each, true);
    fixture.close_stdin();
    fixture.wait_exit(Duration::from_secs(10));
}

/// The walks of a program are taken back when it execs, and each CPU's copies of them made
/// stale (tracer-ebpf/src/memo.rs). The fixture execs itself, without address space
/// randomisation and on the one CPU that met its stacks, so the new image's stacks hold the
/// old walks' words where they read them: a CPU that kept using its copy would send the old
/// handles, which name nothing once a second has passed, and the stacks would be lost.
#[test]
fn a_walk_taken_back_at_exec_is_not_recognised_from_a_cpus_copy() {
    let (mut fixture, tracer, path, before) = taught_two_callers("two_callers_exec");
    // The kernel now recognises the stacks (and CPU 0 has copies of the walks).
    fixture.send_line("round 200 0");
    fixture.wait_for_line("ROUND", ROUND_TIMEOUT);
    fixture.send_line("exec");
    fixture.wait_for_line("READY", ROUND_TIMEOUT);
    // Past the second a handle taken back still names its stack for.
    std::thread::sleep(Duration::from_millis(1_500));
    // The new image's first stacks are walked, not recognised: its kept opens may all go
    // out before its walks are given.
    let each = round_that_keeps(&mut fixture, before);
    assert_each_under_its_caller(tracer, &path, each, false);
    fixture.close_stdin();
    fixture.wait_exit(Duration::from_secs(10));
}
