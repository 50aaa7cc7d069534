// The container2wasm protocol page. In container2wasm the page's main thread relays between the
// VM worker and the proxy worker over a SharedArrayBuffer; here the main thread speaks that
// protocol to our stack-worker.js (loaded exactly as container2wasm's page loads its proxy
// worker), and the VM side is the real guest behind the bridge's WebSocket.
//
// Protocol (DESIGN.md): the buffer is 12 + 4096 bytes: Int32 ctrl at 0, Int32 status at 4,
// Int32 len at 8, data from 12. The worker stores ctrl = 0 and posts a request; the main thread
// fills in the answer, stores ctrl = 1 and notifies. Requests: send_cert {buf}, accept,
// send {buf}, recv {len}, recv-is-readable {timeout}. Bytes are QEMU stream framing: a 4-byte
// big-endian length before each Ethernet frame.
import { report, watchErrors, log, openBridge } from "./report.js";
import { ByteQueue, Deframer } from "./relay-protocol.js";

watchErrors();
const status = (s) => { document.getElementById("status").textContent = s; };
const DATA_SIZE = 4096;

async function main() {
  const ws = await openBridge();

  const shared = new SharedArrayBuffer(12 + DATA_SIZE);
  const ctrl = new Int32Array(shared, 0, 1);
  const st = new Int32Array(shared, 4, 1);
  const len = new Int32Array(shared, 8, 1);
  const data = new Uint8Array(shared, 12);
  const toProxy = new ByteQueue();
  const counters = { requests: {}, framesToGuest: 0, framesFromGuest: 0, bytesToProxy: 0, bytesFromProxy: 0, maxQueued: 0, unknown: [] };
  let accepted = false;
  const deframer = new Deframer((frame) => { counters.framesToGuest++; ws.send(frame); });

  ws.onmessage = (e) => {
    const frame = new Uint8Array(e.data);
    const framed = new Uint8Array(4 + frame.byteLength);
    new DataView(framed.buffer).setUint32(0, frame.byteLength, false);
    framed.set(frame, 4);
    counters.framesFromGuest++;
    toProxy.push(framed);
    counters.maxQueued = Math.max(counters.maxQueued, toProxy.length);
  };
  ws.onclose = () => report("page-error", "the bridge closed the WebSocket");

  const answer = () => { Atomics.store(ctrl, 0, 1); Atomics.notify(ctrl, 0); };
  const bytesOf = (b) => (b instanceof ArrayBuffer || b instanceof SharedArrayBuffer) ? new Uint8Array(b) : new Uint8Array(b.buffer, b.byteOffset, b.byteLength);

  const workerUrl = "./stack-worker.js" + location.search;
  const worker = new Worker(workerUrl);
  worker.onerror = async (e) => {
    if (e.message) {
      report("fatal", `stack-worker.js: ${e.message} at ${e.filename}:${e.lineno}`);
      return;
    }
    // The browser gives no reason for a worker that fails to load: fetch it to tell why.
    let why;
    try {
      const resp = await fetch(workerUrl);
      why = `GET ${workerUrl}: ${resp.status} ${resp.headers.get("content-type")}, ${(await resp.text()).length} bytes`;
    } catch (err) {
      why = `GET ${workerUrl} failed: ${err}`;
    }
    report("fatal", `stack-worker.js failed to load or start without a message (${why})`);
  };
  worker.onmessage = (msg) => {
    const req = msg.data;
    if (typeof req !== "object" || !req || !req.type) {
      report("page-error", `message without a type from the worker: ${String(req)}`);
      return;
    }
    counters.requests[req.type] = (counters.requests[req.type] || 0) + 1;
    switch (req.type) {
      case "send_cert": {
        const pem = new TextDecoder().decode(bytesOf(req.buf));
        report("ca", pem);
        st[0] = 0;
        break;
      }
      case "accept":
        accepted = true;
        data[0] = 1;
        st[0] = 0;
        break;
      case "send": {
        if (!accepted) { st[0] = -1; break; }
        const bytes = bytesOf(req.buf);
        counters.bytesFromProxy += bytes.byteLength;
        try { deframer.push(bytes.slice()); st[0] = 0; } catch (err) { report("page-error", String(err)); st[0] = -1; }
        break;
      }
      case "recv": {
        if (!accepted) { st[0] = -1; break; }
        const n = toProxy.take(data, Math.min(req.len, DATA_SIZE));
        counters.bytesToProxy += n;
        len[0] = n;
        st[0] = 0;
        break;
      }
      case "recv-is-readable":
        if (toProxy.length > 0) {
          data[0] = 1;
        } else if (req.timeout > 0) {
          // Like container2wasm's relay: nothing waiting means the whole timeout is slept.
          setTimeout(() => { data[0] = toProxy.length > 0 ? 1 : 0; st[0] = 0; answer(); }, req.timeout * 1000);
          return;
        } else {
          data[0] = 0;
        }
        st[0] = 0;
        break;
      default:
        // container2wasm's relay never answers an unknown request; record it for the harness.
        counters.unknown.push(req.type);
        report("page-error", `unknown request type from the proxy worker: ${req.type}`);
        return;
    }
    answer();
  };
  worker.postMessage({ type: "init", buf: shared, imagename: location.origin + "/c2w-net-proxy.wasm" });
  status("running");
  await report("ready", `${navigator.userAgent}; Atomics.waitAsync: ${typeof Atomics.waitAsync === "function" ? "yes" : "no"}`);
  log("c2w page: relay running");

  let seq = 0;
  const post = async () => {
    await report("stats", JSON.stringify({ seq: ++seq, relay: counters, queued: toProxy.length }));
    setTimeout(post, 500);
  };
  post();
}

main().catch((err) => {
  status(`failed: ${err}`);
  // Firefox's stack has no message line; Chromium's starts with it.
  report("fatal", `${err}\n${err && err.stack || ""}`);
});
