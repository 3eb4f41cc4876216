//! `mayfly system reset`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use mayfly_engine::state::remove_tree;

use crate::args::ResetArgs;
use mayfly_engine::Engine;

/// Deletes the data directory. This runs inside the engine's user namespace, where files owned
/// by subordinate IDs can be removed.
pub fn reset(engine: &Engine, args: ResetArgs) -> anyhow::Result<ExitCode> {
    let data_dir = &engine.config().data_dir;
    if !args.force {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "refusing to delete {} without confirmation; pass --force",
                data_dir.display()
            );
        }
        eprint!(
            "Delete every image and layer in {}? [y/N] ",
            data_dir.display()
        );
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("Nothing deleted.");
            return Ok(ExitCode::from(1));
        }
    }
    remove_tree(data_dir).with_context(|| format!("failed to delete {}", data_dir.display()))?;
    println!("Deleted {}", data_dir.display());
    Ok(ExitCode::SUCCESS)
}
