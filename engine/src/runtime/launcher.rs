//! The launcher thread: one long-lived engine thread that clones every container init.
//!
//! The parent-death signal of a process fires when the *thread* that created it exits, not
//! the process. Tokio's blocking pool retires idle threads after ten seconds, so cloning from
//! whatever thread calls `spawn` would kill containers at random. This thread never exits, so
//! a container's init gets SIGKILL only when the whole engine dies.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use crate::sys::{self, CloneResult, ExecPlan};

/// Namespaces each container gets.
const NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWNET) as u64;

/// Environment variable that selects init mode and names the init socket's descriptor.
pub(crate) const INIT_FD_VAR: &str = "MAYFLY_INIT_FD";
/// The descriptor number of the init socket in the init process.
pub(crate) const INIT_FD: i32 = 3;

/// A started init process.
#[derive(Debug)]
pub(crate) struct Launched {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
}

struct Request {
    /// Descriptors for fds 0..=3 of the child; `None` inherits the engine's.
    fds: [Option<OwnedFd>; 4],
    reply: mpsc::SyncSender<io::Result<Launched>>,
}

static LAUNCHER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();

/// Re-executes the current binary in init mode in new mount, PID, UTS, IPC and network
/// namespaces, with `fds` as its descriptors 0 to 3.
pub(crate) fn launch_init(fds: [Option<OwnedFd>; 4]) -> io::Result<Launched> {
    let sender = match LAUNCHER.get() {
        Some(sender) => sender,
        None => {
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .name("mayfly-launcher".into())
                .spawn(move || serve(rx))?;
            LAUNCHER.get_or_init(|| Mutex::new(tx))
        }
    };

    let (reply, response) = mpsc::sync_channel(1);
    let gone = || io::Error::other("the launcher thread is gone");
    sender
        .lock()
        .map_err(|_| gone())?
        .send(Request { fds, reply })
        .map_err(|_| gone())?;
    response.recv().map_err(|_| gone())?
}

fn serve(requests: mpsc::Receiver<Request>) {
    let path = c"/proc/self/exe";
    let arg0 = c"mayfly-init";
    let env = CString::new(format!("{INIT_FD_VAR}={INIT_FD}")).expect("no NUL in constant");
    let argv = [arg0.as_ptr(), std::ptr::null()];
    let envp = [env.as_ptr(), std::ptr::null()];

    for request in requests {
        let result = launch_one(&request.fds, path, &argv, &envp);
        let _ = request.reply.send(result);
    }
}

fn launch_one(
    fds: &[Option<OwnedFd>; 4],
    path: &std::ffi::CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Result<Launched> {
    // Copies numbered 4 and up cannot be overwritten by the child's dup2 onto 0..=3.
    let mut high = Vec::new();
    let mut raw = [-1; 4];
    for (slot, fd) in raw.iter_mut().zip(fds) {
        if let Some(fd) = fd {
            let copy = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(4))?;
            // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
            let copy = unsafe { OwnedFd::from_raw_fd(copy) };
            *slot = copy.as_raw_fd();
            high.push(copy);
        }
    }
    let (error_read, error_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;

    let plan = ExecPlan {
        fds: raw,
        error_fd: error_write.as_raw_fd(),
        path,
        argv,
        envp,
    };
    // SAFETY: the child only runs exec_after_clone, which makes async-signal-safe calls on
    // `plan`, whose strings and arrays live in this frame and were copied into the child.
    let (pid, pidfd) = match unsafe { sys::clone_into_namespaces(NAMESPACES)? } {
        // SAFETY: we are the freshly cloned child; see above.
        CloneResult::Child => unsafe { sys::exec_after_clone(&plan) },
        CloneResult::Parent { pid, pidfd } => (pid, pidfd),
    };
    drop(error_write);
    drop(high);

    // The pipe closes on a successful execve; otherwise it carries the errno.
    let mut errno = [0u8; 4];
    let mut error_read = File::from(error_read);
    let read = error_read.read(&mut errno)?;
    if read == 0 {
        return Ok(Launched { pid, pidfd });
    }
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
}
