//! The local origin servers of the tests, the benchmarks and the demo, on the host's loopback
//! only:
//! - [`Origin`]: the one general-purpose origin (e2e, demo check, benchmarks, load checks):
//!   blob, echo, headers, cookies, redirects, and with [`OriginFiles`] a pip index and git over
//!   HTTP; HTTP or HTTPS, CORS on or off; a thread per connection, keep-alive
//!   (`origin.rs` serves connections, `routes.rs` answers paths, `cgi.rs` runs
//!   `git http-backend`);
//! - [`FaultOrigin`] (`fault.rs`): resets mid-body and requests never answered;
//! - [`NodeOrigin`] (`node.rs`): the routes of fetch-transport's node tests (slow, endless,
//!   gzip, hanging bodies);
//! - [`UdpEcho`] (`udp_echo.rs`): UDP datagrams answered, for the relay's UDP checks;
//! - [`TcpEcho`] (`tcp_echo.rs`): TCP bytes sent back as they come, for the relay's raw TCP
//!   round trip;
//! - [`WsEcho`] (`ws_echo.rs`): a WebSocket echo server, ws and wss, for the guest-WebSocket
//!   checks (subprotocols, a server-initiated close, a refused upgrade).
//!
//! All of them stand on one HTTP/1.1 layer (`http1.rs`: accept loop, request heads parsed by
//! httparse, Content-Length and chunked request bodies); the bodies and the test CA are in
//! `content.rs` and `files.rs`.

mod cgi;
mod content;
mod fault;
mod files;
mod http1;
mod node;
mod origin;
mod routes;
mod tcp_echo;
#[cfg(test)]
mod tests;
mod udp_echo;
mod ws_echo;

pub use content::{blob, sha256_hex, BlobReader};
pub use fault::FaultOrigin;
pub use files::{make_bare_git_repo, OriginFiles, GIT_README, WHEEL_PROJECT};
pub use node::NodeOrigin;
pub use origin::{Cors, Origin};
pub use tcp_echo::TcpEcho;
pub use udp_echo::UdpEcho;
pub use ws_echo::{
    Session, WsEcho, CLOSE_REQUEST, KNOWN_PROTOCOLS, REFUSED_PATH, SERVER_CLOSE_CODE,
    SERVER_CLOSE_REASON,
};
