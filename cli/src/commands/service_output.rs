//! Printing a service's output on standard output, each line prefixed with the service's
//! name, as `mayfly up` and `compose up` stream it.

use mayfly_engine::service::{OutputLine, OutputLog};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::Receiver;

/// A follower of one service's output that prints each line after the service's name.
pub struct OutputPrinter {
    name: String,
    lines: Receiver<OutputLine>,
    open: bool,
}

impl OutputPrinter {
    /// Prints the lines `output` has kept so far and follows the rest.
    pub fn start(name: &str, output: &OutputLog) -> Self {
        let (history, lines) = output.history_and_subscribe();
        for line in history {
            println!("{name} | {line}");
        }
        Self {
            name: name.to_owned(),
            lines,
            open: true,
        }
    }

    /// Waits for the next line and prints it. After the output has closed, later calls never
    /// return, so the call can stand in a `select!` beside the service's exit.
    pub async fn print_next(&mut self) {
        if !self.open {
            return std::future::pending().await;
        }
        match self.lines.recv().await {
            Ok(OutputLine { text, .. }) => println!("{} | {text}", self.name),
            Err(RecvError::Lagged(missed)) => self.report_skipped(missed),
            Err(RecvError::Closed) => self.open = false,
        }
    }

    /// Prints the lines that have arrived and not been printed yet. A stopped service's
    /// output is read to its end before its exit is reported, so after the exit this prints
    /// its last lines.
    pub fn print_rest(&mut self) {
        loop {
            match self.lines.try_recv() {
                Ok(OutputLine { text, .. }) => println!("{} | {text}", self.name),
                Err(TryRecvError::Lagged(missed)) => self.report_skipped(missed),
                Err(_) => return,
            }
        }
    }

    fn report_skipped(&self, missed: u64) {
        eprintln!(
            "mayfly: {missed} lines of {}'s output were skipped",
            self.name
        );
    }
}
