//! The browser backend under node (whose global `fetch()` the backend uses), against the origin
//! server `cargo xtask` starts (`xtask/src/transport_node.rs`, the origin in `xtask/src/harness/origins/node.rs`). Its base URL comes from
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

/// The page's timers, as the composition's browser runtime supplies them.
struct PageTimer;

impl fetch_transport::Timer for PageTimer {
    fn sleep(&self, duration: Duration) -> futures::future::LocalBoxFuture<'static, ()> {
        Box::pin(gloo_timers::future::sleep(duration))
    }
}

fn timer() -> std::rc::Rc<dyn fetch_transport::Timer> {
    std::rc::Rc::new(PageTimer)
}

fn loopback() -> FetchTransport {
    FetchTransport::new(
        TransportConfig::builder().loopback_only().build().unwrap(),
        timer(),
    )
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
        timer(),
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
        timer(),
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

/// Length of the origin's `/large` body (`LARGE_LEN` in xtask/src/harness/origins/node.rs).
const LARGE_LEN: usize = 8 << 20;

/// The largest piece the backend may hand out.
const MAX_PIECE: usize = 64 << 10;

/// How much the wasm memory may grow while an 8 MiB body is read through the backend (reqwest's
/// `bytes_stream()`, which copied each chunk whole, grew it by 2.9 MiB with 3 MB chunks).
const MAX_GROWTH: f64 = (1 << 20) as f64;

/// Byte `i` of the origin's `/large` and `/endless` bodies.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// The current size of this module's wasm memory, in bytes.
fn wasm_memory_bytes() -> f64 {
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    memory
        .buffer()
        .unchecked_into::<js_sys::ArrayBuffer>()
        .byte_length() as f64
}

/// Resolves after `millis` (a JS timer).
async fn sleep(millis: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        let global = js_sys::global();
        let set_timeout: js_sys::Function = js_sys::Reflect::get(&global, &"setTimeout".into())
            .unwrap()
            .unchecked_into();
        set_timeout
            .call2(&global, &resolve, &JsValue::from(millis))
            .unwrap();
    });
    wasm_bindgen_futures::JsFuture::from(promise).await.unwrap();
}

/// Reads `body` to its end without keeping it, checking every byte against [`pattern`];
/// returns the total length and the largest piece.
async fn drain_checked(mut body: Body) -> (usize, usize) {
    let (mut total, mut largest) = (0, 0);
    while let Some(piece) = body.next().await {
        let piece = piece.unwrap();
        assert!(!piece.is_empty(), "empty piece at offset {total}");
        for (i, byte) in piece.iter().enumerate() {
            assert_eq!(*byte, pattern(total + i), "byte {} differs", total + i);
        }
        total += piece.len();
        largest = largest.max(piece.len());
    }
    (total, largest)
}

