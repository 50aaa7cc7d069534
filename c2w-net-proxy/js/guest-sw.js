// guest-sw.js: the Service Worker of the guest preview. Requests under
// `<scope>guest/<port>/…` of this worker's own origin are answered by the guest's server,
// through a page that runs a NetProxy and called `startGuestPreview` (guest-preview.js):
// the worker sends each request (method, guest path and query, headers, body) over a
// MessageChannel to such a page, which calls `proxy.fetchGuest` and streams the response back
// in chunks the worker acknowledges as its reader takes them (bodies are never collected).
// Everything else — other paths, other origins — is not touched: the browser fetches it as if
// there were no worker.
//
// Register it from a page (guest-preview.js does): its scope must lie under the directory
// the file is served from (or the server sends `Service-Worker-Allowed`).
// `?timeoutMs=N` on the script URL: how long a request waits for a page with a NetProxy
// (default 3000).
"use strict";

const PROTOCOL = "c2w-guest-preview/1";
const params = new URL(self.location.href).searchParams;
/** How long the worker waits for a page to take a request. */
const PROVIDER_TIMEOUT_MS = positive(params.get("timeoutMs"), 3000);
/** How long the worker waits for the response head once a page took the request
 * (fetchGuest gives up after 10 s of connecting and 60 s of silence). */
const HEAD_TIMEOUT_MS = 90000;
/** How long a response body may stay silent before the worker fails it. */
const BODY_IDLE_MS = 90000;
/** Bytes of request body sent to the page per message. */
const REQUEST_CHUNK = 64 * 1024;

function positive(text, fallback) {
  const n = Number(text);
  return Number.isFinite(n) && n > 0 ? n : fallback;
}

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  // Only this origin's URLs under the preview path: everything else passes through.
  if (url.origin !== self.location.origin) return;
  const base = new URL(self.registration.scope).pathname + "guest/";
  if (!url.pathname.startsWith(base)) return;
  const match = /^(\d{1,5})(\/.*)?$/.exec(url.pathname.slice(base.length));
  if (!match) return;
  const port = Number(match[1]);
  if (!match[2]) {
    // `…/guest/8000` → `…/guest/8000/`, so the guest's relative links resolve inside it.
    event.respondWith(Response.redirect(`${url.origin}${base}${match[1]}/${url.search}`, 301));
    return;
  }
  event.respondWith(answer(event, port, match[2] + url.search, url.origin + base + match[1]));
});

function failure(status, message) {
  return new Response(`guest preview: ${message}\n`, {
    status,
    headers: { "Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store" },
  });
}

async function answer(event, port, path, prefix) {
  const request = event.request;
  if (port < 1 || port > 65535) return failure(400, `port ${port} is outside 1-65535`);
  // A navigation that another site started (its Referer says so) is refused: only this
  // origin's pages use the preview.
  if (request.referrer && new URL(request.referrer).origin !== self.location.origin) {
    return failure(403, "a page of another origin cannot open the preview");
  }
  let channel;
  try {
    channel = await findProvider(event.clientId || event.resultingClientId);
  } catch (err) {
    return failure(503, `${err.message}`);
  }
  if (!channel) {
    return failure(
      503,
      `no page with a running NetProxy answered within ${PROVIDER_TIMEOUT_MS} ms ` +
        "(open the page that runs the guest, or call startGuestPreview there)",
    );
  }
  return forward(channel, request, port, path, prefix);
}

/**
 * Asks every window of this origin whether it serves previews; the first to answer gets the
 * request (a page with a NetProxy that called startGuestPreview answers at once).
 */
async function findProvider(preferred) {
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const scope = self.registration.scope;
  if (preferred) windows.sort((a, b) => (b.id === preferred) - (a.id === preferred));
  return new Promise((resolve) => {
    const ports = [];
    let done = false;
    const finish = (winner) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      for (const p of ports) if (p !== winner) p.close();
      resolve(winner);
    };
    const timer = setTimeout(() => finish(null), PROVIDER_TIMEOUT_MS);
    for (const client of windows) {
      const channel = new MessageChannel();
      ports.push(channel.port1);
      channel.port1.onmessage = (e) => {
        if (e.data && e.data.type === "pong") finish(channel.port1);
      };
      client.postMessage({ type: "ping", protocol: PROTOCOL, scope }, [channel.port2]);
    }
  });
}

/** The request's body as a pull source over the port, or null. */
async function requestBody(request) {
  if (request.method === "GET" || request.method === "HEAD") return null;
  if (request.body) return request.body.getReader();
  // Browsers that do not expose a request's body as a stream: its bytes, whole.
  const whole = new Uint8Array(await request.arrayBuffer());
  if (whole.byteLength === 0) return null;
  let at = 0;
  return {
    read: async () => {
      if (at >= whole.byteLength) return { done: true };
      const value = whole.slice(at, at + REQUEST_CHUNK);
      at += value.byteLength;
      return { done: false, value };
    },
    cancel: async () => {},
  };
}

