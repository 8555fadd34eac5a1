//! Stacks as the text report prints them: the libc wrapper, then the application's frames,
//! with library frames between them folded into one line.

use std::fmt::Write as _;

use super::count;
use crate::report::FrameEntry;

/// Frames printed per stack.
const FRAMES_SHOWN: usize = 12;

/// The stack, innermost first: the first frame (the libc wrapper), then the application's
/// frames. Runs of library frames between them (libc, libstdc++, Rust's std) shrink to one
/// line, so the frames that matter fit in [`FRAMES_SHOWN`] lines.
///
/// In a stack with Python frames, the interpreter's own native frames fold the same way,
/// except the C leaf: the first native frame past the libc wrapper (`_io_FileIO___init___impl`,
/// `sock_accept`), which says what the Python code called.
pub(super) fn stack_lines(stack: &[FrameEntry], out: &mut String) {
    let plumbing = plumbing(stack);
    let library = |i: usize, frame: &FrameEntry| is_library_frame(frame) || plumbing(i, frame);
    let last_app = stack.iter().enumerate().rposition(|(i, f)| !library(i, f));
    // Interpreter plumbing folds outside the application's frames too (the interpreter's
    // main loop and startup under the module's code).
    let folded = |i: usize, frame: &FrameEntry| {
        i > 0 && (plumbing(i, frame) || library(i, frame) && last_app.is_some_and(|last| i < last))
    };
    let (mut shown, mut skipped, mut consumed) = (0, 0u64, 0);
    for (i, frame) in stack.iter().enumerate() {
        if shown == FRAMES_SHOWN {
            break;
        }
        consumed = i + 1;
        if folded(i, frame) {
            skipped += 1;
            continue;
        }
        if skipped > 0 {
            let folded_line = count(skipped, "library frame", "library frames");
            let _ = writeln!(out, "      ... {folded_line}");
            skipped = 0;
        }
        let _ = writeln!(out, "      {}", frame_line(frame));
        shown += 1;
    }
    if stack.len() > consumed {
        let _ = writeln!(out, "      ... {} more frames", stack.len() - consumed);
    }
}

/// The first two named frames past the libc wrapper: where the application made the call.
/// `lead` and the application frames ("`f` ← `g`"), or nothing when the stack has none.
pub(super) fn call_site(stack: &[FrameEntry], lead: &str) -> String {
    match application_frames(stack).as_slice() {
        [] => String::new(),
        frames => format!("{lead}{}", frames.join(" ← ")),
    }
}

pub(crate) fn application_frames(stack: &[FrameEntry]) -> Vec<String> {
    let python = stack.iter().any(is_python);
    stack
        .iter()
        .filter(|f| !is_library_frame(f))
        // A Python frame is an application frame; the interpreter's are not.
        .filter(|f| !python || !is_interpreter_frame(f))
        .filter_map(|f| f.symbol.as_deref())
        .take(2)
        .map(|s| format!("`{s}`"))
        .collect()
}

/// A frame in code the application only calls: the C and C++ runtime libraries, or Rust's
/// std, core and alloc (their sources are under /rustc/HASH/library).
fn is_library_frame(frame: &FrameEntry) -> bool {
    frame.module.as_deref().is_some_and(is_system_library)
        || frame
            .file
            .as_deref()
            .is_some_and(|f| f.starts_with("/rustc/"))
        || frame.symbol.as_deref().is_some_and(|s| {
            [
                "std::", "core::", "alloc::", "<std::", "<core::", "<alloc::",
            ]
            .iter()
            .any(|prefix| s.starts_with(prefix))
        })
}

fn is_python(frame: &FrameEntry) -> bool {
    frame.runtime.is_some()
}

/// A native frame of the interpreter (libpython, a python executable, the C extension
/// modules of the standard library: `_socket.cpython-311-x86_64-linux-gnu.so`).
fn is_interpreter_frame(frame: &FrameEntry) -> bool {
    !is_python(frame)
        && frame
            .module
            .as_deref()
            .is_some_and(|m| file_name(m).contains("python"))
}

/// Which frames of `stack` are interpreter plumbing: none unless the stack has Python
/// frames; then every native interpreter frame but the C leaf.
fn plumbing(stack: &[FrameEntry]) -> impl Fn(usize, &FrameEntry) -> bool {
    let python = stack.iter().any(is_python);
    let leaf = stack.iter().position(|f| !is_library_frame(f));
    move |i, frame| python && Some(i) != leaf && is_interpreter_frame(frame)
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn is_system_library(module: &str) -> bool {
    let name = module.rsplit('/').next().unwrap_or(module);
    [
        "libc.so",
        "libc-",
        "ld-linux",
        "libpthread",
        "libstdc++",
        "libgcc_s",
    ]
    .iter()
    .any(|lib| name.starts_with(lib))
}

fn frame_line(frame: &FrameEntry) -> String {
    let symbol = frame.symbol.as_deref().unwrap_or("[unknown]");
    // The file name is enough to find the line; the JSON report has the full path.
    let place = match (frame.file.as_deref().map(file_name), frame.line) {
        (Some(file), Some(line)) => format!("{file}:{line}"),
        (Some(file), None) => file.to_string(),
        _ => frame.module.clone().unwrap_or_default(),
    };
    if is_python(frame) {
        return format!("{:>14}  {symbol:<32} {place}", "[python]");
    }
    format!("{:#014x}  {symbol:<32} {place}", frame.addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(symbol: &str, module: &str) -> FrameEntry {
        FrameEntry {
            addr: 0x10,
            symbol: Some(symbol.into()),
            module: Some(module.into()),
            file: None,
            line: None,
            inlined: false,
            runtime: None,
        }
    }

    /// The headline skips the libc wrapper and names the application's function and caller.
    #[test]
    fn application_frames_skip_libc() {
        let stack = vec![
            frame("accept4", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
            frame("accept_connection", "/srv/server"),
            frame("serve_forever", "/srv/server"),
            frame("main", "/srv/server"),
        ];
        assert_eq!(
            application_frames(&stack),
            vec!["`accept_connection`", "`serve_forever`"]
        );
    }

    /// Library frames between the wrapper and the application's frames fold into one line;
    /// the outer frames after the last application frame are shown as they are.
    #[test]
    fn stack_lines_fold_library_frames() {
        let mut std_frame = frame("<std::fs::OpenOptions>::_open", "/srv/app");
        std_frame.file = Some("/rustc/abc/library/std/src/fs.rs".into());
        let stack = vec![
            frame("open64", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
            std_frame.clone(),
            std_frame,
            frame("app::open_journal", "/srv/app"),
            frame("app::main", "/srv/app"),
            frame("__libc_start_main", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
        ];
        let mut out = String::new();
        stack_lines(&stack, &mut out);
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert!(lines[0].contains("open64"));
        assert_eq!(lines[1], "... 2 library frames");
        assert!(lines[2].contains("app::open_journal"));
        assert!(lines[4].contains("__libc_start_main"));
        assert_eq!(
            application_frames(&stack),
            vec!["`app::open_journal`", "`app::main`"]
        );
    }
}
