//! A typed, read-only view of the tracer's JSON report (contract v1): [`Report`] with
//! accessors, [`Filter`] to select descriptors, and the [`Descriptor`] and [`Process`] entries.
//! Accessors of required keys panic, at the caller's line, naming the key the report lacks.

use std::{fmt, path::PathBuf};

use serde_json::Value;

/// How much of a report failure messages quote.
pub const REPORT_EXCERPT: usize = 20_000;

/// The first `max` bytes of `text` (at a char boundary), with a note when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n... ({} more bytes)", &text[..end], text.len() - end)
}

/// The tracer's JSON report (contract v1) with typed accessors. Accessors of required keys
/// panic, naming the key, when the report lacks them.
#[derive(Clone, Debug)]
pub struct Report {
    pub json: Value,
    /// Where the harness saved the full report, if it did.
    pub saved: Option<PathBuf>,
}

/// `v` for a failure message, cut to [`REPORT_EXCERPT`].
fn quoted(v: &Value) -> String {
    excerpt(&v.to_string(), REPORT_EXCERPT)
}

#[track_caller]
fn req<'a>(v: &'a Value, key: &str) -> &'a Value {
    match v.get(key) {
        Some(x) => x,
        None => panic!("report: required key {key:?} missing in {}", quoted(v)),
    }
}

#[track_caller]
fn req_u64(v: &Value, key: &str) -> u64 {
    let Some(n) = req(v, key).as_u64() else {
        panic!(
            "report: {key:?} is not an unsigned integer in {}",
            quoted(v)
        );
    };
    n
}

#[track_caller]
fn req_str<'a>(v: &'a Value, key: &str) -> &'a str {
    let Some(s) = req(v, key).as_str() else {
        panic!("report: {key:?} is not a string in {}", quoted(v));
    };
    s
}

#[track_caller]
fn req_bool(v: &Value, key: &str) -> bool {
    let Some(b) = req(v, key).as_bool() else {
        panic!("report: {key:?} is not a boolean in {}", quoted(v));
    };
    b
}

#[track_caller]
fn req_array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    let Some(a) = req(v, key).as_array() else {
        panic!("report: {key:?} is not an array in {}", quoted(v));
    };
    a
}

/// `v[key]` as a pid.
#[track_caller]
fn req_pid(v: &Value, key: &str) -> u32 {
    let n = req_u64(v, key);
    let Ok(pid) = u32::try_from(n) else {
        panic!(
            "report: {key:?} = {n} is out of the range of pids in {}",
            quoted(v)
        );
    };
    pid
}

/// Whether a stack frame's `symbol` names function `name`: equal, or `name` followed by an
/// offset (`name+0x12`) or a compiler suffix (`name.cold`, `name.isra.0`).
pub fn symbol_is(symbol: &str, name: &str) -> bool {
    match symbol.strip_prefix(name) {
        Some(rest) => rest.is_empty() || rest.starts_with('+') || rest.starts_with('.'),
        None => false,
    }
}

/// The symbols of a `stack` array (innermost first), `"?"` for frames without one.
pub fn frames_symbols(stack: &Value) -> Vec<String> {
    stack
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .map(|f| {
                    f.get("symbol")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The symbols of the stack of a descriptor (or of a `stacks` entry), innermost first.
pub fn stack_symbols(desc: &Value) -> Vec<String> {
    desc.get("stack").map(frames_symbols).unwrap_or_default()
}

impl Report {
    pub fn new(json: Value) -> Report {
        Report { json, saved: None }
    }

    /// The report, pretty-printed.
    pub fn pretty(&self) -> String {
        serde_json::to_string_pretty(&self.json).unwrap_or_else(|_| self.json.to_string())
    }

    /// For failure messages: the start of the pretty report and where the full one is.
    pub fn context(&self) -> String {
        let mut text = excerpt(&self.pretty(), REPORT_EXCERPT);
        if let Some(path) = &self.saved {
            text.push_str(&format!("\n(full report: {})", path.display()));
        }
        text
    }

    #[track_caller]
    pub fn version(&self) -> u64 {
        req_u64(&self.json, "version")
    }

    /// `target.pid`.
    #[track_caller]
    pub fn target_pid(&self) -> u32 {
        req_pid(req(&self.json, "target"), "pid")
    }

    /// `events.received`.
    #[track_caller]
    pub fn events_received(&self) -> u64 {
        req_u64(req(&self.json, "events"), "received")
    }

    /// `events.paired_in_kernel`: open+close pairs the kernel settled without sending either.
    #[track_caller]
    pub fn events_paired_in_kernel(&self) -> u64 {
        req_u64(req(&self.json, "events"), "paired_in_kernel")
    }

    /// Events the kernel side produced: received, lost, and both halves of each pair it
    /// settled itself.
    #[track_caller]
    pub fn events_emitted(&self) -> u64 {
        self.events_received() + self.events_lost() + 2 * self.events_paired_in_kernel()
    }

    /// `events.lost`.
    #[track_caller]
    pub fn events_lost(&self) -> u64 {
        req_u64(req(&self.json, "events"), "lost")
    }

    /// `processes[]`.
    #[track_caller]
    pub fn processes(&self) -> Vec<Process<'_>> {
        req_array(&self.json, "processes")
            .iter()
            .map(|v| Process { v })
            .collect()
    }

    /// The `processes[]` entry of `pid`, if any.
    #[track_caller]
    pub fn process(&self, pid: u32) -> Option<Process<'_>> {
        // A loop, not `find` with a closure: the caller's line stays the panic location.
        let mut found = None;
        for p in self.processes() {
            if p.pid() == pid {
                found = Some(p);
                break;
            }
        }
        found
    }

    /// `open_descriptors[]`.
    #[track_caller]
    pub fn open_descriptors(&self) -> Vec<Descriptor<'_>> {
        req_array(&self.json, "open_descriptors")
            .iter()
            .map(|v| Descriptor { v })
            .collect()
    }

    /// The `open_descriptors[]` entries that match `filter`.
    #[track_caller]
    pub fn descriptors(&self, filter: &Filter<'_>) -> Vec<Descriptor<'_>> {
        // A loop, not `filter` with a closure: the caller's line stays the panic location.
        let mut selected = Vec::new();
        for d in self.open_descriptors() {
            if filter.matches(&d) {
                selected.push(d);
            }
        }
        selected
    }

    /// `stacks[]`, as raw JSON values.
    #[track_caller]
    pub fn stacks(&self) -> &[Value] {
        req_array(&self.json, "stacks")
    }

    /// The `stacks[]` entries whose stack has a frame for function `name`.
    #[track_caller]
    pub fn stacks_with_frame(&self, name: &str) -> Vec<&Value> {
        self.stacks()
            .iter()
            .filter(|s| stack_symbols(s).iter().any(|sym| symbol_is(sym, name)))
            .collect()
    }
}

/// Selects descriptors; unset fields match anything.
#[derive(Clone, Debug, Default)]
pub struct Filter<'a> {
    pub pid: Option<u32>,
    pub kind: Option<&'a str>,
    pub opened_by: Option<&'a [&'a str]>,
    pub at_exit: Option<bool>,
}

