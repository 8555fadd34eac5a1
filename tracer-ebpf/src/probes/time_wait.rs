//! Whether a closing TCP connection went to `TIME_WAIT`, looked up as it closes.
//!
//! net/ipv4/tcp_minisocks.c tcp_time_wait() allocates a `TIME_WAIT` socket, hashes it into
//! the established table in the full socket's place (inet_twsk_hashdance_schedule()) and then
//! closes the full socket (tcp_done(): `FIN_WAIT2`, `CLOSING` or `FIN_WAIT1` -> `CLOSE`). When
//! `net.ipv4.tcp_max_tw_buckets` `TIME_WAIT` sockets exist already, inet_twsk_alloc() refuses
//! (TcpExtTCPTimeWaitOverflow) and the socket is closed all the same, with the same state
//! change; a reset (tcp_reset()) closes it that way too. Only the table tells them apart: the
//! `TIME_WAIT` socket is in the chain `sock_net(sk)->ipv4.tcp_death_row.hashinfo->ehash[
//! sk->sk_hash & ehash_mask]` with the full socket's `skc_hash` and ports (inet_twsk_alloc()
//! copies them) and `skc_state == TCP_TIME_WAIT`, from before the state change until it
//! expires or is killed. By the time the tracepoint runs, tcp_set_state() has released the
//! full socket's local port (inet_put_port() zeroes `inet_num`, the high half of
//! `skc_portpair`), so the local port compared is the tracepoint's `sport`.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use tracer_common::{
    FIELD_ABSENT,
    abi::tcp_state::TIME_WAIT,
    time_wait::{NONE, TAKEN_OVER, UNKNOWN},
};

use crate::maps::kernel_offset;

/// Most chain entries looked at; a longer chain (a hash table under attack) reads as unknown.
const MAX_CHAIN: usize = 16;

/// One kernel value at `addr`, or `None` when it cannot be read.
#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// [`tracer_common::time_wait`]: whether a `TIME_WAIT` socket stands in the established table
/// for the connection of `sk` (a `struct sock *` that has just gone to `CLOSE`) whose local
/// port was `sport` (host order).
#[inline(always)]
pub(crate) fn taken_over(sk: u64, sport: u16) -> u8 {
    look_up(sk, sport).unwrap_or(UNKNOWN)
}

#[inline(always)]
fn look_up(sk: u64, sport: u16) -> Option<u8> {
    let skc_hash = kernel_offset!(tw.skc_hash);
    let skc_portpair = kernel_offset!(tw.skc_portpair);
    let skc_state = kernel_offset!(tw.skc_state);
    let skc_net = kernel_offset!(tw.skc_net);
    let skc_nulls_node = kernel_offset!(tw.skc_nulls_node);
    let nulls_next = kernel_offset!(tw.nulls_next);
    let net_hashinfo = kernel_offset!(tw.net_hashinfo);
    let hashinfo_ehash = kernel_offset!(tw.hashinfo_ehash);
    let hashinfo_ehash_mask = kernel_offset!(tw.hashinfo_ehash_mask);
    let bucket_size = kernel_offset!(tw.bucket_size);
    let bucket_first = kernel_offset!(tw.bucket_first);
    // Absent as a group: one check is enough, but the verifier needs none of them.
    if skc_hash == FIELD_ABSENT || bucket_first == FIELD_ABSENT {
        return None;
    }
    let hash: u32 = read(sk + u64::from(skc_hash))?;
    // `skc_portpair` is `skc_dport` (network order) then `skc_num` (host order).
    let dport: u32 = read::<u32>(sk + u64::from(skc_portpair))? & 0xffff;
    let ports = dport | u32::from(sport) << 16;
    let net: u64 = read(sk + u64::from(skc_net))?;
    let hashinfo: u64 = read(net + u64::from(net_hashinfo))?;
    let ehash: u64 = read(hashinfo + u64::from(hashinfo_ehash))?;
    let mask: u32 = read(hashinfo + u64::from(hashinfo_ehash_mask))?;
    let bucket = ehash + u64::from(hash & mask) * u64::from(bucket_size);
    let mut node: u64 = read(bucket + u64::from(bucket_first))?;
    for _ in 0..MAX_CHAIN {
        // An hlist_nulls chain ends in an odd "nulls" value, not a node.
        if node & 1 != 0 || node == 0 {
            return Some(NONE);
        }
        let common = node - u64::from(skc_nulls_node);
        if common != sk
            && read::<u8>(common + u64::from(skc_state)) == Some(TIME_WAIT)
            && read::<u32>(common + u64::from(skc_hash)) == Some(hash)
            && read::<u32>(common + u64::from(skc_portpair)) == Some(ports)
        {
            return Some(TAKEN_OVER);
        }
        node = read(node + u64::from(nulls_next))?;
    }
    None
}
