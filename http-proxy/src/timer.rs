//! Injected time: the proxy never reads a clock itself. The trait lives in fetch-transport,
//! the lowest crate that needs time, so one runtime serves both crates.

pub use fetch_transport::Timer;