impl<'a> Filter<'a> {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn pid(mut self, pid: u32) -> Self {
        self.pid = Some(pid);
        self
    }
    pub fn kind(mut self, kind: &'a str) -> Self {
        self.kind = Some(kind);
        self
    }
    /// Matches when `opened_by` is any of `any_of`.
    pub fn opened_by(mut self, any_of: &'a [&'a str]) -> Self {
        self.opened_by = Some(any_of);
        self
    }
    pub fn at_exit(mut self, at_exit: bool) -> Self {
        self.at_exit = Some(at_exit);
        self
    }
    /// Whether `d` has every field this filter sets. Panics when `d` lacks one of them.
    #[track_caller]
    pub fn matches(&self, d: &Descriptor<'_>) -> bool {
        // Plain `if`s, not `is_none_or` with closures: the caller's line stays the panic location.
        if let Some(pid) = self.pid
            && d.pid() != pid
        {
            return false;
        }
        if let Some(kind) = self.kind
            && d.kind() != kind
        {
            return false;
        }
        if let Some(any_of) = self.opened_by
            && !any_of.contains(&d.opened_by())
        {
            return false;
        }
        if let Some(at_exit) = self.at_exit
            && d.at_exit() != at_exit
        {
            return false;
        }
        true
    }
}

/// One `open_descriptors[]` entry.
#[derive(Clone, Copy)]
pub struct Descriptor<'a> {
    pub v: &'a Value,
}

impl<'a> Descriptor<'a> {
    #[track_caller]
    pub fn pid(&self) -> u32 {
        req_pid(self.v, "pid")
    }
    #[track_caller]
    pub fn fd(&self) -> u64 {
        req_u64(self.v, "fd")
    }
    #[track_caller]
    pub fn kind(&self) -> &'a str {
        req_str(self.v, "kind")
    }
    /// `detail`, `None` when null.
    #[track_caller]
    pub fn detail(&self) -> Option<&'a str> {
        req(self.v, "detail").as_str()
    }
    #[track_caller]
    pub fn opened_by(&self) -> &'a str {
        req_str(self.v, "opened_by")
    }
    #[track_caller]
    pub fn at_exit(&self) -> bool {
        req_bool(self.v, "at_exit")
    }
    /// `tcp_state`, `None` when absent or null.
    pub fn tcp_state(&self) -> Option<&'a str> {
        self.v.get("tcp_state").and_then(Value::as_str)
    }
    /// The stack's symbols, innermost first (`"?"` for unknown ones).
    pub fn stack_symbols(&self) -> Vec<String> {
        stack_symbols(self.v)
    }
    /// Whether the creating stack has a frame for function `name`.
    pub fn has_frame(&self, name: &str) -> bool {
        self.stack_symbols().iter().any(|s| symbol_is(s, name))
    }
}

impl fmt::Debug for Descriptor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.v)
    }
}

/// One `processes[]` entry.
#[derive(Clone, Copy)]
pub struct Process<'a> {
    pub v: &'a Value,
}

impl Process<'_> {
    #[track_caller]
    pub fn pid(&self) -> u32 {
        req_pid(self.v, "pid")
    }
    #[track_caller]
    pub fn exited(&self) -> bool {
        req_bool(self.v, "exited")
    }
}

impl fmt::Debug for Process<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.v)
    }
}

#[cfg(test)]
mod tests;
