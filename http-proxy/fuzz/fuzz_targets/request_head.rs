//! Request heads: parse_request_head, then the body framing and the request-target (and the
//! Host header) as the proxy would interpret them.
#![no_main]

use http::header::HOST;
use http::Method;
use http_proxy::body::decode::request_framing;
use http_proxy::head::parse_request_head;
use http_proxy::target::{origin_from_host_header, parse_target, Scheme, Target};
use http_proxy::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, data)) = data.split_first() else {
        return;
    };
    // Small limits half of the time, so the 431 paths are reached.
    let mut limits = Limits::default();
    if sel & 1 == 1 {
        limits.max_headers = 1 + usize::from(sel >> 4);
        limits.max_head_bytes = 16 + usize::from(sel) * 4;
    }
    let (head, len) = match parse_request_head(data, &limits) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            assert!(data.len() < limits.max_head_bytes);
            return;
        }
        Err(err) => {
            assert!(err.status().is_client_error() || err.status().is_server_error());
            return;
        }
    };
    assert!(len <= data.len() && len <= limits.max_head_bytes);
    assert!(head.headers.len() <= limits.max_headers);
    // A prefix of a complete head is never complete with another length.
    if let Ok(Some((_, again))) = parse_request_head(&data[..len], &limits) {
        assert_eq!(again, len);
    }
    let _ = request_framing(&head.headers, head.version);
    let connect = head.method == Method::CONNECT;
    match parse_target(&head.target, connect) {
        Ok(Target::Absolute {
            origin,
            path_and_query,
            ..
        }) => {
            let _ = origin.url(&path_and_query);
            let _ = origin.host_header();
        }
        Ok(other) => {
            let _ = format!("{other:?}");
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
    for value in head.headers.get_all(HOST) {
        if let Ok(text) = value.to_str() {
            if let Ok(origin) = origin_from_host_header(text, Scheme::Http) {
                let _ = origin.url("/");
            }
        }
    }
});
