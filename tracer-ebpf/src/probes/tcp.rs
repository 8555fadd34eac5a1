//! TCP state changes of sockets that followed processes own.
//!
//! Kernel: net/ipv4/tcp.c tcp_set_state() fires sock:inet_sock_set_state. Only listen(),
//! connect(), close() and shutdown() change a socket's state in the task that holds it
//! ([`made_by_holder`]); the handshake of an accepted socket, the peer's ACK and FIN
//! (ESTABLISHED -> CLOSE_WAIT, FIN_WAIT1 -> FIN_WAIT2, FIN_WAIT2 -> TIME_WAIT) and timers run
//! in softirq, on behalf of whoever is on the CPU: on loopback, in the peer's own system call,
//! so a followed server's close() moves its unfollowed client's socket to TIME_WAIT. A socket
//! therefore belongs to the followed process that last changed its state itself (or that
//! listens on its local port, for sockets it is about to accept), remembered by its
//! `struct sock` address until it closes; a change made on behalf of another task never
//! makes the socket anyone's. A close from `FIN_WAIT*`/`CLOSING` says whether a `TIME_WAIT`
//! socket took the connection over ([`super::time_wait`]).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{
    EventKind, NO_STACK, TcpStateEvent,
    abi::{AF_INET, tcp_state},
};

use crate::{
    emit::{Caller, read_u16, read_u32, read_u64},
    maps::{
        EVENTS, EXITING, LISTEN_PORTS, LOST_RING_FULL, TCP_SOCKETS, count_lost, offset,
        submit_flags,
    },
};

/// `IPPROTO_TCP` (linux/in.h).
const IPPROTO_TCP: u16 = 6;

/// The tracepoint's states are `int`s.
const fn state(s: u8) -> u32 {
    s as u32
}

/// Whether only the task holding the socket makes this change, in its own system call:
/// listen (CLOSE -> LISTEN), connect (CLOSE -> SYN_SENT), close or shutdown (ESTABLISHED or
/// SYN_RECV -> FIN_WAIT1, CLOSE_WAIT -> LAST_ACK, LISTEN -> CLOSE); a process's exit closes
/// its sockets in the exiting task. Every other change may run in softirq context.
#[inline(always)]
fn made_by_holder(old: u32, new: u32) -> bool {
    const CLOSE: u32 = state(tcp_state::CLOSE);
    const LISTEN: u32 = state(tcp_state::LISTEN);
    const SYN_SENT: u32 = state(tcp_state::SYN_SENT);
    const FIN_WAIT1: u32 = state(tcp_state::FIN_WAIT1);
    const LAST_ACK: u32 = state(tcp_state::LAST_ACK);
    const ESTABLISHED: u32 = state(tcp_state::ESTABLISHED);
    const SYN_RECV: u32 = state(tcp_state::SYN_RECV);
    const CLOSE_WAIT: u32 = state(tcp_state::CLOSE_WAIT);
    match (old, new) {
        (CLOSE, LISTEN | SYN_SENT) | (LISTEN, CLOSE) | (CLOSE_WAIT, LAST_ACK) => true,
        (ESTABLISHED | SYN_RECV, FIN_WAIT1) => true,
        _ => false,
    }
}

/// The followed process the calling task belongs to: followed, or exiting after its process
/// was (its exit closes its descriptors after the exit probe ran).
#[inline(always)]
fn followed_or_exiting(current: Caller) -> Option<u32> {
    if current.is_followed() {
        return Some(current.tgid);
    }
    // SAFETY: the value is copied out at once.
    unsafe { EXITING.get(&current.tid) }.copied()
}

