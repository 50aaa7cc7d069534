//! A certificate authority made in the page that issues TLS leaf certificates on the fly.
//!
//! [`CertificateAuthority`] is generated (ECDSA P-256) or imported from PEM and validated;
//! [`Issuer`] signs leaves for DNS names and IP literals, caches them in a bounded LRU, and
//! plugs into rustls through [`LeafResolver`]. Time always comes from an injected [`Clock`]:
//! nothing here reads the system clock, so the same code runs in a browser (wasm32) and natively.

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
