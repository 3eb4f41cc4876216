//! Standard output for listings that users pipe into `head`, `grep -q` and the like.

use std::io::{self, Write};

/// Writes `text` to standard output. A reader that closed the pipe early (`mayfly images |
/// head -1`) is not an error: the listing simply ends there, as it does for other tools.
pub fn write(text: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    let written = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
    match written {
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
