//! HTTP/1.1 forward proxy with TLS termination over any async byte stream.
