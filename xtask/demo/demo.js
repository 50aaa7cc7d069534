// The demo page: v86 boots the guest image with c2w-net-proxy as its network; the serial
// console is an xterm.js terminal, the proxy's state is shown beside it.
//
// URL parameters:
//   allow=loopback,*.example.org  destinations the proxy may fetch (default: everything)
//   net=virtio|ne2k                the emulated NIC (default from config.json)
//   mtu=N                          the link MTU (576-65535): v86's virtio-net offers it to the guest
//                                  (VIRTIO_NET_F_MTU) and the proxy uses it (`network.mtu`); v86's
//                                  own adapters take it too (its fetch backend stalled at 65520,
//                                  docs/benchmarks.md). The ne2k stays at 1500
//   pacing=off|on                  hand the NIC every frame at once, or pace it whatever the NIC
//                                  (default: the adapter decides; nic-pacer.js; for comparison)
//   backend=v86                    v86's own FetchNetworkAdapter instead of c2w-net-proxy (for
//                                  `cargo xtask bench tab`; the side panel stays empty)
//   relay=ws://HOST:PORT/          a Wisp server (ws:// or wss://; wisp:// and wisps:// are taken
//                                  too). With c2w-net-proxy: `relay.url`, raw TCP, UDP and CONNECT
//                                  tunnels go through it. With backend=v86: v86's own
//                                  WispNetworkAdapter on it (`net_device.relay_url` as wisp://)
//                                  instead of its FetchNetworkAdapter
//   relay-hosts=NAME=IP,...        names the relay connects to elsewhere (`relay.hosts`; ours only)
//   source=page                    answer GET /blob/N and POST /echo in the page (N generated
//                                  bytes; the body's length and SHA-256) instead of fetch(): the
//                                  in-tab ceiling `cargo xtask bench tab` compares with (ours only)
//   report=1                       post the console text and stats to the serving xtask
//   run=<script>                   type these lines into the guest's shell once it is ready
//
// Below the console, the guest's own web site (busybox httpd on config.previewPort) in an
// iframe through the preview's Service Worker (setupPreview).

import { V86 } from "./v86/libv86.mjs";
import { C2wNetworkAdapter } from "./dist/v86-adapter.js";
import { Terminal } from "./xterm/xterm.mjs";
import { startGuestPreview } from "./dist/guest-preview.js";

const params = new URLSearchParams(location.search);
const reporting = params.get("report") === "1";
const started = performance.now();
const statusEl = document.getElementById("status");
const timings = {};

function post(key, body) {
  if (!reporting) return Promise.resolve();
  return fetch("report/" + key, { method: "POST", body }).catch(() => {});
}

function setStatus(text) {
  statusEl.textContent = text;
}

function fail(message) {
  setStatus("error: " + message);
  post("fatal", message);
}

window.addEventListener("error", (e) => post("page-error", String(e.message)));
window.addEventListener("unhandledrejection", (e) => post("page-error", String(e.reason)));

// The proxy logs each request through console.info ("http_proxy::conn: request ...");
// keep the recent ones for the request and error lists.
const requestLog = [];
const errorLog = [];
function capture(kind, original) {
  return (...args) => {
    const text = args.map(String).join(" ");
    if (/request failed|refused|denied|CORS|handshake|not allowed|closed/i.test(text)) {
      errorLog.push(text);
      if (errorLog.length > 50) errorLog.shift();
    } else if (/\brequest\b/.test(text) && /method=/.test(text)) {
      requestLog.push(text);
      if (requestLog.length > 50) requestLog.shift();
    }
    original.apply(console, args);
    if (reporting && kind !== "debug") post("log", kind + ": " + text);
  };
}
console.info = capture("info", console.info);
console.warn = capture("warn", console.warn);
console.error = capture("error", console.error);

function explain(text) {
  if (/fetch|Failed to fetch|TypeError|NetworkError|CORS/i.test(text)) {
    return "the browser refused the request: the site does not allow cross-origin requests (CORS), is unreachable, or is outside the allowed destinations";
  }
  if (/handshake|trust/i.test(text)) {
    return "the guest did not trust the proxy's CA (SSL_CERT_FILE=/.wasmenv/proxy.crt)";
  }
  if (/not allowed|denied|refused/i.test(text)) {
    return "the destination is not in the page's allow list";
  }
  return "";
}

