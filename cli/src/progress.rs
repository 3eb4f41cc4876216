//! Pull progress: one bar per layer on a terminal, plain lines otherwise, nothing when quiet.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mayfly_image::digest::Digest;
use mayfly_image::pull::{ProgressSink, PullEvent};

pub struct PullProgress {
    bars: Option<(MultiProgress, Mutex<HashMap<Digest, ProgressBar>>)>,
    quiet: bool,
}

impl PullProgress {
    /// Nothing when `quiet` is on; otherwise bars when standard error is a terminal and plain
    /// lines when it is not.
    pub fn new(quiet: bool) -> Self {
        let bars = (!quiet && std::io::stderr().is_terminal()).then(|| {
            (
                MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                Mutex::new(HashMap::new()),
            )
        });
        Self { bars, quiet }
    }

    fn bar(&self, digest: &Digest) -> Option<ProgressBar> {
        let (_, bars) = self.bars.as_ref()?;
        bars.lock()
            .expect("progress lock poisoned")
            .get(digest)
            .cloned()
    }
}

fn short(digest: &Digest) -> &str {
    &digest.hex()[..12]
}

impl ProgressSink for PullProgress {
    fn event(&self, event: PullEvent) {
        if self.quiet {
            return;
        }
        match event {
            PullEvent::Resolved {
                reference,
                endpoint,
                manifest,
            } => {
                let line = format!("Resolved {reference} to {manifest} at {endpoint}");
                match &self.bars {
                    Some((multi, _)) => {
                        let _ = multi.println(line);
                    }
                    None => eprintln!("{line}"),
                }
            }
            PullEvent::LayerPresent { digest, .. } => match &self.bars {
                Some((multi, _)) => {
                    let _ = multi.println(format!("{}: already present", short(&digest)));
                }
                None => eprintln!("{}: already present", short(&digest)),
            },
            PullEvent::LayerStarted { digest, size } => match &self.bars {
                Some((multi, bars)) => {
                    let bar = multi.add(ProgressBar::new(size));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                        )
                        .expect("the progress template is valid")
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(short(&digest).to_owned());
                    bars.lock()
                        .expect("progress lock poisoned")
                        .insert(digest, bar);
                }
                None => eprintln!("{}: downloading {size} bytes", short(&digest)),
            },
            PullEvent::LayerProgress { digest, bytes } => {
                if let Some(bar) = self.bar(&digest) {
                    bar.inc(bytes);
                }
            }
            PullEvent::LayerRestarted { digest } => match self.bar(&digest) {
                Some(bar) => bar.set_position(0),
                None => eprintln!("{}: download restarted", short(&digest)),
            },
            PullEvent::LayerDone { digest } => match self.bar(&digest) {
                Some(bar) => bar.finish(),
                None => eprintln!("{}: done", short(&digest)),
            },
        }
    }
}
