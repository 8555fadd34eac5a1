//! The machine's load while the bench ran, and when it was too busy for a verdict: on a
//! shared machine other work takes CPU from whichever case runs at that moment, which
//! interleaving spreads over all cases but cannot remove.

use serde::Serialize;

/// 1-minute load averages at the start and end of the bench, and the CPUs they compare to.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Load {
    pub cpus: usize,
    pub at_start: Option<f64>,
    pub at_end: Option<f64>,
}

/// The 1-minute load average now.
pub(crate) fn now() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Load {
    /// Why the machine was too busy to judge a budget, if it was: more runnable work than
    /// CPUs at the start or the end (the bench itself keeps about one CPU busy).
    pub(crate) fn too_busy(&self) -> Option<String> {
        let busiest = self
            .at_start
            .into_iter()
            .chain(self.at_end)
            .fold(0.0, f64::max);
        (busiest > self.cpus as f64).then(|| {
            format!(
                "load average {} at start, {} at end on {} CPUs",
                show(self.at_start),
                show(self.at_end),
                self.cpus
            )
        })
    }
}

fn show(load: Option<f64>) -> String {
    load.map_or_else(|| "unknown".to_owned(), |l| format!("{l:.2}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A load above the CPU count at either end makes the bench too busy to judge.
    #[test]
    fn busy_when_load_exceeds_cpus() {
        let quiet = Load {
            cpus: 2,
            at_start: Some(0.5),
            at_end: Some(1.9),
        };
        assert_eq!(quiet.too_busy(), None);
        let busy = Load {
            at_end: Some(6.3),
            ..quiet
        };
        assert!(busy.too_busy().unwrap().contains("6.30 at end on 2 CPUs"));
    }
}
