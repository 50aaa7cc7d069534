//! `NetProxy.connect`, `fetchGuest` and `probe`: the page reaching servers inside the guest
//! through [`GuestHttp`]. Each returns a Promise at once (the `NetProxy` is not borrowed
//! while it waits, so frames keep flowing); failures reject with an `Error` that says why.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fetch_transport::{Body, BodyError};
use futures::io::{AsyncReadExt, AsyncWrite, WriteHalf};
use futures::{Sink, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use js_sys::{Object, Promise, Reflect, Uint8Array};
use net_stack::TcpStream;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::future_to_promise;

use super::{Inner, NetProxy};
use crate::guest::{port_number, GuestError, GuestHttp};

/// Bytes read from a guest connection at once for `connect().readable`.
const READ_CHUNK: usize = 16 * 1024;
/// `probe`'s timeout when `timeoutMs` is not given.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest `timeoutMs` a probe takes.
const MAX_PROBE_TIMEOUT_MS: f64 = 600_000.0;

#[wasm_bindgen(typescript_custom_section)]
const GUEST_TYPES: &'static str = r#"
/** Which guest to reach: `ip` (dotted IPv4) defaults to the guest's latest DHCP lease. */
export interface GuestAddress {
    ip?: string;
}
/** `fetchGuest`'s options: the guest's port, optionally its address, and headers that
 * replace the request's own of the same name (not filtered like a `Request`'s: `Cookie`,
 * `Origin`, `Referer` may be set here). */
export interface FetchGuestOptions extends GuestAddress {
    port: number;
    headers?: [string, string][] | Record<string, string>;
}
/** `fetchGuest`'s response: `guestHeaders` lists every header the guest sent, in order,
 * including those a `Response` cannot hold (`Set-Cookie`). */
export interface GuestResponse extends Response {
    readonly guestHeaders: [string, string][];
}
/** `probe`'s options: how long the guest may take to answer (default 3000 ms). */
export interface ProbeOptions extends GuestAddress {
    timeoutMs?: number;
}
/** A TCP connection into the guest: bytes from it, and bytes to it (closing it sends FIN). */
export interface GuestConnection {
    readable: ReadableStream<Uint8Array>;
    writable: WritableStream<Uint8Array>;
}
"#;

/// Why a guest call was refused before or while reaching the guest.
#[derive(Debug, thiserror::Error)]
enum GuestApiError {
    #[error("NetProxy is closed")]
    Closed,
    #[error("options: {0}")]
    Options(String),
    #[error("{0}")]
    Guest(#[from] GuestError),
    #[error("expected a Request or a URL string")]
    NotARequest,
    #[error("the request's body was already used")]
    BodyUsed,
    #[error("the request's {0} is not valid HTTP")]
    InvalidRequest(&'static str),
    #[error("options: headers: {0}")]
    Header(String),
    #[error("the guest's response cannot be a Response: {0}")]
    Response(String),
}

/// An Error for JavaScript: `what` names the call.
fn reject(what: &str, err: GuestApiError) -> JsValue {
    js_sys::Error::new(&format!("{what}: {err}")).into()
}

/// A JS value's text for error messages.
fn describe(value: &JsValue) -> String {
    value
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| value.as_string())
        .unwrap_or_else(|| format!("{value:?}"))
}

/// Reads an options object: `undefined`/`null` is empty; unknown keys are refused.
fn option_fields(options: &JsValue, known: &[&str]) -> Result<Object, GuestApiError> {
    if options.is_undefined() || options.is_null() {
        return Ok(Object::new());
    }
    let object: &Object = options
        .dyn_ref()
        .filter(|_| !js_sys::Array::is_array(options))
        .ok_or_else(|| GuestApiError::Options("expected an object".into()))?;
    for key in Object::keys(object).iter() {
        let key = key.as_string().unwrap_or_default();
        if !known.contains(&key.as_str()) {
            return Err(GuestApiError::Options(format!(
                "unknown option {key:?} (known: {})",
                known.join(", ")
            )));
        }
    }
    Ok(object.clone())
}

/// A field of an options object, `None` when absent or `undefined`.
fn field(object: &Object, name: &str) -> Option<JsValue> {
    Reflect::get(object, &JsValue::from_str(name))
        .ok()
        .filter(|v| !v.is_undefined() && !v.is_null())
}

/// The `ip` option: a dotted IPv4 address, or absent.
fn ip_field(object: &Object) -> Result<Option<Ipv4Addr>, GuestApiError> {
    let Some(value) = field(object, "ip") else {
        return Ok(None);
    };
    value
        .as_string()
        .and_then(|text| text.parse().ok())
        .map(Some)
        .ok_or_else(|| GuestApiError::Options("ip must be a dotted IPv4 address string".into()))
}

/// A port given as a JavaScript value.
fn port_value(value: &JsValue) -> Result<u16, GuestApiError> {
    match value.as_f64() {
        Some(n) => Ok(port_number(n)?),
        None => Err(GuestApiError::Options("port must be a number".into())),
    }
}

/// The guest address of `port` with the `ip` option of `object`.
fn address(guest: &GuestHttp, port: u16, object: &Object) -> Result<SocketAddrV4, GuestApiError> {
    Ok(guest.address(port, ip_field(object)?)?)
}

impl NetProxy {
    fn guest(&self) -> Result<Rc<Inner>, GuestApiError> {
        if self.inner.closed.get() {
            return Err(GuestApiError::Closed);
        }
        Ok(self.inner.clone())
    }
}

#[wasm_bindgen]
impl NetProxy {
    /// Opens a TCP connection to a guest port: resolves to `{readable, writable}` streams of
    /// bytes; rejects when nothing listens there (refused), the guest does not answer, or no
    /// guest has a lease yet.
    #[wasm_bindgen(unchecked_return_type = "Promise<GuestConnection>")]
    pub fn connect(
        &self,
        #[wasm_bindgen(unchecked_param_type = "number")] port: JsValue,
        #[wasm_bindgen(unchecked_param_type = "GuestAddress")] options: Option<JsValue>,
    ) -> Promise {
        let prepared = self.guest().and_then(|inner| {
            let object = option_fields(&options.unwrap_or(JsValue::UNDEFINED), &["ip"])?;
            let addr = address(&inner.guest, port_value(&port)?, &object)?;
            Ok((inner, addr))
        });
        future_to_promise(async move {
            let (inner, addr) = prepared.map_err(|e| reject("connect", e))?;
            let stream = inner
                .guest
                .connect(addr)
                .await
                .map_err(|e| reject("connect", e.into()))?;
            connection(stream)
        })
    }

    /// Sends an HTTP request to a server in the guest and resolves to its `Response`, whose
    /// body streams from the guest. The request's path and query are sent (with
    /// `Host: <ip>:<port>`), its method, headers and body (streamed, chunked) too.
    #[wasm_bindgen(js_name = fetchGuest, unchecked_return_type = "Promise<GuestResponse>")]
    pub fn fetch_guest(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Request | string")] request: JsValue,
        #[wasm_bindgen(unchecked_param_type = "FetchGuestOptions")] options: JsValue,
    ) -> Promise {
        let prepared = self.guest().and_then(|inner| {
            let object = option_fields(&options, &["port", "ip", "headers"])?;
            let port = field(&object, "port")
                .ok_or_else(|| GuestApiError::Options("port is required".into()))?;
            let addr = address(&inner.guest, port_value(&port)?, &object)?;
            let mut request = request_from_js(&request)?;
            if let Some(extra) = field(&object, "headers") {
                for (name, value) in header_pairs(&extra)? {
                    request.headers_mut().insert(name, value);
                }
            }
            Ok((inner, addr, request))
        });
        future_to_promise(async move {
            let (inner, addr, request) = prepared.map_err(|e| reject("fetchGuest", e))?;
            let response = inner
                .guest
                .send(addr, request)
                .await
                .map_err(|e| reject("fetchGuest", e.into()))?;
            response_to_js(response).map_err(|e| reject("fetchGuest", e))
        })
    }

    /// Whether something in the guest listens on `port`: `true` when it answers a SYN,
    /// `false` when it refuses; rejects when the guest stays silent for `timeoutMs`.
    #[wasm_bindgen(unchecked_return_type = "Promise<boolean>")]
    pub fn probe(
        &self,
        #[wasm_bindgen(unchecked_param_type = "number")] port: JsValue,
        #[wasm_bindgen(unchecked_param_type = "ProbeOptions")] options: Option<JsValue>,
    ) -> Promise {
        let prepared = self.guest().and_then(|inner| {
            let object =
                option_fields(&options.unwrap_or(JsValue::UNDEFINED), &["ip", "timeoutMs"])?;
            let addr = address(&inner.guest, port_value(&port)?, &object)?;
            let timeout = match field(&object, "timeoutMs") {
                None => PROBE_TIMEOUT,
                Some(value) => match value.as_f64() {
                    Some(ms) if ms > 0.0 && ms <= MAX_PROBE_TIMEOUT_MS => {
                        Duration::from_millis(ms.ceil() as u64)
                    }
                    _ => {
                        return Err(GuestApiError::Options(format!(
                            "timeoutMs must be a number of 1 to {MAX_PROBE_TIMEOUT_MS}"
                        )))
                    }
                },
            };
            Ok((inner, addr, timeout))
        });
        future_to_promise(async move {
            let (inner, addr, timeout) = prepared.map_err(|e| reject("probe", e))?;
            let listening = inner
                .guest
                .probe(addr, timeout)
                .await
                .map_err(|e| reject("probe", e.into()))?;
            Ok(JsValue::from_bool(listening))
        })
    }
}

/// `{readable, writable}` over a guest connection.
fn connection(stream: TcpStream) -> Result<JsValue, JsValue> {
    let (reader, writer) = stream.split();
    let chunks = futures::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        let mut buf = vec![0u8; READ_CHUNK];
        match reader.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => Some((Ok(Uint8Array::from(&buf[..n]).into()), Some(reader))),
            Err(err) => Some((
                Err(js_sys::Error::new(&format!("guest connection: {err}")).into()),
                None,
            )),
        }
    });
    let readable = wasm_streams::ReadableStream::from_stream(chunks).into_raw();
    let writable = wasm_streams::WritableStream::from_sink(BytesSink {
        writer,
        pending: Vec::new(),
    })
    .into_raw();
    let object = Object::new();
    Reflect::set(&object, &"readable".into(), &readable)?;
    Reflect::set(&object, &"writable".into(), &writable)?;
    Ok(object.into())
}

