//! The `mayfly` command.

fn main() {
    println!("mayfly {}", env!("CARGO_PKG_VERSION"));
}
