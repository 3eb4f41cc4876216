//! Running a command inside a running container, the engine's side: the init socket after
//! start, shared by every [`super::ProcessHandle`] of the container, and one exec request at
//! a time over it.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::channel::Channel;
use super::spec::{ExecReply, ExecRequest, FromInit, ToInit};
use super::RuntimeError;

/// How long the engine waits for the init's reply beyond the command's timeout: the init
/// needs this margin to fork, to kill the command's process group and to reap it.
const REPLY_GRACE: Duration = Duration::from_secs(10);

/// The exit status and output of a command run inside the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutcome {
    /// The exit status the way a shell reports it, 128+N when signal N killed the command.
    /// `None` means the timeout ran out and the init killed the command's process group.
    pub code: Option<i32>,
    /// The last 4096 bytes that the command wrote to stdout and stderr, in the order they
    /// were written, decoded as UTF-8 with invalid sequences replaced.
    pub output: String,
    /// Whether earlier output was dropped to keep `output` at 4096 bytes.
    pub truncated: bool,
}

impl ExecOutcome {
    /// Returns whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    fn from_reply(reply: ExecReply) -> Self {
        let mut bytes = reply.output.as_slice();
        if reply.truncated {
            // The cut may have split a UTF-8 sequence, so leading continuation bytes are dropped.
            let start = bytes
                .iter()
                .position(|byte| byte & 0b1100_0000 != 0b1000_0000)
                .unwrap_or(bytes.len());
            bytes = &bytes[start..];
        }
        Self {
            code: reply.code,
            output: String::from_utf8_lossy(bytes).into_owned(),
            truncated: reply.truncated,
        }
    }
}

/// Whether the container accepts exec requests.
#[derive(Debug)]
enum ExecState {
    /// Before [`super::ContainerProcess::start`].
    NotStarted,
    /// The command runs as PID 1, and no init listens.
    NoInit,
    /// The small init listens on this socket.
    Open(Channel),
    /// The init exited, or an exchange broke off and left the socket out of step.
    Closed,
}

/// The init socket of a started container, shared by its handles.
#[derive(Debug)]
pub(super) struct ExecSlot {
    /// Queues exec requests, so that one runs at a time per container.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Locked only by the blocking exchange (which holds the turn) and by start.
    state: Mutex<ExecState>,
}

impl ExecSlot {
    pub(super) fn new() -> Self {
        Self {
            turn: Arc::new(tokio::sync::Mutex::new(())),
            state: Mutex::new(ExecState::NotStarted),
        }
    }

    /// Records how the container started: with the init listening on `channel`, or without
    /// an init when `channel` is `None`.
    pub(super) fn set_started(&self, channel: Option<Channel>) {
        let state = match channel {
            Some(channel) => ExecState::Open(channel),
            None => ExecState::NoInit,
        };
        *self.lock_state() = state;
    }

    /// Records that the init exited or broke off contact.
    pub(super) fn close(&self) {
        *self.lock_state() = ExecState::Closed;
    }

    /// Locks the state; a panic while it was locked leaves a state that is still valid.
    fn lock_state(&self) -> MutexGuard<'_, ExecState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Runs `args` inside the container through its init and waits for it, at most `timeout`
/// plus the margin the init needs to kill it.
pub(super) async fn exec(
    slot: &Arc<ExecSlot>,
    id: &Arc<str>,
    args: Vec<String>,
    timeout: Duration,
) -> Result<ExecOutcome, RuntimeError> {
    if args.is_empty() {
        return Err(RuntimeError::ExecEmpty { id: id.to_string() });
    }
    let request = ExecRequest {
        args,
        timeout_ms: u64::try_from(timeout.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX),
    };

    // The exchange runs to its end even when the caller stops waiting, so no unread reply
    // is left on the socket for the next request.
    let turn = Arc::clone(&slot.turn).lock_owned().await;
    let task_slot = Arc::clone(slot);
    let task_id = Arc::clone(id);
    let wait = timeout.saturating_add(REPLY_GRACE);
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        exchange(&task_slot, &task_id, &request, wait)
    })
    .await
    .map_err(|join| RuntimeError::Channel {
        id: id.to_string(),
        source: io::Error::other(join),
    })?
}

/// Sends `request` to the init and reads its reply, blocking the thread.
fn exchange(
    slot: &ExecSlot,
    id: &str,
    request: &ExecRequest,
    wait: Duration,
) -> Result<ExecOutcome, RuntimeError> {
    let command = request.args.join(" ");
    let mut state = slot.lock_state();
    let channel = match &mut *state {
        ExecState::Open(channel) => channel,
        ExecState::NotStarted => return Err(RuntimeError::NotStarted { id: id.to_owned() }),
        ExecState::NoInit => return Err(RuntimeError::ExecWithoutInit { id: id.to_owned() }),
        ExecState::Closed => return Err(RuntimeError::ExecClosed { id: id.to_owned() }),
    };

    let result = send_and_receive(channel, request, wait);
    let reply = match result {
        Ok(Some(FromInit::ExecDone(reply))) => Ok(ExecOutcome::from_reply(reply)),
        Ok(Some(FromInit::ExecFailed { message })) => Err(RuntimeError::ExecFailed {
            id: id.to_owned(),
            command,
            message,
        }),
        Ok(Some(other)) => Err(RuntimeError::Channel {
            id: id.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected reply {other:?} to an exec request"),
            ),
        }),
        Ok(None) => Err(RuntimeError::ExecContainerExited {
            id: id.to_owned(),
            command,
        }),
        Err(err) => Err(match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => RuntimeError::ExecNoReply {
                id: id.to_owned(),
                command,
                waited: wait,
            },
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                RuntimeError::ExecContainerExited {
                    id: id.to_owned(),
                    command,
                }
            }
            _ => RuntimeError::Channel {
                id: id.to_owned(),
                source: err,
            },
        }),
    };

    // Only a reply to this request leaves the socket in step for the next one.
    let in_step = matches!(reply, Ok(_) | Err(RuntimeError::ExecFailed { .. }));
    if !in_step {
        *state = ExecState::Closed;
    }
    reply
}

fn send_and_receive(
    channel: &mut Channel,
    request: &ExecRequest,
    wait: Duration,
) -> io::Result<Option<FromInit>> {
    channel.socket().set_read_timeout(Some(wait))?;
    channel.send(&ToInit::Exec(request.clone()), None)?;
    Ok(channel.recv::<FromInit>()?.map(|(message, _)| message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_drops_split_utf8_sequence() {
        // "é" is 0xC3 0xA9; a tail that starts at 0xA9 must not show a replacement character.
        let reply = ExecReply {
            code: Some(1),
            output: vec![0xA9, b'o', b'k'],
            truncated: true,
        };
        let outcome = ExecOutcome::from_reply(reply);
        assert_eq!(outcome.output, "ok");
        assert!(outcome.truncated);
        assert!(!outcome.success());
    }

    #[test]
    fn outcome_keeps_complete_output() {
        let reply = ExecReply {
            code: Some(0),
            output: "héllo".as_bytes().to_vec(),
            truncated: false,
        };
        let outcome = ExecOutcome::from_reply(reply);
        assert_eq!(outcome.output, "héllo");
        assert!(outcome.success());
    }
}
