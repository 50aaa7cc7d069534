// stack-worker.js: a drop-in replacement for container2wasm's proxy worker, running
// c2w-net-proxy (Rust, wasm-bindgen) instead of the Go/WASI build. Loaded by the page as a
// CLASSIC worker: new Worker("./stack-worker.js" + location.search). The page's main thread
// (container2wasm's stack.js) relays between this worker and the VM worker over a
// SharedArrayBuffer: Int32 ctrl at byte 0, Int32 status at 4, Int32 len at 8, 4096 data bytes
// from 12. A request: store ctrl = 0, postMessage it, wait until ctrl != 0 (in a loop: a late
// notify of the previous answer can wake a single wait early), status < 0 = error.
//
// Options can ride on the worker URL's query (the page passes its own location.search):
//   proxy-allow=PATTERN, proxy-deny=PATTERN (repeatable), proxy-cors=URL,
//   proxy-timeout=5s (or seconds; proxy-timeout-ms=N also works), proxy-log=error|warn|info|debug|trace,
//   limits (docs/usage.md "Limits"): proxy-max-connections=N, proxy-tcp-buffer=BYTES,
//   proxy-dhcp-pool=START-END, proxy-fake-ip-net=ADDR/LEN, proxy-max-head-bytes=BYTES,
//   proxy-max-request-body=BYTES
// Other parameters (net=browser, ...) are the page's and are ignored.
"use strict";

// The wasm-bindgen glue's source, embedded by `cargo xtask build-wasm` so the package's
// worker is self-contained; null in the source tree, then ./c2w_net_proxy.js is imported.
const EMBEDDED_GLUE = /* @embedded-glue */ null;

const DATA_SIZE = 4096;
// Unread bytes we let sit in the relay towards the VM: stack.js copies its whole unread
// buffer on every send and recv, so a larger backlog slows everything down.
const MAX_UNREAD = 64 * 1024;
// With no sign of the VM reading (no TCP ACK covering what we sent) for this long while the
// budget is exhausted, assume it drained (non-TCP traffic, lost ACKs).
const STALL_MS = 200;
// recv requests per relay round at most (64 KiB) before giving the event loop a turn.
const RECV_ROUNDS = 16;
// Idle polling of the relay backs off from 1 ms to this (the relay cannot notify us).
const IDLE_MAX_MS = 10;
// Without Atomics.waitAsync, one blocking wait lasts at most this long before the worker
// yields to its event loop (fetch() responses are delivered there).
const SYNC_WAIT_MS = 2;
const MAX_FRAME = 65536;

let started = false;

self.onmessage = (msg) => {
  const req = msg.data;
  if (!req || req.type !== "init" || started) return;
  started = true;
  run(req.buf, req.imagename).catch((err) => {
    console.error("stack-worker: stopped: " + ((err && err.stack) || err));
  });
};

// ---- the relay protocol -------------------------------------------------------------------

class Relay {
  constructor(buf) {
    this.ctrl = new Int32Array(buf, 0, 1);
    this.status = new Int32Array(buf, 4, 1);
    this.len = new Int32Array(buf, 8, 1);
    this.data = new Uint8Array(buf, 12);
    this.waitAsync = typeof Atomics.waitAsync === "function";
  }

  // Sends one request and resolves with the status once the main thread answered.
  async request(msg) {
    Atomics.store(this.ctrl, 0, 0);
    postMessage(msg);
    while (Atomics.load(this.ctrl, 0) === 0) {
      if (this.waitAsync) {
        // Does not block: the event loop (fetch responses, the proxy's timers) keeps running.
        const result = Atomics.waitAsync(this.ctrl, 0, 0, 1000);
        if (result.async) await result.value;
      } else {
        // Firefox: blocking wait in short slices, with an event-loop turn between them.
        Atomics.wait(this.ctrl, 0, 0, SYNC_WAIT_MS);
        if (Atomics.load(this.ctrl, 0) === 0) await nextTask();
      }
    }
    return Atomics.load(this.status, 0);
  }

  async sendCert(pem) {
    if (pem.length > DATA_SIZE) {
      throw new Error(`the CA certificate is ${pem.length} bytes; the relay takes at most ${DATA_SIZE}`);
    }
    if ((await this.request({ type: "send_cert", buf: pem })) < 0) {
      throw new Error("the page refused send_cert");
    }
  }

  async accept() {
    const status = await this.request({ type: "accept" });
    return status >= 0 && this.data[0] === 1;
  }

  async send(bytes) {
    if ((await this.request({ type: "send", buf: bytes })) < 0) {
      throw new Error("the page refused send (VM side not connected)");
    }
  }

  async readable() {
    const status = await this.request({ type: "recv-is-readable", timeout: 0 });
    return status >= 0 && this.data[0] === 1;
  }

