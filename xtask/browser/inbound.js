// The inbound test page: NetProxy on the main thread behind the harness's bridge, reaching
// servers in the guest with probe / fetchGuest / connect and through the guest-sw.js preview.
// `?inbound=<JSON>` says which guest ports to use: {http, echo, closed, echoBytes}. Each
// result is posted as `inbound.<name>` ({ok: true, ...} or {ok: false, error}); the harness
// judges them (it knows the files' sha256). With `bench` in the plan (`cargo xtask bench
// inbound`) the page times transfers instead of running the checks: see `bench` below.
import { report, watchErrors, log, loadConfig, openBridge, jsonSafe } from "./report.js";

watchErrors();
const status = (s) => { document.getElementById("status").textContent = s; };

const hex = (buf) => [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, "0")).join("");
const sha256 = async (bytes) => hex(await crypto.subtle.digest("SHA-256", bytes));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Rejects when `promise` takes longer than `ms`. */
function within(ms, what, promise) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

/** Runs one step and posts its result; a step never throws. */
async function step(name, limitMs, f) {
  status(`running ${name}`);
  const started = performance.now();
  let result;
  try {
    result = { ok: true, ...(await within(limitMs, name, f())) };
  } catch (err) {
    result = { ok: false, error: `${err && err.message || err}` };
  }
  result.ms = Math.round(performance.now() - started);
  await report(`inbound.${name}`, JSON.stringify(result, jsonSafe));
  return result;
}

/** Reads a Response's body whole; its sha256, length and rate. */
async function digest(response) {
  const started = performance.now();
  const body = await response.arrayBuffer();
  const secs = (performance.now() - started) / 1000;
  return { status: response.status, bytes: body.byteLength, sha256: await sha256(body), mbps: body.byteLength / secs / 1e6 };
}

async function main() {
  const config = await loadConfig();
  const plan = JSON.parse(new URLSearchParams(location.search).get("inbound") || "null");
  if (!plan) throw new Error("no ?inbound=<JSON> in the page URL");
  const mod = await import("./c2w_net_proxy.js");
  await mod.default({ module_or_path: new URL("./c2w_net_proxy_bg.wasm", location.href) });
  const proxy = await mod.NetProxy.create({ allow: ["loopback"], timeout: "30s", logLevel: "warn" });
  await report("ca", proxy.caCertificatePem());
  const ws = await openBridge();
  ws.onmessage = (e) => proxy.pushFrame(new Uint8Array(e.data));
  ws.onclose = () => report("page-error", "the bridge closed the WebSocket");
  proxy.onFrame((frame) => ws.send(frame.slice()));
  let lastStats = "";
  const postStats = async () => {
    const s = proxy.stats();
    const text = JSON.stringify(s instanceof Map ? Object.fromEntries(s) : s, jsonSafe);
    if (text !== lastStats) {
      lastStats = text;
      await report("stats", text);
    }
    setTimeout(postStats, 250);
  };
  postStats();
  await report("ready", navigator.userAgent);
  log("inbound page: NetProxy running, waiting for the guest's server");

  // Until the guest has a lease probe rejects ("no DHCP lease"); until its server listens it
  // says false.
  await step("probe-up", 180000, async () => {
    let tries = 0, last = "";
    for (;;) {
      tries++;
      try {
        if (await proxy.probe(plan.http, { timeoutMs: 2000 })) return { tries, before: last };
        last = "false";
      } catch (err) {
        last = `${err.message}`;
      }
      await sleep(250);
    }
  });

  if (plan.bench) {
    await bench(proxy, plan.http, plan.bench);
    return finish();
  }

  await step("fetch-1m", 60000, async () => digest(await proxy.fetchGuest("/1m", { port: plan.http })));
  await step("fetch-64m", 240000, async () => digest(await proxy.fetchGuest(new Request("/64m"), { port: plan.http })));
  await step("fetch-404", 30000, async () => {
    const r = await proxy.fetchGuest("/no-such-file", { port: plan.http });
    return { status: r.status, body: (await r.text()).slice(0, 200) };
  });

  await step("echo", 30000, async () => {
    const sent = new Uint8Array(plan.echoBytes);
    for (let i = 0; i < sent.length; i++) sent[i] = (i * 7 + (i >> 8)) & 0xff;
    const conn = await proxy.connect(plan.echo);
    const writer = conn.writable.getWriter();
    const reading = new Response(conn.readable).arrayBuffer();
    await writer.write(sent.slice(0, 1000));
    await writer.write(sent.slice(1000));
    await writer.close();
    const back = await reading;
    return { sent: sent.length, received: back.byteLength, sentSha256: await sha256(sent), receivedSha256: await sha256(back) };
  });

  await step("probe-closed", 10000, async () => ({ listening: await proxy.probe(plan.closed) }));
  await step("connect-closed", 10000, async () => {
    const started = performance.now();
    try {
      await proxy.connect(plan.closed);
    } catch (err) {
      return { refused: true, error: err.message, ms: Math.round(performance.now() - started) };
    }
    throw new Error("connect to a closed port resolved");
  });

  // The preview: guest-sw.js with the whole page server as its scope.
  const { startGuestPreview } = await import("./guest-preview.js");
  let preview = null;
  const started = await step("preview-start", 30000, async () => {
    preview = await startGuestPreview(proxy, { scope: "/", timeoutMs: 3000 });
    // clients.claim() in the worker makes this page controlled, so its own fetch() of
    // preview URLs goes through it.
    if (!navigator.serviceWorker.controller) {
      await new Promise((r) => navigator.serviceWorker.addEventListener("controllerchange", r, { once: true }));
    }
    return { scope: preview.scope, secure: isSecureContext, isolated: crossOriginIsolated };
  });
  if (!started.ok) return finish();

  await step("preview-iframe", 60000, async () => {
    const frame = document.getElementById("preview");
    const loaded = new Promise((r) => frame.addEventListener("load", r, { once: true }));
    frame.src = preview.url(plan.http, "/");
    await loaded;
    const doc = frame.contentDocument;
    if (!doc) throw new Error("the iframe's document is not readable");
    // The guest's page runs app.js (a relative URL), which marks the page; wait a moment for it.
    for (let i = 0; i < 50 && !doc.body?.dataset.app; i++) await sleep(100);
    return {
      path: frame.contentWindow.location.pathname,
      title: doc.title,
      marker: doc.getElementById("marker")?.textContent ?? null,
      app: doc.body?.dataset.app ?? null,
      controlled: Boolean(frame.contentWindow.navigator.serviceWorker.controller),
    };
  });
  await step("preview-64m", 240000, async () => digest(await fetch(preview.url(plan.http, "/64m"))));
  await step("preview-redirects", 30000, async () => {
    const out = {};
    for (const name of ["redirect-root", "redirect-absolute", "redirect-relative"]) {
      const r = await fetch(preview.url(plan.http, `/${name}`));
      out[name] = { status: r.status, redirected: r.redirected, url: new URL(r.url).pathname, body: (await r.text()).slice(0, 80) };
    }
    return out;
  });
  await step("preview-cookies", 30000, async () => {
    const set = await fetch(preview.url(plan.http, "/cookie/set"));
    const setBody = await set.text();
    const inPath = await (await fetch(preview.url(plan.http, "/cookie/echo"))).text();
    const outside = await (await fetch(preview.url(plan.http, "/echo-cookie"))).text();
    return { setStatus: set.status, setBody, inPath, outside, documentCookie: document.cookie };
  });
  await step("preview-passthrough", 30000, async () => {
    const own = await fetch("/config.json");
    const other = await fetch(`${config.origins.http}/hello`);
    return { own: own.status, other: other.status, otherBody: (await other.text()).trim() };
  });
  await step("preview-no-page", 30000, async () => {
    preview.stop();
    const t0 = performance.now();
    const r = await fetch(preview.url(plan.http, "/1m"));
    return { status: r.status, body: (await r.text()).trim(), ms: Math.round(performance.now() - t0) };
  });
  finish();
}

