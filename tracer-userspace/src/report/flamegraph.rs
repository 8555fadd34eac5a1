//! An SVG flame graph of the descriptors still open, by the stack that created them, drawn
//! by inferno from "folded" lines (`root;caller;callee COUNT`, outermost frame first).

use std::io::Write;

use inferno::flamegraph::{self, Options};

use super::{FrameEntry, Report};

/// The folded stacks of the report's descriptor groups, one line per group: the process
/// name as the root, then the frames outermost first. Descriptors without a stack hang off
/// the root as `[no stack: opened_by]`. What exited processes held comes after, under roots
/// `COMM [held at exit]`.
pub(crate) fn folded(report: &Report) -> Vec<String> {
    report
        .stacks
        .iter()
        .map(|group| {
            let root = group
                .pids
                .first()
                .and_then(|pid| report.processes.iter().find(|p| p.pid == *pid))
                .map_or_else(|| "?".to_string(), |p| p.comm.clone());
            let mut names = vec![sanitized(&root)];
            if group.stack.is_empty() {
                let by: Vec<&str> = group.opened_by.keys().map(|by| by.name()).collect();
                names.push(format!("[no stack: {}]", by.join(",")));
            }
            names.extend(group.stack.iter().rev().map(frame_name));
            format!("{} {}", names.join(";"), group.open_count)
        })
        .chain(report.at_exit_stacks.iter().map(|group| {
            // Held at exit: under a root of their own, never mixed with what is open.
            let mut names = vec![format!("{} [held at exit]", sanitized(&group.comm))];
            if group.stack.is_empty() {
                names.push("[no stack]".to_string());
            }
            names.extend(group.stack.iter().rev().map(frame_name));
            format!("{} {}", names.join(";"), group.descriptors)
        }))
        .collect()
}

/// Writes the flame graph of `report` as SVG.
pub(crate) fn write_svg(report: &Report, out: impl Write) -> std::io::Result<()> {
    let lines = folded(report);
    let mut options = Options::default();
    options.title = format!(
        "Open descriptors by creating stack (pid {})",
        report.target.pid
    );
    options.count_name = "descriptors".to_string();
    options.deterministic = true;
    if lines.is_empty() {
        // inferno refuses an empty profile; an empty graph still says "nothing open".
        options.subtitle = Some("no descriptors open".to_string());
        return flamegraph::from_lines(&mut options, ["(none) 1"], out);
    }
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
}

/// A frame's label: the function, else the module and address.
fn frame_name(frame: &FrameEntry) -> String {
    let name = match (&frame.symbol, &frame.module) {
        (Some(symbol), _) => symbol.clone(),
        (None, Some(module)) => {
            let file = module.rsplit('/').next().unwrap_or(module);
            format!("[{file}+{:#x}]", frame.addr)
        }
        (None, None) => format!("[unknown {:#x}]", frame.addr),
    };
    sanitized(&name)
}

/// Folded lines separate frames with `;` and end with ` COUNT`: neither may appear in a name.
fn sanitized(name: &str) -> String {
    name.replace(';', ":").replace(char::is_whitespace, "_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    /// Each group becomes one folded line, outermost frame first, with its count; names that
    /// would break the format are made safe.
    #[test]
    fn folds_groups_outermost_first() {
        let report = sample_report();
        let lines = folded(&report);
        assert_eq!(lines.len(), report.stacks.len());
        let first = &report.stacks[0];
        let expected_leaf = first.stack[0].symbol.clone().unwrap();
        let line = &lines[0];
        assert!(line.ends_with(&format!(" {}", first.open_count)), "{line}");
        let names: Vec<&str> = line.rsplit_once(' ').unwrap().0.split(';').collect();
        assert_eq!(names.last().copied(), Some(expected_leaf.as_str()));
        assert_eq!(names.len(), first.stack.len() + 1);
        assert_eq!(sanitized("a<b; c>"), "a<b:_c>");
    }

    /// The SVG names the leaking function and counts descriptors.
    #[test]
    fn writes_svg() {
        let report = sample_report();
        let mut svg = Vec::new();
        write_svg(&report, &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.starts_with("<?xml"), "{}", &svg[..40]);
        let leaf = report.stacks[0].stack[0].symbol.clone().unwrap();
        assert!(svg.contains(&leaf), "{leaf} missing");
        assert!(svg.contains("descriptors"));
    }
}
