//! The browser policy, shared by every backend: which request headers may leave, how the
//! request URL is routed (rewrites, allow/deny, CORS proxy), and how response heads are
//! adjusted (hop-by-hop and decoded-body headers removed, redirects made visible).
//!
//! Everything here is pure: no I/O, no clock.

use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, PROXY_AUTHORIZATION,
};
use http::{HeaderMap, Method};
use url::Url;

use crate::config::TransportConfig;
use crate::{Body, TransportError};

/// Added to a response when the client followed redirects; its value is `true`.
pub const X_FETCH_REDIRECTED: &str = "x-fetch-redirected";
/// Added to a response when the client followed redirects; its value is the final URL.
pub const X_FETCH_URL: &str = "x-fetch-url";

/// The de-facto header older clients send to a proxy in place of `Connection`.
pub const PROXY_CONNECTION: &str = "proxy-connection";

/// Headers that describe one connection and never cross a proxy in either direction (RFC 9110
/// §7.6.1), with the de-facto `Proxy-Connection`. The one list of them: the HTTP proxy drops
/// them from responses it writes to the guest too.
pub const CONNECTION_SPECIFIC: &[&str] = &[
    "connection",
    "keep-alive",
    PROXY_CONNECTION,
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The Fetch standard's forbidden request header names (besides the `proxy-`/`sec-` prefixes).
const FORBIDDEN: &[&str] = &[
    "accept-charset",
    "accept-encoding",
    "connection",
    "content-length",
    "cookie",
    "cookie2",
    "date",
    "dnt",
    "expect",
    "host",
    "keep-alive",
    "origin",
    "referer",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "via",
];

const FORBIDDEN_PREFIXES: &[&str] = &["proxy-", "sec-", "access-control-request-"];

/// Headers the Fetch standard forbids when their value names a forbidden method.
const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method",
    "x-http-method-override",
    "x-method-override",
];

/// Which request headers a backend removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderPolicy {
    /// Only hop-by-hop headers (what any proxy removes): the native backend's default.
    HopByHop,
    /// Hop-by-hop headers and the Fetch standard's forbidden request headers; `User-Agent`
    /// too unless `keep_user_agent`.
    Browser {
        /// Keep the guest's `User-Agent` (it makes cross-origin requests non-simple).
        keep_user_agent: bool,
    },
}

/// How the body a backend returns relates to the bytes the origin sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyDecoding {
    /// Exactly the origin's bytes: `Content-Encoding` and `Content-Length` still hold.
    Raw,
    /// Decoded when `Content-Encoding` was present (then both it and `Content-Length` go).
    Decoded,
    /// Possibly decoded without saying so (a browser may hide `Content-Encoding` from a
    /// cross-origin response): `Content-Encoding` and `Content-Length` always go.
    Opaque,
}

/// True for a header named in [`CONNECTION_SPECIFIC`].
pub fn is_connection_specific(name: &HeaderName) -> bool {
    CONNECTION_SPECIFIC.contains(&name.as_str())
}

/// True for a hop-by-hop header name: a [connection-specific](CONNECTION_SPECIFIC) one, or
/// `Proxy-Authorization`, the credentials meant for the proxy itself.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    is_connection_specific(name) || name == PROXY_AUTHORIZATION
}

/// True when the Fetch standard forbids a script from setting this request header.
pub fn is_forbidden_request_header(name: &HeaderName, value: &HeaderValue) -> bool {
    let n = name.as_str();
    if FORBIDDEN.contains(&n) || FORBIDDEN_PREFIXES.iter().any(|p| n.starts_with(p)) {
        return true;
    }
    METHOD_OVERRIDES.contains(&n)
        && value.to_str().map_or(true, |v| {
            v.split(',').any(|m| is_forbidden_method_name(m.trim()))
        })
}

/// True for the methods `fetch()` refuses to send (CONNECT, TRACE, TRACK).
pub fn is_forbidden_method(method: &Method) -> bool {
    is_forbidden_method_name(method.as_str())
}

fn is_forbidden_method_name(m: &str) -> bool {
    ["connect", "trace", "track"]
        .iter()
        .any(|f| m.eq_ignore_ascii_case(f))
}

/// Names listed in the `Connection` headers (they are hop-by-hop for this message).
fn connection_tokens(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

fn remove_all(headers: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        headers.remove(name);
    }
}

