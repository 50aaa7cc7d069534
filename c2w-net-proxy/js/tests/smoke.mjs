// Node smoke test of a built package: `node smoke.mjs DIST_DIR` (run by
// `cargo xtask build-wasm --check`). Exits non-zero on the first failed check; prints
// "smoke: all N checks passed" at the end. Node must then exit by itself: a closed proxy
// leaves no timer behind.
import { readFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";
import path from "node:path";
import { checker } from "./report.mjs";

const dist = process.argv[2];
if (!dist) throw new Error("usage: node smoke.mjs DIST_DIR");
const glue = await import(pathToFileURL(path.join(dist, "c2w_net_proxy.js")).href);
await glue.default({ module_or_path: await readFile(path.join(dist, "c2w-net-proxy.wasm")) });
const { NetProxy } = glue;

const { check, finish } = checker("smoke");

// Resolves with the first value `register` hands its callback, or rejects after `ms`.
function first(register, ms = 3000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`nothing within ${ms} ms`)), ms);
    register((value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

// The message a promise rejects with ("" when it resolves).
async function rejection(promise) {
  try {
    await promise;
    return "";
  } catch (e) {
    return String(e && e.message);
  }
}

const GUEST_MAC = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

function ipChecksum(bytes) {
  let sum = 0;
  for (let i = 0; i < bytes.length; i += 2) sum += (bytes[i] << 8) | bytes[i + 1];
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

// Ethernet + IPv4 + UDP 68->67 + BOOTP from GUEST_MAC with these DHCP options.
function dhcpFrame(xid, options) {
  const bootp = new Uint8Array(240 + options.length);
  bootp.set([1, 1, 6, 0]); // op BOOTREQUEST, htype Ethernet, hlen 6, hops
  new DataView(bootp.buffer).setUint32(4, xid);
  bootp.set(GUEST_MAC, 28); // chaddr
  bootp.set([0x63, 0x82, 0x53, 0x63], 236); // magic cookie
  bootp.set(options, 240);
  const udpLen = 8 + bootp.length;
  const ipLen = 20 + udpLen;
  const frame = new Uint8Array(14 + ipLen);
  frame.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, ...GUEST_MAC, 0x08, 0x00]);
  const ip = new Uint8Array(20);
  ip.set([0x45, 0, ipLen >> 8, ipLen & 0xff, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]);
  const sum = ipChecksum(ip);
  ip[10] = sum >> 8;
  ip[11] = sum & 0xff;
  frame.set(ip, 14);
  frame.set([0, 68, 0, 67, udpLen >> 8, udpLen & 0xff, 0, 0], 34); // UDP checksum 0: none
  frame.set(bootp, 42);
  return frame;
}

const dhcpDiscover = (xid) => dhcpFrame(xid, [53, 1, 1, 255]);
// REQUEST for 192.168.127.3 from server 192.168.127.1.
const dhcpRequest = (xid) =>
  dhcpFrame(xid, [53, 1, 3, 50, 4, 192, 168, 127, 3, 54, 4, 192, 168, 127, 1, 255]);

// The DHCP message type and offered address of a frame, or null when it is not DHCP.
function dhcpReply(frame) {
  if (frame.length < 282 || frame[12] !== 0x08 || frame[13] !== 0x00 || frame[23] !== 17) return null;
  if (((frame[34] << 8) | frame[35]) !== 67) return null;
  const bootp = frame.subarray(42);
  const yiaddr = Array.from(bootp.subarray(16, 20)).join(".");
  let type = 0;
  for (let i = 240; i < bootp.length && bootp[i] !== 255; ) {
    if (bootp[i] === 0) { i++; continue; }
    if (bootp[i] === 53) type = bootp[i + 2];
    i += 2 + bootp[i + 1];
  }
  return { type, yiaddr, xid: new DataView(bootp.buffer, bootp.byteOffset).getUint32(4) };
}

// --- configuration errors reject create() with a message naming the option
for (const [config, needle] of [
  [{ network: { mtu: "big" } }, "network.mtu"],
  [{ netwerk: {} }, "netwerk"],
  [{ network: { gatewayIp: "10.0.0.300" } }, "gatewayIp"],
  [{ allow: ["10.0.0.0/99"] }, "10.0.0.0/99"],
  [{ ca: { certPem: "x", keyPem: "y" } }, "config.ca"],
  [{ logLevel: "loud" }, "logLevel"],
  [{ limits: { maxConections: 5 } }, "limits.maxConections"],
  [{ limits: { maxConnections: 0 } }, "limits.maxConnections"],
  [{ limits: { maxRequestBody: 1.5 } }, "limits.maxRequestBody"],
  [{ limits: { tcpBufferBytes: "1M" } }, "limits.tcpBufferBytes"],
  [{ limits: { dhcpPool: "192.168.127.9" } }, "limits.dhcpPool"],
  [{ limits: { fakeIpNet: "198.18.0.1/15" } }, "limits.fakeIpNet"],
  [{ limits: { fakeIpNet: "192.168.0.0/16" } }, "fake-IP pool overlaps"],
  [{ limits: { dhcpPool: "10.0.0.1-10.0.0.2" } }, "10.0.0.1"],
  [{ timeout: "5 parsecs" }, "is not a duration"],
  [{ timeout: "0s" }, "out of range"],
  [{ timeout: -1 }, "timeout"],
  [{ timeout: 2.5 }, "whole number of seconds"],
  [{ timeout: true }, "timeout"],
  [{ timeout: "5s", timeoutMs: 5000 }, "either timeout or timeoutMs"],
  [{ limits: { maxConnections: NaN } }, "limits.maxConnections"],
  [{ rewrites: [{ host: "a.test", url: "http://b.test/", extra: 1 }] }, "rewrites[0].extra"],
  [[], "expected an object"],
]) {
  let message = "";
  try {
    const p = await NetProxy.create(config);
    p.close();
  } catch (e) {
    message = String(e && e.message);
  }
  check(message.includes(needle), `create(${JSON.stringify(config)}) rejects naming ${needle}: ${message}`);
}

// --- durations: seconds, strings with units, or the older timeoutMs
for (const config of [{ timeout: "5s" }, { timeout: "500ms" }, { timeout: "2m" }, { timeout: 2 }, { timeoutMs: 100 }]) {
  let error = "";
  try {
    (await NetProxy.create({ logLevel: "warn", ...config })).close();
  } catch (e) {
    error = String(e && e.message);
  }
  check(error === "", `create(${JSON.stringify(config)}) accepts the timeout: ${error || "ok"}`);
}

// --- limits reach the stack: a one-address DHCP pool offers exactly that address
{
  const limited = await NetProxy.create({
    logLevel: "warn",
    limits: { dhcpPool: "192.168.127.50-192.168.127.50", maxConnections: 2, maxRequestBody: 1024 },
  });
  const reply = await first((resolve) => {
    limited.onFrame((frame) => {
      const r = dhcpReply(frame);
      if (r) resolve(r);
    });
    limited.pushFrame(dhcpDiscover(0x0badcafe));
  });
  check(reply.type === 2 && reply.yiaddr === "192.168.127.50", `limits.dhcpPool: OFFER of ${reply.yiaddr}`);
  const s = limited.stats();
  check(s.dns.fakeIpsRecycled === 0 && s.proxy.errors.headsTooLarge === 0 && s.proxy.errors.bodiesTooLarge === 0,
    "stats() carries the limit counters (fakeIpsRecycled, headsTooLarge, bodiesTooLarge)");
  limited.close();
}

// --- a working proxy
const proxy = await NetProxy.create({ logLevel: "warn", allow: ["loopback"] });
const pem = proxy.caCertificatePem();
check(pem.startsWith("-----BEGIN CERTIFICATE-----"), "caCertificatePem() is a PEM certificate");

// Reaching into the guest before it has a lease, and with bad arguments: clear rejections.
let why = await rejection(proxy.fetchGuest("/", { port: 80 }));
check(why.startsWith("fetchGuest:") && why.includes("no guest has a DHCP lease"), `fetchGuest before a lease rejects: ${why}`);
why = await rejection(proxy.connect(0));
check(why.includes("port 0"), `connect(0) rejects: ${why}`);
why = await rejection(proxy.probe(70000));
check(why.includes("70000") && why.includes("1-65535"), `probe(70000) rejects: ${why}`);
why = await rejection(proxy.fetchGuest("/", { port: 80, host: "x" }));
check(why.includes("unknown option"), `fetchGuest with an unknown option rejects: ${why}`);
why = await rejection(proxy.connect(80, { ip: "not-an-ip" }));
check(why.includes("ip must be"), `connect with a bad ip rejects: ${why}`);

proxy.startCapture();
let threw = false;
try { proxy.startCapture(); } catch { threw = true; }
check(threw, "a second startCapture() throws");

const offer = await first((resolve) => {
  proxy.onFrame((frame) => {
    const reply = dhcpReply(frame);
    if (reply && reply.xid === 0x11223344) resolve(reply);
  });
  proxy.pushFrame(dhcpDiscover(0x11223344));
});
check(offer.type === 2 && offer.yiaddr === "192.168.127.3", `pushFrame DISCOVER -> onFrame OFFER of ${offer.yiaddr}`);

let stats = proxy.stats();
check(stats.dhcp.offers === 1 && stats.framesIn === 1 && stats.framesOut >= 1,
  `stats() counts it (offers ${stats.dhcp.offers}, in ${stats.framesIn}, out ${stats.framesOut})`);
check(stats.wasmMemoryBytes > 0 && stats.capturing === true, `stats() reports wasm memory (${stats.wasmMemoryBytes}) and the capture`);

// The same DISCOVER as a QEMU stream, chopped into odd pieces.
proxy.onFrame(() => {});
const frame = dhcpDiscover(0x55667788);
const framed = new Uint8Array(4 + frame.length);
new DataView(framed.buffer).setUint32(0, frame.length);
framed.set(frame, 4);
const streamed = await first((resolve) => {
  let buf = new Uint8Array(0);
  proxy.onStream((bytes) => {
    const joined = new Uint8Array(buf.length + bytes.length);
    joined.set(buf);
    joined.set(bytes, buf.length);
    buf = joined;
    while (buf.length >= 4) {
      const len = new DataView(buf.buffer, buf.byteOffset).getUint32(0);
      if (buf.length < 4 + len) break;
      const reply = dhcpReply(buf.subarray(4, 4 + len));
      buf = buf.slice(4 + len);
      if (reply && reply.xid === 0x55667788) resolve(reply);
    }
  });
  const sizes = [1, 2, 3, 5, 7, 11, 13, 17, 19, 23, 29];
  for (let at = 0, i = 0; at < framed.length; i++) {
    const n = sizes[i % sizes.length];
    proxy.pushStream(framed.subarray(at, at + n));
    at += n;
  }
});
check(streamed.type === 2 && streamed.yiaddr === "192.168.127.3", "pushStream DISCOVER in odd chunks -> framed OFFER via onStream");

proxy.onStream(() => {});
const ack = await first((resolve) => {
  proxy.onFrame((frame) => {
    const reply = dhcpReply(frame);
    if (reply && reply.xid === 0x99aabbcc) resolve(reply);
  });
  proxy.pushFrame(dhcpRequest(0x99aabbcc));
});
check(ack.type === 5 && ack.yiaddr === "192.168.127.3", "REQUEST -> ACK of 192.168.127.3");

stats = proxy.stats();
check(stats.dhcp.offers === 2 && stats.dhcp.acks === 1 && stats.dhcp.leases.length === 1 && stats.dhcp.leases[0].mac === "02:00:00:00:00:01",
  `stats() has 2 offers, 1 ack and the lease ${JSON.stringify(stats.dhcp.leases)}`);

// With a lease, a guest that never answers a SYN: the probe rejects once its timeout passed.
const probeStart = Date.now();
why = await rejection(proxy.probe(8000, { timeoutMs: 300 }));
check(why.includes("192.168.127.3:8000") && why.includes("did not answer") && Date.now() - probeStart < 3000,
  `probe of a silent guest rejects after its timeout: ${why}`);

const pcap = proxy.stopCapture();
const view = new DataView(pcap.buffer, pcap.byteOffset, pcap.byteLength);
check(pcap instanceof Uint8Array && view.getUint32(0, true) === 0xa1b2c3d4 && view.getUint32(20, true) === 1,
  `stopCapture() returns a pcap (LINKTYPE_ETHERNET), ${pcap.length} bytes`);
let records = 0;
for (let at = 24; at + 16 <= pcap.length; records++) at += 16 + view.getUint32(at + 8, true);
check(records >= 6, `the capture holds the three exchanges (${records} records)`);

let broken = "";
try { proxy.pushStream(new Uint8Array([0xff, 0xff, 0xff, 0xff])); } catch (e) { broken = String(e.message); }
check(broken.includes("pushStream"), `a broken stream throws: ${broken}`);

proxy.close();
proxy.close();
let closed = "";
try { proxy.pushFrame(frame); } catch (e) { closed = String(e.message); }
check(closed.includes("closed"), `pushFrame after close() throws: ${closed}`);
check(proxy.stats().closed === true, "stats() after close() says closed");
why = await rejection(proxy.fetchGuest("/", { port: 80 }));
check(why.includes("closed"), `fetchGuest after close() rejects: ${why}`);

// --- the v86 adapter on a fake bus (v86's Bus.Connector contract: register/send/unregister)
const { C2wNetworkAdapter } = await import(pathToFileURL(path.join(dist, "v86-adapter.js")).href);
const listeners = new Map();
const bus = {
  register(name, fn, thisValue) {
    if (!listeners.has(name)) listeners.set(name, []);
    listeners.get(name).push({ fn, thisValue });
  },
  unregister(name, fn) {
    listeners.set(name, (listeners.get(name) || []).filter((l) => l.fn !== fn));
  },
  send(name, value) {
    for (const l of listeners.get(name) || []) l.fn.call(l.thisValue, value);
  },
};
const adapter = new C2wNetworkAdapter(bus, {
  id: 1,
  wasm: await readFile(path.join(dist, "c2w-net-proxy.wasm")),
  logLevel: "warn",
});
check(listeners.has("net1-send") && listeners.has("net1-mac") && !listeners.has("net0-send"),
  "C2wNetworkAdapter listens on net1-send and net1-mac for id 1");
bus.send("net1-mac", "02:00:00:00:00:01");
// Sent before the proxy runs: must be queued, not lost.
bus.send("net1-send", dhcpDiscover(0x0badcafe));
const receiveOffer = new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error("no net1-receive OFFER")), 3000);
  // The emulator side: what the adapter emits on "net1-receive".
  bus.register("net1-receive", (frame) => {
    const reply = dhcpReply(frame);
    if (reply && reply.xid === 0x0badcafe) {
      clearTimeout(timer);
      resolve(reply);
    }
  });
});
const v86Offer = await receiveOffer;
await adapter.ready;
check(v86Offer.type === 2 && adapter.vmMac === "02:00:00:00:00:01",
  `net1-send DISCOVER -> net1-receive OFFER of ${v86Offer.yiaddr}; vmMac ${adapter.vmMac}`);
