import type { NetProxy, NetProxyConfig } from "./c2w_net_proxy.js";
import type { NicPacingOptions, NicPacingStats } from "./nic-pacer.js";

/** The part of v86's bus (`emulator.bus`) the adapter uses. */
export interface V86Bus {
  register(name: string, fn: (value: any) => void, thisValue?: object): void;
  unregister?(name: string, fn: (value: any) => void): void;
  send(name: string, value?: any): void;
}

/** Options of the adapter; every NetProxyConfig option is passed through to NetProxy.create. */
export interface C2wNetworkAdapterConfig extends NetProxyConfig {
  /** Adapter number: events are "net<id>-send", "net<id>-mac", "net<id>-receive". Default 0. */
  id?: number;
  /** Where the .wasm is (URL, Response, bytes or WebAssembly.Module); default next to the glue. */
  wasm?: string | URL | Request | Response | BufferSource | WebAssembly.Module;
  /** Map http://PORT.external/ to http://localhost:PORT/ like v86; default true without a CORS proxy. */
  v86External?: boolean;
  /**
   * How many frames the emulated NIC is handed before the guest catches up (it transmits, or
   * `idleReleaseMs` pass); the defaults fit v86's ne2k, whose 13 KiB ring drops what does not
   * fit without telling the guest. "auto" (the default) paces the ne2k and any NIC it cannot
   * identify, not virtio; options always pace; `false` hands every frame over at once.
   */
  pacing?: "auto" | Partial<NicPacingOptions> | false;
  /** v86's spelling of `corsProxy`. */
  cors_proxy?: string;
}

/** c2w-net-proxy as a v86 network adapter, a drop-in for v86's FetchNetworkAdapter. */
export class C2wNetworkAdapter {
  constructor(bus: V86Bus, config?: C2wNetworkAdapterConfig);
  readonly id: number;
  /** The guest's MAC as v86 announced it on "net<id>-mac", or null. */
  readonly vmMac: string | null;
  /** The running proxy, or null until `ready` resolves. */
  readonly proxy: NetProxy | null;
  /** Resolves with the proxy once it runs; rejects with the config error otherwise. */
  readonly ready: Promise<NetProxy>;
  /** A frame from the guest (what "net<id>-send" delivers). */
  send(frame: Uint8Array | ArrayBuffer): void;
  /** Emits a frame for the guest on "net<id>-receive". */
  receive(frame: Uint8Array): void;
  /** The NIC identified on v86's bus when the first frame went out, or null before. */
  readonly nic: "ne2k" | "virtio" | "unknown" | null;
  /** The pacer's counters and the NIC, or null while frames are not paced. */
  pacingStats(): (NicPacingStats & { nic: string }) | null;
  /** The CA certificate (PEM) for the guest to trust, or null before `ready`. */
  caCertificatePem(): string | null;
  /** Closes the proxy and detaches from the bus. */
  destroy(): void;
}
