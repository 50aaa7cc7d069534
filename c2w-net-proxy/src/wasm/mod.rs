//! The browser adapter: `NetProxy`, the JavaScript API (wasm-bindgen). The options come from
//! the `NetProxyConfig` object, the system from [`compose`], the frames through a [`JsLink`]
//! run by the shared driver on the page's event loop ([`BrowserRuntime`]). Works in Workers,
//! on the main thread and in node; needs no SharedArrayBuffer.

mod guest;
mod link;
mod log;
mod runtime;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use fetch_transport::relay::BrowserDialer;
use fetch_transport::FetchTransport;
use futures::channel::oneshot;
use js_sys::Function;
use net_stack::qemu::{DecodeError, FrameDecoder};
use net_stack::PcapWriter;
use serde::Serialize;
use tsify::Tsify;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::compose::{compose, ComposeError, Platform, System};
use crate::guest::{GuestConfig, GuestHttp};
use crate::link::MAX_FRAME;
use crate::options::{LogLevel, Options, OptionsError, Tree};
use crate::runtime::Runtime;
use crate::stats::{Extra, Stats};
use link::{JsLink, JsPort};
use runtime::BrowserRuntime;

/// `NetProxy.stats()`: the counters every front end reports, and the wasm module's memory.
#[derive(Serialize, Tsify)]
#[serde(rename_all = "camelCase")]
#[tsify(rename = "NetProxyStats")]
struct BrowserStats {
    #[serde(flatten)]
    stats: Stats,
    /// Size of the WebAssembly memory in bytes (it only grows).
    wasm_memory_bytes: u64,
    /// Bytes the module has allocated and not freed: returns to its idle value after a load.
    heap_bytes: u64,
    /// The most bytes the module ever had allocated at once.
    heap_peak_bytes: u64,
}

/// Why a call on a `NetProxy` failed.
#[derive(Debug, thiserror::Error)]
enum UseError {
    #[error("NetProxy is closed")]
    Closed,
    #[error("pushStream: {0}")]
    Framing(#[from] DecodeError),
    #[error("startCapture: a capture is already running (call stopCapture first)")]
    CaptureRunning,
    #[error("stopCapture: no capture is running (call startCapture first)")]
    NoCapture,
    #[error("capture: {0}")]
    Capture(#[from] std::io::Error),
}

fn js_error(err: impl std::fmt::Display) -> JsError {
    JsError::new(&err.to_string())
}

/// The pcap bytes being captured, shared between the stack's observer and `stopCapture`.
#[derive(Clone, Default)]
struct CaptureBuf(Rc<RefCell<Vec<u8>>>);

impl std::io::Write for CaptureBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything a `NetProxy` holds.
struct Inner {
    system: System,
    port: Rc<JsPort>,
    decoder: RefCell<FrameDecoder>,
    /// Dropped on `close`, which ends the driver, the accept loops and every connection.
    stop: RefCell<Option<oneshot::Sender<()>>>,
    capture: RefCell<Option<CaptureBuf>>,
    closed: Cell<bool>,
    /// Connections and HTTP requests into the guest (`connect`, `fetchGuest`, `probe`).
    guest: GuestHttp,
}

impl Inner {
    fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        self.stop.borrow_mut().take();
        self.port.close();
        tracing::info!("NetProxy closed");
    }

    fn check_open(&self) -> Result<(), UseError> {
        if self.closed.get() {
            Err(UseError::Closed)
        } else {
            Ok(())
        }
    }
}

/// The virtual network (DHCP, DNS, TCP/IP) and HTTP(S) proxy behind an emulated NIC, with the
/// browser's `fetch()` as the way out (and, when `config.relay` is set, a Wisp relay over the
/// page's own `WebSocket` for raw TCP, UDP and CONNECT tunnels).
#[wasm_bindgen]
pub struct NetProxy {
    inner: Rc<Inner>,
}

#[wasm_bindgen]
impl NetProxy {
    /// Creates and starts a proxy; rejects with an Error naming the bad option.
    pub async fn create(
        #[wasm_bindgen(unchecked_param_type = "NetProxyConfig & NetProxyHooks")] config: Option<
            JsValue,
        >,
    ) -> Result<NetProxy, JsError> {
        build(&config.unwrap_or(JsValue::UNDEFINED))
            .map_err(|e| js_error(format!("NetProxy.create: {e}")))
    }

    /// The CA certificate (PEM) the guest must trust for HTTPS.
    #[wasm_bindgen(js_name = caCertificatePem)]
    pub fn ca_certificate_pem(&self) -> String {
        self.inner.system.ca_pem.clone()
    }

    /// Hands one Ethernet frame from the guest to the stack.
    #[wasm_bindgen(js_name = pushFrame)]
    pub fn push_frame(&self, frame: Vec<u8>) -> Result<(), JsError> {
        self.inner.check_open().map_err(js_error)?;
        self.inner.port.push(frame);
        Ok(())
    }

