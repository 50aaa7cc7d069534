//! A certificate authority made in the page that issues TLS leaf certificates on the fly.
//!
//! [`CertificateAuthority`] is generated (ECDSA P-256) or imported from PEM and validated;
//! [`Issuer`] signs leaves for DNS names and IP literals, caches them in a bounded LRU, and
//! plugs into rustls through [`LeafResolver`]. Time always comes from an injected [`Clock`]:
//! nothing here reads the system clock, so the same code runs in a browser (wasm32) and natively.
//!
//! ```
//! use std::sync::Arc;
//! use mitm_ca::{CaParams, CertificateAuthority, FixedClock, Issuer, IssuerConfig};
//!
//! let clock = Arc::new(FixedClock::new(1_750_000_000)); // the caller keeps it current
//! let ca = CertificateAuthority::generate(&CaParams::default(), clock.as_ref())?;
//! let for_the_guest = ca.certificate_pem(); // e.g. /.wasmenv/proxy.crt
//! let issuer = Arc::new(Issuer::new(ca, IssuerConfig::default(), clock)?);
//! // TLS for a CONNECT to example.com:443 (SNI wins when the client sends one).
//! let server_config = issuer.server_config(Some("example.com"));
//! # let _ = (for_the_guest, server_config);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod ca;
mod clock;
mod host;
mod issuer;

pub use ca::{
    CaError, CaKeyAlgorithm, CaParams, CertificateAuthority, ImportError, ImportPart, KeyAlgorithm,
    ORGANIZATION,
};
pub use clock::{Clock, ClockTimeProvider, FixedClock};
pub use host::{Host, HostError};
pub use issuer::{IssueError, Issuer, IssuerConfig, LeafResolver};
pub use rustls_pki_types::UnixTime;