/// Removes the request headers `policy` does not let through and returns their names.
pub fn filter_request_headers(headers: &mut HeaderMap, policy: HeaderPolicy) -> Vec<HeaderName> {
    let mut dropped = connection_tokens(headers);
    for (name, value) in headers.iter() {
        let drop = is_hop_by_hop(name)
            || match policy {
                HeaderPolicy::HopByHop => false,
                HeaderPolicy::Browser { keep_user_agent } => {
                    is_forbidden_request_header(name, value)
                        || (!keep_user_agent && name == http::header::USER_AGENT)
                }
            };
        if drop && !dropped.contains(name) {
            dropped.push(name.clone());
        }
    }
    dropped.retain(|n| headers.contains_key(n));
    remove_all(headers, &dropped);
    if !dropped.is_empty() {
        tracing::debug!(dropped = ?dropped, "removed request headers");
    }
    dropped
}

/// Removes hop-by-hop headers, any `X-Fetch-*` the origin sent, and the framing headers a
/// decoded body invalidates; returns the removed names.
pub fn filter_response_headers(headers: &mut HeaderMap, decoding: BodyDecoding) -> Vec<HeaderName> {
    let mut dropped = connection_tokens(headers);
    for name in headers.keys() {
        let n = name.as_str();
        let drop = is_hop_by_hop(name) || n == X_FETCH_REDIRECTED || n == X_FETCH_URL;
        if drop && !dropped.contains(name) {
            dropped.push(name.clone());
        }
    }
    let framing = match decoding {
        BodyDecoding::Raw => false,
        BodyDecoding::Decoded => headers.contains_key(CONTENT_ENCODING),
        BodyDecoding::Opaque => true,
    };
    if framing {
        dropped.extend([CONTENT_ENCODING, CONTENT_LENGTH]);
    }
    dropped.retain(|n| headers.contains_key(n));
    remove_all(headers, &dropped);
    if !dropped.is_empty() {
        tracing::debug!(dropped = ?dropped, "removed response headers");
    }
    dropped
}

/// Adds `X-Fetch-Redirected: true` and `X-Fetch-Url: <received>` when `received` differs from
/// `requested`; returns whether it did.
pub fn mark_redirect(headers: &mut HeaderMap, requested: &Url, received: &Url) -> bool {
    if requested == received {
        return false;
    }
    // A serialised `Url` is ASCII (punycode, percent-encoding), so it is a valid header value.
    let Ok(value) = HeaderValue::from_str(received.as_str()) else {
        return false;
    };
    headers.insert(X_FETCH_REDIRECTED, HeaderValue::from_static("true"));
    headers.insert(X_FETCH_URL, value);
    true
}

/// A request after routing and header policy, ready for a backend.
#[derive(Debug)]
pub struct PreparedRequest {
    /// The request method.
    pub method: Method,
    /// The URL the guest asked for (for error messages).
    pub guest_url: String,
    /// The real destination, after rewrite rules.
    pub target: Url,
    /// What the backend fetches: `target`, or the CORS proxy URL wrapping it.
    pub fetch_url: Url,
    /// The headers left after the policy.
    pub headers: HeaderMap,
    /// The request body, untouched.
    pub body: Body,
}

