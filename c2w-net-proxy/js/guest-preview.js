// guest-preview.js: the page side of the guest preview. `startGuestPreview(proxy)` registers
// guest-sw.js and answers its requests for `<scope>guest/<port>/…` with `proxy.fetchGuest`,
// streaming each response body back to the worker in chunks it acknowledges (at most
// WINDOW bytes unacknowledged per response), so a large body never sits whole in memory.
// Cookies the guest sets are kept here, per guest port (a Service Worker's response cannot
// set browser cookies), and sent back with the guest's requests.

const PROTOCOL = "c2w-guest-preview/1";
/** Response bytes sent to the worker and not yet taken by its reader. */
const WINDOW = 1 << 20;
/** Request bodies, when this browser cannot stream them into a Request, are collected up to this. */
const MAX_COLLECTED_BODY = 64 << 20;
/** A port the worker handed over but never sent a request on is closed after this. */
const REQUEST_WAIT_MS = 30000;
/** How long registering the worker may take. */
const ACTIVATE_TIMEOUT_MS = 15000;
const HOP_BY_HOP = new Set([
  "connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te", "trailer",
]);

/**
 * Starts answering the preview's requests from this page's NetProxy.
 * @param {{fetchGuest: Function}} proxy a NetProxy (or anything with its `fetchGuest`)
 * @param {object} [options]
 * @param {string|URL} [options.swUrl] where guest-sw.js is served (default: next to this file)
 * @param {string|URL} [options.scope] the worker's scope (default: the directory of swUrl);
 *   previews live at `<scope>guest/<port>/`
 * @param {string} [options.ip] the guest's address (default: its latest DHCP lease)
 * @param {number} [options.timeoutMs] how long the worker waits for a page with a NetProxy
 * @param {"auto"|boolean} [options.isolation] add COEP/CORP headers to previews, so a
 *   cross-origin isolated page can frame them (default "auto": when this page is isolated)
 */
export async function startGuestPreview(proxy, options = {}) {
  if (!proxy || typeof proxy.fetchGuest !== "function") {
    throw new TypeError("startGuestPreview: the first argument must be a NetProxy (it has no fetchGuest)");
  }
  const known = ["swUrl", "scope", "ip", "timeoutMs", "isolation"];
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) {
      throw new TypeError(`startGuestPreview: unknown option ${JSON.stringify(key)} (known: ${known.join(", ")})`);
    }
  }
  if (!("serviceWorker" in navigator)) {
    throw new Error(
      "startGuestPreview: this browser offers no Service Workers here (an insecure context, " +
        "private browsing, or a worker instead of a page)",
    );
  }
  const swUrl = new URL(options.swUrl ?? new URL("./guest-sw.js", import.meta.url), location.href);
  if (options.timeoutMs !== undefined) {
    if (!(options.timeoutMs > 0)) throw new TypeError("startGuestPreview: timeoutMs must be a positive number");
    swUrl.searchParams.set("timeoutMs", String(options.timeoutMs));
  }
  const scope = new URL(options.scope ?? new URL("./", swUrl), location.href).href;
  const isolation = options.isolation ?? "auto";
  const addIsolation = isolation === "auto" ? Boolean(globalThis.crossOriginIsolated) : Boolean(isolation);

  let registration;
  try {
    registration = await navigator.serviceWorker.register(swUrl.href, { scope });
  } catch (err) {
    throw new Error(`startGuestPreview: registering ${swUrl.href} for scope ${scope} failed: ${err && err.message || err}`);
  }
  await activated(registration);

  const jar = new CookieJar();
  const open = new Set(); // ports of requests in progress
  let running = true;
  const onMessage = (event) => {
    const data = event.data;
    const port = event.ports && event.ports[0];
    if (!running || !port || !data || data.type !== "ping" || data.protocol !== PROTOCOL) return;
    if (data.scope !== registration.scope) return;
    const timer = setTimeout(() => port.close(), REQUEST_WAIT_MS);
    port.onmessage = (e) => {
      if (!e.data || e.data.type !== "request") return;
      clearTimeout(timer);
      open.add(port);
      serve(proxy, port, e.data, { ip: options.ip, jar, addIsolation })
        .catch((err) => port.postMessage({ type: "error", message: describe(err) }))
        .finally(() => open.delete(port));
    };
    port.postMessage({ type: "pong" });
  };
  const onHide = () => {
    for (const port of open) port.postMessage({ type: "error", message: "the page that ran the guest went away" });
  };
  navigator.serviceWorker.addEventListener("message", onMessage);
  navigator.serviceWorker.startMessages();
  addEventListener("pagehide", onHide);

  const stop = () => {
    running = false;
    navigator.serviceWorker.removeEventListener("message", onMessage);
    removeEventListener("pagehide", onHide);
  };
  return {
    scope,
    registration,
    /** The preview URL of `path` on guest `port`. */
    url(port, path = "/") {
      if (!Number.isInteger(port) || port < 1 || port > 65535) {
        throw new RangeError(`startGuestPreview: url: port ${port} is outside 1-65535`);
      }
      return `${scope}guest/${port}${path.startsWith("/") ? path : "/" + path}`;
    },
    /** Stops answering (the worker then answers 503 for previews this page would have served). */
    stop,
    /** Stops answering and unregisters the worker: preview URLs then reach the server. */
    async unregister() {
      stop();
      return registration.unregister();
    },
  };
}