// The bytes `source=page` serves, generated once; a body is views of them.
const PAGE_SOURCE_CHUNK = new Uint8Array(64 * 1024).map((_, i) => (i * 7 + 3) & 0xff);

/**
 * `source=page`: the proxy's `fetch` hook. GET /blob/N answers N bytes made in the page and
 * POST /echo the body's length and SHA-256 (as the bench's origins do), whatever the host, so
 * a transfer costs the emulator, the guest and c2w-net-proxy but no network: the in-tab
 * ceiling. Anything else goes to the browser's fetch().
 */
async function pageSource(request) {
  const url = new URL(request.url);
  const blob = /^\/blob\/(\d+)$/.exec(url.pathname);
  if (request.method === "GET" && blob) {
    let left = Number(blob[1]);
    const size = left;
    const body = new ReadableStream(
      {
        pull(controller) {
          if (left === 0) return controller.close();
          const n = Math.min(left, PAGE_SOURCE_CHUNK.length);
          left -= n;
          controller.enqueue(PAGE_SOURCE_CHUNK.subarray(0, n));
        },
      },
      { highWaterMark: 0 },
    );
    return new Response(body, {
      headers: { "content-type": "application/octet-stream", "content-length": String(size) },
    });
  }
  if (request.method === "POST" && url.pathname === "/echo") {
    const bytes = await request.arrayBuffer();
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    const hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
    return new Response(`POST ${bytes.byteLength} ${hex} chunked=false\n`);
  }
  return fetch(request);
}

