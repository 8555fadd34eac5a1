//! Python frames in the stacks, for every CPython build present (each pyenv 3.10 or later
//! under `$(pyenv root)/versions`, Debian's /usr/bin/python3.11): the tracer's Python frames must
//! be the frames the interpreter itself reports at the open (`tests/fixtures/py_frames.py`
//! prints them: qualified name, file and line, innermost first), for a function called from
//! a known caller, in a thread started by `threading.Thread(...).start()` (whose creation
//! stack names the starting function), in a forked worker from its first event, and for a
//! stack deeper than the kernel's frame limit (the stack says it was cut), and for a file kept
//! open past the tracer's deferral window while the process keeps opening and closing others
//! (its stack is unwound late, and must carry the Python frames that came with its open). A
//! build that is absent is skipped with a printed reason.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use tracer_tests::{
    ATTACH_TIMEOUT, Fixture, Report, Tracer, pyenv_pythons, require_root, unique_dir, workspace_dir,
};

const STEP: Duration = Duration::from_secs(60);

/// The oldest CPython the tracer walks the frames of.
const OLDEST_MINOR: u32 = 10;
const DEBIAN_PYTHON: &str = "/usr/bin/python3.11";

/// (label, interpreter) for every build present: each pyenv CPython 3.10+ (by its
/// `bin/python3.X`, the name the `--vm` guests have too) and Debian's; prints why Debian's is
/// skipped when it is absent.
fn interpreters() -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = pyenv_pythons(OLDEST_MINOR)
        .into_iter()
        .map(|python| (format!("pyenv {}", python.name), python.program))
        .collect();
    if Path::new(DEBIAN_PYTHON).exists() {
        found.push(("Debian python3.11".into(), DEBIAN_PYTHON.into()));
    } else {
        eprintln!("[python] skipping Debian's python3.11: {DEBIAN_PYTHON} does not exist");
    }
    let labels: Vec<&str> = found.iter().map(|(label, _)| label.as_str()).collect();
    eprintln!("[python] interpreters: {labels:?}");
    found
}

/// A frame as the fixture printed it or the report has it: name, file, line.
type PyFrame = (String, String, u64);

struct Run {
    report: Report,
    path: String,
    /// The FRAME lines: the interpreter's own view of the first open.
    frames: Vec<PyFrame>,
    lines: Vec<String>,
    pid: u32,
}

/// Runs py_frames.py MODE under `python`, attaches, lets it do MODE and reports.
#[track_caller]
fn run(python: &Path, mode: &str) -> Run {
    run_with(python, mode, &[])
}

/// `run`, with these tracer options.
#[track_caller]
fn run_with(python: &Path, mode: &str, options: &[&str]) -> Run {
    let script = workspace_dir().join("tests/fixtures/py_frames.py");
    let path = unique_dir(None, &format!("python-{mode}")).join("cache.bin");
    std::fs::write(&path, "x").unwrap();
    let mut fixture = Fixture::spawn(
        python,
        &[script.to_str().unwrap(), mode, path.to_str().unwrap()],
    );
    fixture.wait_for_line("READY", STEP);
    let mut tracer = Tracer::attach(fixture.pid(), options);
    tracer.wait_attached(ATTACH_TIMEOUT);
    fixture.send_line("go");
    fixture.wait_for_line("DONE", STEP);
    let report = tracer.stop();
    let lines = fixture.lines_seen().to_vec();
    let frames = lines
        .iter()
        .filter_map(|l| {
            let mut words = l.strip_prefix("FRAME ")?.split(' ');
            let (name, file, line) = (words.next()?, words.next()?, words.next()?);
            Some((name.to_owned(), file.to_owned(), line.parse().ok()?))
        })
        .collect();
    let pid = fixture.pid();
    fixture.close_stdin();
    Run {
        report,
        path: path.to_str().unwrap().to_owned(),
        frames,
        lines,
        pid,
    }
}

