/** What `startGuestPreview` needs of a NetProxy. */
export interface GuestFetcher {
  fetchGuest(request: Request | string, options: { port: number; ip?: string; headers?: [string, string][] }): Promise<Response>;
}

export interface GuestPreviewOptions {
  /** Where guest-sw.js is served (default: next to guest-preview.js). */
  swUrl?: string | URL;
  /** The Service Worker's scope (default: the directory of swUrl); previews live at `<scope>guest/<port>/`. */
  scope?: string | URL;
  /** The guest's address (default: its latest DHCP lease). */
  ip?: string;
  /** How long the worker waits for a page with a NetProxy before answering 503 (default 3000 ms). */
  timeoutMs?: number;
  /** Add `Cross-Origin-Embedder-Policy`/`-Resource-Policy` to previews (default "auto": when the page is cross-origin isolated). */
  isolation?: "auto" | boolean;
}

export interface GuestPreview {
  /** The registration's scope (absolute URL, ending in "/"). */
  readonly scope: string;
  readonly registration: ServiceWorkerRegistration;
  /** The preview URL of `path` (default "/") on guest `port`. */
  url(port: number, path?: string): string;
  /** Stops answering from this page (the worker answers 503 when no other page does). */
  stop(): void;
  /** Stops and unregisters the worker. */
  unregister(): Promise<boolean>;
}

/** Registers guest-sw.js and answers its requests for `<scope>guest/<port>/…` with `proxy.fetchGuest`. */
export function startGuestPreview(proxy: GuestFetcher, options?: GuestPreviewOptions): Promise<GuestPreview>;