async function main() {
  const config = await (await fetch("config.json")).json();
  const allow = params.get("allow");
  const net = params.get("net") || config.net || "virtio";
  const ours = params.get("backend") !== "v86";
  // The Wisp server, as our proxy takes it (ws://, wss://) and as v86 takes it (wisp://, wisps://).
  const relay = params.get("relay");
  const relayWs = relay && relay.replace(/^wisp(s?):\/\//, "ws$1://");
  const relayWisp = relay && relay.replace(/^ws(s?):\/\//, "wisp$1://");
  // Jumbo frames reach the guest through virtio only (the ne2k's ring takes 1514 bytes).
  const mtu = params.get("mtu") && net === "virtio" ? Number(params.get("mtu")) : null;

  const term = new Terminal({ rows: 30, cols: 100, convertEol: false, scrollback: 5000 });
  term.open(document.getElementById("terminal"));

  const emulator = new V86({
    wasm_path: "v86/v86.wasm",
    memory_size: 256 * 1024 * 1024,
    vga_memory_size: 2 * 1024 * 1024,
    bios: { url: "bios/bios.bin" },
    vga_bios: { url: "bios/vgabios.bin" },
    bzimage: { url: "guest/bzImage" },
    initrd: { url: "guest/initrd.img" },
    cmdline: config.cmdline,
    net_device: {
      type: net,
      ...(ours ? {} : { relay_url: relay ? relayWisp : "fetch" }),
      ...(mtu ? { mtu } : {}),
    },
    disable_keyboard: true,
    disable_mouse: true,
    disable_speaker: true,
    autostart: true,
  });

  // The glue has no default location for its .wasm (no import.meta.url), so name it.
  const proxyConfig = { logLevel: "info", wasm: new URL("dist/c2w_net_proxy_bg.wasm", location.href) };
  if (allow) proxyConfig.allow = allow.split(",").filter(Boolean);
  if (mtu) proxyConfig.network = { mtu };
  if (params.get("pacing") === "off") proxyConfig.pacing = false;
  if (params.get("pacing") === "on") proxyConfig.pacing = {};
  if (params.get("source") === "page") proxyConfig.fetch = pageSource;
  if (relay) {
    proxyConfig.relay = { url: relayWs };
    const hosts = (params.get("relay-hosts") || "").split(",").filter(Boolean);
    if (hosts.length) proxyConfig.relay.hosts = Object.fromEntries(hosts.map((h) => h.split("=", 2)));
  }
  let adapter = null;
  let proxy = null;
  let caPem = null;
  if (ours) {
    adapter = new C2wNetworkAdapter(emulator.bus, proxyConfig);
    try {
      proxy = await adapter.ready;
    } catch (err) {
      fail("the proxy did not start: " + err.message);
      return;
    }
    timings.proxyReadyMs = Math.round(performance.now() - started);
    caPem = adapter.caCertificatePem();
    setupButtons(proxy, caPem);
  }
  setupPreview(proxy, config.previewPort);
  setStatus("booting Linux…");

  // Console: guest output to the terminal (batched), keystrokes to the guest.
  let consoleText = "";
  let pending = [];
  let flushTimer = null;
  emulator.add_listener("serial0-output-byte", (byte) => {
    pending.push(byte);
    consoleText += String.fromCharCode(byte);
    if (!flushTimer) {
      flushTimer = setTimeout(() => {
        term.write(new Uint8Array(pending));
        pending = [];
        flushTimer = null;
        onConsole(consoleText);
      }, 15);
    }
  });
  term.onData((data) => emulator.serial0_send(data));
  emulator.add_listener("emulator-started", () => {
    timings.emulatorStartedMs = Math.round(performance.now() - started);
  });

  const script = params.get("run");
  let typed = false;
  function onConsole(text) {
    if (!timings.leaseMs && /c2w-demo: lease /.test(text)) {
      timings.leaseMs = Math.round(performance.now() - started);
    }
    if (!timings.shellMs && /c2w-demo: shell ready/.test(text)) {
      timings.shellMs = Math.round(performance.now() - started);
      setStatus(`Linux is up: shell after ${(timings.shellMs / 1000).toFixed(1)} s`);
      term.focus();
      if (script && !typed) {
        typed = true;
        // Let the shell print its prompt, then type the script.
        setTimeout(() => emulator.serial0_send(script.endsWith("\n") ? script : script + "\n"), 500);
      }
    }
    if (proxy && !timings.firstRequestMs && proxy.stats().proxy.requests > 0) {
      timings.firstRequestMs = Math.round(performance.now() - started);
    }
    if (typed && !timings.firstCurlMs && /http-rc=\d/.test(text)) {
      timings.firstCurlMs = Math.round(performance.now() - started);
    }
  }

  // Live state and, when reporting, the console and stats to the xtask.
  let lastPosted = "";
  setInterval(() => {
    const stats = proxy ? proxy.stats() : null;
    const pacing = adapter ? adapter.pacingStats() : null;
    const nic = adapter ? adapter.nicStats() : null;
    if (stats && !timings.firstRequestMs && stats.proxy.requests > 0) {
      timings.firstRequestMs = Math.round(performance.now() - started);
    }
    if (stats) render(stats, pacing);
    if (reporting && consoleText !== lastPosted) {
      lastPosted = consoleText;
      post("console", consoleText);
      post("stats", JSON.stringify({ stats, timings, pacing, nic }));
      post("panel", document.getElementById("side").innerText);
    }
  }, 500);
  post("ready", JSON.stringify({ timings, caPem }));
}

// The preview: guest-sw.js (served at the site root) with the scope preview/, so it sees only
// preview/guest/<port>/… and none of the demo's own requests. The outcome is posted as
// `preview` for the check: {state, reason?, ...what the iframe loaded}.
const PREVIEW_SCOPE = "preview/";
/** How long to wait for the guest's web server to listen (boot included). */
const PREVIEW_WAIT_MS = 300000;
/** How long the iframe, and then its page's own request to the guest, may take. */
const PREVIEW_LOAD_MS = 60000;

/** Shows the guest's web server on `port` in the preview iframe once it listens. */
async function setupPreview(proxy, port) {
  const caption = document.getElementById("preview-caption");
  const retry = document.getElementById("preview-retry");
  const say = (text, failed = false) => {
    caption.textContent = text;
    caption.classList.toggle("failed", failed);
  };
  const report = (result) => post("preview", JSON.stringify(result));
  if (!proxy) {
    const reason =
      "backend=v86 runs v86's own network adapter, which cannot open connections into the guest; " +
      "the preview needs c2w-net-proxy's fetchGuest (drop backend=v86 from the URL)";
    say("No preview: " + reason + ".", true);
    report({ state: "unavailable", reason });
    return;
  }
  let preview;
  try {
    preview = await startGuestPreview(proxy, { swUrl: "guest-sw.js", scope: PREVIEW_SCOPE });
  } catch (err) {
    const reason = isSecureContext
      ? err.message
      : "this page is not a secure context, and Service Workers need one: open it over https:// " +
        "or from http://localhost or http://127.0.0.1";
    say("No preview: " + reason, true);
    report({ state: "no-service-worker", reason, secure: isSecureContext });
    return;
  }
  const show = async () => {
    retry.hidden = true;
    let result;
    try {
      result = await waitAndLoad(proxy, preview, port, say);
    } catch (err) {
      result = { state: "error", reason: String(err && err.message || err) };
      say("Preview failed: " + result.reason, true);
    }
    if (result.state !== "loaded") retry.hidden = false;
    report(result);
  };
  retry.onclick = show;
  await show();
}

/** Polls `probe(port)` until the guest listens, then loads the preview and inspects it. */
async function waitAndLoad(proxy, preview, port, say) {
  say(`Waiting for the guest's web server on port ${port} (busybox httpd, started by the guest's /init)…`);
  const deadline = performance.now() + PREVIEW_WAIT_MS;
  let last = "";
  for (;;) {
    try {
      if (await proxy.probe(port, { timeoutMs: 2000 })) break;
      last = `nothing listens on port ${port} yet (the guest refused the connection)`;
    } catch (err) {
      last = err.message; // no lease yet, or the guest stayed silent
    }
    if (performance.now() > deadline) {
      const reason = `the guest's port ${port} did not answer within ${PREVIEW_WAIT_MS / 1000} s: ${last}`;
      say(`No preview: ${reason}. Start the server in the shell (httpd -p ${port} -h /srv/www) and try again.`, true);
      return { state: "not-listening", reason };
    }
    await sleep(1000);
  }
  timings.previewListeningMs = Math.round(performance.now() - started);

  const url = preview.url(port, "/");
  const frame = document.getElementById("preview-frame");
  const open = document.getElementById("preview-open");
  open.href = url;
  document.getElementById("preview-actions").hidden = false;
  say(`The guest's site, from busybox httpd on port ${port}, through ${new URL(url).pathname}:`);
  const loaded = new Promise((resolve) => frame.addEventListener("load", resolve, { once: true }));
  frame.hidden = false;
  frame.src = url;
  if (!(await within(loaded, PREVIEW_LOAD_MS))) {
    const reason = `the iframe did not finish loading ${url} within ${PREVIEW_LOAD_MS / 1000} s`;
    say("Preview: " + reason, true);
    return { state: "timeout", reason, url };
  }
  timings.previewLoadedMs = Math.round(performance.now() - started);
  return { state: "loaded", url, ...(await inspectPreview(frame)) };
}

/** What the preview iframe loaded (it is same-origin through the worker, so readable). */
async function inspectPreview(frame) {
  const win = frame.contentWindow;
  const doc = frame.contentDocument;
  if (!doc) return { readable: false };
  // page.js fills "Live from the guest" from cgi-bin/status after load; wait for it.
  const until = performance.now() + PREVIEW_LOAD_MS;
  while (!doc.body?.dataset.live && performance.now() < until) await sleep(100);
  const img = doc.getElementById("logo");
  const about = {};
  try {
    // The iframe's own fetch: its window is controlled by the worker, the URL is relative.
    const r = await win.fetch(new URL("about.html", doc.baseURI));
    const text = await r.text();
    Object.assign(about, { status: r.status, path: new URL(r.url).pathname, page: /id="about"/.test(text) });
  } catch (err) {
    about.error = err.message;
  }
  return {
    readable: true,
    path: win.location.pathname,
    controlled: Boolean(win.navigator.serviceWorker && win.navigator.serviceWorker.controller),
    title: doc.title,
    marker: doc.getElementById("served-by")?.textContent ?? null,
    body: (doc.body?.innerText ?? "").slice(0, 300),
    stylesheet: win.getComputedStyle(doc.documentElement).getPropertyValue("--c2w-guest-style").trim(),
    image: img ? { complete: img.complete, width: img.naturalWidth } : null,
    live: doc.body?.dataset.live ?? null,
    hostname: doc.body?.dataset.hostname ?? null,
    client: doc.body?.dataset.client ?? null,
    liveText: doc.getElementById("live")?.innerText ?? null,
    about,
  };
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Whether `promise` settles within `ms`. */
function within(promise, ms) {
  let timer;
  return Promise.race([
    promise.then(() => true),
    new Promise((resolve) => (timer = setTimeout(() => resolve(false), ms))),
  ]).finally(() => clearTimeout(timer));
}

function setupButtons(proxy, caPem) {
  const caButton = document.getElementById("ca-button");
  caButton.disabled = false;
  caButton.onclick = () => download("c2w-net-proxy-ca.pem", new Blob([caPem], { type: "application/x-pem-file" }));
  const pcapButton = document.getElementById("pcap-button");
  pcapButton.disabled = false;
  let capturing = false;
  pcapButton.onclick = () => {
    if (!capturing) {
      proxy.startCapture();
      capturing = true;
      pcapButton.textContent = "Stop capture and download pcap";
    } else {
      const bytes = proxy.stopCapture();
      capturing = false;
      pcapButton.textContent = "Start capture";
      download("c2w-net-proxy.pcap", new Blob([bytes], { type: "application/vnd.tcpdump.pcap" }));
    }
  };
}

function download(name, blob) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

function render(s, pacing) {
  const leases = s.dhcp.leases.map((l) => `${l.ip} (${l.mac})`).join(", ") || "none yet";
  const rows = [
    ["lease", leases],
    ["requests", s.proxy.requests],
    ["responses ok", s.proxy.responsesOk],
    ["error status", s.proxy.responsesErrorStatus],
    ["bad requests", s.proxy.errors.badRequests],
    ["transport errors", s.proxy.errors.transportErrors],
    ["aborted", s.proxy.errors.abortedResponses],
    ["connections", `${s.proxy.connectionsOpen} open / ${s.proxy.connectionsTotal}`],
    ["to guest", fmtBytes(s.proxy.bytesToGuest)],
    ["from guest", fmtBytes(s.proxy.bytesFromGuest)],
    ["DNS queries", `${s.dns.queries} (${s.dns.errors} errors)`],
    ["frames", `${s.framesIn} in / ${s.framesOut} out, ${s.drops.total} dropped`],
    ["capturing", s.capturing ? "yes" : "no"],
    ["NIC pacing", pacing ? `${pacing.nic} (${pacing.mode}): ${pacing.deferred} frames waited, ${pacing.queued} waiting, ${pacing.dropped} dropped` : "off"],
    ["wasm memory", fmtBytes(s.wasmMemoryBytes)],
    ["heap in use", `${fmtBytes(s.heapBytes)} (peak ${fmtBytes(s.heapPeakBytes)})`],
  ];
  const dl = document.getElementById("summary");
  dl.replaceChildren(
    ...rows.flatMap(([k, v]) => {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = String(v);
      return [dt, dd];
    }),
  );
  renderList("requests", requestLog, false);
  renderList("errors", errorLog, true);
}

function renderList(id, lines, withReason) {
  const ol = document.getElementById(id);
  ol.replaceChildren(
    ...lines
      .slice(-20)
      .reverse()
      .map((line) => {
        const li = document.createElement("li");
        li.textContent = line.replace(/^http_proxy::\w+: /, "");
        const why = withReason ? explain(line) : "";
        if (why) {
          const span = document.createElement("div");
          span.className = "why";
          span.textContent = why;
          li.append(span);
        }
        return li;
      }),
  );
}

function fmtBytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1 << 20) return (n / 1024).toFixed(1) + " KiB";
  return (n / (1 << 20)).toFixed(1) + " MiB";
}

main().catch((err) => fail(String(err && err.stack ? err.stack : err)));