/// Fetches `/large` (8 MiB) and checks it arrives whole, in pieces of at most 64 KiB, while
/// the wasm memory grows by less than 4 MiB.
async fn read_large_bounded(base: &str) -> (usize, f64) {
    let before = wasm_memory_bytes();
    let resp = loopback()
        .send(get(&format!("{base}/large")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Let the origin's bytes pile up in the JS side's buffers before reading, so that fetch()
    // hands them over in chunks as large as it likes.
    sleep(300).await;
    let (total, largest) = drain_checked(resp.into_body()).await;
    let grown = wasm_memory_bytes() - before;
    assert_eq!(total, LARGE_LEN);
    assert!(
        grown < MAX_GROWTH,
        "the wasm memory grew by {grown} bytes reading {LARGE_LEN} bytes"
    );
    assert!(
        largest <= MAX_PIECE,
        "a piece of {largest} bytes (limit {MAX_PIECE})"
    );
    (largest, grown)
}

#[wasm_bindgen_test]
async fn large_body_is_read_in_bounded_pieces() {
    let Some(base) = origin("large_body_is_read_in_bounded_pieces") else {
        return;
    };
    let (largest, grown) = read_large_bounded(&base).await;
    console_log!("largest piece {largest} bytes, wasm memory grew by {grown} bytes");
}

/// Replaces the global `fetch` with one that hands response bodies over in chunks of
/// `chunk` bytes (what Firefox does with what it has buffered) and records the largest chunk
/// it delivered in `globalThis.__fetchTransportLargestChunk`; the original comes back on drop.
struct CoalescingFetch {
    original: JsValue,
}

impl CoalescingFetch {
    fn install(chunk: u32) -> Self {
        let install = js_sys::Function::new_with_args(
            "chunk",
            r#"
            const original = globalThis.fetch;
            globalThis.__fetchTransportLargestChunk = 0;
            globalThis.fetch = async function (input, init) {
                const response = await original(input, init);
                if (!response.body) return response;
                const parts = [];
                let total = 0;
                const reader = response.body.getReader();
                for (;;) {
                    const { done, value } = await reader.read();
                    if (done) break;
                    parts.push(value);
                    total += value.length;
                }
                const whole = new Uint8Array(total);
                let at = 0;
                for (const part of parts) {
                    whole.set(part, at);
                    at += part.length;
                }
                let offset = 0;
                const body = new ReadableStream({
                    pull(controller) {
                        if (offset >= total) {
                            controller.close();
                            return;
                        }
                        const piece = whole.slice(offset, offset + chunk);
                        offset += piece.length;
                        globalThis.__fetchTransportLargestChunk =
                            Math.max(globalThis.__fetchTransportLargestChunk, piece.length);
                        controller.enqueue(piece);
                    },
                });
                const wrapped = new Response(body, {
                    status: response.status,
                    headers: response.headers,
                });
                for (const name of ["url", "redirected"]) {
                    Object.defineProperty(wrapped, name, { value: response[name] });
                }
                return wrapped;
            };
            return original;
            "#,
        );
        let original = install
            .call1(&JsValue::NULL, &JsValue::from(chunk))
            .unwrap();
        Self { original }
    }

    fn largest_chunk() -> f64 {
        js_sys::Reflect::get(&js_sys::global(), &"__fetchTransportLargestChunk".into())
            .unwrap()
            .as_f64()
            .unwrap()
    }
}

impl Drop for CoalescingFetch {
    fn drop(&mut self) {
        js_sys::Reflect::set(&js_sys::global(), &"fetch".into(), &self.original).unwrap();
    }
}

#[wasm_bindgen_test]
async fn browser_sized_chunks_stay_out_of_wasm_memory() {
    let Some(base) = origin("browser_sized_chunks_stay_out_of_wasm_memory") else {
        return;
    };
    // Not a multiple of 64 KiB, so pieces also end at chunk boundaries.
    let fetch = CoalescingFetch::install(3_000_000);
    let (largest, grown) = read_large_bounded(&base).await;
    drop(fetch);
    assert_eq!(
        CoalescingFetch::largest_chunk(),
        3_000_000.0,
        "the wrapped fetch() did not deliver large chunks"
    );
    console_log!("largest piece {largest} bytes, wasm memory grew by {grown} bytes");
}

#[wasm_bindgen_test]
async fn dropping_the_body_stops_the_download() {
    let Some(base) = origin("dropping_the_body_stops_the_download") else {
        return;
    };
    let resp = loopback()
        .send(get(&format!("{base}/endless")))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = body.next().await.expect("no first piece").unwrap();
    assert_eq!(first[..3], [pattern(0), pattern(1), pattern(2)]);
    drop(body);
    // The origin writes until its socket fails; it answers once that happened (or after 10 s).
    let stopped = loopback()
        .send(get(&format!("{base}/endless-stopped")))
        .await
        .unwrap();
    assert_eq!(text(stopped).await, "1");
}

#[wasm_bindgen_test]
async fn head_response_has_an_empty_body() {
    let Some(base) = origin("head_response_has_an_empty_body") else {
        return;
    };
    let request = http::Request::head(format!("{base}/page"))
        .body(Body::empty())
        .unwrap();
    let resp = loopback().send(request).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.body().len(), Some(0));
    assert_eq!(text(resp).await, "");
}

/// A transport whose `fetch` is `body` (JS taking `request`), no origin needed.
fn hooked(body: &str) -> FetchTransport {
    let fetch = js_sys::Function::new_with_args("request", body);
    FetchTransport::new(TransportConfig::builder().build().unwrap(), timer()).with_fetch(fetch)
}

#[wasm_bindgen_test]
async fn a_fetch_hook_answers_instead_of_the_network() {
    // Sync and async answers; the request the hook sees is the one the policy made.
    let t = hooked(
        "return new Response(request.method + ' ' + request.url + ' ' + \
         request.headers.get('x-custom'), { status: 201, headers: { 'x-from': 'hook' } });",
    );
    let request = http::Request::post("http://nowhere.invalid/path?q=1")
        .header("X-Custom", "kept")
        .header("Cookie", "dropped=1")
        .body(Body::from("payload"))
        .unwrap();
    let resp = t.send(request).await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-from"], "hook");
    assert_eq!(
        text(resp).await,
        "POST http://nowhere.invalid/path?q=1 kept"
    );
    let t = hooked("return Promise.resolve(new Response(new Uint8Array(70000)));");
    let resp = t.send(get("http://nowhere.invalid/")).await.unwrap();
    assert_eq!(
        resp.into_body().collect(1 << 20).await.unwrap().len(),
        70000
    );
}

#[wasm_bindgen_test]
async fn a_failing_fetch_hook_is_a_blocked_request_naming_the_hook() {
    for (body, says) in [
        (
            "throw new Error('sync no');",
            "the page's fetch function threw: Error: sync no",
        ),
        (
            "return Promise.reject(new TypeError('async no'));",
            "the page's fetch function failed: TypeError: async no",
        ),
        (
            "return 'not a response';",
            "the page's fetch function did not give a Response",
        ),
    ] {
        let err = hooked(body)
            .send(get("http://nowhere.invalid/x"))
            .await
            .unwrap_err();
        match err {
            TransportError::Blocked { url, reason } => {
                assert_eq!(url.as_str(), "http://nowhere.invalid/x");
                assert!(reason.starts_with(says), "{reason}");
            }
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[wasm_bindgen_test]
async fn the_next_chunk_is_read_while_the_current_one_is_handed_out() {
    // A body of three 10-byte chunks made on demand (highWaterMark 0: a chunk is made only when
    // a read() waits for it); `globalThis.readAheadPulls` counts how many were asked for.
    let t = hooked(
        "globalThis.readAheadPulls = 0; \
         return new Response(new ReadableStream({ pull(c) { \
           globalThis.readAheadPulls += 1; \
           if (globalThis.readAheadPulls > 3) c.close(); else c.enqueue(new Uint8Array(10)); \
         } }, { highWaterMark: 0 }));",
    );
    let pulls = || {
        js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("readAheadPulls"))
            .unwrap()
            .as_f64()
            .unwrap()
    };
    let mut body = t
        .send(get("http://nowhere.invalid/"))
        .await
        .unwrap()
        .into_body();
    let first = body.next().await.unwrap().unwrap();
    assert_eq!(first.len(), 10);
    // Let the stream run its pull for the read started ahead.
    gloo_timers::future::sleep(Duration::from_millis(0)).await;
    assert_eq!(pulls(), 2.0, "the second chunk was not asked for ahead");
    let mut total = first.len();
    while let Some(piece) = body.next().await {
        total += piece.unwrap().len();
    }
    assert_eq!(total, 30);
}
