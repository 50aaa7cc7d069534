// C2wNetworkAdapter: c2w-net-proxy as the network of a v86 emulator. Same bus contract as
// v86's FetchNetworkAdapter: it listens on "net<id>-send" (a frame from the guest's NIC) and
// "net<id>-mac" (the guest's MAC), and emits "net<id>-receive" with each frame for the guest.
// Construct it with the emulator's bus in place of v86's own adapter (docs/v86.md).

import init, { NetProxy } from "./c2w_net_proxy.js";
import { NicPacer, pacingOptions } from "./nic-pacer.js";

// Options of this adapter (the rest of the config goes to NetProxy.create).
const ADAPTER_KEYS = ["id", "wasm", "v86External", "pacing"];

// The wasm module is initialised once per page, whatever the number of adapters.
let initialised = null;

function initOnce(wasm) {
  if (!initialised) {
    initialised = init(wasm === undefined ? undefined : { module_or_path: wasm });
  }
  return initialised;
}

export class C2wNetworkAdapter {
  /**
   * @param {object} bus the emulator's bus (`emulator.bus` of a V86 instance)
   * @param {object} [config] `id` (adapter number, default 0), `wasm` (URL, Response, bytes or
   *   module of the .wasm; default: next to the glue), `v86External` (map PORT.external to
   *   http://localhost:PORT like v86 does; default true unless a CORS proxy is set), `pacing`
   *   (how many frames the NIC is handed before the guest catches up, see nic-pacer.js:
   *   "auto" (default) paces the ne2k and not virtio, an object always paces, `false` never),
   *   v86's `cors_proxy` as an alias of `corsProxy`, and every NetProxyConfig option.
   */
  constructor(bus, config = {}) {
    this.bus = bus;
    this.id = config.id || 0;
    /** The guest's MAC address as v86 last announced it ("52:54:00:..."), or null. */
    this.vmMac = null;
    /** The NetProxy once created, else null. */
    this.proxy = null;
    this.destroyed = false;
    this.pending = [];
    /**
     * Paces frames towards the NIC: `pacing` undefined or "auto" paces v86's ne2k (and any NIC
     * it cannot identify) and leaves virtio alone, whose receive queue takes a whole window;
     * an object always paces with those options; `false` never does.
     */
    this.pacing = config.pacing === undefined ? "auto" : config.pacing;
    if (this.pacing !== "auto" && this.pacing !== false) pacingOptions(this.pacing); // fail early
    /** The NicPacer once the first frame went out (null: frames go straight to the NIC). */
    this.pacer = null;
    /** The NIC as identified on the bus: "ne2k", "virtio" or "unknown" (after the first frame). */
    this.nic = null;
    /** The ne2k's receive ring as the pacer's room probe, or null (another NIC, or no pacer). */
    this.ring = null;
    /** v86's virtio-net receive queue (read only, to count what it drops), or null. */
    this.virtioRx = null;
    /** Frames handed to v86's virtio-net while its receive queue had no buffer (it drops them). */
    this.virtioDropped = 0;

    const proxyConfig = {};
    for (const [key, value] of Object.entries(config)) {
      if (key === "cors_proxy") proxyConfig.corsProxy = value;
      else if (!ADAPTER_KEYS.includes(key)) proxyConfig[key] = value;
    }
    const external = config.v86External ?? proxyConfig.corsProxy === undefined;
    if (external) {
      proxyConfig.rewrites = [
        ...(proxyConfig.rewrites || []),
        { host: "*.external", url: "http://localhost:{*}" },
      ];
    }

    this.sendEvent = "net" + this.id + "-send";
    this.macEvent = "net" + this.id + "-mac";
    this.receiveEvent = "net" + this.id + "-receive";
    this.onSend = (frame) => this.send(frame);
    this.onMac = (mac) => {
      if (!this.destroyed) this.vmMac = mac;
    };
    bus.register(this.sendEvent, this.onSend, this);
    bus.register(this.macEvent, this.onMac, this);

    /** Resolves with the NetProxy once it runs; rejects when the config is refused. */
    this.ready = initOnce(config.wasm)
      .then(() => NetProxy.create(proxyConfig))
      .then((proxy) => {
        if (this.destroyed) {
          proxy.close();
          throw new Error("C2wNetworkAdapter was destroyed before it started");
        }
        this.proxy = proxy;
        proxy.onFrame((frame) => this.toNic(frame));
        for (const frame of this.pending) proxy.pushFrame(frame);
        this.pending = [];
        return proxy;
      });
    this.ready.catch((err) => console.error("C2wNetworkAdapter: " + err.message));
  }

