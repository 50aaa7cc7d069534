// Node test of dist/stack-worker.js against container2wasm's relay protocol: this script plays
// the page's main thread (stack.js: answer each request through the SharedArrayBuffer, store
// ctrl = 1, notify) and the VM (framed bytes through the relay). It runs the worker in a
// worker_thread with the few browser globals it uses shimmed, once with Atomics.waitAsync and
// once without (the blocking fallback). `node relay.mjs DIST_DIR`
import { Worker } from "node:worker_threads";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { checker } from "./report.mjs";

const dist = process.argv[2];
if (!dist) throw new Error("usage: node relay.mjs DIST_DIR");
const workerSource = await readFile(path.join(dist, "stack-worker.js"), "utf8");
const wasm = await readFile(path.join(dist, "c2w-net-proxy.wasm"));

const { check, finish } = checker("relay");

// Browser globals the worker uses, for a node worker_thread. Blob URLs become data: URLs
// (node can import those); the wasm comes as bytes in `imagename`.
const shim = (noWaitAsync) => `
const { parentPort } = require("node:worker_threads");
globalThis.self = globalThis;
self.location = { search: "?net=browser&proxy-log=warn&proxy-allow=loopback&proxy-dhcp-pool=192.168.127.9-192.168.127.20&proxy-max-connections=64&proxy-tcp-buffer=65536&proxy-fake-ip-net=198.18.0.0/16&proxy-max-head-bytes=32768&proxy-max-request-body=1048576" };
self.postMessage = (m) => parentPort.postMessage(m);
parentPort.on("message", (data) => self.onmessage({ data }));
globalThis.Blob = class { constructor(parts) { this.text = parts.join(""); } };
URL.createObjectURL = (b) => "data:text/javascript;base64," + Buffer.from(b.text).toString("base64");
URL.revokeObjectURL = () => {};
${noWaitAsync ? "Atomics.waitAsync = undefined;" : ""}
`;

function dhcpDiscover(xid) {
  const frame = new Uint8Array(14 + 20 + 8 + 244);
  frame.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
  const ipLen = 20 + 8 + 244;
  const ip = [0x45, 0, ipLen >> 8, ipLen & 0xff, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255];
  let sum = 0;
  for (let i = 0; i < 20; i += 2) sum += (ip[i] << 8) | ip[i + 1];
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  ip[10] = (~sum >> 8) & 0xff;
  ip[11] = ~sum & 0xff;
  frame.set(ip, 14);
  frame.set([0, 68, 0, 67, 0, 8 + 244, 0, 0], 34);
  frame.set([1, 1, 6, 0], 42);
  new DataView(frame.buffer).setUint32(46, xid);
  frame.set([2, 0, 0, 0, 0, 1], 70);
  frame.set([0x63, 0x82, 0x53, 0x63, 53, 1, 1, 255], 278);
  return frame;
}

// The DHCP message type (option 53) of a BOOTP frame.
function dhcpType(frame) {
  for (let i = 282; i + 1 < frame.length && frame[i] !== 255; ) {
    if (frame[i] === 0) { i++; continue; }
    if (frame[i] === 53) return frame[i + 2];
    i += 2 + frame[i + 1];
  }
  return 0;
}

async function run(noWaitAsync) {
  const mode = noWaitAsync ? "blocking Atomics.wait fallback" : "Atomics.waitAsync";
  const shared = new SharedArrayBuffer(12 + 4096);
  const ctrl = new Int32Array(shared, 0, 1);
  const status = new Int32Array(shared, 4, 1);
  const len = new Int32Array(shared, 8, 1);
  const data = new Uint8Array(shared, 12);
  let toVm = new Uint8Array(0); // unread by the VM
  let fromVm = new Uint8Array(0); // unread by the worker
  const types = [];
  let cert = null;
  let maxUnread = 0;
  const append = (a, b) => {
    const out = new Uint8Array(a.length + b.length);
    out.set(a);
    out.set(b, a.length);
    return out;
  };

  const worker = new Worker(shim(noWaitAsync) + workerSource, { eval: true });
  const done = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${mode}: no OFFER within 10 s (requests: ${types.slice(0, 12)})`)), 10000);
    worker.on("error", reject);
    worker.on("message", (req) => {
      types.push(req.type);
      status[0] = 0;
      switch (req.type) {
        case "send_cert": cert = new TextDecoder().decode(req.buf); break;
        case "accept": data[0] = 1; break;
        case "send": toVm = append(toVm, req.buf); maxUnread = Math.max(maxUnread, toVm.length); break;
        case "recv": {
          const n = Math.min(req.len, 4096, fromVm.length);
          data.set(fromVm.subarray(0, n));
          len[0] = n;
          fromVm = fromVm.slice(n);
          break;
        }
        case "recv-is-readable": data[0] = fromVm.length > 0 ? 1 : 0; break;
        default: return; // stack.js never answers an unknown type
      }
      Atomics.store(ctrl, 0, 1);
      Atomics.notify(ctrl, 0);
      // The VM: look for a framed OFFER in what it was sent.
      while (toVm.length >= 4) {
        const n = new DataView(toVm.buffer, toVm.byteOffset).getUint32(0);
        if (toVm.length < 4 + n) break;
        const frame = toVm.subarray(4, 4 + n);
        toVm = toVm.slice(4 + n);
        if (n > 282 && frame[23] === 17 && frame[37] === 68 && dhcpType(frame) === 2) {
          clearTimeout(timer);
          resolve(Array.from(frame.subarray(58, 62)).join("."));
        }
      }
    });
  });
  worker.postMessage({ type: "init", buf: shared, imagename: wasm });
  // The VM sends a DISCOVER, framed, once it is connected.
  const frame = dhcpDiscover(0x1234);
  const framed = new Uint8Array(4 + frame.length);
  new DataView(framed.buffer).setUint32(0, frame.length);
  framed.set(frame, 4);
  fromVm = framed;
  const offered = await done;
  await worker.terminate();
  check(types[0] === "send_cert" && cert.startsWith("-----BEGIN CERTIFICATE-----"), `${mode}: send_cert with the PEM comes first`);
  check(types.every((t) => ["send_cert", "accept", "send", "recv", "recv-is-readable"].includes(t)), `${mode}: only known request types`);
  // The query's proxy-dhcp-pool (and the other limits) reached NetProxy.create.
  check(offered === "192.168.127.9", `${mode}: DISCOVER through recv -> OFFER of ${offered} (proxy-dhcp-pool) through send`);
  check(maxUnread <= 64 * 1024, `${mode}: unread towards the VM stayed <= 64 KiB (${maxUnread})`);
}

await run(false);
await run(true);
finish();
