//! [`TcpStateEvent::time_wait`]: what the kernel's connection hash table said when the full
//! socket went to `CLOSE`. net/ipv4/tcp_minisocks.c tcp_time_wait() hashes a `TIME_WAIT`
//! socket in its place and then closes it, unless inet_twsk_alloc() refused (more than
//! `net.ipv4.tcp_max_tw_buckets` already: TcpExtTCPTimeWaitOverflow), when it only closes it;
//! a reset closes it the same way.

use crate::FIELD_ABSENT;

/// Not looked (not such a change, or this kernel's layout unknown, or a long chain).
pub const UNKNOWN: u8 = 0;
/// A `TIME_WAIT` socket with the connection's hash and ports is in the table.
pub const TAKEN_OVER: u8 = 1;
/// None is: the connection is gone, not in `TIME_WAIT`.
pub const NONE: u8 = 2;

/// Offsets for finding a connection's `TIME_WAIT` socket in the established hash table
/// (`sock_net(sk)->ipv4.tcp_death_row.hashinfo->ehash[sk->sk_hash & ehash_mask]`, a
/// `hlist_nulls` chain of `struct sock_common`s), from this kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWaitOffsets {
    /// `struct sock_common`: `skc_hash` (`unsigned int`).
    pub skc_hash: u32,
    /// `struct sock_common`: `skc_portpair` (`u32`).
    pub skc_portpair: u32,
    /// `struct sock_common`: `skc_state` (`unsigned char`).
    pub skc_state: u32,
    /// `struct sock_common`: `skc_net` (`possible_net_t`, a `struct net *`).
    pub skc_net: u32,
    /// `struct sock_common`: `skc_nulls_node` (`struct hlist_nulls_node`).
    pub skc_nulls_node: u32,
    /// `struct hlist_nulls_node`: `next`.
    pub nulls_next: u32,
    /// `struct net` to its `ipv4.tcp_death_row.hashinfo` (`struct inet_hashinfo *`).
    pub net_hashinfo: u32,
    /// `struct inet_hashinfo`: `ehash` (`struct inet_ehash_bucket *`).
    pub hashinfo_ehash: u32,
    /// `struct inet_hashinfo`: `ehash_mask` (`unsigned int`).
    pub hashinfo_ehash_mask: u32,
    /// Size of `struct inet_ehash_bucket`.
    pub bucket_size: u32,
    /// `struct inet_ehash_bucket` to its chain's first node (`chain.first`).
    pub bucket_first: u32,
}
const _: () = assert!(core::mem::size_of::<TimeWaitOffsets>() == 11 * 4);

impl TimeWaitOffsets {
    /// All fields absent.
    pub const fn absent() -> Self {
        Self {
            skc_hash: FIELD_ABSENT,
            skc_portpair: FIELD_ABSENT,
            skc_state: FIELD_ABSENT,
            skc_net: FIELD_ABSENT,
            skc_nulls_node: FIELD_ABSENT,
            nulls_next: FIELD_ABSENT,
            net_hashinfo: FIELD_ABSENT,
            hashinfo_ehash: FIELD_ABSENT,
            hashinfo_ehash_mask: FIELD_ABSENT,
            bucket_size: FIELD_ABSENT,
            bucket_first: FIELD_ABSENT,
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), made of integers only, with no padding.
unsafe impl aya::Pod for TimeWaitOffsets {}