function forward(port, request, guestPort, path, prefix) {
  return new Promise((resolve) => {
    let body = null;
    let controller = null;
    let headTimer = null;
    let idleTimer = null;
    const pending = []; // chunks received and not yet read
    let ended = false;
    let failed = null;
    let waiting = null; // the pull waiting for a chunk

    const close = () => {
      clearTimeout(headTimer);
      clearTimeout(idleTimer);
      port.onmessage = null;
      port.close();
    };
    const fail = (message) => {
      if (controller) {
        failed = new Error(`guest preview: ${message}`);
        if (waiting) {
          waiting();
          waiting = null;
        }
      } else {
        resolve(failure(502, message));
      }
      close();
      if (body) body.cancel().catch(() => {});
    };
    const armIdle = () => {
      clearTimeout(idleTimer);
      idleTimer = setTimeout(
        () => fail(`the response body stayed silent for ${BODY_IDLE_MS / 1000} s (is the page still open?)`),
        BODY_IDLE_MS,
      );
    };
    headTimer = setTimeout(
      () => fail(`no response head from the page within ${HEAD_TIMEOUT_MS / 1000} s`),
      HEAD_TIMEOUT_MS,
    );

    port.onmessage = async (e) => {
      const msg = e.data || {};
      switch (msg.type) {
        case "body-pull": {
          try {
            const { done, value } = await body.read();
            if (done) port.postMessage({ type: "body-end" });
            else {
              const bytes = value instanceof Uint8Array ? value : new Uint8Array(value);
              port.postMessage({ type: "body-chunk", bytes }, [bytes.buffer]);
            }
          } catch (err) {
            port.postMessage({ type: "body-error", message: String(err && err.message || err) });
          }
          break;
        }
        case "head": {
          clearTimeout(headTimer);
          const status = msg.status;
          const headers = new Headers(msg.headers);
          const location = headers.get("Location");
          if ([301, 302, 303, 307, 308].includes(status) && location) {
            close();
            resolve(Response.redirect(rewriteLocation(location, request.url, prefix, guestPort), status));
            return;
          }
          // Only pages of this origin may frame a preview.
          headers.append("Content-Security-Policy", "frame-ancestors 'self'");
          if (msg.empty) {
            close();
            resolve(new Response(null, { status, statusText: msg.statusText, headers }));
            return;
          }
          armIdle();
          const stream = new ReadableStream(
            {
              start(c) {
                controller = c;
              },
              async pull(c) {
                while (!pending.length && !ended && !failed) {
                  await new Promise((wake) => (waiting = wake));
                }
                if (pending.length) {
                  const chunk = pending.shift();
                  c.enqueue(chunk);
                  port.postMessage({ type: "ack", bytes: chunk.byteLength });
                } else if (failed) {
                  c.error(failed);
                } else {
                  c.close();
                  close();
                }
              },
              cancel(reason) {
                port.postMessage({ type: "cancel", reason: String(reason) });
                close();
              },
            },
            { highWaterMark: 0 },
          );
          resolve(new Response(stream, { status, statusText: msg.statusText, headers }));
          break;
        }
        case "chunk":
        case "end":
        case "error": {
          if (msg.type === "chunk") pending.push(new Uint8Array(msg.bytes));
          if (msg.type === "end") ended = true;
          if (msg.type === "error") {
            fail(msg.message || "the page failed the request");
            return;
          }
          armIdle();
          if (waiting) {
            waiting();
            waiting = null;
          }
          break;
        }
      }
    };

    requestBody(request)
      .then((reader) => {
        body = reader;
        const headers = [];
        request.headers.forEach((value, name) => headers.push([name, value]));
        port.postMessage({
          type: "request",
          port: guestPort,
          method: request.method,
          path,
          headers,
          hasBody: reader !== null,
          prefix,
        });
      })
      .catch((err) => fail(`reading the request body: ${err && err.message || err}`));
  });
}

/**
 * A Location the guest sent, as a URL of the preview: root-relative (`/x`) and absolute ones
 * naming the guest's own port (any host: the guest knows itself by several names) go under
 * the preview prefix; anything else is left alone.
 */
function rewriteLocation(location, requestUrl, prefix, guestPort) {
  if (location.startsWith("/") && !location.startsWith("//")) return prefix + location;
  let url;
  try {
    // A relative Location resolves against the request's (preview) URL, as the browser would.
    url = new URL(location, requestUrl);
  } catch {
    return location;
  }
  if (url.href.startsWith(prefix + "/")) return url.href;
  const port = url.port ? Number(url.port) : url.protocol === "http:" ? 80 : 0;
  if (url.protocol === "http:" && port === guestPort) {
    return prefix + url.pathname + url.search + url.hash;
  }
  return url.href;
}
