// Helpers shared by the browser e2e pages: everything the harness learns from a page arrives
// as `POST /report/<key>` on the page's own server (see xtask/src/harness/browser/page_server.rs).

/** Posts `value` (a string, or anything JSON can carry) under `key`. */
export async function report(key, value) {
  const body = typeof value === "string" ? value : JSON.stringify(value, jsonSafe);
  try {
    await fetch(`/report/${encodeURIComponent(key)}`, { method: "POST", body });
  } catch (err) {
    console.error(`report ${key} failed`, err);
  }
}

/** JSON replacer for what stats() may hold: BigInt, Map. */
export function jsonSafe(_key, value) {
  if (typeof value === "bigint") return Number(value);
  if (value instanceof Map) return Object.fromEntries(value);
  return value;
}

/** Forwards uncaught errors and rejections, and console errors, to the harness. */
export function watchErrors() {
  addEventListener("error", (e) => report("page-error", `error: ${e.message} at ${e.filename}:${e.lineno}`));
  addEventListener("unhandledrejection", (e) => report("page-error", `unhandled rejection: ${e.reason && e.reason.stack || e.reason}`));
}

/** Logs a line in the page console and in the harness's output. */
export function log(line) {
  console.log(line);
  report("log", line);
}

/** The run's configuration: origins and rewrites (written by the harness). */
export async function loadConfig() {
  const resp = await fetch("/config.json");
  if (!resp.ok) throw new Error(`config.json: ${resp.status}`);
  return resp.json();
}

/**
 * Sets a cookie for the CORS origin in this browser profile with a credentialed fetch, then
 * reads it back the same way, so the harness knows the cookie really is there before it checks
 * that the proxy never sends it.
 */
export async function plantCookie(origin) {
  const set = await fetch(`${origin}/set-cookie`, { credentials: "include", cache: "no-store" });
  if (!set.ok) throw new Error(`set-cookie: ${set.status}`);
  const echo = await fetch(`${origin}/headers`, { credentials: "include", cache: "no-store" });
  const text = await echo.text();
  await report("cookie-control", text);
}

/** Opens the bridge's WebSocket (`?ws=PORT` in the page URL). */
export function openBridge() {
  const port = new URLSearchParams(location.search).get("ws");
  if (!port) throw new Error("no ?ws=PORT in the page URL");
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
  ws.binaryType = "arraybuffer";
  return new Promise((resolve, reject) => {
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(new Error(`cannot connect to the bridge on port ${port}`));
  });
}