  /** A frame from the guest's NIC. Frames sent before the proxy runs are queued. */
  send(frame) {
    if (this.destroyed) return;
    const bytes = frame instanceof Uint8Array ? frame : new Uint8Array(frame);
    if (this.proxy) {
      this.proxy.pushFrame(bytes);
    } else {
      this.pending.push(bytes.slice());
    }
    // The guest transmitted, so it ran its receive interrupt: the NIC can take a new burst
    // (without a room probe), or its ring has room again (re-checked with one). v86 calls this
    // inside the guest's transmission, when its driver is not reading the ring (see Ne2kRing).
    if (this.pacer) {
      if (this.ring) this.ring.transmitting = true;
      try {
        this.pacer.guestActive();
      } finally {
        if (this.ring) this.ring.transmitting = false;
      }
    }
  }

  /**
   * The pacer's counters (frames delivered, deferred, dropped, queued) and the NIC it was
   * chosen for, or null while no pacer runs.
   */
  pacingStats() {
    if (!this.pacer) return null;
    return { nic: this.nic, ...this.pacer.stats(), ...(this.ring ? this.ring.stats() : {}) };
  }

  /** A frame from the proxy for the NIC: paced or not, decided at the first frame. */
  toNic(frame) {
    if (this.nic === null) {
      const { kind, device } = identifyNic(this.bus, this.id);
      this.nic = kind;
      const rx = kind === "virtio" && Array.isArray(device.virtio.queues) ? device.virtio.queues[0] : null;
      if (rx && typeof rx.has_request === "function") this.virtioRx = rx;
      const pace = this.pacing === "auto" ? kind !== "virtio" : this.pacing !== false;
      if (pace) {
        const options = typeof this.pacing === "object" ? this.pacing : {};
        // v86's ne2k: frames go when its ring has room; elsewhere, the burst rule.
        this.ring = kind === "ne2k" ? Ne2kRing.of(device) : null;
        const room = this.ring ? (length) => this.ring.room(length) : null;
        const deliver = this.ring ? (f) => this.ring.deliver(f, (g) => this.receive(g)) : (f) => this.receive(f);
        this.pacer = new NicPacer(deliver, options, undefined, room);
      }
    }
    if (this.pacer) this.pacer.push(frame);
    else this.receive(frame);
  }

  /** A frame for the guest's NIC, now. */
  receive(frame) {
    if (this.destroyed) return;
    // v86's virtio-net drops a frame its receive queue has no buffer for (and logs it).
    if (this.virtioRx && !this.virtioRx.has_request()) this.virtioDropped++;
    this.bus.send(this.receiveEvent, frame);
  }

  /**
   * Frames the guest's NIC did not take, as far as v86 tells: on virtio those it had no
   * receive buffer for, on the paced ne2k those its ring did not store; null when unknown
   * (the unpaced ne2k, another NIC) or before the first frame.
   */
  nicStats() {
    if (this.nic === null) return null;
    const dropped = this.virtioRx ? this.virtioDropped : this.ring ? this.ring.notStored : null;
    return { nic: this.nic, dropped };
  }

  /** The CA certificate (PEM) the guest must trust for HTTPS (after `ready`). */
  caCertificatePem() {
    return this.proxy ? this.proxy.caCertificatePem() : null;
  }

  /** Stops the proxy and detaches from the bus. */
  destroy() {
    if (this.destroyed) return;
    this.destroyed = true;
    if (typeof this.bus.unregister === "function") {
      this.bus.unregister(this.sendEvent, this.onSend);
      this.bus.unregister(this.macEvent, this.onMac);
    }
    this.pending = [];
    if (this.pacer) this.pacer.close();
    if (this.proxy) this.proxy.close();
  }
}