/// The writable side of a guest connection: each `Uint8Array` chunk is written in full
/// before the next is taken; closing sends FIN.
struct BytesSink {
    writer: WriteHalf<TcpStream>,
    /// Bytes of the last chunk not yet written.
    pending: Vec<u8>,
}

impl BytesSink {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), JsValue>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.writer).poll_write(cx, &self.pending) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(js_sys::Error::new(
                        "guest connection: closed for writing",
                    )
                    .into()))
                }
                Poll::Ready(Ok(n)) => {
                    self.pending.drain(..n);
                }
                Poll::Ready(Err(err)) => {
                    return Poll::Ready(Err(js_sys::Error::new(&format!(
                        "guest connection: {err}"
                    ))
                    .into()))
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Sink<JsValue> for BytesSink {
    type Error = JsValue;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), JsValue>> {
        self.get_mut().poll_drain(cx)
    }

    fn start_send(self: Pin<&mut Self>, chunk: JsValue) -> Result<(), JsValue> {
        let bytes: Uint8Array = chunk
            .dyn_into()
            .map_err(|_| js_sys::TypeError::new("write a Uint8Array to a guest connection"))?;
        self.get_mut().pending = bytes.to_vec();
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), JsValue>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.writer)
                .poll_flush(cx)
                .map_err(|err| js_sys::Error::new(&format!("guest connection: {err}")).into()),
            other => other,
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), JsValue>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.writer)
                .poll_close(cx)
                .map_err(|err| js_sys::Error::new(&format!("guest connection: {err}")).into()),
            other => other,
        }
    }
}

