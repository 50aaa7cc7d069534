//! What the end-to-end tests, the benchmarks and the demo check stand on:
//! - [`guest`]: a Linux guest in a network namespace behind a TAP device, and the native runner;
//! - [`origins`]: the local origin servers (HTTP, HTTPS with a test CA, failing on purpose);
//! - [`browser`]: headless Chromium/Firefox and the server of the test pages;
//! - [`bridge`]: the TAP-to-WebSocket bridge between a guest and a page (the only user of the
//!   `c2w_net_proxy` library in xtask);
//! - [`server_pool`]: the tiny_http worker pool under the page server;
//! - [`relays`]: real Wisp servers (wisp-python, wisp-js) as relay peers;
//! - [`sshd`], [`apt_repo`]: OpenSSH's server and a Debian repository over HTTP, for real
//!   clients (git over ssh, apt) in a guest; [`daemon`] runs such servers as child processes;
//! - [`procfs`], [`cleanup`]: process accounting and cleanup however a task ends.

pub mod apt_repo;
pub mod bridge;
pub mod browser;
pub mod cleanup;
pub mod daemon;
pub mod guest;
pub mod origins;
pub mod procfs;
pub mod relays;
pub mod server_pool;
pub mod sshd;
