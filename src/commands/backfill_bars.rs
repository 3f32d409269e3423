//! `tandem backfill`'s progress on a terminal: one bar per table on stderr (rows done of the
//! estimated total, rows/s, ETA, chunks). Elsewhere (stderr redirected, logs as JSON) the
//! backfill logs its plain `backfill progress` lines instead.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{FormattedDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tandem_comparator::{BackfillProgressSink, BackfillTableProgress};

use crate::cli::LogFormat;

/// The bar of one table: its name, the bar (as wide as the terminal leaves room for), rows
/// done of the estimated total, and the rest.
const TEMPLATE: &str = "{prefix} [{wide_bar}] {pos}/{len} rows {msg}";

/// Whether the progress is drawn as bars: only on a terminal, where a person watches it, and
/// only while the logs beside it are lines for people (JSON log lines are read by a program,
/// which a bar's redrawing would garble).
pub fn draws_bars(stderr_is_terminal: bool, log_format: LogFormat) -> bool {
    stderr_is_terminal && log_format == LogFormat::Text
}

/// The bars drawn on stderr, one per table, added as the backfill starts on each.
pub struct Bars {
    multi: MultiProgress,
    tables: Mutex<Vec<(String, ProgressBar)>>,
}

impl Bars {
    pub fn new() -> Arc<Bars> {
        Arc::new(Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            tables: Mutex::default(),
        })
    }

    /// The sink the backfill tells its progress to.
    pub fn sink(self: &Arc<Bars>) -> BackfillProgressSink {
        let bars = Arc::clone(self);
        BackfillProgressSink(Arc::new(move |tables| bars.show(tables)))
    }

    /// Draws where each table stands.
    fn show(&self, tables: &[BackfillTableProgress]) {
        let mut bars = self
            .tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for table in tables {
            let bar = match bars.iter().find(|(name, _)| *name == table.table) {
                Some((_, bar)) => bar.clone(),
                None => {
                    let bar = self.multi.add(ProgressBar::new(table.rows_estimated));
                    if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar.set_prefix(table.table.clone());
                    bars.push((table.table.clone(), bar.clone()));
                    bar
                }
            };
            if bar.is_finished() {
                continue;
            }
            bar.set_length(table.rows_estimated);
            bar.set_position(table.rows_done);
            let message = message(table);
            if table.finished {
                bar.finish_with_message(message);
            } else {
                bar.set_message(message);
            }
        }
    }

    /// Leaves every bar as it was last drawn (a table stopped part way stays unfinished), and
    /// the cursor on the line after them, where the report goes.
    pub fn finish(&self) {
        let bars = self
            .tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (_, bar) in bars.iter().filter(|(_, bar)| !bar.is_finished()) {
            bar.abandon();
        }
        if !bars.is_empty() {
            // indicatif leaves the cursor at the end of the last bar.
            eprintln!();
        }
    }
}

/// The text after a table's bar: rows/s, the ETA (or done), and chunks done of planned.
fn message(table: &BackfillTableProgress) -> String {
    let pace = format!("{:.0} rows/s", table.rows_per_sec);
    let left = if table.chunks_done >= table.chunks {
        "done".to_owned()
    } else {
        match table.eta {
            // Whole seconds: a bar redrawn five times a second would flicker with fractions.
            Some(eta) => format!(
                "ETA {}",
                FormattedDuration(Duration::from_secs(eta.as_secs()))
            ),
            None => "ETA unknown".to_owned(),
        }
    };
    format!(
        "{pace}, {left} ({}/{} chunks)",
        table.chunks_done, table.chunks
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tandem_comparator::BackfillTableProgress;

    use super::{draws_bars, message};
    use crate::cli::LogFormat;

    #[test]
    fn bars_are_drawn_only_on_a_terminal_beside_text_logs() {
        assert!(draws_bars(true, LogFormat::Text));
        assert!(!draws_bars(false, LogFormat::Text), "plain lines");
        assert!(!draws_bars(true, LogFormat::Json), "JSON logs stay whole");
        assert!(!draws_bars(false, LogFormat::Json));
    }

    #[test]
    fn a_bar_says_the_pace_what_is_left_and_the_chunks() {
        let mut table = BackfillTableProgress {
            table: "items".to_owned(),
            chunks: 6,
            chunks_done: 2,
            rows_done: 20_000,
            rows_estimated: 60_000,
            rows_per_sec: 1234.4,
            eta: None,
            finished: false,
        };
        assert_eq!(message(&table), "1234 rows/s, ETA unknown (2/6 chunks)");
        table.eta = Some(Duration::from_millis(90_400));
        assert_eq!(message(&table), "1234 rows/s, ETA 00:01:30 (2/6 chunks)");
        table.chunks_done = 6;
        assert_eq!(message(&table), "1234 rows/s, done (6/6 chunks)");
    }
}
