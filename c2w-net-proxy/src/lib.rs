//! Composition of the stack, the proxy, the CA and the transport.
