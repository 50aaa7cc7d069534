// Node test of nic-pacer.js against a model of what broke bulk transfers on v86's ne2k:
// `node pacer.mjs DIST_DIR` (run by `cargo xtask test` with the other node tests). Prints
// "pacer: all N checks passed" at the end.
//
// The model, in virtual time, follows the code it stands for:
// - the NIC is v86's ne2k receive path (src/ne2k.js `receive`): a ring of 256-byte pages
//   0x4c..0x80 (Linux ne2k-pci's layout), a frame that does not fit is dropped without an
//   interrupt (no ENISR_OVER), its free-space test treats boundary == curpg as empty;
// - the guest is Linux's 8390 driver (`__ei_interrupt`, `ei_receive`): on an RX interrupt it
//   reads at most 9 frames, then acknowledges RX, and loops while the ISR is non-zero (at most
//   12 rounds); it runs only in slices, and ACKs every second data frame it read, which is a
//   transmission (the adapter calls `guestActive()` then, synchronously, inside the slice);
// - the sender is a TCP sender between slices: it emits whatever its window allows at once
//   (what the stack does when the driver polls), resends lost frames after an RTO.
import path from "node:path";
import { pathToFileURL } from "node:url";
import { checker } from "./report.mjs";

const dist = process.argv[2];
if (!dist) throw new Error("usage: node pacer.mjs DIST_DIR");
const { NicPacer, pacingOptions, NIC_PACING_DEFAULTS } = await import(
  pathToFileURL(path.join(dist, "nic-pacer.js")).href
);

const { check, finish } = checker("pacer");

/** Timers in virtual milliseconds. */
class VirtualTimers {
  constructor() {
    this.t = 0;
    this.seq = 0;
    this.pending = new Map();
  }
  now() {
    return this.t;
  }
  setTimeout(fn, ms) {
    const id = ++this.seq;
    this.pending.set(id, { at: this.t + ms, fn });
    return id;
  }
  clearTimeout(id) {
    this.pending.delete(id);
  }
  /** Moves time forward by `ms`, running what falls due, in order. */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let next = null;
      for (const [id, p] of this.pending) if (p.at <= end && (!next || p.at < next[1].at)) next = [id, p];
      if (!next) break;
      this.pending.delete(next[0]);
      this.t = Math.max(this.t, next[1].at);
      next[1].fn();
    }
    this.t = end;
  }
}

const PSTART = 0x4c;
const PSTOP = 0x80;

/** v86's ne2k receive ring, with Linux's initial boundary/curpg. */
class Ne2kRing {
  constructor() {
    this.curpg = PSTART;
    this.boundary = PSTOP - 1;
    this.frames = new Map(); // page -> { frame, next }
    this.rxPending = false; // ISR's RX bit
    this.dropped = 0;
  }
  receive(frame) {
    const total = Math.max(60, frame.length) + 4;
    const needed = 1 + (total >> 8);
    const available =
      this.boundary > this.curpg ? this.boundary - this.curpg : PSTOP - this.curpg + this.boundary - PSTART;
    if (available < needed) {
      this.dropped++;
      return;
    }
    let next = this.curpg + needed;
    if (next >= PSTOP) next += PSTART - PSTOP;
    this.frames.set(this.curpg, { frame, next });
    this.curpg = next;
    this.rxPending = true;
  }
}

/**
 * Linux's 8390 receive path on that ring. The hard interrupt (`__ei_interrupt`) reads frames
 * into the backlog; the softirq after it hands them to TCP, which ACKs every second one. Soft
 * interrupts run with hard interrupts enabled, so an RX interrupt raised by a frame that
 * arrived during a transmission is taken before the softirq goes on.
 */
