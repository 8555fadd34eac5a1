//! `--live`: a screen redrawn every second, like top: events per second, lost events, what
//! the followed processes hold, and the groups growing fastest (count, descriptors gained in
//! the last minute, the two application frames). q, Esc or Ctrl-C ends it; the session then
//! prints the final report.

use std::{
    collections::HashMap,
    io::{self, Write as _},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use anyhow::{Context as _, Result};
use crossterm::{
    cursor::{Hide, MoveTo, Show},
    event::{self, Event, KeyCode, KeyEvent, KeyModifiers},
    queue,
    style::Print,
    terminal::{
        self, Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode,
        enable_raw_mode,
    },
};

use super::{pipeline::State, triggers::Rates};
use crate::report::{FrameEntry, text::application_frames};

/// Call sites remembered; the cache is emptied past this (groups come and go).
const LABELS_KEPT: usize = 4096;

pub(super) struct Live {
    quit: Arc<AtomicBool>,
    last: Option<(Instant, u64, u64)>,
    labels: HashMap<u32, String>,
}

impl Live {
    /// Takes over the terminal: raw mode (keys arrive one by one), the alternate screen.
    pub(super) fn start() -> Result<Self> {
        enable_raw_mode().context("--live needs a terminal")?;
        queue!(io::stdout(), EnterAlternateScreen, Hide)
            .and_then(|()| io::stdout().flush())
            .context("cannot draw the live view")?;
        let quit = Arc::new(AtomicBool::new(false));
        let flag = quit.clone();
        std::thread::spawn(move || {
            while let Ok(event) = event::read() {
                if let Event::Key(KeyEvent {
                    code, modifiers, ..
                }) = event
                    && (matches!(code, KeyCode::Char('q') | KeyCode::Esc)
                        || (code == KeyCode::Char('c')
                            && modifiers.contains(KeyModifiers::CONTROL)))
                {
                    flag.store(true, Ordering::Relaxed);
                    break;
                }
            }
        });
        Ok(Self {
            quit,
            last: None,
            labels: HashMap::new(),
        })
    }

    pub(super) fn quit_asked(&self) -> bool {
        self.quit.load(Ordering::Relaxed)
    }

    pub(super) fn draw(&mut self, state: &mut State<'_>, rates: &Rates) -> Result<()> {
        let now = Instant::now();
        let received = state.records.received;
        let lost = state.probes().lost().total();
        let (per_s, lost_per_s) = match self.last {
            Some((at, r, l)) => {
                let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                (
                    (received - r) as f64 / secs,
                    lost.saturating_sub(l) as f64 / secs,
                )
            }
            None => (0.0, 0.0),
        };
        self.last = Some((now, received, lost));
        let counts = rates.now();
        let open: u64 = counts.processes.values().map(|(_, n)| n).sum();
        let mut groups: Vec<(Option<u32>, u64, u64)> = rates.per_group().collect();
        groups.sort_by_key(|&(id, count, gained)| (std::cmp::Reverse((gained, count)), id));

        let (width, height) = terminal::size().unwrap_or((80, 24));
        let mut lines = vec![
            format!(
                "tracer --live   {} {}, {open} descriptors open   q: stop and report",
                counts.processes.len(),
                if counts.processes.len() == 1 {
                    "process"
                } else {
                    "processes"
                }
            ),
            format!("events: {per_s:.0}/s, {received} received   lost: {lost} ({lost_per_s:.0}/s)"),
            String::new(),
            format!(
                "{:>9} {:>9}  GROWING FASTEST (gained in the last minute)",
                "OPEN", "+/MIN"
            ),
        ];
        if self.labels.len() > LABELS_KEPT {
            self.labels.clear();
        }
        let rows = usize::from(height).saturating_sub(lines.len() + 1);
        for &(id, count, gained) in groups.iter().take(rows) {
            let label = match id.and_then(|id| counts.refs.get(&id).copied()) {
                Some(stack) => self
                    .labels
                    .entry(stack.id)
                    .or_insert_with(|| {
                        let frames: Vec<FrameEntry> = state
                            .stacks
                            .frames(stack)
                            .into_iter()
                            .map(FrameEntry::from)
                            .collect();
                        match application_frames(&frames).join(" ← ") {
                            s if s.is_empty() => format!("stack {}", stack.id),
                            s => s,
                        }
                    })
                    .clone(),
                None => "(no stack: open before attach, or not captured)".to_string(),
            };
            lines.push(format!("{count:>9} {gained:>9}  {label}"));
        }
        let mut out = io::stdout().lock();
        queue!(out, Clear(ClearType::All))?;
        for (row, line) in lines.iter().enumerate() {
            let shown: String = line.chars().take(usize::from(width)).collect();
            queue!(out, MoveTo(0, row as u16), Print(shown))?;
        }
        out.flush().context("cannot draw the live view")
    }
}

impl Drop for Live {
    /// Gives the terminal back as it was.
    fn drop(&mut self) {
        let _ = queue!(io::stdout(), Show, LeaveAlternateScreen);
        let _ = io::stdout().flush();
        let _ = disable_raw_mode();
    }
}