check(adapter.caCertificatePem().startsWith("-----BEGIN CERTIFICATE-----"), "the adapter exposes its CA");
adapter.destroy();
check((listeners.get("net1-send") || []).length === 0 && adapter.proxy.stats().closed,
  "destroy() unregisters from the bus and closes the proxy");

// --- the adapter paces v86's ne2k and leaves virtio alone (identified on a v86-shaped bus)
function v86Bus() {
  // v86's Bus.Connector pair: `send` on one side calls the other side's listeners.
  const side = () => ({
    listeners: {},
    register(name, fn, thisValue) {
      (this.listeners[name] ||= []).push({ fn, this_value: thisValue });
    },
    send(name, value) {
      for (const l of this.pair.listeners[name] || []) l.fn.call(l.this_value, value);
    },
  });
  const page = side();
  const emulator = side();
  page.pair = emulator;
  emulator.pair = page;
  return { page, emulator };
}
// The ne2k as v86 builds it: its ring registers as Linux's ne2k-pci sets them (an empty ring:
// boundary one page behind curpg), the NIC started; "ne2k-bare" lacks them (burst rule).
const ne2kDevice = (receive) => ({ name: "ne2k", receive, cr: 0x22, isr: 0, imr: 0x3f, pstart: 0x4c, pstop: 0x80, curpg: 0x4c, boundary: 0x7f });
for (const [kind, paced, mode] of [["ne2k", true, "room"], ["ne2k-bare", true, "burst"], ["virtio", false, null], ["unknown", true, "burst"]]) {
  const { page, emulator } = v86Bus();
  // v86's virtio receive queue: no buffer for the first frame (v86 would drop it), then some.
  let buffers = 0;
  const virtioRx = { has_request: () => buffers++ > 0 };
  const offer = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${kind}: no OFFER`)), 3000);
    const onFrame = (frame) => {
      const reply = dhcpReply(frame);
      if (reply) {
        clearTimeout(timer);
        resolve(reply);
      }
    };
    // Registered as v86's devices do: the device object as `this_value`.
    if (kind === "ne2k") emulator.register("net0-receive", function (f) { this.receive(f); }, ne2kDevice(onFrame));
    else if (kind === "ne2k-bare") emulator.register("net0-receive", function (f) { this.receive(f); }, { name: "ne2k", receive: onFrame });
    else if (kind === "virtio") emulator.register("net0-receive", (f) => onFrame(f), { virtio: { queues: [virtioRx] } });
    else emulator.register("net0-receive", (f) => onFrame(f));
  });
  const a = new C2wNetworkAdapter(page, { logLevel: "warn" });
  await a.ready;
  emulator.send("net0-send", dhcpDiscover(0x1234));
  const r = await offer;
  const stats = a.pacingStats();
  check(r.type === 2 && a.nic === kind.replace("-bare", "") && (stats !== null) === paced && (stats ? stats.mode : null) === mode,
    `${kind}: identified as ${a.nic}, ${paced ? `paced (${mode})` : "not paced"} (${JSON.stringify(stats)})`);
  const nic = a.nicStats();
  // The fake ne2k never advances its ring, so its frames count as not stored: a number.
  const dropped = { ne2k: stats && stats.notStored, "ne2k-bare": null, virtio: 1, unknown: null }[kind];
  check(nic !== null && nic.dropped === dropped, `${kind}: frames the NIC did not take: ${JSON.stringify(nic)}`);
  a.destroy();
}
{
  let message = "";
  try {
    new C2wNetworkAdapter(bus, { pacing: { burstFrames: 0 } });
  } catch (e) {
    message = e.message;
  }
  check(message.includes("pacing.burstFrames"), `a bad pacing option is refused at once: ${message}`);
}

finish();
