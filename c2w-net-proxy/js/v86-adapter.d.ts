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
   * How frames reach the emulated NIC. v86's ne2k drops what does not fit its 13 KiB ring
   * without telling the guest, so on the ne2k a frame goes only when the ring has room for it
   * (read from the NIC's registers, see `Ne2kRing`); a NIC the adapter cannot probe gets at
   * most a burst of frames until the guest transmits or `idleReleaseMs` pass. "auto" (the
   * default) paces the ne2k and any NIC it cannot identify, not virtio; options always pace;
   * `false` hands every frame over at once.
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
  /**
   * The pacer's counters and the NIC, or null while frames are not paced; on the ne2k also
   * the ring's counters and registers (`Ne2kRing.stats()`).
   */
  pacingStats(): (NicPacingStats & { nic: string } & Partial<ReturnType<Ne2kRing["stats"]>>) | null;
  /**
   * Frames the guest's NIC did not take, as far as v86 tells (virtio: no receive buffer; the
   * paced ne2k: not stored in its ring), null when it cannot tell; null before the first frame.
   */
  nicStats(): { nic: string; dropped: number | null } | null;
  /** The CA certificate (PEM) for the guest to trust, or null before `ready`. */
  caCertificatePem(): string | null;
  /** Closes the proxy and detaches from the bus. */
  destroy(): void;
}

/** The registers of v86's `Ne2k` (src/ne2k.js) the probe reads. */
export interface V86Ne2kRegisters {
  /**
   * v86's CPU (optional: without it the interrupt check is skipped): `flags[0]` is EFLAGS,
   * `get_state_pic()` its PIC's state image, `devices.pci` the PCI bus routing `pci_id`'s IRQ.
   */
  cpu?: {
    flags: Int32Array;
    get_state_pic?(): unknown[];
    devices?: { pci?: { device_spaces: Record<number, Int32Array>; isa_bridge_space8: Uint8Array } };
  };
  /** The NIC's PCI id (device << 3). */
  pci_id?: number;
  /** Command register; bit 0 set: the NIC is stopped and takes no frame. */
  cr: number;
  /** Interrupt status; bit 0: a received frame the driver has not acknowledged yet. */
  isr: number;
  /** Interrupt mask (only shown in the stats). */
  imr: number;
  /** First page of the receive ring. */
  pstart: number;
  /** Page after the last of the ring. */
  pstop: number;
  /** Where the NIC writes the next frame. */
  curpg: number;
  /** BNRY, written by the driver (Linux: the page before the next frame it reads). */
  boundary: number;
}

/**
 * v86's ne2k receive ring as the pacer's room probe. A frame has room when it needs fewer
 * pages than v86's `receive` counts as available (a frame taking all of them would leave
 * curpg == boundary, which v86 reads as an empty ring), at most `maxUnread` frames went since
 * the ring was last seen empty (Linux reads 9 per interrupt), and room for a full-size frame
 * (`wakePages`) stays free unless the frame cannot meet the driver's `ei_receive` half done
 * (the guest is transmitting, or the driver was seen idle and has read nothing since); when
 * unread frames wait with no RX interrupt pending, a frame that fits goes to raise one. Between
 * the emulator's slices, a frame that would raise the NIC's interrupt line waits while the
 * guest's CPU has interrupts off and the NIC's IRQ is enabled on the slave PIC (read from
 * `device.cpu`, when present): v86's PIC can otherwise leave the cascade IRQ 2 in service for
 * ever.
 */
export class Ne2kRing {
  /** The probe for `device` if it has v86's ring registers, else null. */
  static of(device: unknown, limits?: { maxUnread?: number; wakePages?: number }): Ne2kRing | null;
  constructor(device: V86Ne2kRegisters, limits?: { maxUnread?: number; wakePages?: number });
  /** The pages a frame of `length` bytes takes in the ring (256 bytes each, 4-byte header). */
  static pages(length: number): number;
  /** Frames at most since the ring was last seen empty (default 8). */
  readonly maxUnread: number;
  /** Pages kept free for a wake-up frame when a frame could meet `ei_receive` half done (default 6: one 1514-byte frame). */
  readonly wakePages: number;
  /** Set while the guest transmits (the adapter does it around the pacer's re-check). */
  transmitting: boolean;
  /**
   * Whether raising the NIC's interrupt line now is safe from v86's cascade latch (the guest
   * takes interrupts, or the NIC's IRQ cannot reach the master's IRQ 2), or null when v86's CPU
   * is not reachable and nothing is checked.
   */
  readonly raiseIsSafe: (() => boolean) | null;
  /** Hands `frame` to the NIC through `send`, counting it in `notStored` if v86 did not store it. */
  deliver(frame: Uint8Array, send: (frame: Uint8Array) => void): void;
  /** Frames handed over that v86 did not store (its ring was full, or its MAC filter). */
  readonly notStored: number;
  /** Refusals by reason: no room, `maxUnread` reached, the room kept for a wake-up, the guest's interrupts off. */
  readonly refusals: { full: number; unread: number; kept: number; interruptsOff: number };
  /**
   * Whether the NIC should take a frame of `length` bytes now. Asked right before the frame
   * would go: a `true` is counted as a frame handed over.
   */
  room(length: number): boolean;
  /** Frames handed over to raise RX for unread frames no interrupt announced. */
  readonly wakeups: number;
  /** Refusals while unread frames waited with no RX interrupt pending and no room at all. */
  readonly refusedWithoutInterrupt: number;
  /** The counters and the registers as they are now. */
  stats(): {
    wakeups: number;
    refusedWithoutInterrupt: number;
    refusals: { full: number; unread: number; kept: number; interruptsOff: number };
    notStored: number;
    registers: Pick<V86Ne2kRegisters, "cr" | "isr" | "imr" | "curpg" | "boundary">;
  };
}
