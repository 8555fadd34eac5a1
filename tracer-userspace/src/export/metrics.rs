//! `/metrics`: what the report says about each followed process, and about the tracer, as
//! Prometheus metrics (prometheus-client), in the OpenMetrics text format for a client that
//! asks for it (Prometheus does) and the Prometheus text format 0.0.4 otherwise (`curl`,
//! `promtool check metrics`).
//!
//! Names follow what people already graph: `process_open_fds` and `process_max_fds` as
//! client libraries' process collectors export them (here per followed process), and
//! `tracer_` for the rest. Labels are bounded: `pid`, `comm`, `kind`, `state`; never a stack.

use std::{
    collections::{BTreeMap, HashMap},
    sync::atomic::AtomicU64,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text, text as openmetrics_text},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    model::recent_per_minute,
    report::{OpenedBy, Report},
};

/// What /proc says besides the report, read when the metrics are asked for.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostFacts {
    /// Soft RLIMIT_NOFILE per live followed process.
    pub max_fds: HashMap<u32, u64>,
    /// The tracer's resident memory, bytes.
    pub tracer_rss: Option<u64>,
}

/// The text format asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    OpenMetrics,
    Prometheus,
}

impl Format {
    /// OpenMetrics when the Accept header names it, as Prometheus's does.
    pub(crate) fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Prometheus,
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Prometheus => prometheus_text::CONTENT_TYPE,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    pid: u32,
    comm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    pid: u32,
    comm: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    pid: u32,
    comm: String,
    state: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The metrics of `report` and `host`, encoded.
pub(crate) fn encode(report: &Report, host: &HostFacts, format: Format) -> String {
    let registry = registry(report, host);
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = match format {
        Format::OpenMetrics => openmetrics_text::encode(&mut text, &registry),
        Format::Prometheus => prometheus_text::encode(&mut text, &registry),
    };
    text
}

/// Per live process: how many descriptors it has open (all of them, as /proc/PID/fd lists,
/// by kind), its limit, how fast those created while traced pile up, its sockets by TCP
/// state, the connections it left in TIME_WAIT, its zombies and its live threads. Then the
/// tracer's own events and memory.
fn registry(report: &Report, host: &HostFacts) -> Registry {
    let mut registry = Registry::default();
    let live: Vec<ProcessLabels> = report
        .processes
        .iter()
        .filter(|p| !p.exited)
        .map(|p| ProcessLabels {
            pid: p.pid,
            comm: p.comm.clone(),
        })
        .collect();
    let labels_of: HashMap<u32, &ProcessLabels> = live.iter().map(|l| (l.pid, l)).collect();
    let open = report.open_descriptors.iter().filter(|d| !d.at_exit);

    let open_fds = Family::<ProcessLabels, Gauge>::default();
    let by_kind = Family::<KindLabels, Gauge>::default();
    let tcp = Family::<StateLabels, Gauge>::default();
    let mut created_ages: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for labels in &live {
        open_fds.get_or_create(labels).set(0);
    }
    for d in open {
        let Some(labels) = labels_of.get(&d.pid) else {
            continue;
        };
        open_fds.get_or_create(labels).inc();
        by_kind
            .get_or_create(&KindLabels {
                pid: d.pid,
                comm: labels.comm.clone(),
                kind: d.kind.as_str().to_owned(),
            })
            .inc();
        if let Some(state) = &d.tcp_state {
            tcp.get_or_create(&StateLabels {
                pid: d.pid,
                comm: labels.comm.clone(),
                state: state.clone(),
            })
            .inc();
        }
        // As the report's growth of a stack group: what was created while traced, with a
        // stack (so with an exact birth time).
        if d.stack_id.is_some() && d.opened_by != OpenedBy::PreExisting {
            created_ages.entry(d.pid).or_default().push(d.age_s);
        }
    }
    registry.register(
        "process_open_fds",
        "Descriptors open in a followed process",
        open_fds,
    );

    let max_fds = Family::<ProcessLabels, Gauge>::default();
    let growth = Family::<ProcessLabels, FloatGauge>::default();
    let threads = Family::<ProcessLabels, Gauge>::default();
    for labels in &live {
        if let Some(&max) = host.max_fds.get(&labels.pid) {
            max_fds
                .get_or_create(labels)
                .set(i64::try_from(max).unwrap_or(i64::MAX));
        }
        let per_minute = match created_ages.get(&labels.pid) {
            Some(ages) if ages.len() > 1 => recent_per_minute(ages.iter().copied()),
            _ => 0.0,
        };
        growth.get_or_create(labels).set(per_minute);
    }
    for p in report.processes.iter().filter(|p| !p.exited) {
        if let Some(labels) = labels_of.get(&p.pid) {
            threads
                .get_or_create(labels)
                .set(i64::try_from(p.threads.live).unwrap_or(i64::MAX));
        }
    }
    registry.register(
        "process_max_fds",
        "The descriptor limit of a followed process (soft RLIMIT_NOFILE, from /proc/PID/limits)",
        max_fds,
    );
    registry.register(
        "tracer_open_fds",
        "Descriptors open in a followed process, by kind",
        by_kind,
    );
    registry.register(
        "tracer_open_fds_growth_per_minute",
        "Descriptors created while traced and still open, per minute recently (each counts e^(-age/1 min))",
        growth,
    );
    registry.register(
        "tracer_tcp_sockets",
        "TCP sockets a followed process holds descriptors of, by TCP state (CLOSE_WAIT: the peer closed, the process did not)",
        tcp,
    );

    let time_wait = Family::<ProcessLabels, Counter>::default();
    let time_wait_rate = Family::<ProcessLabels, FloatGauge>::default();
    for group in &report.time_wait {
        if let Some(labels) = labels_of.get(&group.pid) {
            time_wait.get_or_create(labels).inc_by(group.count);
            let rate = time_wait_rate.get_or_create(labels);
            rate.set(rate.get() + group.per_minute);
        }
    }
    registry.register(
        "tracer_time_wait_connections",
        "Connections a followed process closed first, leaving them in TIME_WAIT, while traced",
        time_wait,
    );
    registry.register(
        "tracer_time_wait_per_minute",
        "Connections a followed process left in TIME_WAIT, per minute recently",
        time_wait_rate,
    );

    let zombies = Family::<ProcessLabels, Gauge>::default();
    for labels in &live {
        zombies.get_or_create(labels).set(0);
    }
    for group in &report.zombies {
        if let Some(labels) = labels_of.get(&group.ppid) {
            zombies
                .get_or_create(labels)
                .inc_by(i64::try_from(group.count).unwrap_or(i64::MAX));
        }
    }
    registry.register(
        "tracer_zombies",
        "Children of a followed process that exited and were never reaped",
        zombies,
    );
    registry.register(
        "tracer_threads",
        "Live threads of a followed process",
        threads,
    );

    let followed = Gauge::<i64>::default();
    followed.set(live.len() as i64);
    registry.register(
        "tracer_followed_processes",
        "Live processes the tracer follows",
        followed,
    );
    let received = Counter::<u64>::default();
    received.inc_by(report.events.received);
    registry.register(
        "tracer_events_received",
        "Events read from the kernel",
        received,
    );
    let lost = Counter::<u64>::default();
    lost.inc_by(report.events.lost);
    registry.register(
        "tracer_events_lost",
        "Events the kernel could not deliver or follow up (ring buffer full, tables full)",
        lost,
    );
    let paired = Counter::<u64>::default();
    paired.inc_by(report.events.paired_in_kernel);
    registry.register(
        "tracer_opens_closed_at_once",
        "File opens their own thread closed again before its process did anything else: \
         settled in the kernel, neither half sent",
        paired,
    );
    if let Some(rss) = host.tracer_rss {
        let memory = Gauge::<i64>::default();
        memory.set(i64::try_from(rss).unwrap_or(i64::MAX));
        registry.register(
            "tracer_resident_memory_bytes",
            "The tracer's resident memory",
            memory,
        );
    }
    registry
}
