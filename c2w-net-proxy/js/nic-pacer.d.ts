/**
 * How frames are paced. With a room probe (v86's ne2k) only `recheckMs` and `maxQueuedBytes`
 * apply; without one (an unknown NIC, or virtio when pacing is forced on) the burst rule does.
 */
export interface NicPacingOptions {
  /** Without a probe: frames handed over per burst (default 8). */
  burstFrames: number;
  /** Without a probe: bytes handed over per burst, at least one full frame (default 12288). */
  burstBytes: number;
  /** Without a probe: a new burst goes this long after the last one if the guest sent nothing (default 10). */
  idleReleaseMs: number;
  /**
   * With a probe: while frames wait, the room is re-checked this often, at least 1 ms (default
   * 1; browsers stretch a chain of short timers to 4 ms). It is also re-checked when the guest
   * transmits and when a new frame arrives. A re-check hands over only what the probe accepts.
   */
  recheckMs: number;
  /** Frames waiting beyond this many bytes are dropped and counted (default 8 MiB). */
  maxQueuedBytes: number;
}

/** What the pacer has done so far. */
export interface NicPacingStats {
  /** "room": a probe decides when a frame goes; "burst": the burst rule does. */
  mode: "room" | "burst";
  /** Frames handed to the NIC. */
  delivered: number;
  /** Frames that had to wait. */
  deferred: number;
  /** Frames dropped because `maxQueuedBytes` was reached. */
  dropped: number;
  /** With a probe: how often it said the NIC had no room for the next frame. */
  refused: number;
  /** Guest transmissions that let waiting frames go (a new burst, or room found by a re-check). */
  releasedByGuest: number;
  /** With a probe: arriving frames whose re-check found room for waiting ones. */
  releasedByArrival: number;
  /** With a probe: timer re-checks (every `recheckMs`) that found room for waiting frames. */
  releasedByRecheck: number;
  /** Without a probe: bursts released by the idle timer. */
  releasedByTimer: number;
  /** The most bytes that ever waited. */
  maxQueuedBytes: number;
  /** Frames waiting now. */
  queued: number;
  /** Bytes waiting now. */
  queuedBytes: number;
}

/** The defaults, fitted to v86's ne2k under Linux. */
export const NIC_PACING_DEFAULTS: Readonly<NicPacingOptions>;

/** Validates options, filling in defaults; throws an Error naming a bad key. */
export function pacingOptions(options?: Partial<NicPacingOptions>): NicPacingOptions;

/** Hands frames to an emulated NIC no faster than its receive buffer can take them. */
export class NicPacer {
  /**
   * @param room whether the NIC can take a frame of `length` bytes now, asked right before the
   *   frame would go (a `true` hands it over). It must answer true for a frame the NIC can
   *   never take, which the NIC then drops, so that it does not hold up the frames behind it.
   *   Null or absent: the burst rule.
   */
  constructor(
    deliver: (frame: Uint8Array) => void,
    options?: Partial<NicPacingOptions>,
    timers?: { setTimeout(fn: () => void, ms: number): unknown; clearTimeout(id: unknown): void; now(): number },
    room?: ((length: number) => boolean) | null,
  );
  /** "room" with a probe, "burst" without. */
  readonly mode: "room" | "burst";
  /** A frame for the NIC: handed over now if the NIC (or the burst) allows and nothing waits, else queued. */
  push(frame: Uint8Array): void;
  /** The guest transmitted: a new burst may go, or (with a probe) the room is re-checked. */
  guestActive(): void;
  /** Counters and the current queue. */
  stats(): NicPacingStats;
  /** Drops what waits and stops the timer. */
  close(): void;
}
