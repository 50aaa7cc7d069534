//! The browser backend under node (whose global `fetch()` the backend uses), against the origin
//! server `cargo xtask` starts (`xtask/src/transport_node.rs`). Its base URL comes from
//! `FETCH_TRANSPORT_ORIGIN`, a closed port from `FETCH_TRANSPORT_REFUSED`. Node's fetch has no
//! CORS: refusals by CORS and `credentials: "omit"` are checked in Chromium, not here.

#![cfg(target_arch = "wasm32")]

use std::time::Duration;

use fetch_transport::{Body, FetchTransport, Transport, TransportConfig, TransportError};
use futures::StreamExt;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_test::{console_log, wasm_bindgen_test};

fn env(name: &str) -> Option<String> {
    let get = |target: &JsValue, key: &str| js_sys::Reflect::get(target, &JsValue::from_str(key));
    let process = get(&js_sys::global(), "process").ok()?;
    if process.is_undefined() {
        return None;
    }
    get(&get(&process, "env").ok()?, name).ok()?.as_string()
}

/// Writes straight to node's stderr (the test runner captures `console` output of passing
/// tests), falling back to the console elsewhere.
fn shout(message: &str) {
    let written = (|| {
        let get = |t: &JsValue, k: &str| js_sys::Reflect::get(t, &JsValue::from_str(k)).ok();
        let stderr = get(&get(&js_sys::global(), "process")?, "stderr")?;
        let write: js_sys::Function = get(&stderr, "write")?.dyn_into().ok()?;
        write
            .call1(&stderr, &JsValue::from_str(&format!("{message}\n")))
            .ok()
    })();
    if written.is_none() {
        console_log!("{message}");
    }
}

/// The origin's base URL, or `None` after saying loudly that the test is skipped.
fn origin(test: &str) -> Option<String> {
    let found = env("FETCH_TRANSPORT_ORIGIN");
    if found.is_none() {
        shout(&format!(
            "SKIPPED {test}: FETCH_TRANSPORT_ORIGIN is not set; run it through `cargo xtask` \
             (xtask/src/transport_node.rs starts the origin server)"
        ));
    }
    found
}

fn loopback() -> FetchTransport {
    FetchTransport::new(TransportConfig::builder().loopback_only().build().unwrap())
}

fn get(url: &str) -> http::Request<Body> {
    http::Request::get(url).body(Body::empty()).unwrap()
}

async fn text(resp: http::Response<Body>) -> String {
    let bytes = resp.into_body().collect(1 << 20).await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[wasm_bindgen_test]
async fn first_chunk_arrives_before_the_origin_finishes() {
    let Some(base) = origin("first_chunk_arrives_before_the_origin_finishes") else {
        return;
    };
    let t = loopback();
    let resp = t.send(get(&format!("{base}/slow"))).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    assert_eq!(body.len(), None);
    let mut seen = String::new();
    while !seen.contains("first-chunk;") {
        let chunk = body.next().await.expect("body ended early").unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    // The origin sends the rest only once asked to (or after a long fallback, which then says
    // so in the body): reaching here first proves the body was not buffered whole.
    let released = t.send(get(&format!("{base}/release"))).await.unwrap();
    assert_eq!(text(released).await, "released");
    while let Some(chunk) = body.next().await {
        seen.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert_eq!(seen, "first-chunk;rest;released-by-signal");
}

#[wasm_bindgen_test]
async fn policy_removes_forbidden_headers() {
    let Some(base) = origin("policy_removes_forbidden_headers") else {
        return;
    };
    let request = http::Request::post(format!("{base}/echo"))
        .header("Cookie", "session=guest")
        .header("User-Agent", "guest-agent/1.0")
        .header("Sec-Fetch-Mode", "navigate")
        .header("Proxy-Authorization", "Basic Zm9v")
        .header("Referer", "http://guest-referer/")
        .header("X-Custom", "kept")
        .body(Body::from("payload"))
        .unwrap();
    let echo = text(loopback().send(request).await.unwrap()).await;
    assert!(echo.starts_with("POST\n"), "{echo}");
    assert!(echo.contains("x-custom: kept"), "{echo}");
    for gone in [
        "session=guest",
        "guest-agent",
        "navigate",
        "proxy-authorization",
        "guest-referer",
    ] {
        assert!(!echo.contains(gone), "{gone} leaked: {echo}");
    }
    assert!(echo.ends_with("\n\npayload"), "{echo}");
}

#[wasm_bindgen_test]
async fn redirects_are_reported() {
    let Some(base) = origin("redirects_are_reported") else {
        return;
    };
    let resp = loopback()
        .send(get(&format!("{base}/redirect")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-fetch-redirected"], "true");
    assert_eq!(
        resp.headers()["x-fetch-url"],
        format!("{base}/page").as_str()
    );
    assert_eq!(text(resp).await, "hello page");

    let direct = loopback().send(get(&format!("{base}/page"))).await.unwrap();
    assert!(direct.headers().get("x-fetch-redirected").is_none());
    assert_eq!(direct.headers()["content-type"], "text/plain");
}

#[wasm_bindgen_test]
async fn not_found_keeps_status_headers_and_body() {
    let Some(base) = origin("not_found_keeps_status_headers_and_body") else {
        return;
    };
    let resp = loopback()
        .send(get(&format!("{base}/missing")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-origin"], "test");
    assert_eq!(text(resp).await, "no such page");
}

#[wasm_bindgen_test]
async fn decoded_bodies_lose_their_framing_headers() {
    let Some(base) = origin("decoded_bodies_lose_their_framing_headers") else {
        return;
    };
    let resp = loopback().send(get(&format!("{base}/gzip"))).await.unwrap();
    assert!(resp.headers().get("content-encoding").is_none());
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(text(resp).await, "hello gzip, decoded by fetch");
}

#[wasm_bindgen_test]
async fn refused_connection_is_blocked() {
    let Some(_) = origin("refused_connection_is_blocked") else {
        return;
    };
    let refused = env("FETCH_TRANSPORT_REFUSED").expect("FETCH_TRANSPORT_REFUSED is not set");
    let err = loopback().send(get(&refused)).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::Blocked { reason, .. }
            if reason.contains("the browser refused the request (CORS policy or network error)")),
        "{err:?}"
    );
}

#[wasm_bindgen_test]
async fn denied_destination_is_not_fetched() {
    let err = loopback()
        .send(get("http://example.com/"))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Denied { .. }), "{err:?}");
}

#[wasm_bindgen_test]
async fn slow_response_head_times_out() {
    let Some(base) = origin("slow_response_head_times_out") else {
        return;
    };
    let t = FetchTransport::new(
        TransportConfig::builder()
            .loopback_only()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap(),
    );
    let err = t.send(get(&format!("{base}/hang"))).await.unwrap_err();
    assert!(matches!(err, TransportError::Timeout { .. }), "{err:?}");
}

#[wasm_bindgen_test]
async fn request_bodies_over_the_limit_are_refused() {
    let t = FetchTransport::new(
        TransportConfig::builder()
            .loopback_only()
            .max_request_body(4)
            .build()
            .unwrap(),
    );
    let request = http::Request::post("http://127.0.0.1:9/")
        .body(Body::from("12345"))
        .unwrap();
    let err = t.send(request).await.unwrap_err();
    assert!(
        matches!(err, TransportError::BodyTooLarge { limit: 4, .. }),
        "{err:?}"
    );
}
