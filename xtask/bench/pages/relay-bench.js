// The relay reference of `cargo xtask bench net`: the main thread relays exactly as c2w.js
// does (container2wasm's protocol: the worker stores ctrl = 0 and posts a request, the main
// thread answers through the SharedArrayBuffer, stores ctrl = 1 and notifies; bytes are QEMU
// stream framing), but the proxy worker is relay-bench-worker.js, which does nothing but send
// and receive, and the VM side is a sink (frames towards the guest are counted and dropped)
// and a source (framed 1514-byte frames are always waiting for the worker). What is measured
// is the relay's own ceiling, in three phases: send only (proxy -> VM), recv only
// (VM -> proxy), and both alternating. `?ms=N` sets each phase's length.
import { report, watchErrors } from "./report.js";
import { ByteQueue, Deframer } from "./relay-protocol.js";

watchErrors();
const status = (s) => { document.getElementById("status").textContent = s; };
const DATA_SIZE = 4096;
const FRAME = 1514;
// The source keeps at least this much queued for the worker, like a busy guest would.
const SOURCE_LOW_WATER = 64 * 1024;

async function main() {
  if (typeof SharedArrayBuffer !== "function") throw new Error("no SharedArrayBuffer (cross-origin isolation missing)");
  const ms = Number(new URLSearchParams(location.search).get("ms") || "2000");
  const shared = new SharedArrayBuffer(12 + DATA_SIZE);
  const ctrl = new Int32Array(shared, 0, 1);
  const st = new Int32Array(shared, 4, 1);
  const len = new Int32Array(shared, 8, 1);
  const data = new Uint8Array(shared, 12);
  const toWorker = new ByteQueue();
  const sink = { frames: 0, bytes: 0, badFrames: 0 };
  const deframer = new Deframer((frame) => {
    sink.frames++;
    sink.bytes += frame.byteLength;
    if (frame.byteLength !== FRAME || frame[0] !== 0x52) sink.badFrames++;
  });
  // One framed frame as the bridge's onmessage would queue it.
  const framedFrame = () => {
    const framed = new Uint8Array(4 + FRAME);
    new DataView(framed.buffer).setUint32(0, FRAME, false);
    framed.fill(0x52, 4);
    return framed;
  };
  const answer = () => { Atomics.store(ctrl, 0, 1); Atomics.notify(ctrl, 0); };
  const bytesOf = (b) => (b instanceof ArrayBuffer || b instanceof SharedArrayBuffer) ? new Uint8Array(b) : new Uint8Array(b.buffer, b.byteOffset, b.byteLength);

  const results = [];
  let finished;
  const allDone = new Promise((resolve) => { finished = resolve; });
  const worker = new Worker("./relay-bench-worker.js");
  worker.onerror = (e) => report("fatal", `relay-bench-worker.js: ${e.message || "failed to load"}`);
  worker.onmessage = (msg) => {
    const req = msg.data;
    switch (req.type) {
      case "phase": {
        // Not a relay request: the worker's figures for one phase.
        results.push({ ...req, sinkFrames: sink.frames, sinkBytes: sink.bytes, badFrames: sink.badFrames });
        sink.frames = 0; sink.bytes = 0;
        if (req.last) finished();
        return;
      }
      case "send": {
        const bytes = bytesOf(req.buf);
        try { deframer.push(bytes.slice()); st[0] = 0; } catch (err) { report("page-error", String(err)); st[0] = -1; }
        break;
      }
      case "recv": {
        while (toWorker.length < SOURCE_LOW_WATER) toWorker.push(framedFrame());
        const n = toWorker.take(data, Math.min(req.len, DATA_SIZE));
        len[0] = n;
        st[0] = 0;
        break;
      }
      case "recv-is-readable":
        data[0] = toWorker.length > 0 ? 1 : 0;
        st[0] = 0;
        break;
      default:
        report("page-error", `unknown request type from the worker: ${req.type}`);
        return;
    }
    answer();
  };
  status("running");
  await report("ready", navigator.userAgent);
  worker.postMessage({ type: "init", buf: shared, ms });
  await allDone;
  worker.terminate();
  status("done");
  await report("result", JSON.stringify(results));
}

main().catch((err) => {
  status(`failed: ${err}`);
  report("fatal", `${err}\n${err && err.stack || ""}`);
});