function describe(err) {
  return String((err && err.message) || err);
}

async function activated(registration) {
  const worker = registration.installing || registration.waiting || registration.active;
  if (!worker) throw new Error("startGuestPreview: the registration has no worker");
  if (worker.state === "activated") return;
  await new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`startGuestPreview: the worker did not activate within ${ACTIVATE_TIMEOUT_MS} ms (state ${worker.state})`)),
      ACTIVATE_TIMEOUT_MS,
    );
    worker.addEventListener("statechange", () => {
      if (worker.state === "activated") {
        clearTimeout(timer);
        resolve();
      } else if (worker.state === "redundant") {
        clearTimeout(timer);
        reject(new Error("startGuestPreview: the worker failed to install (redundant)"));
      }
    });
  });
}

/** Whether `new Request` takes a ReadableStream body (with `duplex: "half"`). */
const streamingRequests = (() => {
  try {
    let duplex = false;
    const hasType = new Request("http://x.invalid/", {
      method: "POST",
      body: new ReadableStream(),
      get duplex() {
        duplex = true;
        return "half";
      },
    }).headers.has("Content-Type");
    return duplex && !hasType;
  } catch {
    return false;
  }
})();

/** One request from the worker: fetchGuest, then the head and the body back over `port`. */
async function serve(proxy, port, msg, { ip, jar, addIsolation }) {
  // Messages from the worker: acknowledgements, a cancel, and request body chunks.
  let credit = WINDOW;
  let wakeCredit = null;
  let cancelled = null;
  let bodyReply = null;
  port.onmessage = (e) => {
    const m = e.data || {};
    if (m.type === "ack") {
      credit += m.bytes;
    } else if (m.type === "cancel") {
      cancelled = m.reason || "cancelled";
    } else if (m.type.startsWith("body-") && bodyReply) {
      const reply = bodyReply;
      bodyReply = null;
      reply(m);
      return;
    }
    if (wakeCredit) {
      wakeCredit();
      wakeCredit = null;
    }
  };

  let body;
  if (msg.hasBody) {
    const stream = new ReadableStream({
      pull: async (controller) => {
        const m = await new Promise((resolve) => {
          bodyReply = resolve;
          port.postMessage({ type: "body-pull" });
        });
        if (m.type === "body-chunk") controller.enqueue(new Uint8Array(m.bytes));
        else if (m.type === "body-end") controller.close();
        else controller.error(new Error(`the request body failed: ${m.message}`));
      },
    });
    body = streamingRequests ? stream : await collect(stream);
  }
  const guestPath = msg.path.split("?")[0];
  const extra = [];
  const cookie = jar.header(msg.port, guestPath);
  if (cookie) extra.push(["Cookie", cookie]);
  const request = new Request(new URL(msg.path, location.origin), {
    method: msg.method,
    headers: msg.headers,
    ...(body !== undefined ? { body, ...(streamingRequests ? { duplex: "half" } : {}) } : {}),
  });
  const response = await proxy.fetchGuest(request, {
    port: msg.port,
    ...(ip ? { ip } : {}),
    ...(extra.length ? { headers: extra } : {}),
  });

  const raw = response.guestHeaders || [...response.headers];
  const headers = [];
  let encoding = null;
  for (const [name, value] of raw) {
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower)) continue;
    if (lower === "set-cookie") {
      jar.store(msg.port, guestPath, value);
      continue;
    }
    if (lower === "content-encoding") encoding = value.trim().toLowerCase();
    headers.push([name, value]);
  }
  let stream = response.body;
  if (stream && (encoding === "gzip" || encoding === "deflate") && typeof DecompressionStream === "function") {
    // A Service Worker's response is not decoded again by the browser.
    stream = stream.pipeThrough(new DecompressionStream(encoding));
    for (let i = headers.length - 1; i >= 0; i--) {
      const lower = headers[i][0].toLowerCase();
      if (lower === "content-encoding" || lower === "content-length") headers.splice(i, 1);
    }
  }
  if (addIsolation) {
    const has = (n) => headers.some(([name]) => name.toLowerCase() === n);
    if (!has("cross-origin-embedder-policy")) headers.push(["Cross-Origin-Embedder-Policy", "require-corp"]);
    if (!has("cross-origin-resource-policy")) headers.push(["Cross-Origin-Resource-Policy", "same-origin"]);
  }
  const empty = !stream || msg.method === "HEAD" || [204, 205, 304].includes(response.status);
  port.postMessage({ type: "head", status: response.status, statusText: response.statusText, headers, empty });
  if (empty) {
    if (stream) await stream.cancel().catch(() => {});
    return;
  }

  const reader = stream.getReader();
  try {
    for (;;) {
      while (credit <= 0 && !cancelled) await new Promise((wake) => (wakeCredit = wake));
      if (cancelled) {
        await reader.cancel(cancelled).catch(() => {});
        return;
      }
      const { done, value } = await reader.read();
      if (done) break;
      if (!value.byteLength) continue;
      credit -= value.byteLength;
      const bytes = value.byteOffset === 0 && value.byteLength === value.buffer.byteLength ? value : value.slice();
      port.postMessage({ type: "chunk", bytes: bytes.buffer }, [bytes.buffer]);
    }
    port.postMessage({ type: "end" });
  } catch (err) {
    port.postMessage({ type: "error", message: `the guest's response body failed: ${describe(err)}` });
  }
}

