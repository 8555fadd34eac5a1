//! Splicing the walk through the copied stack with the kernel's frame-pointer walk.

use super::{modules::ModuleMap, unwind::Unwound};

/// Frames kept per stack; deeper stacks (deep recursion) keep their innermost frames.
pub(super) const MAX_FRAMES: usize = 127;

/// The stack to report. A walk through the copied stack that reached the stack's root is the
/// whole answer: it knows the functions without frame pointers, which the kernel's
/// frame-pointer walk skips or gets wrong. One that ran out of copied stack is continued by
/// the kernel's walk if the walk also found its last frame, from there on. When the two part
/// ways earlier, the kernel's walk went astray (a function without a frame pointer) and adds
/// nothing. A walk of just the innermost frame and its caller (a short copy) is continued by
/// the kernel's walk from its second frame: that is the caller's caller when the innermost
/// function is a frameless libc wrapper. Without unwound frames the kernel's walk is the
/// stack. The result is cut at the first address that lies in no executable mapping: a
/// frameless function may use %rbp as a scratch register (glibc's open64 and clone3 do),
/// which sends the kernel's walk into the weeds, and nothing after such an address can be
/// trusted. Anonymous executable memory counts as code (JIT output, named from the perf map
/// its runtime writes).
pub(super) fn spliced(unwound: &Unwound, kernel: &[u64], modules: &ModuleMap) -> Vec<u64> {
    let frames = &unwound.frames;
    let last = frames.len().saturating_sub(1);
    // Where the kernel's walk holds the deepest unwound frame.
    let meeting = frames.iter().enumerate().skip(1).rev().find_map(|(i, ip)| {
        let j = kernel.iter().skip(1).position(|k| k == ip)? + 1;
        Some((i, j))
    });
    let mut ips: Vec<u64> = if frames.len() <= 1 {
        if kernel.is_empty() {
            frames.clone()
        } else {
            kernel.to_vec()
        }
    } else if unwound.complete {
        frames.clone()
    } else {
        let theirs = match meeting {
            Some((i, j)) if i == last => kernel.get(j + 1..).unwrap_or_default(),
            Some(_) => &[],
            None if frames.len() == 2 => kernel.get(1..).unwrap_or_default(),
            None => &[],
        };
        frames.iter().chain(theirs).copied().collect()
    };
    let mapped = ips
        .iter()
        .skip(1)
        .position(|&ip| !modules.is_code(ip))
        .map_or(ips.len(), |i| i + 1);
    ips.truncate(mapped);
    ips
}
