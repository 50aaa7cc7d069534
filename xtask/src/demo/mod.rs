//! `cargo xtask demo`: see docs/demo.md.

use anyhow::{bail, Result};

/// Entry point of `cargo xtask demo [--port PORT] [--check]`.
pub fn run(_args: &[String]) -> Result<()> {
    bail!("demo: not yet")
}
