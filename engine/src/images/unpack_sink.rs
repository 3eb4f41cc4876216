//! A layer sink that unpacks each layer while it downloads: the pull writes the compressed
//! bytes into a pipe, and a thread reads the pipe into the layer store's unpacker.

use std::io::{self, PipeWriter, Write};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mayfly_image::digest::Digest;
use mayfly_image::layers::{LayerError, LayerStore};
use mayfly_image::manifest::Descriptor;
use mayfly_image::pull::{LayerSink, LayerWriter};
use mayfly_image::unpack::{Compression, UnpackOptions, UnpackReport, UnpackWarnings};

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
        let (reader, writer) = match io::pipe() {
            Ok(pipe) => pipe,
            Err(error) => {
                tracing::warn!(layer = %layer.digest, %error, "failed to create a pipe; the layer is unpacked after its download");
                return None;
            }
        };

        let layers = self.layers.clone();
        let layer_digest = layer.digest.clone();
        let diff_id = diff_id.clone();
        let thread = std::thread::spawn(move || {
            let options = UnpackOptions::new(layer_digest.clone());
            layers.unpack(&layer_digest, &diff_id, compression, reader, &options)
        });
        Some(Box::new(StreamingUnpack {
            writer: Some(writer),
            thread: Some(thread),
            reader_gone: false,
            digest: layer.digest.clone(),
            warnings: self.warnings.clone(),
        }))
    }
}

struct StreamingUnpack {
    writer: Option<PipeWriter>,
    thread: Option<JoinHandle<Result<UnpackReport, LayerError>>>,
    /// The unpacker returned without reading everything: another process had unpacked the
    /// layer already, or the unpacker failed. The rest of the bytes are discarded here and
    /// the outcome comes from the thread's result.
    reader_gone: bool,
    digest: Digest,
    warnings: Arc<Mutex<UnpackWarnings>>,
}

impl Write for StreamingUnpack {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.reader_gone {
            return Ok(bytes.len());
        }
        let writer = self
            .writer
            .as_mut()
            .expect("writer present until finish or abort");
        match writer.write_all(bytes) {
            Ok(()) => Ok(bytes.len()),
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {
                self.reader_gone = true;
                Ok(bytes.len())
            }
            Err(error) => Err(error),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LayerWriter for StreamingUnpack {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        drop(self.writer.take());
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
        // Closing the pipe early makes the unpacker fail with a truncated stream, and the
        // layer store removes what it had written.
        drop(self.writer.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
