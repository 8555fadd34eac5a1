//! The printed tables: plain aligned text, also pasted into README.md.

use super::{
    budgets::Verdict,
    capacity::RateStep,
    micro::MicroResult,
    profile::{ProfileResult, ProgramCost},
    stats::Summary,
};

/// A table of rows of cells; the first row is the header.
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Markdown, columns padded so it also reads as plain text.
    pub(crate) fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |row: &[String]| {
            let cells: Vec<String> = (0..columns)
                .map(|c| {
                    let cell = row.get(c).map(String::as_str).unwrap_or("");
                    format!("{cell:<width$}", width = widths[c])
                })
                .collect();
            format!("| {} |\n", cells.join(" | "))
        };
        let mut out = line(&self.rows[0]);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&format!("| {} |\n", rule.join(" | ")));
        for row in &self.rows[1..] {
            out.push_str(&line(row));
        }
        out
    }
}

/// `median (±spread%, min X)` in the unit given by `scale`: the minimum is the run least
/// disturbed by other work on a shared machine.
pub(crate) fn median_spread(summary: &Summary, scale: f64, decimals: usize) -> String {
    format!(
        "{:.decimals$} (±{:.0}%, min {:.decimals$})",
        summary.median * scale,
        summary.spread_percent(),
        summary.min * scale
    )
}

/// The micro results: one row per case, one column per workload (µs per iteration and the
/// ratio to untraced).
pub(crate) fn micro(results: &[MicroResult]) -> String {
    let mut header = vec!["case".to_owned()];
    for result in results {
        header.push(format!("{} µs", result.description));
        header.push("× untraced".to_owned());
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = Table::new(&header);
    let Some(first) = results.first() else {
        return table.render();
    };
    for (index, case) in first.cases.iter().enumerate() {
        let mut cells = vec![case.label.to_owned()];
        for result in results {
            let case = &result.cases[index];
            match (&case.ns_per_iter, &case.unavailable) {
                (Some(summary), _) => {
                    cells.push(median_spread(summary, 1e-3, 2));
                    cells.push(
                        case.ratio_to_untraced
                            .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
                    );
                }
                (None, Some(why)) => {
                    cells.push(format!("unavailable: {}", shorten(why, 60)));
                    cells.push("-".to_owned());
                }
                (None, None) => {
                    cells.push("-".to_owned());
                    cells.push("-".to_owned());
                }
            }
        }
        table.row(cells);
    }
    table.render()
}

/// At most `max` characters of `text`, with `...` when cut.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let cut: String = text.chars().take(max.saturating_sub(3)).collect();
    format!("{cut}...")
}

/// One row per paced rate.
pub(crate) fn rates(steps: &[RateStep]) -> String {
    let mut table = Table::new(&[
        "target pairs/s",
        "ring MiB",
        "reader",
        "achieved pairs/s",
        "events/s",
        "lost",
        "false leaks",
    ]);
    for step in steps {
        table.row(vec![
            if step.target_pairs_per_s == 0 {
                "unpaced".to_owned()
            } else {
                step.target_pairs_per_s.to_string()
            },
            step.ring_buffer_mib.to_string(),
            if step.reader_stopped {
                "stopped"
            } else {
                "running"
            }
            .to_owned(),
            format!("{:.0}", step.achieved_pairs_per_s),
            format!("{:.0}", step.events_per_s),
            step.lost.to_string(),
            step.false_leaks.to_string(),
        ]);
    }
    table.render()
}

/// One row per tracer program, with the floor's program on the same tracepoint.
pub(crate) fn profile(profile: &ProfileResult) -> String {
    let mut table = Table::new(&[
        "program",
        "runs",
        "tracer ns/run",
        "baseline ns/run",
        "empty floor ns/run",
    ]);
    let mut programs: Vec<&str> = profile.tracer.iter().map(|c| c.program.as_str()).collect();
    for cost in profile.baseline.iter().flatten() {
        if !programs.contains(&cost.program.as_str()) {
            programs.push(&cost.program);
        }
    }
    let ns = |costs: Option<&Vec<ProgramCost>>, program: &str| {
        costs
            .and_then(|costs| costs.iter().find(|c| c.program == program))
            .map_or("-".to_owned(), |c| median_spread(&c.rounds, 1.0, 0))
    };
    for program in programs {
        let runs = profile
            .tracer
            .iter()
            .chain(profile.baseline.iter().flatten())
            .find(|c| c.program == program)
            .map_or(0, |c| c.runs);
        let floor = profile.empty_floor.as_ref().and_then(|floor| {
            // bpftrace names its programs after the probe, e.g. `sys_enter_openat` within
            // `tracepoint_syscalls_sys_enter_openat`, cut to 15 characters by the kernel.
            floor
                .iter()
                .find(|f| f.program == program || program.starts_with(&f.program))
        });
        table.row(vec![
            program.to_owned(),
            runs.to_string(),
            ns(Some(&profile.tracer), program),
            ns(profile.baseline.as_ref(), program),
            floor.map_or("-".to_owned(), |f| median_spread(&f.rounds, 1.0, 0)),
        ]);
    }
    if let Some(floor) = &profile.empty_floor {
        let names: Vec<String> = floor
            .iter()
            .map(|f| format!("{} {:.0} ns", f.program, f.rounds.median))
            .collect();
        table.row(vec![
            "(floor programs)".to_owned(),
            String::new(),
            String::new(),
            String::new(),
            names.join(", "),
        ]);
    }
    table.render()
}

/// The budgets and whether each was met.
pub(crate) fn budgets(verdicts: &[Verdict]) -> String {
    let mut table = Table::new(&["budget", "measured", "met", "note"]);
    for verdict in verdicts {
        table.row(vec![
            verdict.budget.clone(),
            verdict.measured.clone(),
            match verdict.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            }
            .to_owned(),
            verdict.note.clone().unwrap_or_default(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns are padded to their widest cell and a rule follows the header.
    #[test]
    fn renders_aligned_markdown() {
        let mut table = Table::new(&["case", "µs"]);
        table.row(vec!["untraced".to_owned(), "3.50".to_owned()]);
        assert_eq!(
            table.render(),
            "| case     | µs   |\n| -------- | ---- |\n| untraced | 3.50 |\n"
        );
    }

    /// The cell shows the median in the chosen unit and the spread in percent.
    #[test]
    fn formats_median_and_spread() {
        let summary = Summary::of(&[3400.0, 3500.0, 3600.0]).unwrap();
        assert_eq!(median_spread(&summary, 1e-3, 2), "3.50 (±3%, min 3.40)");
    }

    /// Long reasons are cut to fit a cell.
    #[test]
    fn shortens_long_text() {
        assert_eq!(shorten("abcdef", 5), "ab...");
        assert_eq!(shorten("abc", 5), "abc");
    }
}