/**
 * Which v86 NIC listens on "net<id>-receive": v86's bus (`emulator.bus`, a Bus.Connector) keeps
 * the emulator side's listeners in `pair.listeners`, each with the device as `this_value`: the
 * ne2k's `name` is "ne2k", virtio-net holds its transport in `virtio`. "unknown" when the bus
 * does not look like v86's, which gets the cautious default (paced). Returns the kind and the
 * device object (null when unknown).
 */
function identifyNic(bus, id) {
  const unknown = { kind: "unknown", device: null };
  const listeners = bus && bus.pair && bus.pair.listeners && bus.pair.listeners["net" + id + "-receive"];
  if (!Array.isArray(listeners) || listeners.length !== 1) return unknown;
  const device = listeners[0] && listeners[0].this_value;
  if (!device || typeof device !== "object") return unknown;
  if (device.name === "ne2k") return { kind: "ne2k", device };
  if (device.virtio && typeof device.virtio === "object") return { kind: "virtio", device };
  return unknown;
}

/** Registers of v86's `Ne2k` the probe reads (src/ne2k.js; the names survive its minified build). */
const NE2K_REGISTERS = ["cr", "isr", "imr", "pstart", "pstop", "curpg", "boundary"];

/** ISR bit 0: a frame was received and the driver has not acknowledged it yet. */
const ENISR_RX = 0x01;

/** EFLAGS.IF: the guest's CPU takes interrupts. */
const FLAG_INTERRUPT = 0x200;

/**
 * v86's ne2k receive ring, read from the device's registers, as the pacer's room probe.
 *
 * v86's `Ne2k.receive` (src/ne2k.js) stores a frame of `n` bytes at page `curpg` (where the NIC
 * writes next) in `1 + ((max(60, n) + 4) >> 8)` pages of 256 bytes, if
 *   available = boundary > curpg ? boundary - curpg : pstop - curpg + boundary - pstart
 * is at least that many (or `boundary` is 0, a ReactOS workaround), moves `curpg` on and raises
 * the RX interrupt; otherwise it drops the frame without any interrupt. `boundary` (BNRY) is the
 * driver's: Linux writes the page before the next frame it will read, so its empty ring has
 * boundary one page behind curpg and `available` is the ring less one page. A frame that takes
 * all of `available` leaves curpg == boundary, which the same formula reads as an *empty* ring:
 * the frames after it would overwrite the ones the guest has not read. So a frame never gets
 * all of `available`.
 *
 * Linux's driver (`ei_receive`) reads at most 9 frames per RX interrupt and then acknowledges
 * RX, whatever is left; frames left behind are read only when another frame raises RX again.
 * Frames handed over while an `ei_receive` runs can be left behind that way: it reads them only
 * up to its budget of 9, and one that arrives after it read curpg for the last time has its RX
 * acknowledged unseen. The emulator's slices end anywhere in the guest's code, so frames handed
 * over between two slices (a timer's re-check, a frame from the stack) can meet an
 * `ei_receive` half done; frames handed over inside the guest's transmission (`transmitting`)
 * cannot, and neither can frames handed over since the driver was last seen idle (ring empty,
 * RX not pending: it is not in `ei_receive`, which acknowledges RX on its way out) as long as
 * it has not read any of them (boundary unchanged): the guest does not run while the adapter
 * does, and its next `ei_receive` starts with a whole budget. Hence, besides fitting:
 * - at most `maxUnread` (8) frames are handed over since the ring was last seen empty, so one
 *   interrupt reads them all;
 * - otherwise than in the two safe cases above, a frame leaves room for one more full-size
 *   frame (`wakePages`, 6 pages for 1514 bytes);
 * - when the ring holds unread frames and no RX interrupt is pending (left behind as above),
 *   a frame that fits goes whatever the count, to raise RX; the room kept guarantees it fits.
 *
 * And one limit comes from v86's interrupt controller. The ne2k's IRQ (10 or 11) reaches the
 * CPU through the slave 8259 and the master's IRQ 2, which v86 latches on an edge
 * (src/rust/cpu/pic.rs). A frame whose RX raises the NIC's line while the guest has interrupts
 * off (EFLAGS.IF clear) leaves IRQ 2 latched on the master; if the driver then withdraws the
 * request before interrupts are back on (Linux's `ei_start_xmit` writes IMR 0 right after
 * `spin_lock_irqsave`), the CPU acknowledges IRQ 2, the slave has nothing to give, v86 returns
 * no vector and leaves IRQ 2 in service on the master, with no handler to send its EOI: the
 * NIC's interrupts (and every other of IRQ 2 to 15) never come again, and the guest's NETDEV
 * WATCHDOG reports its transmit queue timed out. So between slices a frame that would raise
 * the line (RX enabled in IMR, no interrupt already asserted) waits while the guest's IF is
 * clear and the NIC's IRQ is enabled on the slave (`raiseIsSafe`); in the guest's own NIC
 * interrupt handler, where IF is clear most often, Linux has that IRQ masked and the frame goes.
 * Inside the guest's transmission it may go too: Linux has IMR at 0 there, or the IRQ masked
 * at the PIC when it transmits from its interrupt handler.
 *
 * A frame the NIC takes without a ring (it is stopped: `cr` bit 0) or can never take (larger
 * than the ring, or `boundary` 0) is said to have room, so it goes to v86, which handles it as
 * it would without the pacer, instead of holding up the frames behind it.
 */