class LinuxGuest {
  constructor(ring, transmit) {
    this.ring = ring;
    this.transmit = transmit;
    this.backlog = [];
    this.unacked = 0;
    this.received = [];
    this.expected = 0; // the next frame in order: what an ACK acknowledges
  }
  /** One slice of guest time. */
  slice() {
    this.hardIrq();
    while (this.backlog.length) {
      const frame = this.backlog.shift();
      this.received.push(frame);
      if (new DataView(frame.buffer).getUint32(0) === this.expected) this.expected++;
      if (++this.unacked >= 2) this.ack();
    }
    if (this.unacked > 0) this.ack();
  }
  hardIrq() {
    let rounds = 0;
    while (this.ring.rxPending && ++rounds < 12) this.eiReceive();
  }
  eiReceive() {
    for (let count = 1; count < 10; count++) {
      let page = this.ring.boundary + 1;
      if (page >= PSTOP) page = PSTART;
      if (page === this.ring.curpg) break;
      const slot = this.ring.frames.get(page);
      this.ring.frames.delete(page);
      if (!slot) {
        // A header the NIC overwrote: Linux resynchronises on curpg and loses the rest.
        this.ring.boundary = this.ring.curpg - 1 < PSTART ? PSTOP - 1 : this.ring.curpg - 1;
        break;
      }
      this.backlog.push(slot.frame);
      this.ring.boundary = slot.next - 1 < PSTART ? PSTOP - 1 : slot.next - 1;
    }
    this.ring.rxPending = false; // ei_receive acknowledges RX whatever is left in the ring
  }
  ack() {
    this.unacked = 0;
    this.transmit(this.expected);
    this.hardIrq(); // taken as soon as the transmit path re-enables the NIC's interrupt
  }
}

/**
 * A transfer of `count` frames (sizes from `sizeOf`) through `pacing` (false: straight to the
 * NIC) with a sender window of `window` frames. Returns what arrived, what the NIC dropped,
 * and whether it finished.
 */
function transfer({ count, sizeOf, window, pacing, sliceMs = 1, limitMs = 60_000 }) {
  const timers = new VirtualTimers();
  const ring = new Ne2kRing();
  let pacer = null;
  let acked = 0; // frames the guest holds in order (lost frames are resent from there)
  const toNic = (frame) => ring.receive(frame);
  const guest = new LinuxGuest(ring, (inOrder) => {
    acked = Math.max(acked, inOrder);
    if (pacer) pacer.guestActive();
  });
  if (pacing !== false) pacer = new NicPacer(toNic, pacing, timers);
  const send = pacer ? (f) => pacer.push(f) : toNic;
  // The sender: frame i carries its index in bytes 0..3.
  let nextToSend = 0;
  let lastProgress = 0;
  let lastAcked = 0;
  const frame = (i) => {
    const f = new Uint8Array(sizeOf(i));
    new DataView(f.buffer).setUint32(0, i);
    return f;
  };
  while (timers.now() < limitMs && acked < count) {
    // Between slices: the stack polls and emits its window.
    if (acked > lastAcked) {
      lastAcked = acked;
      lastProgress = timers.now();
    } else if (timers.now() - lastProgress >= 200 && nextToSend > acked) {
      nextToSend = acked; // RTO: go back to the first frame the guest lacks
      lastProgress = timers.now();
    }
    while (nextToSend < count && nextToSend < acked + window) send(frame(nextToSend++));
    guest.slice();
    timers.advance(sliceMs);
  }
  if (pacer) pacer.close();
  return { inOrder: guest.expected, dropped: ring.dropped, ms: timers.now(), stats: pacer ? pacer.stats() : null };
}

function mixed(i) {
  // A TLS-like stream: full segments and odd-sized tails, with small frames between.
  return [1514, 1514, 1514, 700, 66, 1514, 1200, 66][i % 8];
}

// --- without pacing, the model reproduces the stall seen in the browser
{
  const r = transfer({ count: 4000, sizeOf: mixed, window: 44, pacing: false });
  check(r.dropped > 0, `without pacing the ring drops frames (${r.dropped} dropped)`);
  check(r.inOrder < 4000, `without pacing the transfer does not finish in 60 s (${r.inOrder}/4000 frames)`);
}

// --- with the default pacing: nothing dropped, everything arrives, in time
for (const [name, sizeOf] of [
  ["full frames", () => 1514],
  ["mixed sizes", mixed],
  ["small frames", () => 66],
]) {
  const r = transfer({ count: 4000, sizeOf, window: 44, pacing: {} });
  check(r.dropped === 0, `${name}: the NIC dropped nothing with pacing (${r.dropped})`);
  check(r.inOrder === 4000, `${name}: all 4000 frames arrived (${r.inOrder}) in ${r.ms} virtual ms`);
  check(r.stats.dropped === 0 && r.stats.queued === 0, `${name}: the pacer's queue is empty at the end`);
  check(r.stats.releasedByGuest > 0, `${name}: the guest's ACKs released bursts (${r.stats.releasedByGuest})`);
}

