//! Unit tests of the report view: the contract's example report, filters, and where a
//! missing key panics.

use super::*;

/// The example report of DESIGN.md's "Report contract (v1)".
const EXAMPLE: &str = r#"{
  "version": 1,
  "target": {"pid": 1234, "command": ["./server", "--port", "8080"]},
  "duration_s": 5.0,
  "events": {"received": 10234, "lost": 0},
  "processes": [{"pid": 1234, "ppid": 1, "comm": "server", "exited": false}],
  "open_descriptors": [{
    "pid": 1234, "fd": 7, "kind": "socket",
    "detail": "tcp 127.0.0.1:8080 <- 127.0.0.1:51234",
    "tcp_state": "CLOSE_WAIT", "deleted": false,
    "opened_by": "accept4", "tid": 1236, "age_s": 3.2, "at_exit": false,
    "stack_id": 17,
    "stack": [{"addr": "0x55d0c0a1b2c3", "symbol": "take_connection",
               "module": "/srv/server", "file": "server.c", "line": 28},
              {"addr": "0x55d0c0a1b000", "symbol": null,
               "module": "/srv/server", "file": null, "line": null}]
  }],
  "stacks": [{"stack_id": 17, "open_count": 12, "oldest_age_s": 4.9,
              "kinds": {"socket": 12},
              "stack": [{"addr": "0x1", "symbol": "take_connection+0x1f"}]}],
  "tcp": {"CLOSE_WAIT": 12, "TIME_WAIT": 3}
}"#;

fn example() -> Report {
    Report::new(serde_json::from_str(EXAMPLE).unwrap())
}

/// The typed accessors read every required key of the contract's example report.
#[test]
fn accessors_read_the_contract_example() {
    let r = example();
    assert_eq!(r.version(), 1);
    assert_eq!(r.target_pid(), 1234);
    assert_eq!(r.events_received(), 10234);
    assert_eq!(r.events_lost(), 0);
    assert!(!r.process(1234).unwrap().exited());
    let d = r.open_descriptors()[0];
    assert_eq!((d.pid(), d.fd(), d.kind()), (1234, 7, "socket"));
    assert_eq!(d.opened_by(), "accept4");
    assert_eq!(d.tcp_state(), Some("CLOSE_WAIT"));
    assert!(!d.at_exit());
    assert_eq!(d.stack_symbols(), ["take_connection", "?"]);
    assert!(d.has_frame("take_connection"));
    assert_eq!(r.stacks_with_frame("take_connection").len(), 1);
}

/// Filters select descriptors by pid, kind, opened_by and at_exit.
#[test]
fn filters_select_descriptors() {
    let r = example();
    let accepted = ["accept", "accept4"];
    assert_eq!(
        r.descriptors(&Filter::new().pid(1234).kind("socket").opened_by(&accepted))
            .len(),
        1
    );
    assert!(r.descriptors(&Filter::new().pid(1)).is_empty());
    assert!(r.descriptors(&Filter::new().kind("file")).is_empty());
    assert!(
        r.descriptors(&Filter::new().opened_by(&["openat"]))
            .is_empty()
    );
    assert!(r.descriptors(&Filter::new().at_exit(true)).is_empty());
}

/// excerpt keeps short texts whole and cuts long ones at a char boundary.
#[test]
fn excerpt_cuts_long_text() {
    assert_eq!(excerpt("abc", 10), "abc");
    let cut = excerpt("ééééé", 3);
    assert!(cut.starts_with("é\n... (8 more bytes)"), "{cut}");
}

/// symbol_is accepts the bare name and name+offset / name.suffix, nothing else.
#[test]
fn symbol_matching() {
    assert!(symbol_is("accept_connection", "accept_connection"));
    assert!(symbol_is("accept_connection+0x12", "accept_connection"));
    assert!(symbol_is("accept_connection.isra.0", "accept_connection"));
    assert!(!symbol_is("accept_connections", "accept_connection"));
    assert!(!symbol_is("accept", "accept_connection"));
}

/// A missing required key panics with the key's name.
#[test]
#[should_panic(expected = "\"events\"")]
fn missing_key_names_the_key() {
    let r = Report::new(serde_json::json!({"version": 1}));
    r.events_lost();
}

/// Runs `f` and returns where it panicked (file and line), `None` when it did not: a
/// panic hook, installed once, notes each panic's location for its thread, then hands
/// over to the default hook.
fn panic_location<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Option<(String, u32)> {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(String, u32)>> = const { RefCell::new(None) };
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let at = info.location().map(|l| (l.file().to_string(), l.line()));
            LAST.with(|last| *last.borrow_mut() = at);
            default(info);
        }));
    });
    LAST.with(|last| last.borrow_mut().take());
    std::panic::catch_unwind(f).err()?;
    LAST.with(|last| last.borrow_mut().take())
}

/// Accessors are `#[track_caller]` all the way down: a missing key panics at the line
/// of the test that asked, not inside the harness.
#[test]
fn missing_keys_panic_at_the_callers_line() {
    let r = Report::new(serde_json::json!({
        "version": 1,
        "processes": [{"pid": 1}],
        "open_descriptors": [{"pid": 1, "fd": 3}],
    }));
    let here = |line: u32| Some((file!().to_string(), line));

    let line = line!() + 1;
    let at = panic_location(|| r.events_lost());
    assert_eq!(at, here(line), "a top-level key");
    let line = line!() + 1;
    let at = panic_location(|| r.process(1).map(|p| p.exited()));
    assert_eq!(at, here(line), "a key of a processes[] entry");
    let line = line!() + 1;
    let at = panic_location(|| r.descriptors(&Filter::new().kind("file")).len());
    assert_eq!(at, here(line), "a key a filter reads");
    let line = line!() + 1;
    let at = panic_location(|| r.open_descriptors()[0].detail().is_some());
    assert_eq!(at, here(line), "a key of an open_descriptors[] entry");
}