export class Ne2kRing {
  /** The probe for `device` if it has v86's ring registers, else null. */
  static of(device, limits) {
    if (!device || !NE2K_REGISTERS.every((k) => Number.isInteger(device[k]))) return null;
    return new Ne2kRing(device, limits);
  }

  /**
   * @param {object} device v86's Ne2k (or anything with its registers)
   * @param {{ maxUnread?: number, wakePages?: number }} [limits] the defaults fit Linux's
   *   driver and 1514-byte frames; tests lower them to show what they prevent
   */
  constructor(device, { maxUnread = 8, wakePages = Ne2kRing.pages(1514) } = {}) {
    this.device = device;
    /** Whether raising the NIC's line now is safe (see `raiseIsSafe`), or null: not checked. */
    this.raiseIsSafe = raiseIsSafe(device);
    this.maxUnread = maxUnread;
    this.wakePages = wakePages;
    /** Set by the adapter while the guest transmits (frames may then use the kept room). */
    this.transmitting = false;
    /** `boundary` when the driver was last seen idle (ring empty, no RX pending), or null. */
    this.idleBoundary = null;
    /** Frames handed over since the ring was last seen empty (at least the unread ones). */
    this.unread = 0;
    /** Frames handed over to raise RX for unread frames the guest would not read otherwise. */
    this.wakeups = 0;
    /** Refusals while unread frames waited without an RX interrupt (the guest is stuck). */
    this.refusedWithoutInterrupt = 0;
    /**
     * Refusals by reason: no room at all, `maxUnread` reached, the room kept for a wake-up,
     * the guest's interrupts off.
     */
    this.refusals = { full: 0, unread: 0, kept: 0, interruptsOff: 0 };
    /** Frames handed over that v86 did not store (its ring was full, or its MAC filter). */
    this.notStored = 0;
  }

  /** The pages of the ring a frame of `length` bytes takes. */
  static pages(length) {
    return 1 + ((Math.max(60, length) + 4) >> 8);
  }

