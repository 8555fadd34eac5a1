//! Kernel side of tracer: tracepoint programs that report descriptor births and deaths, task
//! creation and exit for the followed processes, into one ring buffer.
//!
//! Every program first asks whether the calling process is followed and returns at once when
//! it is not, so unfollowed processes pay one bit test per traced syscall (`followed.rs`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Compare-and-swap for the held opens' slots (`held.rs`), or/and for the followed bits
// (`followed.rs`), fetch-add for the remembered walks' count (`memo.rs`): the BPF target's
// atomics lack them.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod clock;
#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(target_arch = "bpf")]
mod followed;
#[cfg(target_arch = "bpf")]
mod held;
#[cfg(target_arch = "bpf")]
mod host;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod memo;
#[cfg(target_arch = "bpf")]
mod probes;
#[cfg(target_arch = "bpf")]
mod python;
#[cfg(target_arch = "bpf")]
mod test_run;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could get here.
    loop {}
}

/// Several helpers we use (probe_read_user_str, get_stackid) are GPL-only.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// The crate is only meaningful for the BPF target; on the host (e.g. `cargo clippy
/// --workspace`) it is an empty program.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
