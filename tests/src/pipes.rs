//! Threads that read a child's stdout and stderr, so a child never blocks on a full pipe and
//! the test sees its output.

use std::{
    io::{BufRead, BufReader, Read},
    sync::mpsc::{self, Receiver},
    thread::{self, JoinHandle},
};

/// Reads lines from `r` until EOF, echoing each to the test's stderr as `[label] line`
/// (libtest shows it when the test fails) and passing it to `sink`.
#[track_caller]
pub(crate) fn spawn_line_reader<R: Read + Send + 'static>(
    r: R,
    label: String,
    mut sink: impl FnMut(String) + Send + 'static,
) -> JoinHandle<()> {
    thread::Builder::new()
        .name(format!("read-{label}"))
        .spawn(move || {
            let mut reader = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        eprintln!("[{label}] {line}");
                        sink(line);
                    }
                }
            }
        })
        .expect("spawning a thread to read a child's output")
}

/// Reads all of `r` on a thread; the result arrives on the returned channel at EOF.
#[track_caller]
pub(crate) fn spawn_slurper<R: Read + Send + 'static>(mut r: R) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("slurp".into())
        .spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            let _ = tx.send(buf);
        })
        .expect("spawning a thread to read a child's output");
    rx
}
