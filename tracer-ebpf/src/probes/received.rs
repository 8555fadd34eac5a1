//! recvmsg: descriptors received over a unix socket (SCM_RIGHTS). The kernel installs them
//! while it copies the control message out (net/scm.c scm_detach_fds()); when the call
//! returns, the caller's `struct user_msghdr` says where that message is and how long it
//! turned out, so the exit probe reads the descriptor numbers from there.
//!
//! Bounded: the first [`MAX_CMSGS`] control messages, [`MAX_FDS`] descriptors each. The
//! rest (and descriptors received by recvmmsg) are learned from /proc by reconciliation.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};
use aya_log_ebpf::debug;
use tracer_common::Syscall;

use super::{Args, call_at_exit, sockets_and_dups::emit_received_fd_event};
use crate::emit::Caller;

const MAX_CMSGS: usize = 2;
const MAX_FDS: usize = 8;
/// `struct user_msghdr` (LP64): msg_control at 32, msg_controllen at 40.
const MSG_CONTROL: usize = 32;
const MSG_CONTROLLEN: usize = 40;
/// `struct cmsghdr`: u64 cmsg_len, i32 cmsg_level, i32 cmsg_type, then the data.
const CMSG_HEADER: u64 = 16;
const SOL_SOCKET: i32 = 1;
const SCM_RIGHTS: i32 = 1;

#[tracepoint]
pub(crate) fn sys_exit_recvmsg(ctx: TracePointContext) -> u32 {
    let Some((caller, args, result)) = call_at_exit(&ctx, Syscall::Recvmsg) else {
        return 0;
    };
    if result < 0 {
        return 0;
    }
    let mut failed = None;
    emit_received(&ctx, caller, args, &mut failed);
    if let Some((address, error)) = failed {
        debug!(
            &ctx,
            "tid {}: cannot read recvmsg's message at {:x} (error {})", caller.tid, address, error
        );
    }
    0
}

/// Emits the descriptors of the `SCM_RIGHTS` messages of the caller's `struct user_msghdr`
/// (`args.arg0`); the first read that fails ends the walk (or a message's descriptors) and
/// is kept in `failed`.
#[inline(always)]
fn emit_received(
    ctx: &TracePointContext,
    caller: Caller,
    args: Args,
    failed: &mut Option<(u64, i64)>,
) {
    let msg = args.arg0 as *const u8;
    // SAFETY: arithmetic on the caller's addresses, which are only read with checked reads.
    unsafe {
        let Some(control) = read_user(msg.add(MSG_CONTROL).cast::<u64>(), failed) else {
            return;
        };
        let Some(length) = read_user(msg.add(MSG_CONTROLLEN).cast::<u64>(), failed) else {
            return;
        };
        let mut at: u64 = 0;
        for _ in 0..MAX_CMSGS {
            if at + CMSG_HEADER > length {
                break;
            }
            let header = (control + at) as *const u8;
            let Some(cmsg_len) = read_user(header.cast::<u64>(), failed) else {
                break;
            };
            let Some(level) = read_user(header.add(8).cast::<i32>(), failed) else {
                break;
            };
            let Some(kind) = read_user(header.add(12).cast::<i32>(), failed) else {
                break;
            };
            if cmsg_len < CMSG_HEADER || at + cmsg_len > length {
                break;
            }
            if level == SOL_SOCKET && kind == SCM_RIGHTS {
                let count = (cmsg_len - CMSG_HEADER) / 4;
                for i in 0..MAX_FDS {
                    if i as u64 >= count {
                        break;
                    }
                    let slot = header.add(CMSG_HEADER as usize + 4 * i).cast::<i32>();
                    let Some(fd) = read_user(slot, failed) else {
                        break;
                    };
                    emit_received_fd_event(ctx, caller, fd, args.syscall, [args.arg1, 0, 0]);
                }
            }
            // CMSG_NXTHDR: the next header starts at the 8-byte aligned end of this one.
            at += (cmsg_len + 7) & !7;
        }
    }
}

/// Reads a `T` of the caller's memory; the first failure is kept in `failed` as (address,
/// error).
#[inline(always)]
fn read_user<T>(address: *const T, failed: &mut Option<(u64, i64)>) -> Option<T> {
    // SAFETY: a checked read of user memory, which fails on a bad address.
    match unsafe { bpf_probe_read_user(address) } {
        Ok(value) => Some(value),
        Err(error) => {
            failed.get_or_insert((address as u64, error.into()));
            None
        }
    }
}
