//! TCP state changes of sockets that followed processes own.
//!
//! Kernel: net/ipv4/tcp.c tcp_set_state() fires sock:inet_sock_set_state. Listening,
//! connecting and closing run in the owner's context; the handshake of an accepted socket,
//! a peer's FIN (ESTABLISHED -> CLOSE_WAIT) and FIN_WAIT2 -> CLOSE run in softirq, on behalf
//! of whoever is on the CPU. So a socket is adopted when it changes state in a followed
//! process, or when its local port is one a followed process listens on, and remembered by
//! its `struct sock` address until it closes.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{
    EventKind, NO_STACK, TcpStateEvent,
    abi::{AF_INET, tcp_state},
};

use crate::{
    emit::{Caller, read_u16, read_u32, read_u64},
    maps::{EVENTS, LISTEN_PORTS, LOST_RING_FULL, TCP_SOCKETS, count_lost, offset, submit_flags},
};

/// `IPPROTO_TCP` (linux/in.h).
const IPPROTO_TCP: u16 = 6;

#[tracepoint]
pub(crate) fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if read_u16(&ctx, offset!(tcp_protocol)) != Some(IPPROTO_TCP) {
        return 0;
    }
    let skaddr = read_u64(&ctx, offset!(tcp_skaddr));
    let current = Caller::current();
    // SAFETY: values are copied out at once.
    let owner = if current.is_followed() {
        current.tgid
    } else if let Some(owner) = unsafe { TCP_SOCKETS.get(&skaddr) }.copied() {
        owner
    } else {
        let sport = read_u16(&ctx, offset!(tcp_sport)).unwrap_or(0);
        match unsafe { LISTEN_PORTS.get(&sport) }.copied() {
            Some(owner) => owner,
            None => return 0,
        }
    };
    let old = read_u32(&ctx, offset!(tcp_oldstate)).unwrap_or(0);
    let new = read_u32(&ctx, offset!(tcp_newstate)).unwrap_or(0);
    let sport = read_u16(&ctx, offset!(tcp_sport)).unwrap_or(0);
    // The tracepoint's states are `int`s.
    let (close, listen) = (u32::from(tcp_state::CLOSE), u32::from(tcp_state::LISTEN));
    if new == close {
        let _ = TCP_SOCKETS.remove(&skaddr);
        if old == listen {
            let _ = LISTEN_PORTS.remove(&sport);
        }
    } else {
        let _ = TCP_SOCKETS.insert(&skaddr, &owner, 0);
        if new == listen {
            let _ = LISTEN_PORTS.insert(&sport, &owner, 0);
        }
    }
    emit(&ctx, current, owner, skaddr, old, new, sport);
    0
}

#[inline(always)]
fn emit(
    ctx: &TracePointContext,
    current: Caller,
    owner: u32,
    skaddr: u64,
    old: u32,
    new: u32,
    sport: u16,
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
