//! The browser build: `NetProxy`, the JavaScript API (wasm-bindgen) composing net-stack,
//! http-proxy, mitm-ca and fetch-transport like the native runner does, driven by
//! `setTimeout` and by the frames JavaScript pushes in. Works in Workers, on the main thread
//! and in node; needs no SharedArrayBuffer.

mod config;
mod driver;
mod log;
mod stats;
mod time;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use fetch_transport::{FetchTransport, TransportConfig};
use futures::channel::oneshot;
use futures::future::{select, FutureExt, Shared};
use http_proxy::{Proxy, ProxyConfig};
use js_sys::{Function, Uint8Array};
use mitm_ca::{CaParams, CertificateAuthority, Clock, Issuer, IssuerConfig};
use net_stack::qemu::{DecodeError, FrameDecoder};
use net_stack::{PcapWriter, Stack};
use wasm_bindgen::prelude::*;

use crate::clock::WallClock;
use crate::services;
use config::Options;
use driver::Kick;
use time::{JsTimer, MonotonicClock};

/// Largest frame accepted from `pushStream`: Ethernet header + the largest MTU.
const MAX_FRAME: usize = 14 + 65535;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** Options of `NetProxy.create`; every field is optional. */
export interface NetProxyConfig {
  network?: {
    gatewayIp?: string; gatewayMac?: string; proxyIp?: string;
    prefixLen?: number; mtu?: number; dnsHosts?: Record<string, string>;
  };
  /** Limits and what happens when each is reached: see docs/usage.md, "Limits". */
  limits?: {
    /** TCP connections alive at once (default 256); SYNs beyond get RST. */
    maxConnections?: number;
    /** TCP socket buffer per connection and direction in bytes (default 262144; the receive side is rounded to 65535 × 2^k above 64 KiB). */
    tcpBufferBytes?: number;
    /** DHCP pool "START-END" (default "192.168.127.3-192.168.127.252"). */
    dhcpPool?: string;
    /** DNS fake-IP network "ADDR/LEN" (default "198.18.0.0/15"); full = LRU name recycled. */
    fakeIpNet?: string;
    /** Largest HTTP request head in bytes (default 65536); larger gets 431. */
    maxHeadBytes?: number;
    /** Largest HTTP request body in bytes (default 67108864); larger gets 413. */
    maxRequestBody?: number;
  };
  ca?: { certPem: string; keyPem: string };
  corsProxy?: string;
  rewrites?: { host: string; url: string }[];
  allow?: string[];
  deny?: string[];
  /** Time limit for a response head: whole seconds, or a string such as "5s", "500ms", "2m". */
  timeout?: number | string;
  /** The same in milliseconds (kept for existing pages; give one of the two). */
  timeoutMs?: number;
  keepUserAgent?: boolean;
  logLevel?: "error" | "warn" | "info" | "debug" | "trace";
}

/** A snapshot of the counters, as returned by `NetProxy.stats()`. */
export interface NetProxyStats {
  framesIn: number; framesOut: number; bytesIn: number; bytesOut: number;
  drops: {
    total: number; oversized: number; malformed: number; unsupported: number;
    notForUs: number; queueFull: number; outboundFull: number; noNeighbor: number;
    /** Frames skipped by `pushStream`'s decoder (empty or longer than the MTU allows). */
    streamFraming: number;
  };
  arpReplies: number; icmpEchoReplies: number; udpPortUnreachable: number;
  dhcp: { offers: number; acks: number; naks: number; poolExhausted: number;
          leases: { mac: string; ip: string }[] };
  dns: { queries: number; errors: number; fakeIps: number; fakeIpsRecycled: number };
  tcp: { open: number; accepted: number; refused: number; refusedLimit: number };
  proxy: {
    connectionsTotal: number; connectionsOpen: number; requests: number;
    responsesOk: number; responsesErrorStatus: number;
    errors: {
      badRequests: number; transportErrors: number; abortedResponses: number;
      /** Of badRequests: heads over limits.maxHeadBytes (431). */
      headsTooLarge: number;
      /** Bodies over limits.maxRequestBody: 413 (also in badRequests), or closed mid-response. */
      bodiesTooLarge: number;
    };
    bytesToGuest: number; bytesFromGuest: number;
  };
  capturing: boolean;
  closed: boolean;
  /** Size of the WebAssembly memory in bytes (it only grows). */
  wasmMemoryBytes: number;
  /** Bytes the module has allocated and not freed: returns to its idle value after a load. */
  heapBytes: number;
  /** The most bytes the module ever had allocated at once. */
  heapPeakBytes: number;
}
"#;

