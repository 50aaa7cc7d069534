//! The local origin servers of the tests and benchmarks, on the host's loopback only:
//! - [`Origin`] (`full.rs`): every route the e2e clients need (blob, echo, headers, cookies,
//!   redirects, a pip index, git over HTTP), HTTP or HTTPS, CORS on or off; tiny_http;
//! - [`ThreadedOrigin`] (`threaded.rs`): blob, hello and echo with a thread per connection and
//!   keep-alive, for load and the benchmarks' direct path;
//! - [`FaultOrigin`] (`fault.rs`): resets mid-body and requests never answered;
//! - [`NodeOrigin`] (`node.rs`): the routes of fetch-transport's node tests (slow, endless,
//!   gzip, hanging bodies).
//!
//! The hand-written servers share one HTTP/1.1 layer (`http1.rs`: accept loop, request heads
//! parsed by httparse); the bodies and the test CA are in `content.rs` and `files.rs`.

mod content;
mod fault;
mod files;
mod full;
mod http1;
mod node;
mod threaded;

pub use content::{blob, sha256_hex, BlobReader};
pub use fault::FaultOrigin;
pub use files::{OriginFiles, GIT_README, WHEEL_PROJECT};
pub use full::{Cors, Origin};
pub use node::NodeOrigin;
pub use threaded::ThreadedOrigin;
