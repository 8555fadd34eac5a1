//! Event times: CLOCK_MONOTONIC, read once per scheduler tick per CPU.
//!
//! `bpf_ktime_get_ns` reads the TSC on every call (lfence + rdtsc, about 50 ns in a VM: a
//! quarter of what `sys_enter_close` costs a followed process), and tracing programs may not
//! call `bpf_ktime_get_coarse_ns`. `bpf_jiffies64` is a plain load the verifier inlines, so
//! each CPU keeps the monotonic time it read at its first event of the current tick and stamps
//! the tick's later events with it. An event's time is therefore at most one tick (1/CONFIG_HZ,
//! 4 ms at HZ=250) before the moment it happened, never after it, and one CPU's times never go
//! backwards. Every window the tracer judges by event time is 100 ms or longer.

use aya_ebpf::helpers::{bpf_ktime_get_ns, generated::bpf_jiffies64};

use crate::maps::TICK_CLOCK;

/// What one CPU last read: the tick and the monotonic time at its first event.
#[repr(C)]
pub(crate) struct TickClock {
    jiffies: u64,
    ns: u64,
}

/// The time to stamp an event with (see the module's comment).
#[inline(always)]
pub(crate) fn event_time_ns() -> u64 {
    // SAFETY: plain helper call (inlined by the verifier: a load of `jiffies_64`).
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(clock) = TICK_CLOCK.get_ptr_mut(0) else {
        // SAFETY: plain helper call.
        return unsafe { bpf_ktime_get_ns() };
    };
    // SAFETY: this CPU's slot; programs run with migration disabled. A program that
    // interrupts this one on the same CPU (a softirq's TCP state change) between the two
    // stores below sees the old tick and reads the clock itself: `ns` is stored before
    // `jiffies`, so a tick is never paired with a time from before it.
    unsafe {
        if core::ptr::read_volatile(&(*clock).jiffies) == jiffies {
            return core::ptr::read_volatile(&(*clock).ns);
        }
        let ns = bpf_ktime_get_ns();
        core::ptr::write_volatile(&mut (*clock).ns, ns);
        core::ptr::write_volatile(&mut (*clock).jiffies, jiffies);
        ns
    }
}