/// Routes and filters `request`: rewrite rules, allow/deny list (→ [`TransportError::Denied`]),
/// forbidden methods under the browser policy, header policy, CORS proxy.
pub fn prepare(
    config: &TransportConfig,
    request: http::Request<Body>,
    policy: HeaderPolicy,
) -> Result<PreparedRequest, TransportError> {
    let (parts, body) = request.into_parts();
    let guest_url = parts.uri.to_string();
    let invalid = |reason: String| TransportError::InvalidRequest {
        url: guest_url.clone(),
        reason,
    };
    let url = Url::parse(&guest_url).map_err(|e| invalid(format!("not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!("unsupported scheme `{}`", url.scheme())));
    }
    let target = match config.rewrites.iter().find_map(|r| r.apply(&url)) {
        Some(Ok(rewritten)) => {
            tracing::debug!(from = %url, to = %rewritten, "rewrote destination");
            rewritten
        }
        Some(Err(reason)) => return Err(invalid(reason)),
        None => url,
    };
    if let Err(reason) = config.destinations.check(&target) {
        tracing::debug!(url = %target, %reason, "destination denied");
        return Err(TransportError::Denied {
            url: guest_url,
            reason,
        });
    }
    if matches!(policy, HeaderPolicy::Browser { .. }) && is_forbidden_method(&parts.method) {
        return Err(invalid(format!(
            "the browser cannot send a {} request",
            parts.method
        )));
    }
    let mut headers = parts.headers;
    filter_request_headers(&mut headers, policy);
    let fetch_url = match &config.cors_proxy {
        Some(proxy) => proxy.wrap(&target).map_err(invalid)?,
        None => target.clone(),
    };
    Ok(PreparedRequest {
        method: parts.method,
        guest_url,
        target,
        fetch_url,
        headers,
        body,
    })
}

/// The destination a URL the client fetched stands for (undoing the CORS proxy wrapping).
pub fn target_of(config: &TransportConfig, fetched: &Url) -> Url {
    config
        .cors_proxy
        .as_ref()
        .and_then(|p| p.unwrap(fetched))
        .unwrap_or_else(|| fetched.clone())
}

/// Adjusts a response head: [`filter_response_headers`], then [`mark_redirect`] when the client
/// ended at another URL than `fetch_url` (reported as the target, not the CORS proxy URL).
pub fn adjust_response(
    config: &TransportConfig,
    fetch_url: &Url,
    final_url: &Url,
    headers: &mut HeaderMap,
    decoding: BodyDecoding,
) {
    filter_response_headers(headers, decoding);
    if fetch_url != final_url {
        let requested = target_of(config, fetch_url);
        let received = target_of(config, final_url);
        if mark_redirect(headers, &requested, &received) {
            tracing::debug!(from = %requested, to = %received, "followed redirects");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TransportConfig;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut v: Vec<String> = h.keys().map(|k| k.as_str().to_string()).collect();
        v.sort();
        v
    }

    fn every_kind() -> HeaderMap {
        headers(&[
            ("Connection", "keep-alive, X-Conn-Listed"),
            ("X-Conn-Listed", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("Proxy-Authorization", "Basic Zm9v"),
            ("TE", "trailers"),
            ("Trailer", "X-T"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("Accept-Charset", "utf-8"),
            ("Accept-Encoding", "gzip"),
            ("Access-Control-Request-Method", "PUT"),
            ("Access-Control-Request-Headers", "x"),
            ("Content-Length", "3"),
            ("Cookie", "a=b"),
            ("Cookie2", "x"),
            ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("DNT", "1"),
            ("Expect", "100-continue"),
            ("Host", "example.com"),
            ("Origin", "http://evil"),
            ("Referer", "http://evil/"),
            ("Set-Cookie", "a=b"),
            ("Via", "1.1 x"),
            ("Proxy-Foo", "x"),
            ("Sec-Fetch-Mode", "cors"),
            ("X-HTTP-Method-Override", "TRACE"),
            ("X-Method-Override", "PATCH"),
            ("User-Agent", "curl/8"),
            ("Accept", "*/*"),
            ("Authorization", "Bearer t"),
            ("Content-Type", "text/plain"),
            ("X-Custom", "1"),
        ])
    }

    #[test]
    fn hop_by_hop_policy_keeps_end_to_end_headers() {
        let mut h = every_kind();
        let dropped = filter_request_headers(&mut h, HeaderPolicy::HopByHop);
        assert_eq!(dropped.len(), 9, "{dropped:?}");
        assert!(dropped.contains(&HeaderName::from_static("x-conn-listed")));
        assert!(h.contains_key("cookie") && h.contains_key("host") && h.contains_key("user-agent"));
        assert!(!h.contains_key("transfer-encoding") && !h.contains_key("proxy-authorization"));
    }

    #[test]
    fn browser_policy_drops_forbidden_headers_and_user_agent() {
        let mut h = every_kind();
        filter_request_headers(
            &mut h,
            HeaderPolicy::Browser {
                keep_user_agent: false,
            },
        );
        assert_eq!(
            names(&h),
            [
                "accept",
                "authorization",
                "content-type",
                "x-custom",
                "x-method-override"
            ]
        );
        let mut h = every_kind();
        filter_request_headers(
            &mut h,
            HeaderPolicy::Browser {
                keep_user_agent: true,
            },
        );
        assert_eq!(h.get("user-agent").unwrap(), "curl/8");
    }

    #[test]
    fn multi_valued_request_headers_stay_separate() {
        let mut h = headers(&[("X-A", "1"), ("X-A", "2"), ("Cookie", "a"), ("Cookie", "b")]);
        let dropped = filter_request_headers(
            &mut h,
            HeaderPolicy::Browser {
                keep_user_agent: false,
            },
        );
        assert_eq!(dropped, [HeaderName::from_static("cookie")]);
        let values: Vec<_> = h.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
    }

    #[test]
    fn response_filter_by_decoding() {
        let base = || {
            headers(&[
                ("Content-Encoding", "gzip"),
                ("Content-Length", "10"),
                ("Transfer-Encoding", "chunked"),
                ("Connection", "close"),
                ("X-Fetch-Url", "http://spoofed/"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
                ("Content-Type", "text/html"),
            ])
        };
        let mut raw = base();
        filter_response_headers(&mut raw, BodyDecoding::Raw);
        assert_eq!(
            names(&raw),
            [
                "content-encoding",
                "content-length",
                "content-type",
                "set-cookie"
            ]
        );
        assert_eq!(raw.get_all("set-cookie").iter().count(), 2);

        let mut decoded = base();
        filter_response_headers(&mut decoded, BodyDecoding::Decoded);
        assert_eq!(names(&decoded), ["content-type", "set-cookie"]);

        let mut plain = headers(&[("Content-Length", "10")]);
        filter_response_headers(&mut plain, BodyDecoding::Decoded);
        assert_eq!(plain.get("content-length").unwrap(), "10");
        filter_response_headers(&mut plain, BodyDecoding::Opaque);
        assert!(plain.is_empty());
    }

    #[test]
    fn redirect_marking() {
        let a = Url::parse("http://a.example/").unwrap();
        let b = Url::parse("http://b.example/x?y").unwrap();
        let mut h = HeaderMap::new();
        assert!(!mark_redirect(&mut h, &a, &a));
        assert!(h.is_empty());
        assert!(mark_redirect(&mut h, &a, &b));
        assert_eq!(h.get(X_FETCH_REDIRECTED).unwrap(), "true");
        assert_eq!(h.get(X_FETCH_URL).unwrap(), "http://b.example/x?y");
    }

    fn request(uri: &str) -> http::Request<Body> {
        http::Request::builder()
            .uri(uri)
            .header("Cookie", "a=b")
            .header("X-Keep", "1")
            .body(Body::empty())
            .unwrap()
    }

    const BROWSER: HeaderPolicy = HeaderPolicy::Browser {
        keep_user_agent: false,
    };

    #[test]
    fn prepare_rewrites_checks_and_wraps() {
        let config = TransportConfig::builder()
            .loopback_only()
            .v86_external()
            .cors_proxy("http://127.0.0.1:9/p?u={url}")
            .build()
            .unwrap();
        let p = prepare(&config, request("http://8080.external/a?b"), BROWSER).unwrap();
        assert_eq!(p.guest_url, "http://8080.external/a?b");
        assert_eq!(p.target.as_str(), "http://localhost:8080/a?b");
        assert_eq!(
            p.fetch_url.as_str(),
            "http://127.0.0.1:9/p?u=http%3A%2F%2Flocalhost%3A8080%2Fa%3Fb"
        );
        assert_eq!(names(&p.headers), ["x-keep"]);
        assert_eq!(target_of(&config, &p.fetch_url), p.target);

        let err = prepare(&config, request("http://example.com/"), BROWSER).unwrap_err();
        assert!(
            matches!(&err, TransportError::Denied { url, reason }
                if url == "http://example.com/" && reason.contains("allow list")),
            "{err:?}"
        );
    }

    #[test]
    fn prepare_rejects_what_cannot_be_sent() {
        let config = TransportConfig::default();
        for uri in ["/relative", "ftp://example.com/"] {
            let err = prepare(&config, request(uri), HeaderPolicy::HopByHop).unwrap_err();
            assert!(
                matches!(err, TransportError::InvalidRequest { .. }),
                "{uri}"
            );
        }
        let mut trace = request("http://example.com/");
        *trace.method_mut() = Method::TRACE;
        let err = prepare(&config, trace, BROWSER).unwrap_err();
        assert!(matches!(err, TransportError::InvalidRequest { .. }));
        let mut trace = request("http://example.com/");
        *trace.method_mut() = Method::TRACE;
        assert!(prepare(&config, trace, HeaderPolicy::HopByHop).is_ok());

        let config = TransportConfig::builder().v86_external().build().unwrap();
        let err = prepare(&config, request("http://x.external/"), BROWSER).unwrap_err();
        assert!(matches!(err, TransportError::InvalidRequest { .. }));
    }

    #[test]
    fn adjust_response_reports_target_not_proxy() {
        let config = TransportConfig::builder()
            .cors_proxy("http://127.0.0.1:9/?u=")
            .build()
            .unwrap();
        let proxy = config.cors_proxy().unwrap();
        let first = proxy
            .wrap(&Url::parse("http://a.example/").unwrap())
            .unwrap();
        let last = proxy
            .wrap(&Url::parse("http://b.example/z").unwrap())
            .unwrap();
        let mut h = headers(&[("Content-Length", "4")]);
        adjust_response(&config, &first, &first, &mut h, BodyDecoding::Raw);
        assert_eq!(names(&h), ["content-length"]);
        adjust_response(&config, &first, &last, &mut h, BodyDecoding::Raw);
        assert_eq!(h.get(X_FETCH_URL).unwrap(), "http://b.example/z");
    }
}