    /// Sets the callback that receives each Ethernet frame towards the guest.
    #[wasm_bindgen(js_name = onFrame)]
    pub fn on_frame(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(frame: Uint8Array) => void")] callback: Function,
    ) {
        self.inner.port.set_on_frame(callback);
    }

    /// Hands bytes of a QEMU stream (u32 big-endian length + frame, any chunking) to the stack.
    #[wasm_bindgen(js_name = pushStream)]
    pub fn push_stream(&self, bytes: &[u8]) -> Result<(), JsError> {
        self.inner.check_open().map_err(js_error)?;
        let mut decoder = self.inner.decoder.borrow_mut();
        decoder.push(bytes);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => self.inner.port.push(frame),
                Ok(None) => return Ok(()),
                Err(err) => return Err(js_error(UseError::Framing(err))),
            }
        }
    }

    /// Sets the callback that receives QEMU-framed bytes towards the guest.
    #[wasm_bindgen(js_name = onStream)]
    pub fn on_stream(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(bytes: Uint8Array) => void")] callback: Function,
    ) {
        self.inner.port.set_on_stream(callback);
    }

    /// A snapshot of the counters as a plain object (see `NetProxyStats`).
    #[wasm_bindgen(unchecked_return_type = "NetProxyStats")]
    pub fn stats(&self) -> JsValue {
        let inner = &self.inner;
        let stats = BrowserStats {
            stats: Stats::gather(
                &inner.system,
                Extra {
                    stream_dropped: inner.decoder.borrow().dropped(),
                    inbox_dropped: inner.port.dropped(),
                    capturing: inner.capture.borrow().is_some(),
                    closed: inner.closed.get(),
                },
            ),
            wasm_memory_bytes: wasm_memory_bytes(),
            heap_bytes: crate::heap::HEAP.live_bytes() as u64,
            heap_peak_bytes: crate::heap::HEAP.peak_bytes() as u64,
        };
        // Through JSON text, parsed by the engine: plain numbers, strings and objects.
        serde_json::to_string(&stats)
            .ok()
            .and_then(|text| js_sys::JSON::parse(&text).ok())
            .unwrap_or(JsValue::UNDEFINED)
    }

    /// Starts recording every frame both ways as pcap (LINKTYPE_ETHERNET), in memory.
    #[wasm_bindgen(js_name = startCapture)]
    pub fn start_capture(&self) -> Result<(), JsError> {
        self.inner.check_open().map_err(js_error)?;
        let mut capture = self.inner.capture.borrow_mut();
        if capture.is_some() {
            return Err(js_error(UseError::CaptureRunning));
        }
        let buf = CaptureBuf::default();
        let writer = PcapWriter::new(buf.clone()).map_err(|e| js_error(UseError::Capture(e)))?;
        self.inner
            .system
            .stack
            .set_frame_observer(Some(Box::new(writer)));
        *capture = Some(buf);
        Ok(())
    }

    /// Stops the capture and returns the pcap file's bytes (open them in Wireshark).
    #[wasm_bindgen(js_name = stopCapture)]
    pub fn stop_capture(&self) -> Result<Vec<u8>, JsError> {
        let buf = self
            .inner
            .capture
            .borrow_mut()
            .take()
            .ok_or_else(|| js_error(UseError::NoCapture))?;
        self.inner.system.stack.set_frame_observer(None);
        let bytes = std::mem::take(&mut *buf.0.borrow_mut());
        Ok(bytes)
    }

    /// Stops the driver and every connection; later pushes throw, `close` again does nothing.
    pub fn close(&self) {
        self.inner.close();
    }
}

impl Drop for NetProxy {
    fn drop(&mut self) {
        self.inner.close();
    }
}

/// The package version.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// The size of this module's WebAssembly memory in bytes.
fn wasm_memory_bytes() -> u64 {
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    let buffer = memory.buffer();
    js_sys::Reflect::get(&buffer, &JsValue::from_str("byteLength"))
        .ok()
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0) as u64
}

/// `NetProxyConfig` keys that hold JavaScript functions: taken by [`hooks`], not options.
const HOOK_KEYS: &[&str] = &["fetch"];

/// The functions a page may pass with its options (`NetProxyHooks` in the .d.ts).
#[derive(Default)]
struct Hooks {
    /// Called instead of the global `fetch()`: `(request: Request) => Promise<Response>`.
    fetch: Option<Function>,
}

#[wasm_bindgen(typescript_custom_section)]
const HOOKS_TS: &str = r#"
/** Functions a page may pass to `NetProxy.create` beside its options. */
export interface NetProxyHooks {
    /**
     * Called instead of the global `fetch()` for every request the proxy sends by fetch, with a
     * `Request` (cors mode, credentials omitted, redirects followed); must give a `Response`
     * or a promise of one. The header policy, limits, timeouts and streaming stay the same.
     */
    fetch?: (request: Request) => Response | Promise<Response>;
}
"#;