/// Why `NetProxy.create` failed.
#[derive(Debug, thiserror::Error)]
enum CreateError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("config.network: {0}")]
    Network(#[from] net_stack::ConfigError),
    #[error("transport options: {0}")]
    Transport(#[from] fetch_transport::ConfigError),
    #[error("cannot generate the CA: {0}")]
    CaGenerate(#[from] mitm_ca::CaError),
    #[error("config.ca: {0}")]
    CaImport(#[from] mitm_ca::ImportError),
    #[error("leaf issuer: {0}")]
    Issuer(#[from] mitm_ca::IssueError),
    #[error("cannot listen on the virtual network: {0}")]
    Listen(#[from] net_stack::ListenError),
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

/// Everything a `NetProxy` and its tasks share.
struct Inner {
    stack: Stack,
    proxy: Rc<Proxy>,
    ca_pem: String,
    clock: MonotonicClock,
    on_frame: RefCell<Option<Function>>,
    on_stream: RefCell<Option<Function>>,
    decoder: RefCell<FrameDecoder>,
    kick: Kick,
    /// Dropped on `close`, which ends every task waiting on `stopped`.
    stop: RefCell<Option<oneshot::Sender<()>>>,
    stopped: Shared<oneshot::Receiver<()>>,
    capture: RefCell<Option<CaptureBuf>>,
    closed: Cell<bool>,
}

impl Inner {
    /// Spawns `task` on the page's event loop; it is dropped when the proxy closes.
    fn spawn(&self, task: futures::future::LocalBoxFuture<'static, ()>) {
        let stopped = self.stopped.clone();
        wasm_bindgen_futures::spawn_local(async move {
            select(task, stopped).await;
        });
    }

    /// Hands every frame the stack queued to the callbacks.
    fn deliver(&self, framed: &mut Vec<u8>) {
        let on_frame = self.on_frame.borrow().clone();
        let on_stream = self.on_stream.borrow().clone();
        framed.clear();
        while let Some(frame) = self.stack.pop_frame() {
            if let Some(callback) = &on_frame {
                let bytes = Uint8Array::from(frame.as_slice());
                if let Err(err) = callback.call1(&JsValue::NULL, &bytes) {
                    tracing::warn!(error = ?err, "the onFrame callback threw");
                }
            }
            if on_stream.is_some() {
                net_stack::qemu::encode_frame(&frame, framed);
            }
        }
        if let (Some(callback), false) = (&on_stream, framed.is_empty()) {
            let bytes = Uint8Array::from(framed.as_slice());
            if let Err(err) = callback.call1(&JsValue::NULL, &bytes) {
                tracing::warn!(error = ?err, "the onStream callback threw");
            }
        }
    }

    fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        // Ends the driver, the accept loops and every connection task.
        self.stop.borrow_mut().take();
        self.kick.kick();
        self.on_frame.borrow_mut().take();
        self.on_stream.borrow_mut().take();
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
/// browser's `fetch()` as the way out.
#[wasm_bindgen]
pub struct NetProxy {
    inner: Rc<Inner>,
}

#[wasm_bindgen]
impl NetProxy {
    /// Creates and starts a proxy; rejects with an Error naming the bad option.
    pub async fn create(
        #[wasm_bindgen(unchecked_param_type = "NetProxyConfig")] config: Option<JsValue>,
    ) -> Result<NetProxy, JsError> {
        build(&config.unwrap_or(JsValue::UNDEFINED))
            .map_err(|e| js_error(format!("NetProxy.create: {e}")))
    }

    /// The CA certificate (PEM) the guest must trust for HTTPS.
    #[wasm_bindgen(js_name = caCertificatePem)]
    pub fn ca_certificate_pem(&self) -> String {
        self.inner.ca_pem.clone()
    }

    /// Hands one Ethernet frame from the guest to the stack.
    #[wasm_bindgen(js_name = pushFrame)]
    pub fn push_frame(&self, frame: &[u8]) -> Result<(), JsError> {
        self.inner.check_open().map_err(js_error)?;
        self.inner.stack.push_frame(frame);
        self.inner.kick.kick();
        Ok(())
    }

    /// Sets the callback that receives each Ethernet frame towards the guest.
    #[wasm_bindgen(js_name = onFrame)]
    pub fn on_frame(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(frame: Uint8Array) => void")] callback: Function,
    ) {
        *self.inner.on_frame.borrow_mut() = Some(callback);
    }

    /// Hands bytes of a QEMU stream (u32 big-endian length + frame, any chunking) to the stack.
    #[wasm_bindgen(js_name = pushStream)]
    pub fn push_stream(&self, bytes: &[u8]) -> Result<(), JsError> {
        self.inner.check_open().map_err(js_error)?;
        let mut decoder = self.inner.decoder.borrow_mut();
        decoder.push(bytes);
        let mut pushed = false;
        let result = loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    self.inner.stack.push_frame(&frame);
                    pushed = true;
                }
                Ok(None) => break Ok(()),
                Err(err) => break Err(js_error(UseError::Framing(err))),
            }
        };
        if pushed {
            self.inner.kick.kick();
        }
        result
    }

    /// Sets the callback that receives QEMU-framed bytes towards the guest.
    #[wasm_bindgen(js_name = onStream)]
    pub fn on_stream(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(bytes: Uint8Array) => void")] callback: Function,
    ) {
        *self.inner.on_stream.borrow_mut() = Some(callback);
    }

    /// A snapshot of the counters as a plain object (see `NetProxyStats`).
    #[wasm_bindgen(unchecked_return_type = "NetProxyStats")]
    pub fn stats(&self) -> JsValue {
        let inner = &self.inner;
        stats::to_js(&stats::Snapshot {
            stack: inner.stack.stats(),
            leases: inner.stack.leases(),
            proxy: inner.proxy.stats(),
            stream_dropped: inner.decoder.borrow().dropped(),
            capturing: inner.capture.borrow().is_some(),
            closed: inner.closed.get(),
        })
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
        self.inner.stack.set_frame_observer(Some(Box::new(writer)));
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
        self.inner.stack.set_frame_observer(None);
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

fn transport_config(options: &Options) -> Result<TransportConfig, fetch_transport::ConfigError> {
    let mut builder = TransportConfig::builder()
        .keep_user_agent(options.keep_user_agent)
        .max_request_body(options.limits.max_request_body());
    if let Some(proxy) = &options.cors_proxy {
        builder = builder.cors_proxy(proxy.as_str());
    }
    for rule in &options.rewrites {
        builder = builder.rewrite(rule.host.as_str(), rule.url.as_str());
    }
    for pattern in &options.allow {
        builder = builder.allow(pattern.as_str());
    }
    for pattern in &options.deny {
        builder = builder.deny(pattern.as_str());
    }
    if let Some(timeout) = options.timeout {
        builder = builder.timeout(timeout);
    }
    builder.build()
}

fn build(config: &JsValue) -> Result<NetProxy, CreateError> {
    let options = config::parse(config)?;
    log::init(options.log_level.unwrap_or(log::Level::Warn));

    let mut stack_config = config::stack_config(&options.network);
    options.limits.apply_to_stack(&mut stack_config);
    let proxy_ip = stack_config.virtual_ips[0];
    let stack = Stack::new(stack_config)?;
    let transport = FetchTransport::new(transport_config(&options)?);

    let clock: Arc<dyn Clock> = Arc::new(WallClock);
    let ca = match &options.ca {
        Some(ca) => CertificateAuthority::from_pem(&ca.cert_pem, &ca.key_pem, clock.as_ref())?,
        None => CertificateAuthority::generate(&CaParams::default(), clock.as_ref())?,
    };
    let ca_pem = ca.certificate_pem();
    tracing::info!(subject = ca.subject(), "CA ready");
    let issuer = Arc::new(Issuer::new(ca, IssuerConfig::default(), clock)?);

    let proxy_config = ProxyConfig {
        limits: options.limits.proxy_limits(),
        own_hosts: vec![proxy_ip.to_string(), "proxy.c2w.internal".into()],
        ..ProxyConfig::default()
    };
    let proxy = Proxy::new(proxy_config, Rc::new(transport), Rc::new(JsTimer));
    let proxy = Rc::new(proxy.with_issuer(issuer));

    let (stop, stopped) = oneshot::channel();
    let inner = Rc::new(Inner {
        stack: stack.clone(),
        proxy: proxy.clone(),
        ca_pem,
        clock: MonotonicClock::new(),
        on_frame: RefCell::new(None),
        on_stream: RefCell::new(None),
        decoder: RefCell::new(FrameDecoder::new(MAX_FRAME)),
        kick: Kick::default(),
        stop: RefCell::new(Some(stop)),
        stopped: stopped.shared(),
        capture: RefCell::new(None),
        closed: Cell::new(false),
    });
    // The spawner holds only a weak reference: tasks must not keep the proxy alive.
    let weak = Rc::downgrade(&inner);
    let spawner: services::Spawner = Rc::new(move |task| {
        if let Some(inner) = weak.upgrade() {
            inner.spawn(task);
        }
    });
    services::start(&stack, proxy, proxy_ip, spawner)?;
    inner.spawn(Box::pin(driver::drive(inner.clone())));
    tracing::info!(%proxy_ip, "NetProxy started");
    Ok(NetProxy { inner })
}
