//! A layer sink that unpacks each layer while it downloads: the pull passes the compressed
//! chunks over a bounded channel, and a thread reads them into the layer store's unpacker.

use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mayfly_image::digest::Digest;
use mayfly_image::layers::{LayerError, LayerStore};
use mayfly_image::manifest::Descriptor;
use mayfly_image::pull::{Bytes, LayerSink, LayerWriter};
use mayfly_image::unpack::{Compression, UnpackOptions, UnpackReport, UnpackWarnings};

/// Number of chunks of a layer download in flight to its unpacker. The HTTP client hands over
/// chunks of a few KiB to some tens of KiB (an estimate), so this is a few MiB per layer.
const CHUNKS_IN_FLIGHT: usize = 128;

pub(super) struct UnpackSink {
    layers: Arc<LayerStore>,
    warnings: Arc<Mutex<UnpackWarnings>>,
}

impl UnpackSink {
    pub(super) fn new(layers: Arc<LayerStore>) -> Self {
        Self {
            layers,
            warnings: Arc::default(),
        }
    }

    pub(super) fn take_warnings(&self) -> UnpackWarnings {
        std::mem::take(&mut *self.warnings.lock().expect("warnings lock poisoned"))
    }
}

impl LayerSink for UnpackSink {
    fn start(&self, layer: &Descriptor, diff_id: &Digest) -> Option<Box<dyn LayerWriter>> {
        if self.layers.is_unpacked(diff_id) {
            return None;
        }
        // A media type the unpacker does not know is reported after the pull, when the layer
        // is unpacked from the store. The download itself can go on.
        let compression = Compression::from_media_type(&layer.media_type)?;
        let (sender, receiver) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
        let reader = ChunkReader {
            chunks: receiver,
            current: Bytes::new(),
        };

        let layers = self.layers.clone();
        let layer_digest = layer.digest.clone();
        let diff_id = diff_id.clone();
        let thread = std::thread::spawn(move || {
            let options = UnpackOptions::new(layer_digest.clone());
            layers.unpack(&layer_digest, &diff_id, compression, reader, &options)
        });
        Some(Box::new(StreamingUnpack {
            sender: Some(sender),
            thread: Some(thread),
            reader_gone: false,
            digest: layer.digest.clone(),
            warnings: self.warnings.clone(),
        }))
    }
}

/// The unpacker's end of the channel: the layer's compressed bytes in order. It ends when the
/// sender is dropped, which is also how an aborted download shows up: as a truncated stream.
struct ChunkReader {
    chunks: Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.recv() {
                Ok(chunk) => self.current = chunk,
                Err(mpsc::RecvError) => return Ok(0),
            }
        }
        let count = buf.len().min(self.current.len());
        buf[..count].copy_from_slice(&self.current.split_to(count));
        Ok(count)
    }
}

struct StreamingUnpack {
    sender: Option<SyncSender<Bytes>>,
    thread: Option<JoinHandle<Result<UnpackReport, LayerError>>>,
    /// The unpacker returned without reading everything: another process had unpacked the
    /// layer already, or the unpacker failed. The rest of the bytes are discarded here and
    /// the outcome comes from the thread's result.
    reader_gone: bool,
    digest: Digest,
    warnings: Arc<Mutex<UnpackWarnings>>,
}

impl StreamingUnpack {
    fn send(&mut self, chunk: Bytes) {
        if self.reader_gone {
            return;
        }
        let sender = self
            .sender
            .as_ref()
            .expect("sender present until finish or abort");
        if sender.send(chunk).is_err() {
            self.reader_gone = true;
        }
    }
}

impl Write for StreamingUnpack {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.send(Bytes::copy_from_slice(bytes));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LayerWriter for StreamingUnpack {
    fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        self.send(chunk);
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        drop(self.sender.take());
        let thread = self
            .thread
            .take()
            .expect("thread present until finish or abort");
        let report = thread
            .join()
            .map_err(|_| {
                io::Error::other(format!("the unpacker of layer {} panicked", self.digest))
            })?
            .map_err(io::Error::other)?;
        self.warnings
            .lock()
            .expect("warnings lock poisoned")
            .add(&report.warnings);
        tracing::debug!(layer = %self.digest, diff_id = %report.diff_id, "unpacked layer while downloading");
        Ok(())
    }

    fn abort(mut self: Box<Self>) {
        // Closing the channel early makes the unpacker fail with a truncated stream, and the
        // layer store removes what it had written.
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
