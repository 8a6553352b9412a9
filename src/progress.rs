//! What `tessera ingest` shows while it works: a progress bar on a terminal,
//! progress lines (text, or JSON with `--json`) otherwise, on stderr so that
//! stdout keeps only the result.
//!
//! The client knows the files and their bytes up front; the server streams,
//! per request, how many of its chunks are embedded and written. Progress is
//! measured in bytes (a request's bytes count as done in proportion to its
//! chunks embedded), which is what makes an ETA possible before the server has
//! split everything.
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tessera_proto::v1 as pb;

/// Lines are printed at most this often (the last one always).
const LINE_INTERVAL: Duration = Duration::from_secs(1);

/// See the module documentation.
pub struct IngestProgress {
    files_total: u64,
    bytes_total: u64,
    files_done: u64,
    bytes_done: u64,
    /// Chunks of the requests already answered.
    chunks_before: u64,
    /// The request in flight: its bytes and the server's last counters.
    current_bytes: u64,
    current: pb::IngestProgress,
    started: Instant,
    last_line: Option<Instant>,
    view: View,
}

enum View {
    Bar(ProgressBar),
    Lines { json: bool },
}

impl IngestProgress {
    /// A display for `files_total` files of `bytes_total` bytes: a bar when
    /// stderr is a terminal and JSON was not asked for.
    pub fn new(files_total: u64, bytes_total: u64, json: bool) -> Self {
        let view = if std::io::stderr().is_terminal() && !json {
            let bar = ProgressBar::new(bytes_total.max(1));
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}%  ETA {eta}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            View::Bar(bar)
        } else {
            View::Lines { json }
        };
        Self {
            files_total,
            bytes_total,
            files_done: 0,
            bytes_done: 0,
            chunks_before: 0,
            current_bytes: 0,
            current: pb::IngestProgress::default(),
            started: Instant::now(),
            last_line: None,
            view,
        }
    }

    /// A request of `bytes` bytes is being sent.
    pub fn request_started(&mut self, bytes: u64) {
        self.current_bytes = bytes;
        self.current = pb::IngestProgress::default();
    }

    /// The server's counters for the request in flight.
    pub fn update(&mut self, p: pb::IngestProgress) {
        self.current = p;
        self.show(false);
    }

    /// The request in flight is answered: `files` files, `chunks` chunks stored.
    pub fn request_done(&mut self, files: u64, chunks: u64) {
        self.files_done += files;
        self.bytes_done += self.current_bytes;
        self.chunks_before += chunks;
        self.current_bytes = 0;
        self.current = pb::IngestProgress::default();
        self.show(false);
    }

    /// The final state, always shown; the bar is cleared.
    pub fn finish(&mut self) {
        self.show(true);
        if let View::Bar(bar) = &self.view {
            bar.finish_and_clear();
        }
    }

    fn embedded(&self) -> u64 {
        self.chunks_before + self.current.chunks_embedded
    }

    fn written(&self) -> u64 {
        self.chunks_before + self.current.chunks_written
    }

    /// Bytes counted as done, the request in flight in proportion to its chunks embedded.
    fn position(&self) -> u64 {
        let share = match self.current.chunks_total {
            0 => 0.0,
            total => self.current.chunks_embedded as f64 / total as f64,
        };
        self.bytes_done + (self.current_bytes as f64 * share.min(1.0)) as u64
    }

    fn rate(&self) -> f64 {
        self.embedded() as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }

    /// Seconds left at the pace so far (None before anything is done).
    fn eta(&self) -> Option<f64> {
        let done = self.position() as f64 / self.bytes_total.max(1) as f64;
        (done > 0.0).then(|| self.started.elapsed().as_secs_f64() * (1.0 - done).max(0.0) / done)
    }

    fn show(&mut self, last: bool) {
        let (files, embedded, written, rate) = (self.files_done, self.embedded(), self.written(), self.rate());
        match &self.view {
            View::Bar(bar) => {
                bar.set_position(self.position().min(self.bytes_total.max(1)));
                bar.set_message(format!(
                    "files {files}/{}  chunks {embedded} embedded, {written} written  {rate:.1} chunks/s",
                    self.files_total
                ));
            }
            View::Lines { json } => {
                if !last && self.last_line.is_some_and(|t| t.elapsed() < LINE_INTERVAL) {
                    return;
                }
                self.last_line = Some(Instant::now());
                let eta = self.eta();
                if *json {
                    let line = json!({
                        "progress": {
                            "files_done": files,
                            "files_total": self.files_total,
                            "chunks_embedded": embedded,
                            "chunks_written": written,
                            "chunks_per_s": (rate * 10.0).round() / 10.0,
                            "eta_s": eta.map(|e| e.round()),
                        }
                    });
                    eprintln!("{line}");
                } else {
                    let eta = eta.map_or("?".to_string(), |e| format!("{e:.0}s"));
                    eprintln!(
                        "progress: files {files}/{}, chunks {embedded} embedded, {written} written, {rate:.1} chunks/s, ETA {eta}",
                        self.files_total
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_and_eta_follow_bytes_and_chunks() {
        let mut p = IngestProgress::new(4, 1000, true);
        assert_eq!(p.eta(), None, "no ETA before anything is done");
        p.request_started(400);
        p.update(pb::IngestProgress { chunks_total: 10, chunks_embedded: 5, ..Default::default() });
        assert_eq!(p.position(), 200);
        p.request_done(2, 10);
        assert_eq!((p.position(), p.files_done, p.written()), (400, 2, 10));
        p.request_started(600);
        p.update(pb::IngestProgress { chunks_total: 4, chunks_embedded: 4, chunks_written: 2, ..Default::default() });
        assert_eq!((p.position(), p.embedded(), p.written()), (1000, 14, 12));
        assert_eq!(p.eta(), Some(0.0));
    }
}