async function collect(stream) {
  const parts = [];
  let size = 0;
  const reader = stream.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > MAX_COLLECTED_BODY) {
      await reader.cancel().catch(() => {});
      throw new Error(`the request body is over ${MAX_COLLECTED_BODY} bytes and this browser cannot stream it`);
    }
    parts.push(value);
  }
  return new Blob(parts);
}

/**
 * The cookies guest servers set, per guest port, matched by the guest's own paths
 * (RFC 6265 §5.1.4; Domain is ignored: each port is its own host).
 */
class CookieJar {
  constructor() {
    this.byPort = new Map();
  }

  store(port, requestPath, header) {
    const [pair, ...attrs] = header.split(";");
    const eq = pair.indexOf("=");
    if (eq < 1) return;
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    // Default path: the request path up to its last "/".
    let path = requestPath.lastIndexOf("/") > 0 ? requestPath.slice(0, requestPath.lastIndexOf("/")) : "/";
    let expires = Infinity;
    for (const attr of attrs) {
      const at = attr.indexOf("=");
      const key = (at < 0 ? attr : attr.slice(0, at)).trim().toLowerCase();
      const val = at < 0 ? "" : attr.slice(at + 1).trim();
      if (key === "path" && val.startsWith("/")) path = val;
      else if (key === "max-age" && /^-?\d+$/.test(val)) expires = Date.now() + Number(val) * 1000;
      else if (key === "expires" && expires === Infinity) {
        const t = Date.parse(val);
        if (!Number.isNaN(t)) expires = t;
      }
    }
    const cookies = this.byPort.get(port) || new Map();
    this.byPort.set(port, cookies);
    const key = `${name}\n${path}`;
    if (expires <= Date.now()) cookies.delete(key);
    else cookies.set(key, { name, value, path, expires });
  }

  header(port, requestPath) {
    const cookies = this.byPort.get(port);
    if (!cookies) return "";
    const now = Date.now();
    const matching = [];
    for (const [key, c] of cookies) {
      if (c.expires <= now) {
        cookies.delete(key);
        continue;
      }
      const under = requestPath === c.path ||
        (requestPath.startsWith(c.path) && (c.path.endsWith("/") || requestPath[c.path.length] === "/"));
      if (under) matching.push(c);
    }
    matching.sort((a, b) => b.path.length - a.path.length);
    return matching.map((c) => `${c.name}=${c.value}`).join("; ");
  }
}