// --- a guest that never transmits still gets everything, one burst per idle interval
{
  const timers = new VirtualTimers();
  const got = [];
  const pacer = new NicPacer((f) => got.push(f), { idleReleaseMs: 10 }, timers);
  for (let i = 0; i < 100; i++) pacer.push(new Uint8Array(1514));
  check(got.length === NIC_PACING_DEFAULTS.burstFrames, `a burst is ${got.length} frames`);
  timers.advance(9);
  check(got.length === 8, "nothing more before idleReleaseMs");
  timers.advance(1);
  check(got.length === 16, `the idle timer releases the next burst (${got.length})`);
  timers.advance(200);
  check(got.length === 100 && pacer.stats().releasedByTimer === 12, `all 100 after 12 idle releases`);
  pacer.close();
}

// --- a guest that keeps transmitting is never handed a second burst early by the timer
{
  const timers = new VirtualTimers();
  const got = [];
  const pacer = new NicPacer((f) => got.push(f), { idleReleaseMs: 10 }, timers);
  for (let i = 0; i < 40; i++) pacer.push(new Uint8Array(1514));
  timers.advance(9);
  pacer.guestActive(); // at 9 ms: burst 2
  check(got.length === 16, "the guest released burst 2");
  timers.advance(5); // 14 ms: the timer armed at 0 must not release 5 ms after burst 2
  check(got.length === 16, `no timer release 5 ms after the guest's (${got.length})`);
  timers.advance(5); // 19 ms: 10 ms after the guest's release
  check(got.length === 24, `the idle release counts from the last release (${got.length})`);
  pacer.close();
}

// --- order is kept, bytes bound the burst, the queue is bounded and close() stops everything
{
  const timers = new VirtualTimers();
  const got = [];
  const pacer = new NicPacer((f) => got.push(f[0]), { burstFrames: 100, burstBytes: 3000, maxQueuedBytes: 10_000 }, timers);
  for (let i = 0; i < 20; i++) pacer.push(new Uint8Array(1000).fill(i));
  check(got.join() === "0,1,2", `burstBytes 3000 lets three 1000-byte frames through (${got})`);
  check(pacer.stats().queuedBytes === 10_000 && pacer.stats().dropped === 7, `the queue holds 10 kB, 7 dropped (${JSON.stringify(pacer.stats())})`);
  pacer.guestActive();
  check(got.join() === "0,1,2,3,4,5", `in order (${got})`);
  pacer.close();
  timers.advance(1000);
  pacer.push(new Uint8Array(10));
  check(got.length === 6 && timers.pending.size === 0, "after close() nothing is delivered and no timer is left");
}

// --- a frame larger than burstBytes (a large MTU) goes alone instead of waiting for ever
{
  const timers = new VirtualTimers();
  const got = [];
  const pacer = new NicPacer((f) => got.push(f.length), {}, timers);
  pacer.push(new Uint8Array(100));
  pacer.push(new Uint8Array(65_000));
  pacer.push(new Uint8Array(100));
  check(got.join() === "100", `the jumbo frame waits for the next burst (${got})`);
  pacer.guestActive();
  check(got.join() === "100,65000", `then goes alone (${got})`);
  pacer.guestActive();
  check(got.join() === "100,65000,100", `and the queue moves on (${got})`);
  pacer.close();
}

// --- re-entrant delivery (an emulator running device code inside deliver) keeps order
{
  const got = [];
  let pacer;
  pacer = new NicPacer((f) => {
    got.push(f[0]);
    if (f[0] === 3) pacer.guestActive(); // the emulator runs the guest inside a delivery
  }, { burstFrames: 2 }, new VirtualTimers());
  for (let i = 0; i < 8; i++) pacer.push(new Uint8Array([i]));
  pacer.guestActive();
  check(got.join() === "0,1,2,3,4,5", `re-entrant guestActive keeps order and the burst (${got})`);
  pacer.close();
}

// --- options are checked by name
for (const [options, needle] of [
  [{ burstFrame: 8 }, "pacing.burstFrame"],
  [{ burstFrames: 0 }, "pacing.burstFrames"],
  [{ burstBytes: 1000 }, "smaller than one full frame"],
  [{ idleReleaseMs: 1.5 }, "pacing.idleReleaseMs"],
  [[], "an object or false"],
]) {
  let message = "";
  try {
    pacingOptions(options);
  } catch (e) {
    message = e.message;
  }
  check(message.includes(needle), `pacingOptions(${JSON.stringify(options)}) fails naming ${needle}: ${message}`);
}

finish();
