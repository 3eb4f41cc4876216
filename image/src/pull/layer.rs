//! Downloading one layer: the async side receives bytes from the registry and passes them
//! over a bounded channel to a blocking thread, which writes them to the store's blob writer
//! and to the caller's layer writer.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{LayerSink, LayerWriter, PullContext, PullError, PullEvent};
use crate::client::{BlobReceiver, BlobTransfer};
use crate::digest::Digest;
use crate::manifest::Descriptor;
use crate::store::{BlobLock, BlobWriter};

/// Chunks in flight between the download and the writer thread.
const CHANNEL_CAPACITY: usize = 32;

/// Result of pulling one layer.
pub(super) struct LayerOutcome {
    pub digest: Digest,
    /// Present when this pull downloaded the layer; `None` when the store had it.
    pub transfer: Option<BlobTransfer>,
}

enum Message {
    Data(Bytes),
    Restart,
}

/// Waits for the blob lock of `digest` on a blocking thread.
pub(super) async fn lock_blob(
    context: &PullContext<'_>,
    digest: &Digest,
) -> Result<BlobLock, PullError> {
    let store = context.store.clone();
    let owned = digest.clone();
    tokio::task::spawn_blocking(move || store.lock_blob(&owned))
        .await
        .map_err(|source| PullError::Task {
            task: format!("locking blob {digest}"),
            source,
        })?
        .map_err(|source| context.store_error(source))
}

/// Downloads `descriptor` into the store unless it is there already. Holding the blob lock
/// for the whole download makes a concurrent process wait and then find the blob present.
pub(super) async fn pull_layer(
    context: &PullContext<'_>,
    descriptor: Descriptor,
    diff_id: Digest,
) -> Result<LayerOutcome, PullError> {
    let descriptor = &descriptor;
    let digest = descriptor.digest.clone();
    let lock = lock_blob(context, &digest).await?;
    if context.store.has_blob(&digest) {
        context.progress.event(PullEvent::LayerPresent {
            digest: digest.clone(),
            size: descriptor.size,
        });
        return Ok(LayerOutcome {
            digest,
            transfer: None,
        });
    }

    context.progress.event(PullEvent::LayerStarted {
        digest: digest.clone(),
        size: descriptor.size,
    });
    let writer = context
        .store
        .blob_writer(lock, descriptor.size, &context.origin())
        .map_err(|source| context.store_error(source))?;

    // The writer thread owns the blob writer and the layer writer, so that blocking writes
    // (disk, or a pipe to an unpacker) never stall the async runtime.
    let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
    let sink = context.options.layer_sink.clone();
    let thread_descriptor = descriptor.clone();
    let thread = tokio::task::spawn_blocking(move || {
        write_layer(receiver, writer, sink, &thread_descriptor, &diff_id)
    });

    let mut channel = ChannelReceiver {
        sender,
        digest: digest.clone(),
        progress: context.progress,
    };
    let fetched = context
        .client
        .fetch_blob(&context.endpoint, descriptor, &mut channel)
        .await;
    drop(channel);
    let written = thread.await.map_err(|source| PullError::Task {
        task: format!("writing blob {digest}"),
        source,
    })?;

    // A failure of the writer thread explains a failed download (the channel closed), so
    // it is reported first.
    let (writer, layer_writer) = written.map_err(|error| context_error(context, error))?;
    let transfer = match fetched {
        Ok(transfer) => transfer,
        Err(source) => {
            abort(layer_writer);
            return Err(context.registry_error(source));
        }
    };

    let (commit, layer_writer) =
        tokio::task::spawn_blocking(move || (writer.commit(), layer_writer))
            .await
            .map_err(|source| PullError::Task {
                task: format!("committing blob {digest}"),
                source,
            })?;
    if let Err(source) = commit {
        abort(layer_writer);
        return Err(context.store_error(source));
    }
    finish(layer_writer, &digest).await?;

    context.progress.event(PullEvent::LayerDone {
        digest: digest.clone(),
    });
    Ok(LayerOutcome {
        digest,
        transfer: Some(transfer),
    })
}

/// Errors of the writer thread, before the pull context adds the reference.
enum WriteError {
    Store(crate::store::StoreError),
    Sink(io::Error),
}

fn context_error(context: &PullContext<'_>, error: (WriteError, Digest)) -> PullError {
    match error {
        (WriteError::Store(source), _) => context.store_error(source),
        (WriteError::Sink(source), digest) => PullError::LayerSink { digest, source },
    }
}

type Written = (BlobWriter, Option<Box<dyn LayerWriter>>);

/// Runs on a blocking thread: writes every chunk to the blob writer and the layer writer.
/// On error, aborts the layer writer and drops the blob writer (removing its temporary file).
fn write_layer(
    mut receiver: mpsc::Receiver<Message>,
    mut writer: BlobWriter,
    sink: Option<Arc<dyn LayerSink>>,
    descriptor: &Descriptor,
    diff_id: &Digest,
) -> Result<Written, (WriteError, Digest)> {
    let start = || {
        sink.as_ref()
            .and_then(|sink| sink.start(descriptor, diff_id))
    };
    let mut layer_writer = start();
    let fail = |error: WriteError, layer_writer: Option<Box<dyn LayerWriter>>| {
        abort(layer_writer);
        (error, descriptor.digest.clone())
    };

    while let Some(message) = receiver.blocking_recv() {
        match message {
            Message::Data(chunk) => {
                if let Err(error) = writer.write_bytes(&chunk) {
                    return Err(fail(WriteError::Store(error), layer_writer));
                }
                if let Some(target) = layer_writer.as_mut() {
                    if let Err(error) = target.write_chunk(chunk) {
                        return Err(fail(WriteError::Sink(error), layer_writer));
                    }
                }
            }
            Message::Restart => {
                if let Err(error) = writer.restart() {
                    return Err(fail(WriteError::Store(error), layer_writer));
                }
                abort(layer_writer);
                layer_writer = start();
            }
        }
    }
    Ok((writer, layer_writer))
}

fn abort(layer_writer: Option<Box<dyn LayerWriter>>) {
    if let Some(layer_writer) = layer_writer {
        layer_writer.abort();
    }
}

/// Completes the layer writer on a blocking thread, since it may wait for an unpacker.
async fn finish(
    layer_writer: Option<Box<dyn LayerWriter>>,
    digest: &Digest,
) -> Result<(), PullError> {
    let Some(layer_writer) = layer_writer else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || layer_writer.finish())
        .await
        .map_err(|source| PullError::Task {
            task: format!("finishing layer {digest}"),
            source,
        })?
        .map_err(|source| PullError::LayerSink {
            digest: digest.clone(),
            source,
        })
}

/// The client's view of the writer thread.
struct ChannelReceiver<'a> {
    sender: mpsc::Sender<Message>,
    digest: Digest,
    progress: &'a dyn super::ProgressSink,
}

impl ChannelReceiver<'_> {
    async fn send(&self, message: Message) -> io::Result<()> {
        self.sender.send(message).await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the blob writer stopped; its own error explains why",
            )
        })
    }
}

impl BlobReceiver for ChannelReceiver<'_> {
    async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        let length = chunk.len() as u64;
        self.send(Message::Data(chunk)).await?;
        self.progress.event(PullEvent::LayerProgress {
            digest: self.digest.clone(),
            bytes: length,
        });
        Ok(())
    }

    async fn restart(&mut self) -> io::Result<()> {
        self.send(Message::Restart).await?;
        self.progress.event(PullEvent::LayerRestarted {
            digest: self.digest.clone(),
        });
        Ok(())
    }
}