/**
 * `cargo xtask bench inbound`'s workloads against the guest's server on `port`, each posted as
 * `inbound.bench-<name>` with what was measured (times in ms from `performance.now()`); the
 * harness checks sizes and sha256 and computes the rates. `b`: {download, downloads, small,
 * requests, uploadSource, upload}, paths and counts. Timed: from the call until the body has
 * been read whole (a download is hashed after its time is taken); an upload until the
 * server's answer has been read (it answers once it has read and hashed every byte).
 * The same workloads then go through the guest-sw.js preview (the page's own fetch() of
 * `/guest/<port>/…`).
 */
async function bench(proxy, port, b) {
  const limit = 600000;
  const downloads = async (get) => {
    const runs = [];
    for (let i = 0; i < b.downloads; i++) {
      const t0 = performance.now();
      const response = await get(b.download);
      const body = await response.arrayBuffer();
      const ms = performance.now() - t0;
      runs.push({ status: response.status, bytes: body.byteLength, elapsedMs: ms, sha256: await sha256(body) });
    }
    return { runs };
  };
  const requests = async (get) => {
    const times = [];
    let bytes = 0;
    for (let i = 0; i < b.requests; i++) {
      const t0 = performance.now();
      const response = await get(b.small);
      const body = await response.arrayBuffer();
      times.push(performance.now() - t0);
      if (response.status !== 200) throw new Error(`request ${i}: status ${response.status}`);
      bytes += body.byteLength;
    }
    return { times, bytes };
  };
  // The bytes to upload come from the guest's own file, so the harness knows their sha256;
  // a Blob is what a page uploading a file would hand over.
  let data = null;
  const post = async () => {
    if (!data) {
      const source = await proxy.fetchGuest(b.uploadSource, { port });
      data = new Blob([await source.arrayBuffer()], { type: "application/octet-stream" });
    }
    return { method: "POST", body: data, headers: { "Content-Type": "application/octet-stream" } };
  };
  const upload = async (send) => {
    const init = await post();
    const t0 = performance.now();
    const response = await send(init);
    const answer = await response.text();
    return { status: response.status, elapsedMs: performance.now() - t0, bytes: data.size, answer };
  };
  const direct = (path) => proxy.fetchGuest(path, { port });
  await step("bench-download", limit, () => downloads(direct));
  await step("bench-upload", limit, () => upload((init) => proxy.fetchGuest(new Request(b.upload, init), { port })));
  await step("bench-requests", limit, () => requests(direct));

  const { startGuestPreview } = await import("./guest-preview.js");
  let preview = null;
  const started = await step("bench-preview-start", 30000, async () => {
    preview = await startGuestPreview(proxy, { scope: "/", timeoutMs: 10000 });
    if (!navigator.serviceWorker.controller) {
      await new Promise((r) => navigator.serviceWorker.addEventListener("controllerchange", r, { once: true }));
    }
    return { scope: preview.scope };
  });
  if (!started.ok) return;
  const viaPreview = (path) => fetch(preview.url(port, path));
  await step("bench-preview-download", limit, () => downloads(viaPreview));
  await step("bench-preview-upload", limit, () => upload((init) => fetch(preview.url(port, b.upload), init)));
  await step("bench-preview-requests", limit, () => requests(viaPreview));
  preview.stop();
}

function finish() {
  status("done");
  report("inbound.done", "{}");
}

main().catch((err) => {
  status(`failed: ${err}`);
  report("fatal", `${err}\n${err && err.stack || ""}`);
});
