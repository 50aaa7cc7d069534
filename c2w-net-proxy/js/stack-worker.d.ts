// stack-worker.js is a classic Worker script with no exports. These types describe the
// messages it exchanges with container2wasm's page (stack.js), for pages that host it.

/** The message that starts the worker (sent once by the page). */
export interface StackWorkerInit {
  type: "init";
  /** 12 + 4096 bytes: Int32 ctrl at 0, Int32 status at 4, Int32 len at 8, data from 12. */
  buf: SharedArrayBuffer;
  /** URL of the wasm module (container2wasm passes location.origin + "/c2w-net-proxy.wasm"). */
  imagename: string;
}

/** The requests the worker posts; each is answered through `buf` (ctrl = 1, status < 0 = error). */
export type StackWorkerRequest =
  | { type: "send_cert"; buf: Uint8Array }
  | { type: "accept" }
  | { type: "send"; buf: Uint8Array }
  | { type: "recv"; len: number }
  | { type: "recv-is-readable"; timeout: number };

/**
 * Options read from the worker URL's query string (the page passes its location.search):
 * `proxy-allow`, `proxy-deny` (repeatable), `proxy-cors`, `proxy-timeout` (`5s`, `500ms`, seconds), `proxy-timeout-ms`, `proxy-log`,
 * and the limits (`NetProxyConfig.limits`, see docs/usage.md "Limits"):
 * `proxy-max-connections` (maxConnections), `proxy-tcp-buffer` (tcpBufferBytes),
 * `proxy-dhcp-pool` (dhcpPool, `START-END`), `proxy-fake-ip-net` (fakeIpNet, `ADDR/LEN`),
 * `proxy-max-head-bytes` (maxHeadBytes), `proxy-max-request-body` (maxRequestBody); sizes in
 * bytes. A bad value makes the worker fail at start with a message naming the option.
 */
export type StackWorkerQueryOption =
  | "proxy-allow"
  | "proxy-deny"
  | "proxy-cors"
  | "proxy-timeout"
  | "proxy-timeout-ms"
  | "proxy-log"
  | "proxy-max-connections"
  | "proxy-tcp-buffer"
  | "proxy-dhcp-pool"
  | "proxy-fake-ip-net"
  | "proxy-max-head-bytes"
  | "proxy-max-request-body";
