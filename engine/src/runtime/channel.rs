//! Length-prefixed JSON messages over the Unix socket between the engine and a container's
//! init, with an optional file descriptor attached (`SCM_RIGHTS`).

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Upper bound of one message, far above any real spec; guards against a corrupt length.
const MAX_MESSAGE: u32 = 64 << 20;

/// One end of the init socket.
#[derive(Debug)]
pub(crate) struct Channel {
    socket: UnixStream,
}

impl Channel {
    pub(crate) fn new(socket: UnixStream) -> Self {
        Self { socket }
    }

    pub(crate) fn socket(&self) -> &UnixStream {
        &self.socket
    }

    /// Sends `message`, with `fd` attached when given.
    pub(crate) fn send<T: Serialize>(
        &mut self,
        message: &T,
        fd: Option<BorrowedFd<'_>>,
    ) -> io::Result<()> {
        let body = serde_json::to_vec(message).map_err(io::Error::other)?;
        let header = u32::try_from(body.len())
            .ok()
            .filter(|len| *len <= MAX_MESSAGE)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "message too large"))?
            .to_le_bytes();

        // The descriptor rides on the header's bytes, which the receiver reads with recvmsg.
        let fds: Vec<RawFd> = fd.iter().map(AsRawFd::as_raw_fd).collect();
        let control = [ControlMessage::ScmRights(&fds)];
        let control: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &control };
        let iov = [IoSlice::new(&header)];
        let sent = sendmsg::<()>(
            self.socket.as_raw_fd(),
            &iov,
            control,
            MsgFlags::empty(),
            None,
        )?;
        if sent != header.len() {
            self.socket.write_all(&header[sent..])?;
        }
        self.socket.write_all(&body)
    }

    /// Receives one message and the descriptor attached to it. Returns `None` at end of
    /// stream, which means the other side closed the socket or exited.
    pub(crate) fn recv<T: DeserializeOwned>(&mut self) -> io::Result<Option<(T, Option<OwnedFd>)>> {
        let mut header = [0u8; 4];
        let mut received_fd = None;
        let first = {
            let mut iov = [IoSliceMut::new(&mut header)];
            let mut space = nix::cmsg_space!([RawFd; 1]);
            let msg = recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            for cmsg in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(fds) = cmsg {
                    for fd in fds {
                        // SAFETY: SCM_RIGHTS installed `fd` in this process as a new
                        // descriptor that nothing else owns.
                        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                        received_fd.get_or_insert(owned);
                    }
                }
            }
            msg.bytes
        };
        if first == 0 {
            return Ok(None);
        }
        self.socket.read_exact(&mut header[first..])?;

        let len = u32::from_le_bytes(header);
        if len > MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message length too large",
            ));
        }
        let mut body = vec![0u8; len as usize];
        self.socket.read_exact(&mut body)?;
        let message = serde_json::from_slice(&body).map_err(io::Error::other)?;
        Ok(Some((message, received_fd)))
    }
}