  async recv() {
    if ((await this.request({ type: "recv", len: DATA_SIZE })) < 0) {
      throw new Error("the page refused recv");
    }
    const n = Math.min(Math.max(this.len[0], 0), DATA_SIZE);
    return this.data.slice(0, n);
  }
}

// ---- event-loop helpers -------------------------------------------------------------------

const channel = new MessageChannel();
const queued = [];
channel.port1.onmessage = () => queued.shift()();

// Resolves on the next event-loop task (no 4 ms clamp, unlike nested setTimeout).
function nextTask() {
  return new Promise((resolve) => {
    queued.push(resolve);
    channel.port2.postMessage(0);
  });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---- what the VM has read: TCP ACKs for what we handed over ---------------------------------

function ipv4Tcp(frame) {
  if (frame.length < 54 || frame[12] !== 0x08 || frame[13] !== 0x00 || frame[23] !== 6) return null;
  const ihl = (frame[14] & 0x0f) * 4;
  const tcp = 14 + ihl;
  if (frame.length < tcp + 20) return null;
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  return {
    src: view.getUint32(26) + ":" + view.getUint16(tcp),
    dst: view.getUint32(30) + ":" + view.getUint16(tcp + 2),
    seq: view.getUint32(tcp + 4),
    ack: view.getUint32(tcp + 8),
    flags: frame[tcp + 13],
    payload: view.getUint16(16) - ihl - (frame[tcp + 12] >> 4) * 4,
  };
}

// Estimates the bytes handed to the relay that the VM has not read yet. The relay is FIFO,
// so once the guest ACKs a segment, everything handed over before it was read.
class Backlog {
  constructor() {
    this.sent = 0; // stream bytes handed to the relay
    this.consumed = 0; // of which the VM has read at least this many
    this.records = []; // {key, seqEnd, end}: a TCP segment and its stream end offset
    this.progressAt = performance.now();
  }

  unread() {
    return this.sent - this.consumed;
  }

  // A frame of `size` stream bytes (prefix included) handed to the relay.
  handed(frame, size) {
    this.sent += size;
    const tcp = ipv4Tcp(frame);
    if (!tcp) return;
    const length = Math.max(tcp.payload, 0) + (tcp.flags & 0x02 ? 1 : 0) + (tcp.flags & 0x01 ? 1 : 0);
    if (length === 0) return;
    this.records.push({ key: tcp.src + ">" + tcp.dst, seqEnd: (tcp.seq + length) >>> 0, end: this.sent });
  }

  // A frame from the VM: its ACK tells what the guest received.
  fromVm(frame) {
    const tcp = ipv4Tcp(frame);
    if (!tcp || !(tcp.flags & 0x10)) return;
    const key = tcp.dst + ">" + tcp.src;
    for (const r of this.records) {
      if (r.key === key && ((tcp.ack - r.seqEnd) | 0) >= 0 && r.end > this.consumed) {
        this.consumed = r.end;
        this.progressAt = performance.now();
      }
    }
    while (this.records.length && this.records[0].end <= this.consumed) this.records.shift();
  }

  // Room for `size` more bytes? Falls back to "drained" after STALL_MS without progress.
  fits(size) {
    if (this.unread() === 0) this.progressAt = performance.now();
    if (this.unread() + size <= MAX_UNREAD) return true;
    if (performance.now() - this.progressAt > STALL_MS) {
      this.consumed = this.sent;
      this.records = [];
      this.progressAt = performance.now();
      return true;
    }
    return false;
  }
}

// ---- the worker -----------------------------------------------------------------------------

async function loadGlue() {
  if (EMBEDDED_GLUE === null) return import("./c2w_net_proxy.js");
  const url = URL.createObjectURL(new Blob([EMBEDDED_GLUE], { type: "text/javascript" }));
  try {
    return await import(url);
  } finally {
    URL.revokeObjectURL(url);
  }
}

function configFromQuery() {
  const query = new URLSearchParams(self.location.search);
  const config = {};
  const allow = query.getAll("proxy-allow");
  const deny = query.getAll("proxy-deny");
  if (allow.length) config.allow = allow;
  if (deny.length) config.deny = deny;
  if (query.has("proxy-cors")) config.corsProxy = query.get("proxy-cors");
  if (query.has("proxy-timeout")) config.timeout = query.get("proxy-timeout");
  if (query.has("proxy-timeout-ms")) config.timeoutMs = Number(query.get("proxy-timeout-ms"));
  if (query.has("proxy-log")) config.logLevel = query.get("proxy-log");
  // Numbers go through Number(): a malformed one becomes NaN, which create() refuses by name.
  const limits = {};
  for (const [param, key, number] of [
    ["proxy-max-connections", "maxConnections", true],
    ["proxy-tcp-buffer", "tcpBufferBytes", true],
    ["proxy-dhcp-pool", "dhcpPool", false],
    ["proxy-fake-ip-net", "fakeIpNet", false],
    ["proxy-max-head-bytes", "maxHeadBytes", true],
    ["proxy-max-request-body", "maxRequestBody", true],
  ]) {
    if (query.has(param)) limits[key] = number ? Number(query.get(param)) : query.get(param);
  }
  if (Object.keys(limits).length) config.limits = limits;
  // A Wisp relay: relay=ws://host:port/ plus optional settings (docs/usage.md, "Relay").
  if (query.has("relay")) {
    const relay = { url: query.get("relay") };
    if (query.has("relay-version")) relay.version = query.get("relay-version");
    if (query.has("relay-http")) relay.http = query.get("relay-http");
    if (query.has("relay-no-udp")) relay.udp = false;
    const only = query.getAll("relay-only");
    const fetchOnly = query.getAll("relay-fetch-only");
    if (only.length) relay.relayOnly = only;
    if (fetchOnly.length) relay.fetchOnly = fetchOnly;
    const hosts = {};
    for (const entry of query.getAll("relay-host")) {
      const at = entry.indexOf("=");
      // A malformed entry keeps an empty target, which create() refuses by name.
      hosts[at < 0 ? entry : entry.slice(0, at)] = at < 0 ? "" : entry.slice(at + 1);
    }
    if (Object.keys(hosts).length) relay.hosts = hosts;
    config.relay = relay;
  }
  return config;
}

async function run(buf, imagename) {
  const relay = new Relay(buf);
  const glue = await loadGlue();
  await glue.default({ module_or_path: imagename });
  const proxy = await glue.NetProxy.create(configFromQuery());
  self.netProxy = proxy; // for debugging from the worker's console

  // The VM worker waits for the certificate before it starts: always first.
  await relay.sendCert(new TextEncoder().encode(proxy.caCertificatePem()));
  while (!(await relay.accept())) await sleep(10);
  console.info("stack-worker: c2w-net-proxy " + glue.version() + " relaying to the VM");

  const toVm = []; // frames for the VM not yet handed to the relay
  let toVmHead = 0;
  proxy.onFrame((frame) => toVm.push(frame));
  const backlog = new Backlog();
  let fromVm = new Uint8Array(0);
  let idleMs = 1;

  for (;;) {
    let busy = false;
    let blocked = false;

    // From the VM: drain what the relay holds, frame by frame into the stack.
    if (await relay.readable()) {
      for (let i = 0; i < RECV_ROUNDS; i++) {
        const chunk = await relay.recv();
        if (chunk.length === 0) break;
        busy = true;
        const joined = new Uint8Array(fromVm.length + chunk.length);
        joined.set(fromVm);
        joined.set(chunk, fromVm.length);
        let at = 0;
        const view = new DataView(joined.buffer);
        while (joined.length - at >= 4) {
          const len = view.getUint32(at);
          if (len > MAX_FRAME) throw new Error(`the VM stream lost its framing (length ${len})`);
          if (joined.length - at - 4 < len) break;
          const frame = joined.subarray(at + 4, at + 4 + len);
          at += 4 + len;
          if (len === 0) continue;
          backlog.fromVm(frame);
          proxy.pushFrame(frame);
        }
        fromVm = joined.slice(at);
        if (chunk.length < DATA_SIZE) break;
      }
    }

    // Let the proxy's driver run (it is a microtask away) before collecting its output.
    if (busy) await nextTask();

    // To the VM: as much as the backlog budget allows, in one send.
    if (toVmHead < toVm.length) {
      const batch = [];
      let size = 0;
      while (toVmHead < toVm.length) {
        const frame = toVm[toVmHead];
        // With nothing unread, one batch always goes (a frame may exceed MAX_UNREAD at a
        // large MTU); otherwise only what the budget allows.
        const first = batch.length === 0 && backlog.unread() === 0;
        if (!first && !backlog.fits(size + 4 + frame.length)) {
          blocked = true;
          break;
        }
        batch.push(frame);
        size += 4 + frame.length;
        toVmHead++;
      }
      if (batch.length) {
        const out = new Uint8Array(size);
        const view = new DataView(out.buffer);
        let at = 0;
        for (const frame of batch) {
          view.setUint32(at, frame.length);
          out.set(frame, at + 4);
          backlog.handed(frame, 4 + frame.length);
          at += 4 + frame.length;
        }
        await relay.send(out);
        busy = true;
      }
      if (toVmHead === toVm.length) {
        toVm.length = 0;
        toVmHead = 0;
      } else if (toVmHead > 1024) {
        toVm.splice(0, toVmHead);
        toVmHead = 0;
      }
    }

    if (busy) {
      idleMs = 1;
      await nextTask();
    } else if (blocked) {
      // Waiting for the VM to read (its ACKs): poll again soon, without backing off.
      idleMs = 1;
      await sleep(1);
    } else {
      await sleep(idleMs);
      idleMs = Math.min(idleMs * 2, IDLE_MAX_MS);
    }
  }
}
