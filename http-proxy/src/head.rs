//! Request heads: strict parsing of the request line and header fields with httparse.

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};

use crate::limits::Limits;

/// The HTTP version a request was sent with; decides keep-alive defaults and body framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: close by default, no chunked encoding.
    Http10,
    /// HTTP/1.1: keep-alive by default.
    Http11,
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// The request method.
    pub method: Method,
    /// The request-target exactly as sent (absolute-form, origin-form or authority-form).
    pub target: String,
    /// The protocol version.
    pub version: Version,
    /// Header fields in order, repeated names kept as separate values.
    pub headers: HeaderMap,
}

/// Why a request head was rejected. Each maps to a 4xx response with a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The head is larger than [`Limits::max_head_bytes`].
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    /// More header fields than [`Limits::max_headers`].
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    /// The request line or a header is not valid HTTP/1.x.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The version is not HTTP/1.0 or HTTP/1.1.
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
}

impl HeadError {
    /// The status code this error is answered with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::TooLarge(_) | Self::TooManyHeaders(_) => {
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Self::UnsupportedVersion => http::StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            Self::Malformed(_) => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// Tries to parse a request head from the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, or the head and the number of bytes it took.
pub fn parse_request_head(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut request = httparse::Request::new(&mut storage);
    let status = match request.parse(buf) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::TooManyHeaders(limits.max_headers))
        }
        Err(err) => return Err(HeadError::Malformed(describe(err))),
    };
    let len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => {
            if buf.len() >= limits.max_head_bytes {
                return Err(HeadError::TooLarge(limits.max_head_bytes));
            }
            return Ok(None);
        }
    };
    if len > limits.max_head_bytes {
        return Err(HeadError::TooLarge(limits.max_head_bytes));
    }
    let version = match request.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(HeadError::UnsupportedVersion),
    };
    let method = request
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or(HeadError::Malformed("invalid method"))?;
    let target = request
        .path
        .ok_or(HeadError::Malformed("missing request-target"))?
        .to_string();
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for header in request.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| HeadError::Malformed("invalid header name"))?;
        let value = HeaderValue::from_bytes(header.value)
            .map_err(|_| HeadError::Malformed("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(Some((
        RequestHead {
            method,
            target,
            version,
            headers,
        },
        len,
    )))
}

fn describe(err: httparse::Error) -> &'static str {
    match err {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
        parse_request_head(bytes, &Limits::default())
    }

    #[test]
    fn absolute_form_request() {
        let raw = b"GET http://example.test/a?b HTTP/1.1\r\nHost: example.test\r\nX-A: 1\r\nX-A: 2\r\n\r\nrest";
        let (head, len) = parse(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - 4);
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.target, "http://example.test/a?b");
        assert_eq!(head.version, Version::Http11);
        let values: Vec<_> = head.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
    }

    #[test]
    fn partial_head_needs_more() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a").unwrap().is_none());
    }

    #[test]
    fn http10_version() {
        let (head, _) = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.version, Version::Http10);
    }

    #[test]
    fn header_without_colon_is_malformed() {
        let err = parse(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n").unwrap_err();
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn empty_header_name_is_malformed() {
        let err = parse(b"GET / HTTP/1.1\r\n: value\r\n\r\n").unwrap_err();
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn invalid_header_name_is_malformed() {
        let err = parse(b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n").unwrap_err();
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn malformed_request_line() {
        assert!(matches!(
            parse(b"GARBAGE\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/2.0\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_head_is_431() {
        let limits = Limits {
            max_head_bytes: 64,
            ..Limits::default()
        };
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        raw.extend_from_slice(&[b'a'; 100]);
        let err = parse_request_head(&raw, &limits).unwrap_err();
        assert_eq!(err, HeadError::TooLarge(64));
        assert_eq!(
            err.status(),
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn complete_head_over_limit_is_431() {
        let limits = Limits {
            max_head_bytes: 32,
            ..Limits::default()
        };
        let raw = b"GET / HTTP/1.1\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        assert_eq!(
            parse_request_head(raw, &limits).unwrap_err(),
            HeadError::TooLarge(32)
        );
    }

    #[test]
    fn too_many_headers_is_431() {
        let limits = Limits {
            max_headers: 2,
            ..Limits::default()
        };
        let raw = b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n";
        assert_eq!(
            parse_request_head(raw, &limits).unwrap_err(),
            HeadError::TooManyHeaders(2)
        );
    }
}
