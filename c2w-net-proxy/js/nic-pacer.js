// NicPacer: hands frames to an emulated NIC no faster than its receive buffer can take them.
//
// Why: an emulated NIC takes frames only into its receive buffer, and the guest empties that
// buffer only when its CPU runs. v86's ne2k has a 13 KiB ring (52 pages of 256 bytes under
// Linux's ne2k-pci); a frame that does not fit is dropped *without* the overflow interrupt a
// real 8390 raises, and Linux's driver reads at most 9 frames per interrupt before it
// acknowledges it. Handing the NIC a whole TCP window at once (what the stack produces between
// two slices of the emulator) therefore loses most of it and can leave frames in the ring with
// no interrupt pending: the guest never reads again (docs/v86.md, "Pacing").
//
// The rule: at most `burstFrames` frames and `burstBytes` bytes are handed over until the guest
// shows it has caught up, which is when it transmits (an ACK, a request: it ran its receive
// interrupt, which empties the ring, before) or, if it sends nothing, after `idleReleaseMs`.
// Frames beyond the burst wait here, in order, up to `maxQueuedBytes` (then the newest are
// dropped and counted, as a NIC queue would; TCP resends them).

/** Defaults that fit v86's ne2k under Linux: 8 full-size frames use 48 of the ring's 52 pages. */
export const NIC_PACING_DEFAULTS = Object.freeze({
  burstFrames: 8,
  burstBytes: 12288,
  idleReleaseMs: 10,
  maxQueuedBytes: 8 << 20,
});

const KEYS = Object.keys(NIC_PACING_DEFAULTS);

/** Validated pacing options: defaults for what is missing, an Error naming a bad key. */
export function pacingOptions(options = {}) {
  if (options === null || typeof options !== "object" || Array.isArray(options)) {
    throw new Error(`pacing: expected "auto", an object or false, not ${JSON.stringify(options)}`);
  }
  const out = { ...NIC_PACING_DEFAULTS };
  for (const [key, value] of Object.entries(options)) {
    if (!KEYS.includes(key)) {
      throw new Error(`pacing.${key}: unknown option (known: ${KEYS.join(", ")})`);
    }
    const min = key === "idleReleaseMs" ? 0 : 1;
    if (!Number.isInteger(value) || value < min) {
      throw new Error(`pacing.${key}: ${value} is not an integer >= ${min}`);
    }
    out[key] = value;
  }
  if (out.burstBytes < 1514) {
    throw new Error(`pacing.burstBytes: ${out.burstBytes} is smaller than one full frame (1514)`);
  }
  return out;
}

export class NicPacer {
  /**
   * @param {(frame: Uint8Array) => void} deliver hands one frame to the NIC
   * @param {object} [options] see NIC_PACING_DEFAULTS
   * @param {{ setTimeout: Function, clearTimeout: Function, now: () => number }} [timers]
   *   injectable for tests; default the global timers and performance.now()
   */
  constructor(deliver, options = {}, timers = defaultTimers()) {
    this.deliver = deliver;
    this.options = pacingOptions(options);
    this.timers = timers;
    this.queue = [];
    this.head = 0;
    this.queuedBytes = 0;
    this.burstFrames = 0;
    this.burstBytes = 0;
    this.timer = null;
    this.releasedAt = timers.now();
    this.flushing = false;
    this.closed = false;
    this.counters = { delivered: 0, deferred: 0, dropped: 0, releasedByGuest: 0, releasedByTimer: 0, maxQueuedBytes: 0 };
  }

  /** A frame for the NIC: handed over now if the burst allows and nothing waits, else queued. */
  push(frame) {
    if (this.closed) return;
    if (this.head === this.queue.length && this.fits(frame)) {
      this.handOver(frame);
      return;
    }
    if (this.queuedBytes + frame.length > this.options.maxQueuedBytes) {
      this.counters.dropped++;
      return;
    }
    this.queue.push(frame);
    this.queuedBytes += frame.length;
    this.counters.deferred++;
    if (this.queuedBytes > this.counters.maxQueuedBytes) this.counters.maxQueuedBytes = this.queuedBytes;
    this.arm();
  }

  /** The guest transmitted: it has emptied its receive buffer. A new burst may go. */
  guestActive() {
    if (this.closed) return;
    if (this.head < this.queue.length) this.counters.releasedByGuest++;
    this.release();
  }

  /** Counters and the current queue, for stats panels and tests. */
  stats() {
    return { ...this.counters, queued: this.queue.length - this.head, queuedBytes: this.queuedBytes };
  }

  /** Drops what waits and stops the timer. */
  close() {
    this.closed = true;
    this.queue = [];
    this.head = 0;
    this.queuedBytes = 0;
    if (this.timer !== null) this.timers.clearTimeout(this.timer);
    this.timer = null;
  }

  release() {
    this.burstFrames = 0;
    this.burstBytes = 0;
    this.releasedAt = this.timers.now();
    this.flush();
  }

  // A frame larger than burstBytes (a large MTU) still goes, alone, as a burst of its own.
  fits(frame) {
    if (this.burstFrames === 0) return true;
    return this.burstFrames + 1 <= this.options.burstFrames && this.burstBytes + frame.length <= this.options.burstBytes;
  }

  handOver(frame) {
    this.burstFrames++;
    this.burstBytes += frame.length;
    this.counters.delivered++;
    this.deliver(frame);
  }

  flush() {
    // deliver() may re-enter (an emulator can run device code synchronously): one flush at a time.
    if (this.flushing) return;
    this.flushing = true;
    try {
      while (!this.closed && this.head < this.queue.length && this.fits(this.queue[this.head])) {
        const frame = this.queue[this.head];
        this.queue[this.head++] = undefined;
        this.queuedBytes -= frame.length;
        this.handOver(frame);
      }
      if (this.head === this.queue.length) {
        this.queue = [];
        this.head = 0;
      } else if (this.head > 1024 && this.head * 2 > this.queue.length) {
        this.queue = this.queue.slice(this.head);
        this.head = 0;
      }
    } finally {
      this.flushing = false;
    }
    if (this.head < this.queue.length) this.arm();
  }

  // The idle release: `idleReleaseMs` after the last release, not after the timer was set, so
  // a guest that keeps transmitting is never handed a second burst early.
  arm(delay = this.options.idleReleaseMs) {
    if (this.timer !== null || this.closed) return;
    this.timer = this.timers.setTimeout(() => {
      this.timer = null;
      if (this.closed || this.head === this.queue.length) return;
      const idle = this.timers.now() - this.releasedAt;
      if (idle < this.options.idleReleaseMs) {
        this.arm(this.options.idleReleaseMs - idle);
        return;
      }
      this.counters.releasedByTimer++;
      this.release();
    }, delay);
  }
}

function defaultTimers() {
  return {
    setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
    clearTimeout: (id) => globalThis.clearTimeout(id),
    now: () => globalThis.performance.now(),
  };
}
