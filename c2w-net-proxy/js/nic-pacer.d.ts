/** How many frames an emulated NIC is handed before the guest catches up. */
export interface NicPacingOptions {
  /** Frames handed over per burst (default 8). */
  burstFrames: number;
  /** Bytes handed over per burst, at least one full frame (default 12288). */
  burstBytes: number;
  /** A new burst goes this long after the last one if the guest sent nothing (default 10). */
  idleReleaseMs: number;
  /** Frames waiting beyond this many bytes are dropped and counted (default 8 MiB). */
  maxQueuedBytes: number;
}

/** What the pacer has done so far. */
export interface NicPacingStats {
  /** Frames handed to the NIC. */
  delivered: number;
  /** Frames that had to wait for the guest. */
  deferred: number;
  /** Frames dropped because `maxQueuedBytes` was reached. */
  dropped: number;
  /** Bursts released by a guest transmission while frames waited. */
  releasedByGuest: number;
  /** Bursts released by the idle timer. */
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
  constructor(
    deliver: (frame: Uint8Array) => void,
    options?: Partial<NicPacingOptions>,
    timers?: { setTimeout(fn: () => void, ms: number): unknown; clearTimeout(id: unknown): void; now(): number },
  );
  /** A frame for the NIC: handed over now if the burst allows and nothing waits, else queued. */
  push(frame: Uint8Array): void;
  /** The guest transmitted: a new burst may go. */
  guestActive(): void;
  /** Counters and the current queue. */
  stats(): NicPacingStats;
  /** Drops what waits and stops the timer. */
  close(): void;
}
