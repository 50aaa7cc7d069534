//! Message body framing: how a request body is delimited on the wire (decode) and how a
//! response body is framed towards the guest (encode). Pure code, no I/O.

pub mod decode;
pub mod encode;
