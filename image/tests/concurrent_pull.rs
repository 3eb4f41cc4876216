//! Ten processes pull the same image into one store at once. Each blob must be downloaded by
//! exactly one of them, while the others wait for it and then find it stored.
//!
//! The test binary runs itself as the child processes: with `MAYFLY_TEST_PULL_CHILD` set to
//! a store directory it pulls once, prints one `downloaded <digest>` line per blob it stored,
//! and exits.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use common::*;
use libtest_mimic::{Arguments, Failed, Trial};
use mayfly_image::digest::Digest;
use mayfly_image::pull::{pull, NoProgress, PullOptions};
use mayfly_image::reference::Reference;
use mayfly_image::store::Store;

const CHILD_ENV: &str = "MAYFLY_TEST_PULL_CHILD";
const PROCESSES: usize = 10;
const IMAGE: &str = "library/python:3.11";

fn main() {
    if let Some(store_dir) = std::env::var_os(CHILD_ENV) {
        std::process::exit(run_child(store_dir.into()));
    }
    let arguments = Arguments::from_args();
    let trials = vec![Trial::test(
        "ten_processes_download_each_blob_once",
        ten_processes_download_each_blob_once,
    )];
    libtest_mimic::run(&arguments, trials).exit();
}

fn run_child(store_dir: std::path::PathBuf) -> i32 {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        let store = Store::open(&store_dir)?;
        let reference = Reference::parse(&format!("{PLAIN}/{IMAGE}"))?;
        let pulled = pull(
            &store,
            &plain_client(),
            &reference,
            &PullOptions::default(),
            &NoProgress,
        )
        .await?;
        anyhow::Ok(pulled)
    });
    match result {
        Ok(pulled) => {
            for digest in &pulled.downloaded {
                println!("downloaded {digest}");
            }
            0
        }
        Err(error) => {
            eprintln!("child pull failed: {error:?}");
            1
        }
    }
}

fn ten_processes_download_each_blob_once() -> Result<(), Failed> {
    if !registry_available(PLAIN) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let store_dir = dir.path().join("store");
    let executable = std::env::current_exe()?;

    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&executable)
                .env(CHILD_ENV, &store_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;

    let mut downloads: BTreeMap<Digest, usize> = BTreeMap::new();
    for (number, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output()?;
        if !output.status.success() {
            return Err(format!(
                "child {number} failed with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if let Some(digest) = line.strip_prefix("downloaded ") {
                *downloads.entry(digest.parse()?).or_default() += 1;
            }
        }
    }

    let fixture = fixture(IMAGE);
    let mut expected: Vec<Digest> = fixture.layers.iter().map(|(d, _)| d.clone()).collect();
    expected.push(fixture.config_digest.clone());
    expected.push(fixture.manifest_digest.clone());
    for digest in &expected {
        let count = downloads.get(digest).copied().unwrap_or(0);
        if count != 1 {
            return Err(format!(
                "blob {digest} was stored {count} times, expected once: {downloads:?}"
            )
            .into());
        }
    }
    if downloads.len() != expected.len() {
        return Err(format!("unexpected downloads: {downloads:?}").into());
    }

    let store = Store::open(&store_dir)?;
    for digest in &expected {
        if !store.has_blob(digest) {
            return Err(format!("blob {digest} is missing from the store").into());
        }
    }
    if !files_in(&store_dir.join("tmp")).is_empty() {
        return Err("temporary files were left in tmp/".into());
    }
    assert_blobs_verify(&store_dir);
    Ok(())
}