/// The `http::Request` for a JS `Request` or URL string: its path and query, method,
/// headers, and body (streamed; its length is unknown, so it goes chunked).
fn request_from_js(input: &JsValue) -> Result<Request<Body>, GuestApiError> {
    let (url, method, headers, body) = if let Some(url) = input.as_string() {
        (url, Method::GET, HeaderMap::new(), Body::empty())
    } else if let Some(request) = input.dyn_ref::<web_sys::Request>() {
        if request.body_used() {
            return Err(GuestApiError::BodyUsed);
        }
        let method = Method::from_bytes(request.method().as_bytes())
            .map_err(|_| GuestApiError::InvalidRequest("method"))?;
        let body = match request.body() {
            None => Body::empty(),
            Some(raw) => {
                let stream = wasm_streams::ReadableStream::from_raw(raw)
                    .try_into_stream()
                    .map_err(|_| GuestApiError::BodyUsed)?;
                Body::from_stream(stream.map(body_chunk), None)
            }
        };
        (
            request.url(),
            method,
            headers_from_js(&request.headers()),
            body,
        )
    } else {
        return Err(GuestApiError::NotARequest);
    };
    let target = path_and_query(&url);
    let uri: Uri = target
        .parse()
        .map_err(|_| GuestApiError::InvalidRequest("URL"))?;
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(request)
}

