//! Tying background tasks to the lifetime of the value that started them.

/// Aborts a task when dropped. Aborting a task that owns a `JoinSet` aborts
/// every task in the set too, which closes their sockets.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
