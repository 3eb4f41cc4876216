//! `mayfly images`, `mayfly rmi` and `mayfly prune`.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use mayfly_image::reference::Reference;

use crate::args::{ImagesArgs, RmiArgs};
use crate::stdout;
use mayfly_engine::Engine;

pub fn images(engine: &Engine, args: ImagesArgs) -> anyhow::Result<ExitCode> {
    let images = engine.images();
    let mut records = images.list()?;
    records.sort_by_key(|record| record.reference.to_string());

    if args.json {
        stdout::write(&format!("{}\n", serde_json::to_string_pretty(&records)?))?;
        return Ok(ExitCode::SUCCESS);
    }

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let mut listing = format!(
        "{:<50} {:<14} {:<14} {:>10}  PULLED\n",
        "REFERENCE", "DIGEST", "PLATFORM", "SIZE"
    );
    for record in records {
        let size: u64 = record.layers.iter().map(|layer| layer.size).sum();
        let _ = writeln!(
            listing,
            "{:<50} {:<14} {:<14} {:>10}  {} ago",
            record.reference.to_string(),
            &record.manifest_digest.hex()[..12],
            record.platform.to_string(),
            human_bytes(size),
            human_age(now.saturating_sub(record.pulled_at)),
        );
    }
    stdout::write(&listing)?;
    Ok(ExitCode::SUCCESS)
}

pub fn rmi(engine: &Engine, args: RmiArgs) -> anyhow::Result<ExitCode> {
    let images = engine.images();
    let mut failed = false;
    for text in &args.references {
        let result = Reference::parse(text)
            .map_err(anyhow::Error::from)
            .and_then(|reference| Ok(images.remove(&reference)?));
        match result {
            Ok(record) => println!("Untagged: {}", record.reference),
            Err(error) => {
                eprintln!("mayfly: {error}");
                failed = true;
            }
        }
    }
    if failed {
        return Ok(ExitCode::from(1));
    }
    println!("Blobs and layers stay until `mayfly prune`.");
    Ok(ExitCode::SUCCESS)
}

pub fn prune(engine: &Engine) -> anyhow::Result<ExitCode> {
    let images = engine.images();
    let summary = images.prune()?;
    println!(
        "Removed {} blobs ({}) and {} unpacked layers.",
        summary.blobs.removed_blobs.len(),
        human_bytes(summary.blobs.freed_bytes),
        summary.removed_layers
    );
    if summary.layers_in_use > 0 {
        println!(
            "Kept {} unreferenced layers that running containers use.",
            summary.layers_in_use
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn human_age(seconds: u64) -> String {
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m", seconds / 60),
        3600..=86399 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86400),
    }
}
