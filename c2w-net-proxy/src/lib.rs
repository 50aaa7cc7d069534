//! The composition: net-stack's virtual network, with http-proxy serving the proxy's TCP
//! ports and fetch-transport carrying its requests out. The only crate that sees every other
//! crate, and the only one that reads clocks, spawns tasks and opens sockets.
//!
//! Natively ([`native`]) it runs on a tokio current-thread runtime behind a TAP device or a
//! QEMU stream socket; in the browser (`wasm`) it is driven from JavaScript.

pub mod clock;
pub mod compose;
pub mod driver;
pub mod duration;
mod faults;
pub mod guest;
pub mod heap;
pub mod link;
pub mod options;
pub mod relay;
pub mod relay_http;
pub mod runtime;
pub mod services;
pub mod stats;
pub mod websocket;

#[cfg(not(target_arch = "wasm32"))]
pub mod native;

#[cfg(target_arch = "wasm32")]
mod wasm;
