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
// Two rules, chosen by what the caller knows about the NIC:
// - With a `room(length)` probe (v86's ne2k: the adapter reads the ring's registers), a frame
//   is handed over only when the probe says the NIC has room for it now. Frames that wait are
//   re-checked when the guest transmits, when a new frame arrives, and every `recheckMs` while
//   any wait (the guest frees room by reading, which no event tells). A re-check never hands
//   over a frame the probe refused: nothing is released blindly.
// - Without a probe (an unknown NIC, or virtio when pacing is forced on), at most `burstFrames`
//   frames and `burstBytes` bytes are handed over until the guest shows it has caught up, which
//   is when it transmits (an ACK, a request: it ran its receive interrupt, which empties the
//   ring, before) or, if it sends nothing, after `idleReleaseMs`.
// Either way, frames that wait stay here, in order, up to `maxQueuedBytes` (then the newest are
// dropped and counted, as a NIC queue would; TCP resends them).

/**
 * Defaults. The burst limits fit v86's ne2k under Linux (8 full-size frames use 48 of the
 * ring's 52 pages) and apply only without a room probe; `recheckMs` applies only with one.
 */
export const NIC_PACING_DEFAULTS = Object.freeze({
  burstFrames: 8,
  burstBytes: 12288,
  idleReleaseMs: 10,
  recheckMs: 1,
  maxQueuedBytes: 8 << 20,
});

const KEYS = Object.keys(NIC_PACING_DEFAULTS);

/** The smallest value each option takes. */
const MIN = { idleReleaseMs: 0 };

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
    const min = MIN[key] ?? 1;
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
   * @param {((length: number) => boolean) | null} [room] whether the NIC can take a frame of
   *   `length` bytes right now; null: no probe, the burst rule applies
   */
  constructor(deliver, options = {}, timers = defaultTimers(), room = null) {
    if (room !== null && typeof room !== "function") {
      throw new Error("NicPacer: room must be a function (length) => boolean, or null");
    }
    this.deliver = deliver;
    this.options = pacingOptions(options);
    this.timers = timers;
    this.room = room;
    this.queue = [];
    this.head = 0;
    this.queuedBytes = 0;
    this.burstFrames = 0;
    this.burstBytes = 0;
    this.timer = null;
    this.releasedAt = timers.now();
    this.flushing = false;
    this.closed = false;
    this.counters = {
      delivered: 0,
      deferred: 0,
      dropped: 0,
      refused: 0,
      releasedByGuest: 0,
      releasedByArrival: 0,
      releasedByRecheck: 0,
      releasedByTimer: 0,
      maxQueuedBytes: 0,
    };
  }

  /** "room" when a probe decides, "burst" when the burst rule does. */
  get mode() {
    return this.room ? "room" : "burst";
  }

  /** A frame for the NIC: handed over now if the NIC (or the burst) allows and nothing waits, else queued. */
  push(frame) {
    if (this.closed) return;
    // With a probe, a new frame is also a moment to re-check: what waits goes first.
    if (this.room && this.head < this.queue.length && this.flush() > 0) this.counters.releasedByArrival++;
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

  /**
   * The guest transmitted. Without a probe: it has emptied its receive buffer, a new burst may
   * go. With one: a moment to re-check the room.
   */
  guestActive() {
    if (this.closed) return;
    if (this.room) {
      if (this.head < this.queue.length && this.flush() > 0) this.counters.releasedByGuest++;
      return;
    }
    if (this.head < this.queue.length) this.counters.releasedByGuest++;
    this.release();
  }

  /** Counters and the current queue, for stats panels and tests. */
  stats() {
    return { mode: this.mode, ...this.counters, queued: this.queue.length - this.head, queuedBytes: this.queuedBytes };
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

  // With a probe: whether the NIC has room (a refusal is counted). Without: whether the burst
  // allows it; a frame larger than burstBytes (a large MTU) still goes, alone, as a burst of
  // its own.
  fits(frame) {
    if (this.room) {
      if (this.room(frame.length)) return true;
      this.counters.refused++;
      return false;
    }
    if (this.burstFrames === 0) return true;
    return this.burstFrames + 1 <= this.options.burstFrames && this.burstBytes + frame.length <= this.options.burstBytes;
  }

  handOver(frame) {
    this.burstFrames++;
    this.burstBytes += frame.length;
    this.counters.delivered++;
    this.deliver(frame);
  }

  /** Hands over waiting frames, in order, while they fit; returns how many went. */
  flush() {
    // deliver() may re-enter (an emulator can run device code synchronously): one flush at a time.
    if (this.flushing) return 0;
    this.flushing = true;
    let sent = 0;
    try {
      while (!this.closed && this.head < this.queue.length && this.fits(this.queue[this.head])) {
        const frame = this.queue[this.head];
        this.queue[this.head++] = undefined;
        this.queuedBytes -= frame.length;
        sent++;
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
    return sent;
  }

  // With a probe: a re-check of the room every `recheckMs` while frames wait (the guest frees
  // room by reading the ring, which raises no event). Without: the idle release,
  // `idleReleaseMs` after the last release, not after the timer was set, so a guest that keeps
  // transmitting is never handed a second burst early.
  arm(delay = this.room ? this.options.recheckMs : this.options.idleReleaseMs) {
    if (this.timer !== null || this.closed) return;
    this.timer = this.timers.setTimeout(() => {
      this.timer = null;
      if (this.closed || this.head === this.queue.length) return;
      if (this.room) {
        if (this.flush() > 0) this.counters.releasedByRecheck++;
        return;
      }
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
