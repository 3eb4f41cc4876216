//! `mayfly pull`, `images`, `rmi`, `prune`, `login` and `logout` against the local registries,
//! run as the unprivileged test user.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use mayfly_tests::home::MayflyHome;
use mayfly_tests::{fixtures, registry_available, REGISTRY_PLAIN};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    fixtures::load()["images"][name].clone()
}

fn layer_root(home: &MayflyHome, diff_id: &str) -> PathBuf {
    let hex = diff_id.trim_start_matches("sha256:");
    home.data_dir().join("mayfly/layers").join(hex).join("root")
}

fn top_diff_id(image: &Value) -> String {
    let layers = image["layers"].as_array().expect("fixture has layers");
    layers.last().unwrap()["diff_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn pull_python_applies_whiteouts() {
    if !registry_available(REGISTRY_PLAIN) {
        return;
    }
    let home = MayflyHome::new();
    let expected = fixture("library/python:3.11");
    let output = home.run(&["pull", "python:3.11"]);
    assert!(output.status.success(), "{}", output.status);
    let digest = expected["manifest_digest"].as_str().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), digest);
    let progress = String::from_utf8_lossy(&output.stderr);
    assert!(
        progress.contains(&format!(
            "Resolved docker.io/library/python:3.11 to {digest}"
        )) && progress.contains(": done"),
        "without a terminal, progress comes as plain lines: {progress}"
    );

    let quiet = home.run(&["pull", "--quiet", "python:3.11"]);
    assert!(quiet.status.success(), "{}", quiet.status);
    assert_eq!(String::from_utf8_lossy(&quiet.stdout).trim(), digest);
    assert_eq!(
        String::from_utf8_lossy(&quiet.stderr),
        "",
        "--quiet prints no progress"
    );

    // The top layer contains the whiteout and the opaque directory in overlay's format.
    let top = layer_root(&home, &top_diff_id(&expected));
    let whiteout = std::fs::symlink_metadata(top.join("etc/issue.net")).unwrap();
    assert!(
        whiteout.file_type().is_char_device(),
        "whiteout is a character device"
    );
    assert_eq!(whiteout.rdev(), 0, "whiteout is device 0:0");
    let entries: Vec<String> = std::fs::read_dir(top.join("opt/fixture"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, vec!["new".to_owned()]);

    // Through the container's merged view, the file is gone and the directory holds only the
    // upper layer's entry.
    let listing = home.run_ok(&[
        "run",
        "python:3.11",
        "sh",
        "-c",
        "ls -A /opt/fixture; test -e /etc/issue.net && echo present || echo absent",
    ]);
    assert_eq!(listing, "new\nabsent\n");
}

