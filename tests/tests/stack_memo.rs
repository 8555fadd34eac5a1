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

/// H of the tracer's last debug line "... given to the kernel N (H hits, ...": stacks the
/// kernel sent as the handle of a walk it was given.
fn kernel_hits(stderr: &str) -> u64 {
    stderr
        .lines()
        .rev()
        .find_map(|l| {
            let (_, rest) = l.split_once("given to the kernel ")?;
            let (_, rest) = rest.split_once('(')?;
            rest.split_once(" hits")?.0.parse().ok()
        })
        .unwrap_or_else(|| panic!("no count of given walks' hits in:\n{stderr}"))
}

/// `open_here <- via_a <- main` and `open_here <- via_b <- main` open at the same
/// instruction and stack pointer, so one of them is the walk the kernel recognises: every
/// descriptor each kept is still reported under its own caller, exactly as many as /proc
/// holds, and the kernel did send stacks as walks it knew.
#[test]
fn stacks_that_differ_in_one_return_address_stay_apart() {
    require_root();
    let bin = build_fixture("two_callers", &["-O2", "-fomit-frame-pointer"]);
    let path = unique_dir(None, "two_callers").join("data");
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

    // The first walks teach the thread's stack base and are given to the kernel; the copy
    // then ends at that base, and the walk of that shorter copy is given in its place.
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

    fixture.send_line(&format!("round {OPENS} {KEEP_EVERY}"));
    let kept = fixture.wait_for_line("ROUND", ROUND_TIMEOUT);
    let each = OPENS / KEEP_EVERY;
    assert_eq!(kept, format!("ROUND a={each} b={each}"));
    let open_now = fd_count(pid).expect("fd count");
    assert_eq!(open_now, before + 2 * each as usize);

    let out = {
        tracer_tests::signal(tracer.pid() as i32, libc::SIGINT);
        tracer.wait_output(tracer_tests::STOP_TIMEOUT)
    };
    assert!(out.status.success(), "{}", out.stderr);
    let hits = kernel_hits(&out.stderr);
    assert!(
        hits > 0,
        "the kernel sent every stack with its copy:\n{}",
        out.stderr
    );
    let report = out.report();
    let ctx = report.context();
    assert_eq!(report.events_lost(), 0, "{ctx}");
    let of_path: Vec<_> = report
        .open_descriptors()
        .into_iter()
        .filter(|d| d.detail() == Some(path.as_str()))
        .collect();
    assert_eq!(of_path.len(), 2 * each as usize, "{ctx}");
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
        assert_eq!(
            through, each as usize,
            "descriptors opened through {via}\n{ctx}"
        );
    }
    fixture.close_stdin();
    fixture.wait_exit(Duration::from_secs(10));
}
