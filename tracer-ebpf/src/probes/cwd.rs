//! chdir, fchdir: relative paths opened later are resolved against the new working
//! directory, which userspace reads from /proc when this event arrives.
//!
//! Kernel: fs/open.c SYSCALL_DEFINE1(chdir), SYSCALL_DEFINE1(fchdir).

use aya_ebpf::programs::TracePointContext;
use tracer_common::{EventKind, ExecEvent, NO_STACK, Syscall};

use super::{exit_probes, syscall_result};
use crate::{emit::Caller, maps::output};

exit_probes!(
    emit_cwd_changed:
    sys_exit_chdir => Chdir,
    sys_exit_fchdir => Fchdir,
);

#[inline(always)]
fn emit_cwd_changed(ctx: &TracePointContext, _syscall: Syscall) {
    let Some(caller) = Caller::followed() else {
        return;
    };
    if syscall_result(ctx) != 0 {
        return;
    }
    let event = ExecEvent {
        header: caller.header(EventKind::CwdChanged, NO_STACK),
    };
    output(&event);
}
