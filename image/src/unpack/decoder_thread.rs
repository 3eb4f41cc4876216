//! Decompression on a thread of its own, so that inflating a layer overlaps with hashing the
//! tar stream and writing its files on the unpacking thread.

use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};

/// Bytes of decompressed data per chunk sent between the threads.
const CHUNK_SIZE: usize = 256 * 1024;
/// Chunks decoded ahead of the reader, which bounds the memory in flight to about 1 MiB.
const CHUNKS_AHEAD: usize = 4;

enum Message {
    /// `buffer[..length]` is the next piece of the stream.
    Data {
        buffer: Vec<u8>,
        length: usize,
    },
    /// The stream ended where the decoder found its end.
    End,
    Failed(io::Error),
}

/// The reading end: the decompressed stream, in order, as the decoder thread produced it.
pub(crate) struct DecodedStream {
    chunks: Receiver<Message>,
    /// Buffers the reader is done with, sent back so that the decoder thread reuses them.
    spare: Sender<Vec<u8>>,
    current: Vec<u8>,
    length: usize,
    position: usize,
    ended: bool,
}

/// Starts a thread in `scope` that reads `decoder` to its end. The thread stops early when
/// the returned stream is dropped.
pub(crate) fn spawn<'scope, R: Read + Send + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    decoder: R,
) -> io::Result<(DecodedStream, ScopedJoinHandle<'scope, ()>)> {
    let (chunk_sender, chunks) = mpsc::sync_channel(CHUNKS_AHEAD);
    let (spare, spare_receiver) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("layer-decoder".to_owned())
        .spawn_scoped(scope, move || {
            decode(decoder, &chunk_sender, &spare_receiver)
        })?;
    let stream = DecodedStream {
        chunks,
        spare,
        current: Vec::new(),
        length: 0,
        position: 0,
        ended: false,
    };
    Ok((stream, thread))
}

/// Runs on the decoder thread: fills chunks until the decoder ends or fails, or the reader
/// hangs up.
fn decode<R: Read>(mut decoder: R, chunks: &SyncSender<Message>, spare: &Receiver<Vec<u8>>) {
    loop {
        let mut buffer = spare.try_recv().unwrap_or_else(|_| vec![0; CHUNK_SIZE]);
        let message = match fill(&mut decoder, &mut buffer) {
            Ok(0) => Message::End,
            Ok(length) => Message::Data { buffer, length },
            Err(error) => Message::Failed(error),
        };
        let last = !matches!(message, Message::Data { .. });
        if chunks.send(message).is_err() || last {
            return;
        }
    }
}

/// Reads until `buffer` is full or the decoder ends, and returns the bytes read.
fn fill<R: Read>(decoder: &mut R, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match decoder.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

impl Read for DecodedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.position == self.length {
            if self.ended || buf.is_empty() {
                return Ok(0);
            }
            let finished = std::mem::take(&mut self.current);
            if !finished.is_empty() {
                // If the decoder thread has stopped already, the buffer is freed here.
                let _ = self.spare.send(finished);
            }
            match self.chunks.recv() {
                Ok(Message::Data { buffer, length }) => {
                    self.current = buffer;
                    self.length = length;
                    self.position = 0;
                }
                Ok(Message::End) => {
                    self.ended = true;
                    return Ok(0);
                }
                Ok(Message::Failed(error)) => {
                    self.ended = true;
                    return Err(error);
                }
                Err(mpsc::RecvError) => {
                    self.ended = true;
                    return Err(io::Error::other(
                        "the layer decoder thread stopped before the end of the stream",
                    ));
                }
            }
        }

        let count = buf.len().min(self.length - self.position);
        buf[..count].copy_from_slice(&self.current[self.position..self.position + count]);
        self.position += count;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that returns `data` in pieces of `step` bytes and then fails, if asked to.
    struct Pieces {
        data: Vec<u8>,
        position: usize,
        step: usize,
        fail_at_end: bool,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let remaining = self.data.len() - self.position;
            if remaining == 0 && self.fail_at_end {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "corrupt"));
            }
            let count = remaining.min(self.step).min(buf.len());
            buf[..count].copy_from_slice(&self.data[self.position..self.position + count]);
            self.position += count;
            Ok(count)
        }
    }

    fn pieces(length: usize, step: usize, fail_at_end: bool) -> Pieces {
        Pieces {
            data: (0..length).map(|index| (index % 251) as u8).collect(),
            position: 0,
            step,
            fail_at_end,
        }
    }

    #[test]
    fn stream_arrives_whole_and_in_order() {
        for (length, step) in [
            (0, 1),
            (10, 3),
            (CHUNK_SIZE, 4096),
            (3 * CHUNK_SIZE + 17, 65536),
        ] {
            let source = pieces(length, step, false);
            let expected = source.data.clone();
            let received = std::thread::scope(|scope| {
                let (mut stream, _thread) = spawn(scope, source).unwrap();
                let mut received = Vec::new();
                stream.read_to_end(&mut received).unwrap();
                received
            });
            assert_eq!(received.len(), expected.len(), "length {length}");
            assert!(received == expected, "content of length {length}");
        }
    }

    #[test]
    fn decoder_error_reaches_the_reader() {
        let source = pieces(CHUNK_SIZE + 5, 1000, true);
        let error = std::thread::scope(|scope| {
            let (mut stream, _thread) = spawn(scope, source).unwrap();
            stream.read_to_end(&mut Vec::new()).unwrap_err()
        });
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn dropped_reader_stops_the_thread() {
        let source = pieces(64 * CHUNK_SIZE, 65536, false);
        std::thread::scope(|scope| {
            let (mut stream, thread) = spawn(scope, source).unwrap();
            let mut first = [0; 16];
            stream.read_exact(&mut first).unwrap();
            drop(stream);
            thread.join().unwrap();
        });
    }
}
