//! The eBPF programs' own log (aya-log): records of what they could not do, forwarded to
//! `log`, at a level fixed at load time so that what is off costs the programs nothing.

use aya::Ebpf;
use tokio::{
    io::{Interest, unix::AsyncFd},
    task::JoinHandle,
};

use super::LoadError;

/// The most verbose level `log` lets through (`RUST_LOG`), for the programs' log: they
/// compare each record's level with it before they build the record, and the verifier, which
/// sees this load-time constant, drops the code of the levels that are off. (aya-log numbers
/// its levels as `log` does: 1 error to 5 trace, and 0 is off.)
pub(super) fn kernel_log_level() -> u8 {
    log::max_level() as u8
}

/// Forwards the records the programs log with aya-log (debug: user memory they could not
/// read) to `log`, from a task on the session's runtime. The log's ring stays open until this
/// is dropped: the programs refer to it, and one closed before they are all loaded fails
/// their load ("fd N is not pointing to valid bpf_map").
pub(super) struct KernelLog(JoinHandle<()>);

impl KernelLog {
    pub(super) fn start(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        let error = |err: &dyn std::fmt::Display| LoadError::KernelLog(err.to_string());
        let logger = aya_log::EbpfLogger::init(ebpf).map_err(|err| error(&err))?;
        tokio::runtime::Handle::try_current().map_err(|err| error(&err))?;
        // SAFETY: the logger owns its ring's descriptor and keeps it open until the AsyncFd
        // (which owns the logger) is dropped, as register() requires.
        let mut logger = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
            .map_err(|err| error(&err.into_parts().1))?;
        Ok(Self(tokio::spawn(async move {
            while let Ok(mut ready) = logger.readable_mut().await {
                ready.get_inner_mut().flush();
                ready.clear_ready();
            }
        })))
    }
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        self.0.abort();
    }
}