/// The Python frames of a stack, innermost first.
fn python_frames(stack: &Value) -> Vec<PyFrame> {
    stack
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["runtime"] == "python")
        .map(|f| {
            (
                f["symbol"].as_str().unwrap_or("").to_owned(),
                f["file"].as_str().unwrap_or("").to_owned(),
                f["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The stacks of the descriptors of `path` held by `pid`.
fn stacks_of(run: &Run, pid: u32) -> Vec<&Value> {
    run.report
        .open_descriptors()
        .into_iter()
        .filter(|d| d.pid() == pid && d.detail() == Some(run.path.as_str()))
        .map(|d| &d.v["stack"])
        .collect()
}

/// Every descriptor of the fixture's file in `pid` (`count` of them) has, as its Python
/// frames, exactly the frames the interpreter printed, after a native leaf.
#[track_caller]
fn assert_frames_match(label: &str, run: &Run, pid: u32, count: usize) {
    let ctx = run.report.context();
    let stacks = stacks_of(run, pid);
    assert_eq!(
        stacks.len(),
        count,
        "{label}: descriptors of {} in pid {pid}\n{ctx}",
        run.path
    );
    assert!(
        !run.frames.is_empty(),
        "{label}: the fixture printed no frames: {:?}",
        run.lines
    );
    for stack in stacks {
        let ours = python_frames(stack);
        assert_eq!(
            ours, run.frames,
            "{label}: the tracer's Python frames differ from the interpreter's\n{ctx}"
        );
        assert!(
            stack[0]["runtime"].is_null() && stack[0]["symbol"].is_string(),
            "{label}: the innermost frame is not the native leaf\n{ctx}"
        );
    }
    eprintln!("[python] {label}: {:?}", run.frames);
}

/// A function that leaks files at a known line, called from a known caller.
#[test]
fn leaking_function_and_caller_with_file_and_line() {
    require_root();
    for (label, python) in interpreters() {
        let run = run(&python, "leak");
        assert_frames_match(&label, &run, run.pid, 3);
        let names: Vec<&str> = run.frames.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names[..2], ["open_cache_file", "warm_caches"], "{label}");
    }
}

/// `--no-python-frames`: the same leak keeps its native stack, without a Python frame.
#[test]
fn no_python_frames_leaves_native_stacks() {
    require_root();
    for (label, python) in interpreters() {
        let run = run_with(&python, "leak", &["--no-python-frames"]);
        let ctx = run.report.context();
        let stacks = stacks_of(&run, run.pid);
        assert_eq!(
            stacks.len(),
            3,
            "{label}: descriptors of {}\n{ctx}",
            run.path
        );
        for stack in stacks {
            assert!(
                python_frames(stack).is_empty(),
                "{label}: a Python frame despite --no-python-frames\n{ctx}"
            );
            assert!(
                stack[0]["symbol"].is_string(),
                "{label}: no native leaf\n{ctx}"
            );
        }
    }
}

/// Threads started by threading.Thread(...).start(): their opens carry the thread's Python
/// frames, and their creation stack names the function that started them.
#[test]
fn threads_grouped_under_the_starting_function() {
    require_root();
    let script =
        std::fs::read_to_string(workspace_dir().join("tests/fixtures/py_frames.py")).unwrap();
    let start_line = script
        .lines()
        .position(|l| l.contains("threading.Thread(target=worker, args"))
        .expect("the fixture starts its threads") as u64
        + 1;
    for (label, python) in interpreters() {
        let run = run(&python, "thread");
        assert_frames_match(&label, &run, run.pid, 2);
        let ctx = run.report.context();
        let group = run.report.json["thread_stacks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["pid"].as_u64() == Some(u64::from(run.pid)) && g["live"] == 2)
            .unwrap_or_else(|| panic!("{label}: no group of the 2 threads\n{ctx}"));
        let frames = python_frames(&group["stack"]);
        assert!(
            frames.iter().any(|f| f.0 == "start_workers"
                && f.2 == start_line
                && f.1.ends_with("py_frames.py")),
            "{label}: the creation stack's Python frames {frames:?} lack start_workers at line \
             {start_line}\n{ctx}"
        );
    }
}

/// A worker forked by os.fork() has its Python frames from its first event on.
#[test]
fn forked_worker_has_python_frames_from_its_first_event() {
    require_root();
    for (label, python) in interpreters() {
        let run = run(&python, "fork");
        let child: u32 = run
            .lines
            .iter()
            .find_map(|l| l.strip_prefix("CHILD ")?.parse().ok())
            .unwrap_or_else(|| panic!("{label}: no CHILD line: {:?}", run.lines));
        assert_frames_match(&label, &run, child, 3);
    }
}

/// A file kept open while the process opens and closes the same file every millisecond for
/// half a second: its open is not the thread's first walk, so its stack waits (with its Python
/// frames) until the descriptor outlives the deferral window, and is unwound then, among
/// births that are dropped unwound. It must name the interpreter's frames all the same.
#[test]
fn kept_past_the_deferral_window_keeps_its_python_frames() {
    require_root();
    for (label, python) in interpreters() {
        let run = run(&python, "churn");
        assert_frames_match(&label, &run, run.pid, 1);
        let names: Vec<&str> = run.frames.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names[..2], ["open_cache_file", "main"], "{label}");
    }
}

/// Deeper than the kernel walks: the innermost frames are there, and the stack says it was
/// cut.
#[test]
fn deeper_than_the_limit_says_it_was_cut() {
    require_root();
    for (label, python) in interpreters() {
        let run = run(&python, "deep");
        let ctx = run.report.context();
        let stacks = stacks_of(&run, run.pid);
        assert_eq!(stacks.len(), 1, "{label}\n{ctx}");
        let ours = python_frames(stacks[0]);
        assert!(
            ours.len() > 40 && ours.len() < run.frames.len(),
            "{label}: {} Python frames of {}\n{ctx}",
            ours.len(),
            run.frames.len()
        );
        let cut = ours.len() - 1;
        assert_eq!(
            ours[..cut],
            run.frames[..cut],
            "{label}: the innermost frames\n{ctx}"
        );
        assert!(
            ours[cut].0.starts_with("[Python stack cut"),
            "{label}: the last Python frame {:?} does not say the stack was cut\n{ctx}",
            ours[cut]
        );
    }
}

/// Descriptors born from other calls than open, and a failed close, carry the Python frames
/// of the function that made them: both ends of a pipe and of a socketpair (the kernel
/// walks once per call and sends the frames again for the second end), a socket, a
/// descriptor received over a unix socket, and the second close of a number (whose frames
/// are walked before the close is sent).
#[test]
fn pipes_sockets_and_failed_closes_have_python_frames() {
    require_root();
    let script = workspace_dir().join("tests/fixtures/py_frames.py");
    let line = |needle: &str| line_of(&script, needle);
    for (label, python) in interpreters() {
        let run = run(&python, "kinds");
        let ctx = run.report.context();
        let made_by = |function: &str, at: u64| {
            run.report
                .open_descriptors()
                .into_iter()
                .filter(|d| d.pid() == run.pid)
                .filter(|d| {
                    python_frames(&d.v["stack"])
                        .iter()
                        .any(|f| f.0 == function && f.2 == at && f.1.ends_with("py_frames.py"))
                })
                .map(|d| d.kind().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            made_by("make_pipe", line("# PIPE")),
            ["pipe", "pipe"],
            "{label}: both ends of the pipe\n{ctx}"
        );
        assert_eq!(
            made_by("make_socket", line("# SOCKET")),
            ["socket"],
            "{label}: the socket\n{ctx}"
        );
        assert_eq!(
            made_by("make_pair", line("# PAIR")),
            ["socket", "socket"],
            "{label}: both ends of the socketpair\n{ctx}"
        );
        assert_eq!(
            made_by("receive_fd", line("# RECEIVE")).len(),
            1,
            "{label}: the descriptor received over a unix socket\n{ctx}"
        );
        let closes: Vec<Vec<PyFrame>> = run.report.json["bad_closes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| {
                g["pids"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p.as_u64() == Some(u64::from(run.pid))))
            })
            .map(|g| python_frames(&g["stack"]))
            .collect();
        let again = line("# CLOSE AGAIN");
        assert!(
            closes.iter().any(|frames| frames
                .first()
                .is_some_and(|f| f.0 == "close_twice" && f.2 == again)),
            "{label}: the failed close's Python frames {closes:?} do not start at close_twice, \
             line {again}\n{ctx}"
        );
    }
}

/// Line number (1-based) of the first line of `file` containing `needle`.
fn line_of(file: &Path, needle: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} is not in {}", file.display())) as u64
        + 1
}

/// Kills a process group when dropped.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        tracer_tests::signal(-(self.0.id() as i32), libc::SIGKILL);
        let _ = self.0.wait();
    }
}

