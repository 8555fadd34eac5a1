//! The HTTP side of `--serve` (hyper, HTTP/1.1, on the session's tokio runtime): routes a
//! request to its view, asks the event loop for the report it needs and encodes it, or
//! serves the page as built less than a second ago ([`Cached`]).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{ACCEPT, CONTENT_DISPOSITION, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc},
};

use super::{
    ReportRequest,
    cache::Cached,
    channel,
    metrics::{self, Format, HostFacts},
    pprof, report_now,
};
use crate::procfs;

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 32;
/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts serving on `listener` (from [`super::bind`]) on the current tokio runtime; returns
/// the address it listens on and the requests the event loop must answer.
pub(crate) fn start(
    listener: std::net::TcpListener,
) -> Result<(SocketAddr, mpsc::Receiver<ReportRequest>)> {
    listener
        .set_nonblocking(true)
        .context("cannot set up the HTTP listener")?;
    let listener = TcpListener::from_std(listener).context("cannot set up the HTTP listener")?;
    let addr = listener
        .local_addr()
        .context("cannot set up the HTTP listener")?;
    let (requests, receiver) = channel();
    tokio::spawn(accept_loop(listener, requests));
    Ok((addr, receiver))
}

/// Each page's last build, shared by every connection ([`Cached`]).
#[derive(Default)]
struct Pages {
    report: Cached,
    prometheus: Cached,
    openmetrics: Cached,
    pprof: Cached,
}

async fn accept_loop(listener: TcpListener, requests: mpsc::Sender<ReportRequest>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let pages = Arc::new(Pages::default());
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors, most likely: try again a little later.
                log::warn!("cannot accept an HTTP connection: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let requests = requests.clone();
        let pages = Arc::clone(&pages);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let requests = requests.clone();
                let pages = Arc::clone(&pages);
                async move { Ok::<_, Infallible>(respond(&request, &requests, &pages).await) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                log::debug!("HTTP connection: {err}");
            }
            drop(slot);
        });
    }
}

/// The paths served, for the 404 page.
const PATHS: &str = "/metrics, /debug/pprof/open_fds, /report";

async fn respond<B>(
    request: &Request<B>,
    requests: &mpsc::Sender<ReportRequest>,
    pages: &Pages,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned());
    }
    match request.uri().path() {
        "/metrics" => {
            let format =
                Format::from_accept(request.headers().get(ACCEPT).and_then(|v| v.to_str().ok()));
            let page = match format {
                Format::Prometheus => &pages.prometheus,
                Format::OpenMetrics => &pages.openmetrics,
            };
            // Every descriptor counts, whatever --min-age says: process_open_fds is what
            // /proc/PID/fd lists.
            let text = page
                .get(Instant::now, || async {
                    let report = report_now(requests, Some(0.0)).await?;
                    let host = host_facts(&report);
                    Some(Bytes::from(metrics::encode(&report, &host, format)))
                })
                .await;
            match text {
                Some(text) => body(text, format.content_type()),
                None => stopping(),
            }
        }
        "/debug/pprof/open_fds" => {
            let profile = pages
                .pprof
                .get(Instant::now, || async {
                    let report = report_now(requests, Some(0.0)).await?;
                    Some(Bytes::from(pprof::open_fds_profile(&report)))
                })
                .await;
            let Some(profile) = profile else {
                return stopping();
            };
            let mut response = body(profile, "application/octet-stream");
            response.headers_mut().insert(
                CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"open_fds.pb.gz\""),
            );
            response
        }
        "/report" => {
            let json = pages
                .report
                .get(Instant::now, || async {
                    let report = report_now(requests, None).await?;
                    // As --json prints it.
                    match serde_json::to_vec_pretty(&report) {
                        Ok(mut json) => {
                            json.push(b'\n');
                            Some(Bytes::from(json))
                        }
                        Err(err) => {
                            log::warn!("cannot encode the report: {err}");
                            None
                        }
                    }
                })
                .await;
            match json {
                Some(json) => body(json, "application/json"),
                None => stopping(),
            }
        }
        path => plain(
            StatusCode::NOT_FOUND,
            format!("no such page: {path}; this tracer serves {PATHS}\n"),
        ),
    }
}

/// The descriptor limits of the report's live processes and the tracer's memory, from /proc.
fn host_facts(report: &crate::report::Report) -> HostFacts {
    HostFacts {
        max_fds: report
            .processes
            .iter()
            .filter(|p| !p.exited)
            .filter_map(|p| Some((p.pid, procfs::nofile_limit(p.pid)?)))
            .collect(),
        tracer_rss: procfs::own_resident_bytes(),
    }
}

fn body(bytes: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(bytes));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = body(text.into(), "text/plain; charset=utf-8");
    *response.status_mut() = status;
    response
}

fn stopping() -> Response<Full<Bytes>> {
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "the tracing session is stopping\n".to_owned(),
    )
}
