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
    // The guest transmitted, so it ran its receive interrupt: the NIC can take a new burst.
    if (this.pacer) this.pacer.guestActive();
  }

  /**
   * The pacer's counters (frames delivered, deferred, dropped, queued) and the NIC it was
   * chosen for, or null while no pacer runs.
   */
  pacingStats() {
    return this.pacer ? { nic: this.nic, ...this.pacer.stats() } : null;
  }

  /** A frame from the proxy for the NIC: paced or not, decided at the first frame. */
  toNic(frame) {
    if (this.nic === null) {
      this.nic = identifyNic(this.bus, this.id);
      const pace = this.pacing === "auto" ? this.nic !== "virtio" : this.pacing !== false;
      if (pace) {
        const options = typeof this.pacing === "object" ? this.pacing : {};
        this.pacer = new NicPacer((f) => this.receive(f), options);
      }
    }
    if (this.pacer) this.pacer.push(frame);
    else this.receive(frame);
  }

  /** A frame for the guest's NIC, now. */
  receive(frame) {
    if (!this.destroyed) this.bus.send(this.receiveEvent, frame);
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
 * does not look like v86's, which gets the cautious default (paced).
 */
function identifyNic(bus, id) {
  const listeners = bus && bus.pair && bus.pair.listeners && bus.pair.listeners["net" + id + "-receive"];
  if (!Array.isArray(listeners) || listeners.length !== 1) return "unknown";
  const device = listeners[0] && listeners[0].this_value;
  if (!device || typeof device !== "object") return "unknown";
  if (device.name === "ne2k") return "ne2k";
  if (device.virtio && typeof device.virtio === "object") return "virtio";
  return "unknown";
}