/// Reads the hooks (functions) from the `NetProxyConfig` object.
fn hooks(config: &JsValue) -> Result<Hooks, OptionsError> {
    if !config.is_object() {
        return Ok(Hooks::default());
    }
    let fetch = js_sys::Reflect::get(config, &JsValue::from_str("fetch")).unwrap_or_default();
    let fetch = match fetch.dyn_into::<Function>() {
        Ok(function) => Some(function),
        Err(value) if value.is_undefined() || value.is_null() => None,
        Err(_) => {
            return Err(OptionsError {
                path: "fetch".into(),
                reason: "expected a function (request) => Response | Promise<Response>".into(),
            })
        }
    };
    Ok(Hooks { fetch })
}

/// The options object as a [`Tree`]: every key kept (unknown options are refused by name
/// later) except the top level's [`HOOK_KEYS`], `undefined` as absent, and what JSON cannot
/// hold refused by path.
fn tree(value: &JsValue, path: &str) -> Result<Tree, OptionsError> {
    let refuse = |reason: &str| OptionsError {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if value.is_undefined() || value.is_null() {
        return Ok(Tree::Null);
    }
    if let Some(b) = value.as_bool() {
        return Ok(Tree::Bool(b));
    }
    if let Some(n) = value.as_f64() {
        return match n.is_finite() {
            true => Ok(Tree::Number(n)),
            false => Err(refuse("not a finite number (NaN or Infinity)")),
        };
    }
    if let Some(s) = value.as_string() {
        return Ok(Tree::String(s));
    }
    if js_sys::Array::is_array(value) {
        let array: &js_sys::Array = value.unchecked_ref();
        return array
            .iter()
            .enumerate()
            .map(|(i, item)| tree(&item, &format!("{path}[{i}]")))
            .collect::<Result<_, _>>()
            .map(Tree::Array);
    }
    if value.is_function() || value.is_symbol() || value.is_bigint() || !value.is_object() {
        return Err(refuse(
            "expected a string, number, boolean, array or object",
        ));
    }
    let object: &js_sys::Object = value.unchecked_ref();
    js_sys::Object::entries(object)
        .iter()
        .map(|entry| {
            let entry: js_sys::Array = entry.unchecked_into();
            let key = entry.get(0).as_string().unwrap_or_default();
            if path.is_empty() && HOOK_KEYS.contains(&key.as_str()) {
                return Ok(None);
            }
            let at = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            Ok(Some((key, tree(&entry.get(1), &at)?)))
        })
        .filter_map(Result::transpose)
        .collect::<Result<_, _>>()
        .map(Tree::Object)
}

/// Reads the `NetProxyConfig` object (`undefined`/`null` = all defaults).
fn options(config: &JsValue) -> Result<Options, OptionsError> {
    if config.is_undefined() || config.is_null() {
        return Ok(Options::default());
    }
    if !config.is_object() || js_sys::Array::is_array(config) {
        return Err(OptionsError {
            path: String::new(),
            reason: "expected an object".into(),
        });
    }
    Options::from_tree(tree(config, "")?)
}

fn build(config: &JsValue) -> Result<NetProxy, ComposeError> {
    let options = options(config)?;
    let hooks = hooks(config)?;
    log::init(options.log_level.unwrap_or(LogLevel::Warn));
    let (runtime, stop) = BrowserRuntime::new();
    let runtime: Rc<dyn Runtime> = Rc::new(runtime);
    let timer = runtime.timer();
    let dialer = Rc::new(BrowserDialer::new(timer.clone()));
    let system = compose(
        &options,
        Platform {
            runtime: runtime.clone(),
            transport: Box::new(move |config| {
                let transport = FetchTransport::new(config, timer);
                Ok(Rc::new(match hooks.fetch {
                    Some(fetch) => transport.with_fetch(fetch),
                    None => transport,
                }))
            }),
            // fetch() holds request bodies whole: the proxy refuses larger ones early (413 on
            // Content-Length, before reading anything).
            default_max_request_body: Some(fetch_transport::DEFAULT_MAX_REQUEST_BODY),
            // The relay's WebSocket is the page's (or worker's) own.
            dialer: Some(dialer),
            // The guest's WebSockets use the same page WebSocket (the proxy bounds messages).
            websocket_dialer: None,
        },
    )?;
    let port = Rc::new(JsPort::default());
    let stack = system.stack.clone();
    let proxy_ip = system.proxy_ip;
    let inner = Rc::new(Inner {
        system,
        port: port.clone(),
        decoder: RefCell::new(FrameDecoder::new(MAX_FRAME)),
        stop: RefCell::new(Some(stop)),
        capture: RefCell::new(None),
        closed: Cell::new(false),
        guest: GuestHttp::new(stack.clone(), runtime.clone(), GuestConfig::default()),
    });
    let driver_runtime = runtime.clone();
    runtime.spawn(Box::pin(async move {
        let mut link = JsLink::new(port);
        if let Err(err) = crate::driver::run(&stack, driver_runtime.as_ref(), &mut link, None).await
        {
            tracing::warn!(error = %err, "the frame link failed");
        }
    }));
    tracing::info!(%proxy_ip, "NetProxy started");
    Ok(NetProxy { inner })
}
