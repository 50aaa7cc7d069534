// The NetProxy test page: the proxy runs here on the main thread, its frames go to and from a
// real Linux guest through the harness's TAP-to-WebSocket bridge. The harness judges
// everything on the guest side; this page only wires things up and reports what it sees.
import { report, watchErrors, log, loadConfig, plantCookie, openBridge, jsonSafe } from "./report.js";

watchErrors();
const status = (s) => { document.getElementById("status").textContent = s; };

async function main() {
  const config = await loadConfig();
  // The benchmark's origin has no cookie endpoints; it sets plantCookie: false.
  if (config.plantCookie !== false) {
    await plantCookie(config.origins.http);
    status("cookie planted");
  }

  const mod = await import("./c2w_net_proxy.js");
  // The package's init() has no default wasm path: name the file next to the module.
  await mod.default({ module_or_path: new URL("./c2w_net_proxy_bg.wasm", location.href) });
  if (typeof mod.NetProxy !== "function") {
    throw new Error("dist/c2w_net_proxy.js exports no NetProxy (exports: " + Object.keys(mod).join(", ") + ")");
  }
  // `?relay=<JSON>`: a Wisp relay (`config.relay`) for the harness's relay phase; the names it
  // maps are allowed besides loopback (allow/deny apply to the names the guest asks for), and
  // `?deny=NAME` (repeatable) refuses some.
  const search = new URLSearchParams(location.search);
  const relay = search.get("relay") ? JSON.parse(search.get("relay")) : null;
  // `?rewrites=<JSON>`: more `{host, url}` rewrites (the WebSocket phase maps its names to its
  // echo server).
  const moreRewrites = search.get("rewrites") ? JSON.parse(search.get("rewrites")) : [];
  const proxy = await mod.NetProxy.create({
    allow: ["loopback", ...Object.keys((relay && relay.hosts) || {})],
    deny: search.getAll("deny"),
    rewrites: [...config.rewrites, ...moreRewrites],
    // A duration string ("10s", "500ms"): the same syntax as the runner's --timeout.
    timeout: config.timeout ?? "30s",
    logLevel: "warn",
    ...(relay ? { relay } : {}),
  });
  await report("ca", proxy.caCertificatePem());

  const ws = await openBridge();
  let fromGuest = 0, toGuest = 0;
  ws.onmessage = (e) => { fromGuest++; proxy.pushFrame(new Uint8Array(e.data)); };
  ws.onclose = () => report("page-error", "the bridge closed the WebSocket");
  // The frame may be a view into memory the proxy reuses: send a copy.
  proxy.onFrame((frame) => { toGuest++; ws.send(frame.slice()); });
  status("running");

  // Stats go to the harness every 250 ms while anything moves, and every 5 s when idle (each
  // post is a fetch(): posting regardless would be most of an idle page's CPU time).
  let seq = 0, lastKey = "", lastPost = 0;
  const post = async () => {
    const s = proxy.stats();
    const snapshot = { ...(s instanceof Map ? Object.fromEntries(s) : s) };
    snapshot.pageFramesFromGuest = fromGuest;
    snapshot.pageFramesToGuest = toGuest;
    snapshot.wsBufferedAmount = ws.bufferedAmount;
    const key = JSON.stringify(snapshot, jsonSafe);
    if (key !== lastKey || performance.now() - lastPost >= 5000) {
      lastKey = key;
      lastPost = performance.now();
      snapshot.seq = ++seq;
      if (performance.memory) snapshot.jsHeapUsed = performance.memory.usedJSHeapSize;
      await report("stats", JSON.stringify(snapshot, jsonSafe));
    }
    setTimeout(post, 250);
  };
  await report("ready", `${navigator.userAgent}; Atomics.waitAsync: ${typeof Atomics.waitAsync === "function" ? "yes" : "no"}`);
  post();
  log("e2e page: NetProxy running");
}

main().catch((err) => {
  status(`failed: ${err}`);
  // Firefox's stack has no message line; Chromium's starts with it.
  report("fatal", `${err}\n${err && err.stack || ""}`);
});
