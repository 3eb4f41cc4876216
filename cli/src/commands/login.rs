//! `mayfly login` and `mayfly logout`: credentials in the auth.json file Podman uses.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context};
use mayfly_image::auth::{AuthFiles, Credentials};
use mayfly_image::client::RegistryClient;
use mayfly_image::reference::DEFAULT_REGISTRY;
use nix::sys::termios::{self, LocalFlags, SetArg};

use crate::args::{LoginArgs, LogoutArgs};

pub async fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let registry = registry_key(args.registry.as_deref());
    let interactive = std::io::stdin().is_terminal();

    let username = match args.username {
        Some(username) => username,
        None if interactive && !args.password_stdin => prompt("Username: ", true)?,
        None => {
            bail!("missing --username: it is required when the password comes from standard input")
        }
    };
    let password = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("failed to read the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else if interactive {
        prompt("Password: ", false)?
    } else {
        bail!("standard input is not a terminal: pass the password with --password-stdin");
    };
    if password.is_empty() {
        bail!("the password for {username}@{registry} is empty");
    }

    let credentials = Credentials::new(username, password);
    let client = RegistryClient::from_env()?;
    client
        .check_login(&registry, &credentials)
        .await
        .with_context(|| format!("login to {registry} failed; nothing was stored"))?;
    let files = AuthFiles::from_env();
    let path = files
        .login(&registry, &credentials)
        .with_context(|| format!("failed to store the credentials for {registry}"))?;
    println!(
        "Login Succeeded: credentials for {registry} stored in {}",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn logout(args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let registry = registry_key(args.registry.as_deref());
    let files = AuthFiles::from_env();
    if files.logout(&registry)? {
        println!("Removed login credentials for {registry}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("mayfly: not logged in to {registry}");
        Ok(ExitCode::from(1))
    }
}

/// Returns the auth.json key of a registry: its host, with the port when one is given.
fn registry_key(registry: Option<&str>) -> String {
    let registry = registry.unwrap_or(DEFAULT_REGISTRY);
    let registry = registry
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    registry.split('/').next().unwrap_or(registry).to_owned()
}

/// Reads one line from the terminal, without echo unless `echo` is set.
fn prompt(label: &str, echo: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    eprint!("{label}");
    std::io::stderr().flush()?;

    let saved = if echo {
        None
    } else {
        let saved = termios::tcgetattr(&stdin).context("failed to read the terminal settings")?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &quiet)
            .context("failed to turn off terminal echo")?;
        Some(saved)
    };
    let mut line = String::new();
    let result = stdin.lock().read_line(&mut line);
    if let Some(saved) = saved {
        let _ = termios::tcsetattr(&stdin, SetArg::TCSANOW, &saved);
        eprintln!();
    }
    result.context("failed to read from the terminal")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
