//! Response framing towards the guest and serialization of the response head.

use std::io::Write;

use fetch_transport::policy::is_connection_specific;
use http::header;
use http::{HeaderMap, Method, StatusCode};

use crate::head::Version;

/// How a response body is delimited towards the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body may follow (HEAD, 1xx, 204, 304).
    NoBody,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked` (HTTP/1.1 clients, unknown length).
    Chunked,
    /// The body ends when the connection closes (HTTP/1.0 clients, unknown length).
    CloseDelimited,
}

impl ResponseFraming {
    /// Picks the framing for a response of unknown or known `body_len`.
    pub fn choose(
        method: &Method,
        status: StatusCode,
        body_len: Option<u64>,
        client: Version,
    ) -> Self {
        if method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Self::NoBody;
        }
        match (body_len, client) {
            (Some(n), _) => Self::Length(n),
            (None, Version::Http11) => Self::Chunked,
            (None, Version::Http10) => Self::CloseDelimited,
        }
    }

    /// True when the connection must close after this response for the body to end.
    pub fn needs_close(self) -> bool {
        self == Self::CloseDelimited
    }
}

/// Writes a response head: status line, the origin's end-to-end headers, and our framing and
/// connection headers. `keep_alive` false adds `Connection: close`.
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: ResponseFraming,
    keep_alive: bool,
    client: Version,
) {
    let reason = status.canonical_reason().unwrap_or("");
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status.as_u16(), reason);
    let keep_length = framing == ResponseFraming::NoBody && status != StatusCode::NO_CONTENT;
    for (name, value) in headers {
        // Headers that describe the origin's connection are never forwarded as received.
        if is_connection_specific(name) || (name == header::CONTENT_LENGTH && !keep_length) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ResponseFraming::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ResponseFraming::NoBody | ResponseFraming::CloseDelimited => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if client == Version::Http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one chunk of chunked encoding (nothing for empty data: that would end the body).
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use http::HeaderValue;

    #[test]
    fn framing_choice() {
        let get = Method::GET;
        assert_eq!(
            ResponseFraming::choose(&Method::HEAD, StatusCode::OK, Some(5), Version::Http11),
            ResponseFraming::NoBody
        );
        assert_eq!(
            ResponseFraming::choose(&get, StatusCode::NO_CONTENT, None, Version::Http11),
            ResponseFraming::NoBody
        );
        assert_eq!(
            ResponseFraming::choose(&get, StatusCode::NOT_MODIFIED, None, Version::Http11),
            ResponseFraming::NoBody
        );
        assert_eq!(
            ResponseFraming::choose(&get, StatusCode::OK, Some(5), Version::Http10),
            ResponseFraming::Length(5)
        );
        assert_eq!(
            ResponseFraming::choose(&get, StatusCode::OK, None, Version::Http11),
            ResponseFraming::Chunked
        );
        assert_eq!(
            ResponseFraming::choose(&get, StatusCode::OK, None, Version::Http10),
            ResponseFraming::CloseDelimited
        );
    }

    #[test]
    fn head_drops_hop_by_hop_and_sets_framing() {
        let mut headers = HeaderMap::new();
        headers.append("content-type", HeaderValue::from_static("text/plain"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        headers.append("connection", HeaderValue::from_static("keep-alive"));
        headers.append("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.append("content-length", HeaderValue::from_static("999"));
        let mut out = Vec::new();
        write_response_head(
            &mut out,
            StatusCode::OK,
            &headers,
            ResponseFraming::Length(5),
            true,
            Version::Http11,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nset-cookie: a=1\r\nset-cookie: b=2\r\ncontent-length: 5\r\n\r\n"
        );
    }

    #[test]
    fn head_response_keeps_origin_length_and_close_is_announced() {
        let mut headers = HeaderMap::new();
        headers.append("content-length", HeaderValue::from_static("1234"));
        let mut out = Vec::new();
        write_response_head(
            &mut out,
            StatusCode::OK,
            &headers,
            ResponseFraming::NoBody,
            false,
            Version::Http10,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-length: 1234\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn chunk_encoding() {
        let mut out = Vec::new();
        encode_chunk(b"hello world, this is 26 b!", &mut out);
        encode_chunk(b"", &mut out);
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(out, b"1a\r\nhello world, this is 26 b!\r\n0\r\n\r\n");
    }
}