#[test]
fn pull_multi_selects_platform() {
    if !registry_available(REGISTRY_PLAIN) {
        return;
    }
    let home = MayflyHome::new();
    let expected = fixture("library/busybox:multi");
    let manifests = expected["manifests"].as_array().unwrap();
    let digest_for = |arch: &str| {
        manifests
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .unwrap()["manifest_digest"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    let amd64 = home.run_ok(&["pull", "busybox:multi"]);
    assert_eq!(amd64.trim(), digest_for("amd64"));
    let arm64 = home.run_ok(&["pull", "--platform", "linux/arm64", "busybox:multi"]);
    assert_eq!(arm64.trim(), digest_for("arm64"));

    let missing = home.run(&["pull", "--platform", "linux/s390x", "busybox:multi"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("linux/amd64"),
        "the error lists the platforms: {stderr}"
    );
}

#[test]
fn pull_corrupt_blob_fails() {
    if !registry_available(REGISTRY_PLAIN) {
        return;
    }
    let home = MayflyHome::new();
    let expected = fixture("library/corrupt:latest");
    let output = home.run(&["pull", "corrupt:latest"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let layer = expected["layers"][0]["digest"].as_str().unwrap();
    assert!(stderr.contains(layer), "the error names the blob: {stderr}");

    let blob = home
        .data_dir()
        .join("mayfly/blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    assert!(!blob.exists(), "the corrupt blob must not be stored");
    let leftovers: Vec<_> = std::fs::read_dir(home.data_dir().join("mayfly/tmp"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let images = home.run_ok(&["images", "--json"]);
    assert_eq!(images.trim(), "[]");
}

#[test]
fn images_rmi_and_prune() {
    if !registry_available(REGISTRY_PLAIN) {
        return;
    }
    let home = MayflyHome::new();
    home.run_ok(&["pull", "busybox"]);
    let listed: Value = serde_json::from_str(&home.run_ok(&["images", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["reference"], "docker.io/library/busybox:latest");
    let table = home.run_ok(&["images"]);
    assert!(
        table.contains("docker.io/library/busybox:latest"),
        "{table}"
    );

    // A reader that closes the pipe first, as `mayfly images | head -0` does, ends the
    // listing quietly.
    for args in [&["images"][..], &["images", "--json"][..]] {
        let mut child = home
            .mayfly()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{args:?}: {}: {stderr}",
            output.status
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }

    let layer = fixture("library/busybox:latest")["layers"][0].clone();
    let blob = home.data_dir().join("mayfly/blobs/sha256").join(
        layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let unpacked = layer_root(&home, layer["diff_id"].as_str().unwrap());
    assert!(blob.exists(), "the pull stores the blob");
    assert!(unpacked.exists(), "the pull unpacks the layer");

    home.run_ok(&["rmi", "busybox"]);
    assert!(blob.exists(), "rmi keeps blobs until prune");
    let pruned = home.run_ok(&["prune"]);
    assert!(pruned.contains("1 unpacked layers"), "{pruned}");
    assert!(!blob.exists(), "prune removes the unreferenced blob");
    assert!(!unpacked.exists(), "prune removes the unreferenced layer");

    let missing = home.run(&["rmi", "busybox"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("busybox"));
}

#[test]
fn login_basic_auth_registry() {
    if !registry_available(mayfly_tests::REGISTRY_BASIC) {
        return;
    }
    let home = MayflyHome::new();
    let image = format!("{}/library/busybox:latest", mayfly_tests::REGISTRY_BASIC);

    let denied = home.run(&["pull", &image]);
    assert!(
        !denied.status.success(),
        "pull without credentials must fail"
    );
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("login"),
        "the error suggests mayfly login"
    );

    let mut wrong = home.mayfly();
    wrong.args([
        "login",
        "--username",
        mayfly_tests::BASIC_USER,
        "--password-stdin",
        mayfly_tests::REGISTRY_BASIC,
    ]);
    let rejected = pipe_input(wrong, "not-the-password\n");
    assert!(
        !rejected.status.success(),
        "a wrong password must be rejected"
    );
    assert!(
        !home.runtime_dir().join("containers/auth.json").exists(),
        "a rejected login stores nothing"
    );

    let mut login = home.mayfly();
    login.args([
        "login",
        "--username",
        mayfly_tests::BASIC_USER,
        "--password-stdin",
        mayfly_tests::REGISTRY_BASIC,
    ]);
    let output = pipe_input(login, &format!("{}\n", mayfly_tests::BASIC_PASSWORD));
    assert!(output.status.success(), "login failed: {output:?}");
    let auth = home.runtime_dir().join("containers/auth.json");
    let stored = std::fs::read_to_string(&auth).unwrap();
    assert!(stored.contains(mayfly_tests::REGISTRY_BASIC), "{stored}");
    assert_eq!(std::fs::metadata(&auth).unwrap().mode() & 0o777, 0o600);

    home.run_ok(&["pull", &image]);
    home.run_ok(&["logout", mayfly_tests::REGISTRY_BASIC]);
    assert!(!std::fs::read_to_string(&auth)
        .unwrap()
        .contains(mayfly_tests::REGISTRY_BASIC));
}

fn pipe_input(mut command: std::process::Command, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn pull_tls_registry_with_ca() {
    if !registry_available(mayfly_tests::REGISTRY_TLS) {
        return;
    }
    let home = MayflyHome::new();
    let image = format!("{}/library/busybox:latest", mayfly_tests::REGISTRY_TLS);
    let untrusted = home.mayfly().args(["pull", &image]).output().unwrap();
    assert!(
        !untrusted.status.success(),
        "an unknown CA must be rejected"
    );

    let ca = mayfly_tests::state_dir().join("registry/ca.pem");
    let trusted = home
        .mayfly()
        .env("MAYFLY_EXTRA_CA", &ca)
        .args(["pull", &image])
        .output()
        .unwrap();
    assert!(
        trusted.status.success(),
        "pull with the CA failed: {}",
        String::from_utf8_lossy(&trusted.stderr)
    );
}

/// Lists every path under `root` whose name starts with `escaped`, skipping unreadable
/// directories.
fn escaped_paths(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with("escaped") {
                found.push(path.clone());
            }
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                pending.push(path);
            }
        }
    }
    found
}

#[test]
fn evil_layers_stay_inside() {
    if !registry_available(REGISTRY_PLAIN) {
        return;
    }
    let host_escapes = [
        "/tmp/escaped-absolute",
        "/etc/escaped-abs",
        "/tmp/escaped-symlink",
        "/escaped-symlink-up",
    ];
    let tags = [
        "dotdot",
        "absolute",
        "symlink",
        "hardlink",
        "devices",
        "setuid",
        "symlink-loop",
        "longname",
    ];
    let home = MayflyHome::new();
    let passwd_inode = std::fs::metadata("/etc/passwd").unwrap().ino();

    for tag in tags {
        let output = home.run(&["pull", &format!("evil:{tag}")]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        for path in host_escapes {
            assert!(!Path::new(path).exists(), "evil:{tag} wrote {path}");
        }
        let layers = home.data_dir().join("mayfly/layers");
        for path in escaped_paths(home.path()) {
            let inside_a_layer = path
                .strip_prefix(&layers)
                .map(|rest| {
                    rest.components()
                        .nth(1)
                        .is_some_and(|c| c.as_os_str() == "root")
                })
                .unwrap_or(false);
            assert!(
                inside_a_layer,
                "evil:{tag} wrote {} outside a layer root",
                path.display()
            );
        }

        let image = fixture(&format!("library/evil:{tag}"));
        let root = layer_root(&home, &top_diff_id(&image));
        match tag {
            "hardlink" => {
                assert!(!output.status.success(), "evil:hardlink must fail");
                assert!(stderr.contains("hl"), "the error names the entry: {stderr}");
                if let Ok(meta) = std::fs::metadata(root.join("hl")) {
                    assert_ne!(meta.ino(), passwd_inode);
                }
            }
            "symlink-loop" => {
                assert!(!output.status.success(), "evil:symlink-loop must fail");
                assert!(
                    stderr.contains("a/x"),
                    "the error names the entry: {stderr}"
                );
            }
            "longname" => {
                assert!(!output.status.success(), "a 300-byte name must be rejected");
                assert!(
                    stderr.contains("nnnnnnnn"),
                    "the error names the entry: {stderr}"
                );
            }
            "devices" => {
                assert!(
                    output.status.success(),
                    "evil:devices must unpack: {stderr}"
                );
                assert!(!root.join("dev/evil-null").exists());
                assert!(!root.join("dev/evil-sda").exists());
                let fifo = std::fs::symlink_metadata(root.join("run/fifo")).unwrap();
                assert!(fifo.file_type().is_fifo());
                assert!(root.join("ok").exists());
            }
            "setuid" => {
                assert!(output.status.success(), "evil:setuid must unpack: {stderr}");
                for name in ["bin/suid", "bin/sgid"] {
                    let mode = std::fs::metadata(root.join(name)).unwrap().mode();
                    assert_eq!(mode & 0o7777, 0o755, "{name} keeps no set-ID bit");
                }
            }
            _ => {
                // dotdot, absolute and symlink may be rejected or confined to the root.
                if output.status.success() {
                    assert!(root.join("inside").exists());
                } else {
                    assert!(
                        stderr.contains("sha256:"),
                        "the error names the layer: {stderr}"
                    );
                }
            }
        }
    }
}
