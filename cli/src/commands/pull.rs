//! `mayfly pull`.

use std::process::ExitCode;

use anyhow::Context;
use mayfly_image::platform::Platform;
use mayfly_image::reference::Reference;

use crate::args::PullArgs;
use crate::progress::PullProgress;
use mayfly_engine::Engine;

pub async fn pull(engine: &Engine, args: PullArgs) -> anyhow::Result<ExitCode> {
    let reference = Reference::parse(&args.reference)?;
    let platform = parse_platform(args.platform.as_deref())?;
    let images = engine.images();

    let progress = PullProgress::new(args.quiet);
    let image = images.pull(&reference, platform, &progress).await?;
    if !image.warnings.is_empty() {
        eprintln!(
            "mayfly: warning: while unpacking {reference}: {}",
            image.warnings
        );
    }
    println!("{}", image.record.manifest_digest);
    Ok(ExitCode::SUCCESS)
}

/// Parses `--platform OS/ARCH[/VARIANT]`.
pub fn parse_platform(text: Option<&str>) -> anyhow::Result<Option<Platform>> {
    text.map(|text| {
        text.parse::<Platform>().with_context(|| {
            format!(
                "invalid --platform {text:?}: expected OS/ARCH[/VARIANT], for example linux/arm64"
            )
        })
    })
    .transpose()
}
