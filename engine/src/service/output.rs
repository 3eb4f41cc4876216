//! A service's output: the last lines kept for error messages, and a broadcast for front-ends
//! that stream it (`mayfly up` prefixes each line with the service's name).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::sync::Mutex;

use tokio::sync::{broadcast, watch};

/// Lines kept for error messages.
const KEPT_LINES: usize = 40;

/// Lines a slow subscriber may fall behind before it misses some.
const BROADCAST_CAPACITY: usize = 1024;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a service's output, without its newline.
#[derive(Debug, Clone)]
pub struct OutputLine {
    pub stream: Stream,
    pub text: String,
}

/// The output of one service instance.
#[derive(Debug)]
pub struct OutputLog {
    kept: Mutex<VecDeque<String>>,
    sender: broadcast::Sender<OutputLine>,
    /// How many pipes are still being read.
    open: watch::Sender<usize>,
}

impl Default for OutputLog {
    fn default() -> Self {
        Self {
            kept: Mutex::default(),
            sender: broadcast::channel(BROADCAST_CAPACITY).0,
            open: watch::channel(0).0,
        }
    }
}

impl OutputLog {
    /// Reads `pipe` line by line on a new thread until it closes.
    pub(crate) fn follow(self: &std::sync::Arc<Self>, pipe: std::fs::File, stream: Stream) {
        let log = self.clone();
        self.open.send_modify(|open| *open += 1);
        let spawned = std::thread::Builder::new()
            .name("service-output".to_owned())
            .spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) => break,
                        Ok(_) => {
                            let text = String::from_utf8_lossy(&line);
                            log.push(stream, text.trim_end_matches(['\n', '\r']));
                        }
                        Err(error) => {
                            tracing::debug!(%error, "stopped reading a service's output");
                            break;
                        }
                    }
                }
                log.open.send_modify(|open| *open -= 1);
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "failed to start a thread that reads a service's output");
            self.open.send_modify(|open| *open -= 1);
        }
    }

    /// Waits until every pipe has reached its end, or `limit` passes (a process left in the
    /// container may hold a pipe open).
    pub(crate) async fn drained(&self, limit: std::time::Duration) {
        let mut open = self.open.subscribe();
        let _ = tokio::time::timeout(limit, open.wait_for(|open| *open == 0)).await;
    }

    fn push(&self, stream: Stream, text: &str) {
        // Sending under the lock keeps `history_and_subscribe` free of gaps and repeats.
        let mut kept = self.kept.lock().expect("output log poisoned");
        if kept.len() == KEPT_LINES {
            kept.pop_front();
        }
        kept.push_back(text.to_owned());
        // No subscriber is not an error: the lines are still kept.
        let _ = self.sender.send(OutputLine {
            stream,
            text: text.to_owned(),
        });
    }

    /// Returns the last lines, oldest first, joined with newlines.
    pub fn tail(&self) -> String {
        let kept = self.kept.lock().expect("output log poisoned");
        kept.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Returns the kept lines and a receiver of every line after them.
    pub fn history_and_subscribe(&self) -> (Vec<String>, broadcast::Receiver<OutputLine>) {
        let kept = self.kept.lock().expect("output log poisoned");
        (kept.iter().cloned().collect(), self.sender.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_last_lines() {
        let log = OutputLog::default();
        for n in 0..100 {
            log.push(Stream::Stdout, &format!("line {n}"));
        }
        let tail = log.tail();
        assert_eq!(tail.lines().count(), KEPT_LINES);
        assert!(tail.ends_with("line 99"), "{tail}");
    }

    #[test]
    fn subscribers_see_new_lines() {
        let log = OutputLog::default();
        log.push(Stream::Stdout, "starting");
        let (history, mut receiver) = log.history_and_subscribe();
        assert_eq!(history, vec!["starting".to_owned()]);
        log.push(Stream::Stderr, "ready");
        let line = receiver.try_recv().unwrap();
        assert_eq!(line.text, "ready");
        assert_eq!(line.stream, Stream::Stderr);
    }
}
