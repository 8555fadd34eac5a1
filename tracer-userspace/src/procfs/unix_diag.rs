//! Asks the kernel (NETLINK_SOCK_DIAG, `UDIAG_SHOW_PEER`) for the peer of every unix socket
//! of our network namespace; `/proc/net/unix` does not show peers. Needs no privilege.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_HDR_LEN: usize = 16;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UNIX_DIAG_PEER: u16 = 2;
/// `struct unix_diag_msg`: family, type, state, pad (u8 each), ino (u32), cookie (2×u32).
const UNIX_DIAG_MSG_LEN: usize = 16;
const SEQ: u32 = 0x7472_6163;

fn check(rc: isize) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The request: `struct nlmsghdr` then `struct unix_diag_req`.
fn request() -> Vec<u8> {
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes()); // nlmsg_len
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes()); // nlmsg_type
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req.extend_from_slice(&flags.to_ne_bytes()); // nlmsg_flags
    req.extend_from_slice(&SEQ.to_ne_bytes()); // nlmsg_seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
    req.push(libc::AF_UNIX as u8); // sdiag_family
    req.push(0); // sdiag_protocol
    req.extend_from_slice(&0u16.to_ne_bytes()); // pad
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // udiag_states: all
    req.extend_from_slice(&0u32.to_ne_bytes()); // udiag_ino
    req.extend_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes()); // udiag_show
    req.extend_from_slice(&[0u8; 8]); // udiag_cookie
    req
}

/// Adds the peers found in one datagram of the reply; `Ok(true)` when the dump is done.
fn parse_reply(buf: &[u8], peers: &mut HashMap<u64, u64>) -> io::Result<bool> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad sock_diag reply");
    let mut off = 0;
    while off + NLMSG_HDR_LEN <= buf.len() {
        let len = u32_at(buf, off).ok_or_else(bad)? as usize;
        let kind = u16_at(buf, off + 4).ok_or_else(bad)?;
        if len < NLMSG_HDR_LEN || off + len > buf.len() {
            return Err(bad());
        }
        let msg = &buf[off + NLMSG_HDR_LEN..off + len];
        match kind as i32 {
            libc::NLMSG_DONE => return Ok(true),
            libc::NLMSG_ERROR => {
                let errno = u32_at(msg, 0).ok_or_else(bad)? as i32;
                return Err(io::Error::from_raw_os_error(-errno));
            }
            _ if kind == SOCK_DIAG_BY_FAMILY && msg.len() >= UNIX_DIAG_MSG_LEN => {
                let inode = u32_at(msg, 4).ok_or_else(bad)?;
                let mut at = UNIX_DIAG_MSG_LEN;
                while at + 4 <= msg.len() {
                    let rta_len = u16_at(msg, at).ok_or_else(bad)? as usize;
                    let rta_type = u16_at(msg, at + 2).ok_or_else(bad)?;
                    if rta_len < 4 {
                        break;
                    }
                    if rta_type == UNIX_DIAG_PEER
                        && let Some(peer) = u32_at(msg, at + 4)
                    {
                        peers.insert(u64::from(inode), u64::from(peer));
                    }
                    at += align4(rta_len);
                }
            }
            _ => {}
        }
        off += align4(len);
    }
    Ok(false)
}

/// Socket inode → peer socket inode, for every connected unix socket of our namespace.
pub(super) fn peers() -> io::Result<HashMap<u64, u64>> {
    // SAFETY: plain syscall; the returned descriptor is owned by `sock` below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: `timeout` lives across the call and its size is passed.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // SAFETY: zeroed sockaddr_nl is valid (pid 0 = the kernel).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    let req = request();
    // SAFETY: buffer and address are valid for the given lengths.
    check(unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })?;
    let mut peers = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n =
            check(unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })?;
        if n == 0 || parse_reply(&buf[..n], &mut peers)? {
            return Ok(peers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built sock_diag reply yields the UNIX_DIAG_PEER attribute and stops at DONE.
    #[test]
    fn parses_reply_with_peer_and_done() {
        let mut buf = Vec::new();
        // nlmsghdr (16) + unix_diag_msg (16) + rtattr peer (8) = 40
        buf.extend_from_slice(&40u32.to_ne_bytes());
        buf.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        buf.extend_from_slice(&[0u8; 10]);
        buf.extend_from_slice(&[1, 1, 3, 0]);
        buf.extend_from_slice(&1234u32.to_ne_bytes());
        buf.extend_from_slice(&[0u8; 8]);
        buf.extend_from_slice(&8u16.to_ne_bytes());
        buf.extend_from_slice(&UNIX_DIAG_PEER.to_ne_bytes());
        buf.extend_from_slice(&5678u32.to_ne_bytes());
        // NLMSG_DONE
        buf.extend_from_slice(&20u32.to_ne_bytes());
        buf.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        buf.extend_from_slice(&[0u8; 14]);
        let mut peers = HashMap::new();
        assert!(parse_reply(&buf, &mut peers).unwrap());
        assert_eq!(peers, HashMap::from([(1234, 5678)]));
    }
}