  /** Whether v86's ne2k should take a frame of `length` bytes now (see the class comment). */
  room(length) {
    const d = this.device;
    if (d.cr & 1) return true;
    const raises = (d.imr & ENISR_RX) !== 0 && (d.isr & d.imr) === 0;
    if (raises && !this.transmitting && this.raiseIsSafe && !this.raiseIsSafe()) {
      this.refusals.interruptsOff++;
      return false;
    }
    const size = d.pstop - d.pstart;
    const needed = Ne2kRing.pages(length);
    if (d.boundary === 0 || needed > size - 2) return true;
    const available = d.boundary > d.curpg ? d.boundary - d.curpg : size - (d.curpg - d.boundary);
    // Empty under Linux is `size - 1` (boundary one page behind curpg), `size` when a driver
    // keeps boundary == curpg; anything less holds unread frames.
    const empty = available >= size - 1;
    const rxPending = (d.isr & ENISR_RX) !== 0;
    if (empty) this.unread = 0;
    if (empty && !rxPending) this.idleBoundary = d.boundary;
    const stuck = !empty && !rxPending;
    // Frames left behind: the driver is not known idle any more (what left them may again).
    if (stuck) this.idleBoundary = null;
    if (needed >= available) {
      this.refusals.full++;
      if (stuck) this.refusedWithoutInterrupt++;
      return false;
    }
    if (stuck) {
      this.wakeups++;
      this.unread++;
      return true;
    }
    if (this.unread >= this.maxUnread) {
      this.refusals.unread++;
      return false;
    }
    const safe = this.transmitting || this.idleBoundary === d.boundary;
    if (needed + (safe ? 0 : this.wakePages) >= available) {
      this.refusals.kept++;
      return false;
    }
    this.unread++;
    return true;
  }

  /** Hands `frame` to the NIC through `send`, counting it if v86 did not store it. */
  deliver(frame, send) {
    const d = this.device;
    const before = d.curpg;
    send(frame);
    if ((d.cr & 1) === 0 && d.curpg === before) this.notStored++;
  }

  /** Counters and the registers as they are now, for `pacingStats()`. */
  stats() {
    const d = this.device;
    return {
      wakeups: this.wakeups,
      refusedWithoutInterrupt: this.refusedWithoutInterrupt,
      refusals: { ...this.refusals },
      notStored: this.notStored,
      registers: { cr: d.cr, isr: d.isr, imr: d.imr, curpg: d.curpg, boundary: d.boundary },
    };
  }
}

/**
 * For v86's ne2k `device`, a function telling whether raising its interrupt line now is safe
 * from the cascade latch described at `Ne2kRing`, or null when v86's CPU is not reachable
 * (nothing is checked then). Safe: the guest's CPU takes interrupts (EFLAGS.IF, v86's
 * `cpu.flags[0]`), so v86 acknowledges the IRQ at once; or the NIC's IRQ cannot reach the
 * master's IRQ 2: it is a master IRQ (an edge latched there still yields its own vector), or
 * it is masked on the slave 8259 (`cpu.get_state_pic()`, v86's state-image accessor:
 * `[5][0]` is the slave's mask, a set bit an enabled IRQ). The NIC's IRQ is routed as v86's
 * `PCI.raise_irq` routes it (src/pci.js). When IF is clear and the PIC cannot be read, it is
 * not safe.
 */
function raiseIsSafe(device) {
  const cpu = device.cpu;
  if (!cpu || !cpu.flags || cpu.flags.length !== 1) return null;
  return () => {
    if (cpu.flags[0] & FLAG_INTERRUPT) return true;
    const irq = v86PciIrq(cpu, device);
    if (irq === null || typeof cpu.get_state_pic !== "function") return false;
    if (irq < 8) return true;
    const slave = cpu.get_state_pic()[5];
    return Array.isArray(slave) && (slave[0] & (1 << (irq - 8))) === 0;
  };
}

/** The ISA IRQ of PCI device `device` as v86's `PCI.raise_irq` computes it, or null. */
function v86PciIrq(cpu, device) {
  const pci = cpu.devices && cpu.devices.pci;
  const space = pci && pci.device_spaces && pci.device_spaces[device.pci_id];
  if (!space || !pci.isa_bridge_space8 || !Number.isInteger(device.pci_id)) return null;
  const pin = ((space[0x3c >>> 2] >> 8) & 0xff) - 1;
  const slot = ((device.pci_id >> 3) - 1) & 0xff;
  const irq = pci.isa_bridge_space8[0x60 + ((pin + slot) & 3)];
  return Number.isInteger(irq) && irq < 16 ? irq : null;
}
