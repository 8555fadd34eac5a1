//! Reading a live process's memory with process_vm_readv(2): no ptrace attach, nothing
//! written, no signal; a read of an address that is not mapped fails.

/// `len` bytes at `addr` in `pid`, or None when they cannot all be read.
pub(super) fn read(pid: u32, addr: u64, len: usize) -> Option<Vec<u8>> {
    if addr == 0 || len == 0 {
        return None;
    }
    let mut buf = vec![0u8; len];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: `local` describes `buf`, which lives across the call; the kernel checks the
    // remote range.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    (usize::try_from(n).ok()? == len).then_some(buf)
}

pub(super) fn read_u64(pid: u32, addr: u64) -> Option<u64> {
    Some(u64_at(&read(pid, addr, 8)?, 0))
}

/// The little-endian u64 at `at` of `bytes` (0 past its end).
pub(super) fn u64_at(bytes: &[u8], at: u64) -> u64 {
    bytes
        .get(at as usize..at as usize + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

pub(super) fn u32_at(bytes: &[u8], at: u64) -> u32 {
    bytes
        .get(at as usize..at as usize + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// A NUL-terminated string of at most `max` bytes.
pub(super) fn read_cstr(pid: u32, addr: u64, max: usize) -> Option<Vec<u8>> {
    // Page by page would be exact; names read here are short and not near a page end.
    let bytes = read(pid, addr, max).or_else(|| read(pid, addr, 16))?;
    let end = bytes.iter().position(|&b| b == 0)?;
    Some(bytes[..end].to_vec())
}
