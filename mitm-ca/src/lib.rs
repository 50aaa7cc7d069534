//! A certificate authority made in the page that issues TLS leaf certificates on the fly.
