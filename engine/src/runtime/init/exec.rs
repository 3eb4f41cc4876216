//! Running the container's command with Docker's exit statuses: 127 when the command is not
//! found, 126 when it exists but cannot be executed.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::errno::Errno;
use oci_spec::runtime::Process;

use super::tty;
use crate::runtime::DEFAULT_PATH;

/// Exit status when the command cannot be executed.
const NOT_EXECUTABLE: i32 = 126;
/// Exit status when the command does not exist.
const NOT_FOUND: i32 = 127;

/// The command of a container.
pub(super) struct Command {
    args: Vec<String>,
    env: Vec<String>,
}

impl Command {
    pub(super) fn from_process(process: &Process) -> Self {
        Self {
            args: process.args().clone().unwrap_or_default(),
            env: process.env().clone().unwrap_or_default(),
        }
    }

    /// Returns a command with `args` and this command's environment.
    pub(super) fn with_args(&self, args: Vec<String>) -> Self {
        Self {
            args,
            env: self.env.clone(),
        }
    }

    /// Returns the argument vector.
    pub(super) fn args(&self) -> &[String] {
        &self.args
    }

    /// The command's `PATH`, or Docker's default when the environment has none.
    fn search_path(&self) -> &str {
        self.env
            .iter()
            .find_map(|entry| entry.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH)
    }
}

/// Finds `name` like `execvp` and Go's `exec.LookPath`: a name with a slash is used as is,
/// otherwise the first executable regular file in a `PATH` directory.
fn resolve(name: &str, search_path: &str) -> Option<String> {
    if name.contains('/') {
        return Some(name.to_owned());
    }
    search_path
        .split(':')
        .map(|dir| if dir.is_empty() { "." } else { dir })
        .map(|dir| format!("{}/{name}", dir.trim_end_matches('/')))
        .find(|candidate| is_executable_file(Path::new(candidate)))
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Replaces the process with the command. On failure, prints why to stderr (the
/// container's) and exits with 126 or 127.
pub(super) fn exec(command: &Command) -> ! {
    let Some(name) = command.args.first() else {
        fail(NOT_FOUND, "", "no command given");
    };
    let Some(path) = resolve(name, command.search_path()) else {
        fail(NOT_FOUND, name, "executable file not found in $PATH");
    };
    let to_c = |items: &[String]| -> Option<Vec<CString>> {
        items
            .iter()
            .map(|s| CString::new(s.as_bytes()).ok())
            .collect()
    };
    let (Some(args), Some(env), Ok(path_c)) = (
        to_c(&command.args),
        to_c(&command.env),
        CString::new(path.as_bytes()),
    ) else {
        fail(
            NOT_EXECUTABLE,
            name,
            "argument or environment contains a NUL byte",
        );
    };

    let errno = match nix::unistd::execve(&path_c, &args, &env) {
        Err(errno) => errno,
        Ok(never) => match never {},
    };
    let code = match errno {
        Errno::ENOENT | Errno::ENOTDIR => NOT_FOUND,
        _ => NOT_EXECUTABLE,
    };
    fail(code, &path, errno.desc());
}

fn fail(code: i32, name: &str, reason: &str) -> ! {
    eprintln!("mayfly: exec {name:?}: {reason}");
    std::process::exit(code);
}

/// Runs the command as the container's PID 1, attached to the terminal if there is one.
pub(super) fn exec_as_pid1(command: &Command, terminal: Option<&OwnedFd>) -> ! {
    if let Some(slave) = terminal {
        if let Err(err) = tty::attach(slave) {
            fail(
                NOT_EXECUTABLE,
                command.args.first().map_or("", String::as_str),
                &err.to_string(),
            );
        }
    }
    exec(command)
}

/// Runs the command in a forked exec child: in a new session (its own process group, no
/// controlling terminal), with standard input from `stdin` and both output streams to
/// `output`.
pub(super) fn exec_in_session(command: &Command, stdin: &OwnedFd, output: &OwnedFd) -> ! {
    let name = command.args.first().map_or("", String::as_str);
    if let Err(errno) = nix::unistd::setsid() {
        fail(NOT_EXECUTABLE, name, errno.desc());
    }
    let streams = [(stdin, 0), (output, 1), (output, 2)];
    for (fd, target) in streams {
        if let Err(errno) = nix::unistd::dup2(fd.as_raw_fd(), target) {
            fail(NOT_EXECUTABLE, name, errno.desc());
        }
    }
    exec(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_follows_path_order() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("a");
        let second = dir.path().join("b");
        std::fs::create_dir(&first).unwrap();
        std::fs::create_dir(&second).unwrap();
        std::fs::write(first.join("tool"), "").unwrap();
        std::fs::write(second.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(second.join("tool"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let search = format!("{}:{}", first.display(), second.display());

        assert_eq!(
            resolve("tool", &search),
            Some(format!("{}/tool", second.display()))
        );
        assert_eq!(resolve("missing", &search), None);
        assert_eq!(
            resolve("./rel/tool", &search),
            Some("./rel/tool".to_owned())
        );
    }
}
