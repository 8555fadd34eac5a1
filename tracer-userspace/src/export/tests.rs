//! The formats of `--serve` from a fixed report: the metrics' names, labels and values in both
//! text formats, and the pprof profile decoded back.

use std::{collections::HashMap, io::Read as _, sync::Arc, time::UNIX_EPOCH};

use flate2::read::GzDecoder;
use prost::Message as _;

use super::{
    metrics::{self, Format, HostFacts},
    pprof,
    profile_proto::Profile,
};
use crate::report::{FrameEntry, Report, tests::sample_report};

fn host() -> HostFacts {
    HostFacts {
        max_fds: HashMap::from([(1, 1024)]),
        tracer_rss: Some(50 << 20),
    }
}

/// The sample report: pid 1 (server) holds a listener from before attach, 5 sockets accepted
/// from stack 7 and a file opened from stack 8; the fake resolver calls every socket
/// ESTABLISHED.
#[test]
fn metrics_count_what_the_report_holds() {
    let text = metrics::encode(&sample_report(), &host(), Format::Prometheus);
    for line in [
        "# TYPE process_open_fds gauge",
        r#"process_open_fds{pid="1",comm="server"} 7"#,
        r#"process_max_fds{pid="1",comm="server"} 1024"#,
        r#"tracer_open_fds{pid="1",comm="server",kind="socket"} 6"#,
        r#"tracer_open_fds{pid="1",comm="server",kind="file"} 1"#,
        r#"tracer_tcp_sockets{pid="1",comm="server",state="ESTABLISHED"} 6"#,
        r#"tracer_zombies{pid="1",comm="server"} 0"#,
        r#"tracer_threads{pid="1",comm="server"} 1"#,
        "tracer_followed_processes 1",
        "# TYPE tracer_events_received_total counter",
        "tracer_events_received_total 0",
        "tracer_events_lost_total 0",
        "tracer_opens_closed_at_once_total 0",
        "tracer_resident_memory_bytes 52428800",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    // Six created while traced (five 4 s ago, one 3 s ago), each weighing e^(-age / 1 min):
    // 5 * 0.935 + 0.951.
    let growth = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"tracer_open_fds_growth_per_minute{pid="1",comm="server"} "#)
        })
        .expect("a growth line");
    assert_eq!(growth.parse::<f64>().unwrap(), 5.6, "{text}");
    assert!(!text.contains("# EOF"), "{text}");
}

/// Prometheus asks for OpenMetrics, and gets it: `_total` only on counter samples, `# EOF`.
#[test]
fn openmetrics_when_asked() {
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(Format::from_accept(Some(accept)), Format::OpenMetrics);
    assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
    assert_eq!(Format::from_accept(None), Format::Prometheus);
    let text = metrics::encode(&sample_report(), &host(), Format::OpenMetrics);
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE tracer_events_received counter\n"),
        "{text}"
    );
    assert!(
        text.contains("\ntracer_events_received_total 0\n"),
        "{text}"
    );
}

/// A process that exited is not a followed process any more; no limit read, no line.
#[test]
fn exited_processes_have_no_series() {
    let mut report = sample_report();
    for p in &mut report.processes {
        p.exited = true;
    }
    let text = metrics::encode(&report, &HostFacts::default(), Format::Prometheus);
    assert!(!text.contains("pid=\"1\""), "{text}");
    assert!(text.contains("tracer_followed_processes 0"), "{text}");
    assert!(!text.contains("tracer_resident_memory_bytes"), "{text}");
}

fn decode(gzipped: &[u8]) -> Profile {
    let mut bytes = Vec::new();
    GzDecoder::new(gzipped)
        .read_to_end(&mut bytes)
        .expect("gzip");
    Profile::decode(bytes.as_slice()).expect("a profile")
}

/// What a sample's labels say, by key.
fn labels(profile: &Profile, sample: usize) -> HashMap<&str, &str> {
    let s = |i: i64| profile.string_table[i as usize].as_str();
    profile.sample[sample]
        .label
        .iter()
        .map(|l| (s(l.key), s(l.str)))
        .collect()
}