#[tracepoint]
pub(crate) fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if read_u16(&ctx, offset!(tcp_protocol)) != Some(IPPROTO_TCP) {
        return 0;
    }
    let skaddr = read_u64(&ctx, offset!(tcp_skaddr));
    let current = Caller::current();
    let old = read_u32(&ctx, offset!(tcp_oldstate)).unwrap_or(0);
    let new = read_u32(&ctx, offset!(tcp_newstate)).unwrap_or(0);
    let sport = read_u16(&ctx, offset!(tcp_sport)).unwrap_or(0);
    // SAFETY: values are copied out at once.
    let known = unsafe { TCP_SOCKETS.get(&skaddr) }.copied();
    let owner = if made_by_holder(old, new) {
        match followed_or_exiting(current) {
            Some(tgid) => tgid,
            None => {
                // A process we do not follow holds it now (it was passed on): no longer ours.
                if known.is_some() {
                    let _ = TCP_SOCKETS.remove(&skaddr);
                    if old == state(tcp_state::LISTEN) {
                        let _ = LISTEN_PORTS.remove(&sport);
                    }
                }
                return 0;
            }
        }
    } else if let Some(owner) = known {
        owner
    } else {
        // SAFETY: as above.
        match unsafe { LISTEN_PORTS.get(&sport) }.copied() {
            Some(owner) => owner,
            None => return 0,
        }
    };
    let (close, listen) = (state(tcp_state::CLOSE), state(tcp_state::LISTEN));
    if new == close {
        let _ = TCP_SOCKETS.remove(&skaddr);
        if old == listen {
            let _ = LISTEN_PORTS.remove(&sport);
        }
    } else {
        if known != Some(owner) {
            let _ = TCP_SOCKETS.insert(&skaddr, &owner, 0);
        }
        if new == listen {
            let _ = LISTEN_PORTS.insert(&sport, &owner, 0);
        }
    }
    let time_wait = if new == close && closes_into_time_wait(old) {
        super::time_wait::taken_over(skaddr, sport)
    } else {
        tracer_common::time_wait::UNKNOWN
    };
    emit(&ctx, current, owner, skaddr, (old, new), sport, time_wait);
    0
}

/// The states tcp_time_wait() hands a connection over from (net/ipv4/tcp_input.c,
/// tcp_minisocks.c): `FIN_WAIT2`, `CLOSING`, and `FIN_WAIT1` on an ACK that also carries FIN.
#[inline(always)]
fn closes_into_time_wait(old: u32) -> bool {
    old == state(tcp_state::FIN_WAIT2)
        || old == state(tcp_state::CLOSING)
        || old == state(tcp_state::FIN_WAIT1)
}

#[inline(always)]
fn emit(
    ctx: &TracePointContext,
    current: Caller,
    owner: u32,
    skaddr: u64,
    (old, new): (u32, u32),
    sport: u16,
    time_wait: u8,
) {
    let Some(mut entry) = EVENTS.reserve::<TcpStateEvent>(0) else {
        count_lost(LOST_RING_FULL);
        return;
    };
    let family = read_u16(ctx, offset!(tcp_family)).unwrap_or(0);
    let dport = read_u16(ctx, offset!(tcp_dport)).unwrap_or(0);
    let (saddr, daddr) = if family == AF_INET {
        (
            read_ipv4(ctx, offset!(tcp_saddr)),
            read_ipv4(ctx, offset!(tcp_daddr)),
        )
    } else {
        (
            read_bytes::<16>(ctx, offset!(tcp_saddr_v6)),
            read_bytes::<16>(ctx, offset!(tcp_daddr_v6)),
        )
    };
    let mut header = current.header(EventKind::TcpState, NO_STACK);
    header.tgid = owner;
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved record of the right size; every field is written.
    unsafe {
        (*event).header = header;
        (*event).skaddr = skaddr;
        (*event).oldstate = old as u8;
        (*event).newstate = new as u8;
        (*event).family = family;
        (*event).sport = sport;
        (*event).dport = dport;
        (*event).saddr = saddr;
        (*event).daddr = daddr;
        (*event).time_wait = time_wait;
        (*event)._pad = [0; 7];
    }
    entry.submit(submit_flags(core::mem::size_of::<TcpStateEvent>() as u64));
}

/// An IPv4 address field, in the first 4 of 16 bytes.
#[inline(always)]
fn read_ipv4(ctx: &TracePointContext, at: u32) -> [u8; 16] {
    let v4 = read_bytes::<4>(ctx, at);
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&v4);
    out
}

#[inline(always)]
fn read_bytes<const N: usize>(ctx: &TracePointContext, at: u32) -> [u8; N] {
    if at == tracer_common::FIELD_ABSENT {
        return [0; N];
    }
    // SAFETY: the offset comes from this kernel's tracepoint format.
    unsafe { ctx.read_at::<[u8; N]>(at as usize) }.unwrap_or([0; N])
}
