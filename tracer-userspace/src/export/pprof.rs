//! The descriptors open now as a pprof profile (`profile.proto`, gzipped): one sample per
//! creating stack, process, kind and TCP state, with two values, how many descriptors
//! (`count`) and the sum of their ages (`age`, seconds: divide by count for the mean), and
//! string labels `pid`, `comm`, `kind` and (sockets) `tcp_state`. Every location is symbolized
//! already, with file and line; calls inlined at an address share its location, innermost
//! first, as pprof expects.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    time::{SystemTime, UNIX_EPOCH},
};

use flate2::{Compression, write::GzEncoder};
use prost::Message as _;

use super::profile_proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};
use crate::report::{DescriptorEntry, FrameEntry, Report};

/// The function a descriptor without a stack is charged to (open before the tracer attached,
/// or its stack was not captured), so its count still shows.
const NO_STACK: &str = "[no stack: open before attach, or not captured]";

/// The gzipped profile of `report`'s open descriptors (those of live processes).
pub(crate) fn open_fds_profile(report: &Report) -> Vec<u8> {
    let profile = build(report, SystemTime::now());
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    // Writing to a Vec cannot fail.
    gz.write_all(&profile.encode_to_vec())
        .and_then(|()| gz.finish())
        .unwrap_or_default()
}

/// What one sample adds up: descriptors of one stack, process, kind and TCP state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SampleKey<'r> {
    stack_id: Option<u32>,
    pid: u32,
    kind: &'static str,
    tcp_state: Option<&'r str>,
}

pub(super) fn build(report: &Report, now: SystemTime) -> Profile {
    let comms: HashMap<u32, &str> = report
        .processes
        .iter()
        .map(|p| (p.pid, p.comm.as_str()))
        .collect();
    let mut groups: BTreeMap<SampleKey<'_>, (&DescriptorEntry, i64, f64)> = BTreeMap::new();
    for d in report.open_descriptors.iter().filter(|d| !d.at_exit) {
        let key = SampleKey {
            stack_id: d.stack_id,
            pid: d.pid,
            kind: d.kind.as_str(),
            tcp_state: d.tcp_state.as_deref(),
        };
        let (_, count, ages) = groups.entry(key).or_insert((d, 0, 0.0));
        *count += 1;
        *ages += d.age_s;
    }

    let mut out = Builder::default();
    let count = out.value_type("count", "count");
    let age = out.value_type("age", "seconds");
    out.profile.sample_type = vec![count, age];
    out.profile.default_sample_type = out.string("count");
    let comment = out.string("tracer: descriptors open now, by creating stack");
    out.profile.comment.push(comment);
    out.profile.time_nanos = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    // Readers take the first mapping for the main executable (pprof names a saved profile
    // after it): the module of a stack's outermost frame, `_start`, comes first.
    for (first, _, _) in groups.values() {
        if let Some(outermost) = first.stack.last() {
            out.mapping(outermost.module.as_deref());
        }
    }
    for (key, (first, count, ages)) in groups {
        let location_id = out.locations(&first.stack);
        let mut label = vec![
            out.label("pid", &key.pid.to_string()),
            out.label("comm", comms.get(&key.pid).copied().unwrap_or("")),
            out.label("kind", key.kind),
        ];
        if let Some(state) = key.tcp_state {
            label.push(out.label("tcp_state", state));
        }
        out.profile.sample.push(Sample {
            location_id,
            value: vec![count, ages.round() as i64],
            label,
        });
    }
    out.profile
}

/// The profile with its tables, each entry interned once.
#[derive(Default)]
struct Builder {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64), u64>,
    mappings: HashMap<String, u64>,
    locations: HashMap<(u64, Vec<(u64, i64)>), u64>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if self.profile.string_table.is_empty() {
            self.profile.string_table.push(String::new());
            self.strings.insert(String::new(), 0);
        }
        if let Some(&id) = self.strings.get(s) {
            return id;
        }
        let id = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), id);
        id
    }

    fn value_type(&mut self, r#type: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.string(r#type),
            unit: self.string(unit),
        }
    }

    fn label(&mut self, key: &str, value: &str) -> Label {
        Label {
            key: self.string(key),
            str: self.string(value),
            ..Label::default()
        }
    }

    fn function(&mut self, name: &str, file: &str) -> u64 {
        let key = (self.string(name), self.string(file));
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        self.profile.function.push(Function {
            id,
            name: key.0,
            system_name: key.0,
            filename: key.1,
            start_line: 0,
        });
        self.functions.insert(key, id);
        id
    }

    fn mapping(&mut self, module: Option<&str>) -> u64 {
        let Some(module) = module else {
            return 0;
        };
        if let Some(&id) = self.mappings.get(module) {
            return id;
        }
        let id = self.profile.mapping.len() as u64 + 1;
        let filename = self.string(module);
        self.profile.mapping.push(Mapping {
            id,
            filename,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
            ..Mapping::default()
        });
        self.mappings.insert(module.to_owned(), id);
        id
    }

    /// The location ids of a stack, leaf first: a frame marked inlined joins the location of
    /// the frame after it (the same address).
    fn locations(&mut self, stack: &[FrameEntry]) -> Vec<u64> {
        if stack.is_empty() {
            let function_id = self.function(NO_STACK, "");
            return vec![self.location(0, 0, vec![(function_id, 0)])];
        }
        let mut ids = Vec::new();
        let mut lines = Vec::new();
        for frame in stack {
            let name = frame
                .symbol
                .clone()
                .unwrap_or_else(|| format!("{:#x}", frame.addr));
            let file = frame
                .file
                .as_deref()
                .or(frame.module.as_deref())
                .unwrap_or("");
            let function_id = self.function(&name, file);
            lines.push((function_id, frame.line.map_or(0, i64::from)));
            if !frame.inlined {
                let mapping_id = self.mapping(frame.module.as_deref());
                ids.push(self.location(frame.addr, mapping_id, std::mem::take(&mut lines)));
            }
        }
        if !lines.is_empty() {
            // A stack cut after an inlined frame: its calls still count.
            ids.push(self.location(stack[stack.len() - 1].addr, 0, lines));
        }
        ids
    }

    fn location(&mut self, address: u64, mapping_id: u64, lines: Vec<(u64, i64)>) -> u64 {
        let key = (address, lines);
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            mapping_id,
            address,
            line: key
                .1
                .iter()
                .map(|&(function_id, line)| Line { function_id, line })
                .collect(),
        });
        self.locations.insert(key, id);
        id
    }
}