/// The names of a sample's functions, leaf first, inlined calls included.
fn functions(profile: &Profile, sample: usize) -> Vec<&str> {
    profile.sample[sample]
        .location_id
        .iter()
        .flat_map(|&id| &profile.location[id as usize - 1].line)
        .map(|line| {
            let f = &profile.function[line.function_id as usize - 1];
            profile.string_table[f.name as usize].as_str()
        })
        .collect()
}

/// One sample per stack, process, kind and TCP state, with count and summed age; the
/// listener open before attach is charged to a function that says so.
#[test]
fn profile_has_one_sample_per_stack_and_labels() {
    let profile = decode(&pprof::open_fds_profile(&sample_report()));
    let s = |i: i64| profile.string_table[i as usize].as_str();
    assert_eq!(profile.string_table[0], "");
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    assert_eq!(types, [("count", "count"), ("age", "seconds")]);
    assert_eq!(s(profile.default_sample_type), "count");
    assert_eq!(profile.sample.len(), 3, "{profile:?}");
    let accepted = (0..3)
        .find(|&i| functions(&profile, i) == ["fn_7"])
        .expect("the accept stack");
    assert_eq!(profile.sample[accepted].value, [5, 20]);
    let l = labels(&profile, accepted);
    assert_eq!(
        (l["pid"], l["comm"], l["kind"], l["tcp_state"]),
        ("1", "server", "socket", "ESTABLISHED")
    );
    let file = (0..3)
        .find(|&i| functions(&profile, i) == ["fn_8"])
        .unwrap();
    assert_eq!(profile.sample[file].value, [1, 3]);
    assert!(!labels(&profile, file).contains_key("tcp_state"));
    let before = (0..3)
        .find(|&i| functions(&profile, i)[0].starts_with("[no stack"))
        .unwrap();
    assert_eq!(profile.sample[before].value[0], 1);
}

/// Calls inlined at an address share its location, innermost first, each with its file and
/// line; modules become mappings that say the profile is symbolized.
#[test]
fn inlined_frames_share_a_location() {
    let mut report = sample_report();
    let frame = |addr, symbol: &str, line, inlined| FrameEntry {
        addr,
        symbol: Some(symbol.to_owned()),
        module: Some("/srv/app".to_owned()),
        file: Some("app.rs".to_owned()),
        line: Some(line),
        inlined,
        runtime: None,
    };
    let stack: Arc<[FrameEntry]> = Arc::from(vec![
        frame(0x10, "open_file", 3, false),
        frame(0x20, "read_config", 10, true),
        frame(0x20, "main", 20, false),
    ]);
    for d in report
        .open_descriptors
        .iter_mut()
        .filter(|d| d.stack_id == Some(8))
    {
        d.stack = Arc::clone(&stack);
    }
    let profile = pprof::build(&report, UNIX_EPOCH);
    let sample = (0..profile.sample.len())
        .find(|&i| functions(&profile, i).first() == Some(&"open_file"))
        .unwrap();
    assert_eq!(
        functions(&profile, sample),
        ["open_file", "read_config", "main"]
    );
    let ids = &profile.sample[sample].location_id;
    assert_eq!(ids.len(), 2);
    let inlined = &profile.location[ids[1] as usize - 1];
    assert_eq!(inlined.address, 0x20);
    assert_eq!(
        inlined.line.iter().map(|l| l.line).collect::<Vec<_>>(),
        [10, 20]
    );
    // Only the executable's module here, so it is the first mapping, as readers expect.
    assert_eq!(inlined.mapping_id, 1);
    let mapping = &profile.mapping[inlined.mapping_id as usize - 1];
    assert_eq!(profile.string_table[mapping.filename as usize], "/srv/app");
    assert!(mapping.has_functions && mapping.has_line_numbers && mapping.has_inline_frames);
    let f = &profile.function[inlined.line[0].function_id as usize - 1];
    assert_eq!(profile.string_table[f.filename as usize], "app.rs");
}

/// The time is the wall clock's, in ns since the epoch.
#[test]
fn profile_is_stamped() {
    let profile: Profile = pprof::build(
        &sample_report(),
        UNIX_EPOCH + std::time::Duration::from_secs(2),
    );
    assert_eq!(profile.time_nanos, 2_000_000_000);
    let _: &Report = &sample_report();
}
