//! The incident: a pre-fork server whose parent never closes the sockets it accepts.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use tracer_tests::{
    ATTACH_TIMEOUT, Filter, Fixture, Report, Tracer, build_fixture, children_of, require_root,
    wait_until,
};

const CONNECTIONS: usize = 20;
const ACCEPTED: &[&str] = &["accept", "accept4"];

/// One request: connect, send "hi\n", read the reply line. The reply line, not EOF: the parent
/// still holds the accepted socket, so the server side never sends FIN (that is the bug).
#[track_caller]
fn request(port: u16) -> String {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"hi\n")
        .unwrap_or_else(|e| panic!("write to {addr}: {e}"));
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while !reply.ends_with(b"\n") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the reply from {addr} (got {reply:?} so far): {e}"),
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

/// The tracer finds the 20 sockets the server's parent accepted and never closed, blames
/// `accept_connection`, and reports neither the children's inherited copies nor lost events.
#[test]
fn prefork_parent_leaks_accepted_sockets() {
    require_root();
    let bin = build_fixture("prefork_server", &[]);
    let mut server = Fixture::spawn(&bin, &[]);
    let line = server.wait_for_line("PORT ", Duration::from_secs(10));
    let port: u16 = line["PORT ".len()..]
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("bad port line {line:?}: {e}"));
    let spid = server.pid();

    let mut tracer = Tracer::attach(spid, &[]);
    tracer.wait_attached(ATTACH_TIMEOUT);
    serve_all_connections(&mut server, port);
    let report = tracer.stop();

    assert_accepted_sockets_leak(&report, spid);
    assert_listening_socket_pre_existing(&report, spid, port);
    assert_only_the_server_holds_descriptors(&report, spid);
    assert_grouped_under_accept_connection(&report);
}

/// Makes the [`CONNECTIONS`] requests, each answered by a child, and waits until the children
/// are gone; the server itself stays alive.
#[track_caller]
fn serve_all_connections(server: &mut Fixture, port: u16) {
    for i in 0..CONNECTIONS {
        let reply = request(port);
        assert_eq!(reply, "ok\n", "reply to connection {i}");
    }
    // Every child has answered; wait until they have exited and been reaped, and until the
    // kernel has every accepted socket in CLOSE_WAIT (the clients' FINs arrived): the events
    // of both are then in the ring buffer, which the tracer reads to its end before it
    // reports.
    let spid = server.pid();
    wait_until(
        Duration::from_secs(60),
        "the server's children to exit",
        || children_of(spid).is_empty(),
    );
    wait_until(
        Duration::from_secs(60),
        "every accepted socket in CLOSE_WAIT",
        || close_wait_on(spid, port) == CONNECTIONS,
    );
    assert!(!server.has_exited(), "the server exited during the test");
}

/// Sockets of `pid`'s network namespace in CLOSE_WAIT (state 08 of /proc/PID/net/tcp) whose
/// local port is `port`.
fn close_wait_on(pid: u32, port: u16) -> usize {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).expect("/proc/PID/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 3 && cols[3] == "08" && cols[1].ends_with(&format!(":{port:04X}"))
        })
        .count()
}

/// The server holds every accepted socket, created in `accept_connection`, in CLOSE_WAIT
/// for no longer than the trace, and the tcp summary counts them.
#[track_caller]
fn assert_accepted_sockets_leak(report: &Report, spid: u32) {
    let ctx = report.context();
    let leaked = report.descriptors(
        &Filter::new()
            .pid(spid)
            .kind("socket")
            .opened_by(ACCEPTED)
            .at_exit(false),
    );
    assert_eq!(
        leaked.len(),
        CONNECTIONS,
        "expected {CONNECTIONS} accepted sockets held by the server (pid {spid}); got \
         {leaked:#?}\nreport:\n{ctx}"
    );
    for d in &leaked {
        assert!(
            d.has_frame("accept_connection"),
            "the stack of {d:?} has no accept_connection frame: {:?}\n(libc's accept4 is a \
             frameless leaf: a frame-pointer walk skips its caller; unwind from .eh_frame)",
            d.stack_symbols()
        );
        // The client closed; the server never did: CLOSE_WAIT, held since the peer's FIN,
        // which the tracer saw (the connections were made after it attached).
        assert_eq!(d.tcp_state(), Some("CLOSE_WAIT"), "the client closed {d:?}");
        let in_state = d.v["tcp_state_age_s"].as_f64();
        assert!(
            in_state.is_some_and(
                |age| age >= 0.0 && age <= report.json["duration_s"].as_f64().unwrap_or(0.0)
            ),
            "no time in CLOSE_WAIT for {d:?}"
        );
    }
    assert_eq!(
        report.json["tcp"]["CLOSE_WAIT"].as_u64(),
        Some(CONNECTIONS as u64),
        "the tcp summary counts them\nreport:\n{ctx}"
    );
}

/// The listening socket was open before the tracer attached.
#[track_caller]
fn assert_listening_socket_pre_existing(report: &Report, spid: u32, port: u16) {
    let ctx = report.context();
    let listen_detail = format!("tcp 127.0.0.1:{port}");
    let listening: Vec<_> = report
        .descriptors(&Filter::new().pid(spid).opened_by(&["pre-existing"]))
        .into_iter()
        .filter(|d| {
            d.detail()
                .is_some_and(|s| s == listen_detail || s.starts_with(&format!("{listen_detail} ")))
        })
        .collect();
    assert_eq!(
        listening.len(),
        1,
        "expected the listening socket {listen_detail:?} as pre-existing\nreport:\n{ctx}"
    );
    assert_eq!(listening[0].kind(), "socket", "{:?}", listening[0]);
}

/// The children exited; their inherited copies are not leaks. The server is alive and no
/// event was lost.
#[track_caller]
fn assert_only_the_server_holds_descriptors(report: &Report, spid: u32) {
    let ctx = report.context();
    let foreign: Vec<_> = report
        .open_descriptors()
        .into_iter()
        .filter(|d| d.pid() != spid)
        .collect();
    assert!(
        foreign.is_empty(),
        "descriptors reported for pids other than the server {spid}: {foreign:#?}"
    );
    let at_exit = report.descriptors(&Filter::new().at_exit(true));
    assert!(at_exit.is_empty(), "at_exit descriptors: {at_exit:#?}");

    let proc = report
        .process(spid)
        .unwrap_or_else(|| panic!("the server {spid} is not in processes\nreport:\n{ctx}"));
    assert!(!proc.exited(), "the server is alive: {proc:?}");
    assert_eq!(report.events_lost(), 0, "lost events\nreport:\n{ctx}");
}

/// A `stacks[]` group with an accept_connection frame counts all the leaked sockets.
#[track_caller]
fn assert_grouped_under_accept_connection(report: &Report) {
    let ctx = report.context();
    let grouped = report.stacks_with_frame("accept_connection");
    assert!(
        grouped.iter().any(|s| s
            .get("open_count")
            .and_then(|n| n.as_u64())
            .is_some_and(|n| n >= CONNECTIONS as u64)),
        "no stacks[] entry with accept_connection and open_count >= {CONNECTIONS}: {grouped:#?}\n\
         report:\n{ctx}"
    );
}
