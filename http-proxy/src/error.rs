//! Why serving a guest connection ended early.

use std::io;

/// Why serving a connection ended early (logged by the embedder; the guest already got
/// whatever answer could be given).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reading from or writing to the guest failed or timed out.
    #[error("guest connection: {0}")]
    Io(#[from] io::Error),
}
