//! The one clock the tracer compares kernel timestamps with.

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How long before the moment it happened the kernel may stamp an event: each CPU reads the
/// clock at its first event of a scheduler tick and stamps the tick's later events with that
/// (`tracer-ebpf/src/clock.rs`), so up to one tick, 10 ms at the lowest CONFIG_HZ (100).
pub(crate) const EVENT_TIME_SLACK_NS: u64 = 10_000_000;
