// The synthetic proxy worker of relay-bench.html: speaks container2wasm's relay protocol as
// fast as it can (store ctrl = 0, post the request, block in Atomics.wait until the main thread
// stored ctrl = 1), in three phases of `ms` milliseconds each: `send` 4 KiB of QEMU-framed
// 1514-byte frames per request, `recv` 4 KiB per request, and both alternating. After each
// phase it posts {type: "phase", name, requests, bytesSent, bytesReceived, ms}.
"use strict";

const DATA_SIZE = 4096;
const FRAME = 1514;

self.onmessage = (msg) => {
  const req = msg.data;
  if (!req || req.type !== "init") return;
  try {
    run(req.buf, req.ms);
  } catch (err) {
    postMessage({ type: "phase", name: "error", error: String(err && err.stack || err), last: true });
  }
};

function run(buf, ms) {
  const ctrl = new Int32Array(buf, 0, 1);
  const status = new Int32Array(buf, 4, 1);
  const len = new Int32Array(buf, 8, 1);
  const data = new Uint8Array(buf, 12);
  const request = (msg) => {
    Atomics.store(ctrl, 0, 0);
    postMessage(msg);
    while (Atomics.load(ctrl, 0) === 0) Atomics.wait(ctrl, 0, 0, 1000);
    return Atomics.load(status, 0);
  };
  // A QEMU-framed stream of identical frames, long enough to cut any 4 KiB window from.
  const period = 4 + FRAME;
  const stream = new Uint8Array(period * Math.ceil((DATA_SIZE + period) / period + 1));
  for (let at = 0; at + period <= stream.length; at += period) {
    new DataView(stream.buffer).setUint32(at, FRAME, false);
    stream.fill(0x52, at + 4, at + period);
  }
  let offset = 0;
  const send = () => {
    // Like stack-worker.js, each request carries a fresh copy of its bytes.
    const chunk = stream.slice(offset, offset + DATA_SIZE);
    offset = (offset + DATA_SIZE) % period;
    if (request({ type: "send", buf: chunk }) < 0) throw new Error("send refused");
    return DATA_SIZE;
  };
  const recv = () => {
    if (request({ type: "recv", len: DATA_SIZE }) < 0) throw new Error("recv refused");
    const n = Math.min(Math.max(len[0], 0), DATA_SIZE);
    data.slice(0, n);
    return n;
  };
  const phases = [["send", true, false], ["recv", false, true], ["both", true, true]];
  phases.forEach(([name, sending, receiving], i) => {
    let requests = 0, bytesSent = 0, bytesReceived = 0;
    const start = performance.now();
    let now = start;
    while (now - start < ms) {
      for (let k = 0; k < 16; k++) {
        if (sending) { bytesSent += send(); requests++; }
        if (receiving) { bytesReceived += recv(); requests++; }
      }
      now = performance.now();
    }
    // Frames cut at the end of a phase are completed before the sink is counted.
    if (sending && offset !== 0) {
      const rest = stream.slice(offset, period);
      request({ type: "send", buf: rest });
      bytesSent += rest.length;
      offset = 0;
    }
    postMessage({ type: "phase", name, requests, bytesSent, bytesReceived, ms: performance.now() - start, last: i === phases.length - 1 });
  });
}
