//! `--serve ADDR`: an HTTP endpoint that shows the tables as they stand, in the formats a fleet
//! already reads: `/metrics` (Prometheus, [`metrics`]), `/debug/pprof/open_fds` (a pprof
//! profile of the open descriptors by creating stack, [`pprof`]) and `/report` (the JSON
//! report). [`http`] serves them.
//!
//! Everything shown comes from a [`Report`] built by the session's own report builder, the one
//! the final report comes from: the server sends a [`ReportRequest`] through a channel, the
//! event loop, which owns the tables, builds the report between two reads of the ring buffer
//! and sends it back. Nothing here touches the tables, so nothing is locked.

mod cache;
mod http;
mod metrics;
mod pprof;
mod profile_proto;
#[cfg(test)]
mod tests;

use std::{io, net::SocketAddr};

use anyhow::{Result, anyhow};
use tokio::sync::{mpsc, oneshot};

pub(crate) use self::http::start;
use crate::report::Report;

/// Requests waiting for the event loop; a scraper that asks faster than reports are built
/// waits for room.
const QUEUED_REQUESTS: usize = 8;

/// A request for the report of the tables as they stand; the event loop answers it.
pub(crate) struct ReportRequest {
    min_age_s: Option<f64>,
    reply: oneshot::Sender<Report>,
}

impl ReportRequest {
    /// Report only descriptors at least this old; `None`: the session's `--min-age` (what
    /// `--json` prints).
    pub(crate) fn min_age_s(&self) -> Option<f64> {
        self.min_age_s
    }

    pub(crate) fn answer(self, report: Report) {
        // The client may have gone away meanwhile: then nobody needs it.
        let _ = self.reply.send(report);
    }
}

/// The address the endpoint listens on, bound now so that a bad address is refused before
/// anything is attached, in one line that says why.
pub(crate) fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr).map_err(|err| {
        let why = match err.kind() {
            io::ErrorKind::AddrInUse => "the address is already in use".to_owned(),
            io::ErrorKind::PermissionDenied => {
                "permission denied (a port below 1024 needs CAP_NET_BIND_SERVICE)".to_owned()
            }
            io::ErrorKind::AddrNotAvailable => {
                "no interface of this host has that address".to_owned()
            }
            _ => err.to_string(),
        };
        anyhow!("cannot serve on {addr}: {why}")
    })
}

/// The sending side the server holds, and the receiving side the event loop serves.
fn channel() -> (mpsc::Sender<ReportRequest>, mpsc::Receiver<ReportRequest>) {
    mpsc::channel(QUEUED_REQUESTS)
}

/// Asks the event loop for a report; `None` when the session is stopping.
async fn report_now(
    requests: &mpsc::Sender<ReportRequest>,
    min_age_s: Option<f64>,
) -> Option<Report> {
    let (reply, answer) = oneshot::channel();
    requests
        .send(ReportRequest { min_age_s, reply })
        .await
        .ok()?;
    answer.await.ok()
}
