// The bridge reference of `cargo xtask bench net`: no network stack at all. Every IPv4/UDP
// frame the guest sends through the TAP-to-WebSocket bridge comes back with the Ethernet
// addresses, the IPv4 addresses and the UDP ports swapped (the IPv4 and UDP checksums stay
// valid: their sums do not depend on the order of those fields). What the guest measures is
// then the cost of the bridge and the page's WebSocket alone. Other frames are dropped.
import { report, watchErrors, openBridge } from "./report.js";

watchErrors();
const status = (s) => { document.getElementById("status").textContent = s; };

/** Swaps a frame's addresses and ports in place; false when it is not IPv4/UDP. */
function swap(frame) {
  if (frame.length < 42 || frame[12] !== 0x08 || frame[13] !== 0x00) return false;
  const ihl = (frame[14] & 0x0f) * 4;
  if ((frame[14] >> 4) !== 4 || frame[23] !== 17 || ihl < 20 || frame.length < 14 + ihl + 8) return false;
  const exchange = (a, b, n) => {
    for (let i = 0; i < n; i++) {
      const t = frame[a + i]; frame[a + i] = frame[b + i]; frame[b + i] = t;
    }
  };
  exchange(0, 6, 6);
  exchange(26, 30, 4);
  exchange(14 + ihl, 14 + ihl + 2, 2);
  return true;
}

async function main() {
  const ws = await openBridge();
  const counters = { echoed: 0, dropped: 0, bytes: 0 };
  ws.onmessage = (e) => {
    const frame = new Uint8Array(e.data);
    if (swap(frame)) {
      counters.echoed++;
      counters.bytes += frame.length;
      ws.send(frame);
    } else {
      counters.dropped++;
    }
  };
  ws.onclose = () => report("page-error", "the bridge closed the WebSocket");
  status("running");
  await report("ready", navigator.userAgent);
  const post = async () => {
    await report("stats", JSON.stringify(counters));
    setTimeout(post, 500);
  };
  post();
}

main().catch((err) => {
  status(`failed: ${err}`);
  report("fatal", `${err}\n${err && err.stack || ""}`);
});
