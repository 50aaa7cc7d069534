//! The browser build's exports. This first version exposes the stack itself so a page can
//! push frames and read the replies; the full `NetProxy` API comes with the browser work.

use net_stack::{Config, Instant, Stack};
use wasm_bindgen::prelude::*;

/// The package version.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// The virtual network (ARP, ICMP, DHCP, DNS, TCP) with the original's defaults, driven by
/// the page: frames in, `poll(now)`, frames out.
#[wasm_bindgen]
pub struct NetStack {
    stack: Stack,
}

#[wasm_bindgen]
impl NetStack {
    /// A stack with the default network (192.168.127.0/24, gateway .1, proxy .253).
    #[wasm_bindgen(constructor)]
    pub fn new() -> Result<NetStack, JsError> {
        let stack = Stack::new(Config::default()).map_err(|e| JsError::new(&e.to_string()))?;
        Ok(NetStack { stack })
    }

    /// Hands one Ethernet frame from the guest to the stack.
    #[wasm_bindgen(js_name = pushFrame)]
    pub fn push_frame(&self, frame: &[u8]) {
        self.stack.push_frame(frame);
    }

    /// Processes queued frames and timers at `now_ms` (milliseconds on any monotonic clock).
    pub fn poll(&self, now_ms: f64) {
        self.stack.poll(Instant::from_millis(now_ms as i64));
    }

    /// The next frame towards the guest, if any.
    #[wasm_bindgen(js_name = popFrame)]
    pub fn pop_frame(&self) -> Option<Vec<u8>> {
        self.stack.pop_frame()
    }

    /// Milliseconds until `poll` must run again, or -1 when only new frames matter.
    #[wasm_bindgen(js_name = pollDelayMs)]
    pub fn poll_delay_ms(&self, now_ms: f64) -> f64 {
        match self.stack.poll_delay(Instant::from_millis(now_ms as i64)) {
            Some(d) => d.total_micros() as f64 / 1000.0,
            None => -1.0,
        }
    }
}
