//! What xtask builds: the browser package ([`wasm`], `build-wasm`), the pcap fixtures of the
//! stack's tests ([`fixtures`], `fixtures`) and the demo's i386 guest ([`guest_image`],
//! `guest-image`).

pub mod fixtures;
pub mod guest_image;
pub mod wasm;
