//! Progress bars for long runs (to stderr; hidden when stderr is not a terminal).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Sleeps for `d`, showing a bar labelled `what`.
pub async fn wait(what: &str, d: Duration) {
    let bar = ProgressBar::new(d.as_secs().max(1));
    bar.set_style(
        ProgressStyle::with_template("{prefix:>24} [{bar:40}] {pos}/{len}s")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    let start = tokio::time::Instant::now();
    while start.elapsed() < d {
        tokio::time::sleep(Duration::from_millis(500).min(d - start.elapsed())).await;
        bar.set_position(start.elapsed().as_secs());
    }
    bar.finish_and_clear();
}

/// A counter bar (for example sites connected), to be updated by the caller.
pub fn counter(what: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>24} [{bar:40}] {pos}/{len} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar
}