/// uWSGI (Debian's uwsgi-core and its python3 plugin: libpython3.11.so embedded in an
/// executable that is not called python) with 2 pre-forked workers: the files the WSGI
/// application leaks carry its Python frames in the workers.
#[test]
fn uwsgi_embedded_interpreter() {
    use std::io::{Read, Write};
    require_root();
    let uwsgi = Path::new("/usr/bin/uwsgi-core");
    if !uwsgi.exists() || !Path::new("/usr/lib/uwsgi/plugins/python3_plugin.so").exists() {
        eprintln!(
            "[python] skipping uWSGI: uwsgi-core or uwsgi-plugin-python3 is not installed \
             (`cargo xtask test` installs them)"
        );
        return;
    }
    let app = workspace_dir().join("tests/fixtures/uwsgi_app.py");
    let path = unique_dir(None, "python-uwsgi").join("static.bin");
    std::fs::write(&path, "x").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let master = {
        use std::os::unix::process::CommandExt as _;
        std::process::Command::new(uwsgi)
            .args([
                "--plugin",
                "python3",
                "--http-socket",
                &address,
                "--wsgi-file",
            ])
            .arg(&app)
            .args(["--master", "--processes", "2", "--disable-logging", "--env"])
            .arg(format!("LEAK_PATH={}", path.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("uwsgi-core starts")
    };
    let master = Group(master);
    let request = || -> Option<String> {
        let mut stream = std::net::TcpStream::connect(&address).ok()?;
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).ok()?;
        Some(reply)
    };
    // Both workers up and serving (this request's file is open before attach: not counted).
    let deadline = std::time::Instant::now() + STEP;
    while tracer_tests::children_of(master.0.id()).len() < 2 || request().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "uWSGI did not start serving"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut tracer = Tracer::attach(master.0.id(), &[]);
    tracer.wait_attached(ATTACH_TIMEOUT);
    for _ in 0..6 {
        assert!(request().is_some(), "a request failed");
    }
    let report = tracer.stop();
    let ctx = report.context();
    let leak_line = line_of(&app, "f = open(path");
    let call_line = line_of(&app, "body = static_file(");
    let path = path.to_str().unwrap();
    let stacks: Vec<&Value> = report
        .open_descriptors()
        .into_iter()
        .filter(|d| d.detail() == Some(path) && d.v["learned_by"] == "event")
        .map(|d| &d.v["stack"])
        .collect();
    assert_eq!(stacks.len(), 6, "the 6 requests' files\n{ctx}");
    for stack in stacks {
        let frames = python_frames(stack);
        let app_file = app.to_str().unwrap().to_owned();
        assert_eq!(
            frames,
            [
                ("static_file".to_owned(), app_file.clone(), leak_line),
                ("application".to_owned(), app_file, call_line)
            ],
            "uWSGI: the Python frames of a leaked file\n{ctx}"
        );
    }
}
