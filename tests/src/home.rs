//! A private home for one test's `mayfly` invocations: its own data, config and runtime
//! directories, the test registries configuration, and removal of what it stored afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// A temporary directory tree that replaces `$HOME` and the XDG directories.
pub struct MayflyHome {
    root: TempDir,
}

impl MayflyHome {
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("mayfly-test-")
            .tempdir()
            .expect("failed to create a temporary home under $TMPDIR");
        for dir in ["data", "config", "runtime", "home"] {
            std::fs::create_dir(root.path().join(dir)).expect("failed to populate the test home");
        }
        Self { root }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.root.path().join("runtime")
    }

    /// Returns a `mayfly` command whose every directory points inside this home.
    pub fn mayfly(&self) -> Command {
        let mut command = Command::new(mayfly_binary());
        command
            .env("HOME", self.root.path().join("home"))
            .env("XDG_DATA_HOME", self.root.path().join("data"))
            .env("XDG_CONFIG_HOME", self.root.path().join("config"))
            .env("XDG_RUNTIME_DIR", self.root.path().join("runtime"))
            .env_remove("MAYFLY_DATA_DIR")
            .env_remove("MAYFLY_RUNTIME_DIR")
            .env_remove("REGISTRY_AUTH_FILE");
        let registries = crate::state_dir().join("registries.conf");
        if registries.exists() {
            command.env("MAYFLY_REGISTRIES_CONF", registries);
        }
        command
    }

    /// Runs `mayfly ARGS` and returns its output, echoing it for the test log.
    pub fn run(&self, args: &[&str]) -> Output {
        let output = self
            .mayfly()
            .args(args)
            .output()
            .unwrap_or_else(|error| panic!("failed to start mayfly {args:?}: {error}"));
        println!("$ mayfly {}", args.join(" "));
        println!("status: {}", output.status);
        println!("stdout:\n{}", String::from_utf8_lossy(&output.stdout));
        println!("stderr:\n{}", String::from_utf8_lossy(&output.stderr));
        output
    }

    /// Runs `mayfly ARGS`, asserts success and returns standard output.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "mayfly {args:?} failed: {}",
            output.status
        );
        String::from_utf8(output.stdout).expect("mayfly printed invalid UTF-8")
    }
}

impl Default for MayflyHome {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MayflyHome {
    /// Removes the store with mayfly itself, because files owned by subordinate IDs can only be
    /// deleted from inside its user namespace. The temporary directory removes the rest.
    fn drop(&mut self) {
        let data = self.data_dir().join("mayfly");
        if data.exists() {
            let _ = self.mayfly().args(["system", "reset", "--force"]).output();
        }
    }
}

/// Path of the `mayfly` binary that cargo built next to the test binaries.
pub fn mayfly_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MAYFLY_BIN") {
        return PathBuf::from(path);
    }
    let test_binary = std::env::current_exe().expect("the test binary has no path");
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let binary = profile_dir.join("mayfly");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build -p mayfly` or run the suite with scripts/test",
        binary.display()
    );
    binary
}