/// The path and query of a URL, or the text itself when it is already a path.
fn path_and_query(url: &str) -> String {
    if url.starts_with('/') {
        return url.split('#').next().unwrap_or("/").to_string();
    }
    match url::Url::parse(url) {
        Ok(parsed) => match parsed.query() {
            Some(query) => format!("{}?{query}", parsed.path()),
            None => parsed.path().to_string(),
        },
        Err(_) => url.to_string(),
    }
}

/// One chunk of a JS body stream as bytes.
fn body_chunk(chunk: Result<JsValue, JsValue>) -> Result<Bytes, BodyError> {
    let chunk = chunk.map_err(|err| BodyError::new(describe(&err)))?;
    chunk
        .dyn_into::<Uint8Array>()
        .map(|bytes| Bytes::from(bytes.to_vec()))
        .map_err(|_| BodyError::new("a request body chunk is not a Uint8Array"))
}

/// The `headers` option: an array of `[name, value]` pairs or a plain object.
fn header_pairs(value: &JsValue) -> Result<Vec<(HeaderName, HeaderValue)>, GuestApiError> {
    let entries: js_sys::Array = if js_sys::Array::is_array(value) {
        value.clone().unchecked_into()
    } else if value.is_object() {
        Object::entries(value.unchecked_ref())
    } else {
        return Err(GuestApiError::Header(
            "expected an array of [name, value] pairs or an object".into(),
        ));
    };
    let mut out = Vec::new();
    for entry in entries.iter() {
        let pair = entry
            .dyn_ref::<js_sys::Array>()
            .filter(|pair| pair.length() == 2)
            .ok_or_else(|| GuestApiError::Header("each entry must be [name, value]".into()))?;
        let (Some(name), Some(value)) = (pair.get(0).as_string(), pair.get(1).as_string()) else {
            return Err(GuestApiError::Header(
                "names and values must be strings".into(),
            ));
        };
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| GuestApiError::Header(format!("{name:?} is not a header name")))?;
        let value = HeaderValue::from_str(&value)
            .map_err(|_| GuestApiError::Header(format!("the value of {name} is not valid")))?;
        out.push((name, value));
    }
    Ok(out)
}

/// A `Headers` object as a `HeaderMap` (what `http` cannot hold is left out).
fn headers_from_js(headers: &web_sys::Headers) -> HeaderMap {
    let mut map = HeaderMap::new();
    let Ok(Some(entries)) = js_sys::try_iter(headers) else {
        return map;
    };
    for entry in entries.flatten() {
        let pair: js_sys::Array = entry.unchecked_into();
        let (Some(name), Some(value)) = (pair.get(0).as_string(), pair.get(1).as_string()) else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// The guest's response as a `Response` whose body streams from the guest.
fn response_to_js(
    response: http::Response<crate::guest::GuestBody>,
) -> Result<JsValue, GuestApiError> {
    let (head, body) = response.into_parts();
    let headers = web_sys::Headers::new().map_err(|e| GuestApiError::Response(describe(&e)))?;
    let raw = js_sys::Array::new();
    for (name, value) in &head.headers {
        raw.push(&js_sys::Array::of2(
            &name.as_str().into(),
            &String::from_utf8_lossy(value.as_bytes()).as_ref().into(),
        ));
        if fetch_transport::policy::is_connection_specific(name) {
            continue;
        }
        if let Ok(value) = value.to_str() {
            // A value the browser refuses is left out rather than failing the response.
            let _ = headers.append(name.as_str(), value);
        }
    }
    let init = web_sys::ResponseInit::new();
    init.set_status(head.status.as_u16());
    init.set_status_text(head.status.canonical_reason().unwrap_or(""));
    init.set_headers_headers(&headers);
    let null_body = matches!(
        head.status,
        StatusCode::NO_CONTENT | StatusCode::RESET_CONTENT | StatusCode::NOT_MODIFIED
    );
    let stream = (!null_body && !body.is_empty()).then(|| {
        let chunks = body.map(|piece| {
            piece
                .map(|bytes| JsValue::from(Uint8Array::from(&bytes[..])))
                .map_err(|err| JsValue::from(js_sys::Error::new(&err.to_string())))
        });
        wasm_streams::ReadableStream::from_stream(chunks).into_raw()
    });
    let response = web_sys::Response::new_with_opt_readable_stream_and_init(stream.as_ref(), &init)
        .map_err(|e| GuestApiError::Response(describe(&e)))?;
    // Every header as sent, `Set-Cookie` included (a `Response` drops it).
    Reflect::set(&response, &JsValue::from_str("guestHeaders"), &raw)
        .map_err(|e| GuestApiError::Response(describe(&e)))?;
    Ok(response.into())
}
