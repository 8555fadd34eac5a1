//! `--live` in a real terminal: tmux runs the tracer, the test reads the screen with
//! capture-pane while the fixture leaks, presses q and reads the final report.

use std::{process::Command, time::Duration};

use tracer_tests::{ATTACH_TIMEOUT, Fixture, build_fixture, require_root, tracer_bin, wait_until};

/// Our own tmux server, apart from any session a user has.
const SOCKET: &str = "tracer-tests";
const SCREEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A tmux session, killed when dropped.
struct Session(String);

impl Session {
    #[track_caller]
    fn start(command: &str) -> Self {
        let name = format!("tracer-live-{}", std::process::id());
        tmux(&[
            "new-session",
            "-d",
            "-s",
            &name,
            "-x",
            "200",
            "-y",
            "50",
            command,
        ]);
        Self(name)
    }

    /// The screen now, or with `history` everything the pane printed.
    #[track_caller]
    fn screen(&self, history: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-J", "-t", &self.0];
        if history {
            args.extend(["-S", "-"]);
        }
        tmux(&args)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", SOCKET, "kill-session", "-t", &self.0])
            .status();
    }
}

#[track_caller]
fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(["-L", SOCKET])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run tmux (cargo xtask test installs it): {e}"));
    assert!(
        out.status.success(),
        "tmux {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The live view shows the events and the leaking group growing with its count and its two
/// application frames; q ends it, and the final report follows on the terminal.
#[test]
fn live_view_in_tmux() {
    require_root();
    let bin = build_fixture("steady_leak", &[]);
    let mut fixture = Fixture::spawn(&bin, &[]);
    fixture.wait_for_line("READY", Duration::from_secs(10));
    let command = format!(
        "{} --live --pid {}; echo TRACER-EXIT=$?; sleep 600",
        tracer_bin().display(),
        fixture.pid()
    );
    let session = Session::start(&command);
    wait_until(ATTACH_TIMEOUT, "the live view", || {
        session.screen(false).contains("GROWING FASTEST")
    });
    fixture.send_line("leak 7");
    fixture.wait_for_line("DONE total=7", Duration::from_secs(10));
    let group_row = |screen: &str| {
        screen.lines().any(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words.len() >= 4
                && words[..2] == ["7", "7"]
                && line.ends_with("`leak_one` ← `leak_batch`")
        })
    };
    wait_until(SCREEN_TIMEOUT, "the leaking group on the live view", || {
        group_row(&session.screen(false))
    });
    let screen = session.screen(false);
    assert!(
        screen.contains("events:") && screen.contains("lost: 0"),
        "{screen}"
    );

    tmux(&["send-keys", "-t", &session.0, "q"]);
    wait_until(SCREEN_TIMEOUT, "the tracer to exit after q", || {
        session.screen(true).contains("TRACER-EXIT=")
    });
    let all = session.screen(true);
    assert!(all.contains("TRACER-EXIT=0"), "{all}");
    assert!(
        all.contains("7 files opened in `leak_one` ← `leak_batch`, still open in pid"),
        "the final report follows the live view:\n{all}"
    );
    assert!(
        !group_row(&all),
        "the live view is gone from the terminal:\n{all}"
    );
}
