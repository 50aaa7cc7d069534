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
// The model's ring keeps v86's register names (cr, isr, pstart, pstop, curpg, boundary), so the
// adapter's own room probe (`Ne2kRing` in v86-adapter.js) reads it as it reads v86's device.
import path from "node:path";
import { pathToFileURL } from "node:url";
import { checker } from "./report.mjs";

const dist = process.argv[2];
if (!dist) throw new Error("usage: node pacer.mjs DIST_DIR");
const { NicPacer, pacingOptions, NIC_PACING_DEFAULTS } = await import(
  pathToFileURL(path.join(dist, "nic-pacer.js")).href
);

// The adapter's probe; importing the adapter does not start the wasm module.
const { Ne2kRing: Ne2kProbe } = await import(pathToFileURL(path.join(dist, "v86-adapter.js")).href);

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

/** v86's ne2k receive ring, with Linux's initial boundary/curpg (the NIC started). */
class Ne2kRing {
  constructor() {
    this.cr = 0x22;
    this.isr = 0; // bit 0: RX
    this.imr = 0x3f;
    this.pstart = PSTART;
    this.pstop = PSTOP;
    this.curpg = PSTART;
    this.boundary = PSTOP - 1;
    this.frames = new Map(); // page -> { frame, next }
    this.dropped = 0;
    this.overwritten = 0; // frames the NIC wrote over before the guest read them
  }
  get rxPending() {
    return (this.isr & 1) !== 0;
  }
  receive(frame) {
    if (this.cr & 1) return;
    const total = Math.max(60, frame.length) + 4;
    const needed = 1 + (total >> 8);
    // boundary == curpg reads as an empty ring
    const available =
      this.boundary > this.curpg ? this.boundary - this.curpg : this.pstop - this.curpg + this.boundary - this.pstart;
    if (available < needed && this.boundary !== 0) {
      this.dropped++;
      return;
    }
    let next = this.curpg + needed;
    if (next >= this.pstop) next += this.pstart - this.pstop;
    // The pages this frame takes lose whatever unread frame started in them.
    for (let i = 0, page = this.curpg; i < needed; i++, page = page + 1 >= this.pstop ? this.pstart : page + 1) {
      if (this.frames.delete(page)) this.overwritten++;
    }
    this.frames.set(this.curpg, { frame, next });
    this.curpg = next;
    this.isr |= 1;
  }
}

/**
 * Linux's 8390 receive path on that ring. The hard interrupt (`__ei_interrupt`) reads frames
 * into the backlog; the softirq after it hands them to TCP, which ACKs every second one. Soft
 * interrupts run with hard interrupts enabled, so an RX interrupt raised by a frame that
 * arrived during a transmission is taken before the softirq goes on.
 */
class LinuxGuest {
  /**
   * `gap`, if given, runs inside every `gapEvery`-th `ei_receive` after its last look at curpg
   * and before it acknowledges RX: the emulator's slice ended right there and the page's timers
   * ran (frames that arrive then raise an RX that the acknowledgement clears).
   */
  constructor(ring, transmit, { gap = null, gapEvery = 0 } = {}) {
    this.ring = ring;
    this.transmit = transmit;
    this.gap = gap;
    this.gapEvery = gapEvery;
    this.receives = 0;
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
    if (this.gap && ++this.receives % this.gapEvery === 0) this.gap();
    this.ring.isr &= ~1; // ei_receive acknowledges RX whatever is left in the ring
  }
  ack() {
    this.unacked = 0;
    this.transmit(this.expected);
    this.hardIrq(); // taken as soon as the transmit path re-enables the NIC's interrupt
  }
}

/**
 * A transfer of `count` frames (sizes from `sizeOf`) through `pacing` (false: straight to the
 * NIC) with a sender window of `window` frames; `probe`: the pacer asks the adapter's room
 * probe (else the burst rule); `busy(t)`: whether the guest's CPU is busy elsewhere at virtual
 * time t (it then neither reads the ring nor transmits). Returns what arrived, what the NIC
 * dropped or overwrote, and whether it finished.
 */
function transfer({ count, sizeOf, window, pacing, probe = false, limits, busy = () => false, gapEvery = 0, sliceMs = 1, limitMs = 60_000 }) {
  const timers = new VirtualTimers();
  const ring = new Ne2kRing();
  let pacer = null;
  let acked = 0; // frames the guest holds in order (lost frames are resent from there)
  const toNic = (frame) => ring.receive(frame);
  const gap = () => timers.advance(sliceMs);
  const guest = new LinuxGuest(ring, (inOrder) => {
    acked = Math.max(acked, inOrder);
    // As the adapter does: the probe knows the guest is transmitting.
    if (probeOfRing) probeOfRing.transmitting = true;
    if (pacer) pacer.guestActive();
    if (probeOfRing) probeOfRing.transmitting = false;
  }, { gap: gapEvery ? gap : null, gapEvery });
  const probeOfRing = probe ? Ne2kProbe.of(ring, limits) : null;
  const room = probeOfRing ? (length) => probeOfRing.room(length) : null;
  if (pacing !== false) pacer = new NicPacer(toNic, pacing, timers, room);
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
    if (!busy(timers.now())) guest.slice();
    timers.advance(sliceMs);
  }
  if (pacer) pacer.close();
  return {
    inOrder: guest.expected,
    dropped: ring.dropped,
    overwritten: ring.overwritten,
    ms: timers.now(),
    stats: pacer ? pacer.stats() : null,
    probe: probeOfRing,
  };
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

// --- with the ne2k's room probe: nothing dropped or overwritten, everything arrives
for (const [name, sizeOf] of [
  ["full frames", () => 1514],
  ["mixed sizes", mixed],
  ["small frames", () => 66],
]) {
  const r = transfer({ count: 4000, sizeOf, window: 44, pacing: {}, probe: true });
  check(r.stats.mode === "room", `${name}, room probe: the pacer runs in room mode`);
  check(r.dropped === 0 && r.overwritten === 0, `${name}, room probe: the NIC dropped ${r.dropped}, overwrote ${r.overwritten}`);
  check(r.inOrder === 4000, `${name}, room probe: all 4000 frames arrived (${r.inOrder}) in ${r.ms} virtual ms`);
  check(r.stats.dropped === 0 && r.stats.queued === 0 && r.stats.delivered >= 4000, `${name}, room probe: the queue is empty at the end (${JSON.stringify(r.stats)})`);
  check(r.stats.refused > 0 && r.stats.releasedByGuest + r.stats.releasedByRecheck + r.stats.releasedByArrival > 0,
    `${name}, room probe: the probe refused (${r.stats.refused}) and re-checks released (guest ${r.stats.releasedByGuest}, timer ${r.stats.releasedByRecheck}, arrival ${r.stats.releasedByArrival})`);
}

// --- a guest busy elsewhere for longer than idleReleaseMs: the idle timer's guess overflows
// the ring, the room probe does not
{
  const busy = (t) => t % 60 >= 30; // 30 ms of every 60 without reading the ring or transmitting
  const burst = transfer({ count: 2000, sizeOf: () => 1514, window: 44, pacing: {}, busy });
  check(burst.dropped > 0, `busy guest, burst rule: the NIC dropped ${burst.dropped} frames the idle timer released into a full ring`);
  const room = transfer({ count: 2000, sizeOf: () => 1514, window: 44, pacing: {}, probe: true, busy });
  check(room.dropped === 0 && room.overwritten === 0 && room.inOrder === 2000,
    `busy guest, room probe: nothing dropped (${room.dropped}) or overwritten (${room.overwritten}), all ${room.inOrder} arrived in ${room.ms} virtual ms (burst rule: ${burst.inOrder} in ${burst.ms})`);
}

// --- the room probe reads v86's ring as v86's receive() does, one page stricter
{
  const ring = new Ne2kRing();
  const probe = Ne2kProbe.of(ring, { maxUnread: Infinity, wakePages: 0 }); // v86's arithmetic alone
  const full = 1514; // 6 pages with the 4-byte header
  check(Ne2kProbe.pages(full) === 6 && Ne2kProbe.pages(10) === 1 && Ne2kProbe.pages(252) === 2 && Ne2kProbe.pages(251) === 1,
    "pages: 1 + (max(60, n) + 4) >> 8, as v86 counts them");
  // Linux's empty ring: boundary one page behind curpg, 51 of 52 pages available.
  check(probe.room(full), "an empty ring has room for a full frame");
  // Fill with room-approved frames through v86's receive(): it must never wrap to boundary.
  let taken = 0;
  while (probe.room(full)) {
    ring.receive(new Uint8Array(full));
    taken++;
    check(ring.curpg !== ring.boundary, `after frame ${taken} curpg ${ring.curpg} != boundary ${ring.boundary}`);
  }
  check(taken === 8 && ring.dropped === 0, `8 full frames fit (48 of 51 pages), ${taken} taken, ${ring.dropped} dropped`);
  // 3 pages left: v86 would take a 3-page frame and leave curpg == boundary (an "empty" ring).
  const threePages = 763; // 1 + ((763 + 4) >> 8) = 3 pages; 764 bytes take 4
  check(Ne2kProbe.pages(threePages) === 3 && Ne2kProbe.pages(threePages + 1) === 4, "a 763-byte frame takes 3 pages");
  check(!probe.room(threePages), "no room for a frame taking all 3 pages v86 counts as available");
  check(probe.room(2 * 256 - 5), "room for a 2-page frame (one page stays free)");
  const before = ring.curpg;
  ring.receive(new Uint8Array(threePages)); // what v86 does if handed that frame anyway
  check(ring.curpg === ring.boundary && probe.room(full),
    `v86 takes it and curpg == boundary (${before} -> ${ring.curpg}) reads as empty: the off-by-one the probe avoids`);
  // Registers that mean "take it, the NIC decides": a stopped NIC, boundary 0, a giant frame.
  const regs = (r) => ({ cr: 0x22, isr: 0, imr: 0x3f, pstart: 0x4c, pstop: 0x80, ...r });
  check(Ne2kProbe.of(regs({ cr: 0x21, curpg: 0x50, boundary: 0x4f })).room(full), "a stopped NIC takes (and drops) frames at once");
  check(Ne2kProbe.of(regs({ curpg: 0x60, boundary: 0 })).room(full), "boundary 0: v86 takes every frame, so does the probe");
  const nearlyFull = Ne2kProbe.of(regs({ isr: 1, curpg: 0x50, boundary: 0x52 }));
  check(!nearlyFull.room(full) && nearlyFull.room(60_000), "a frame larger than the ring goes (v86 drops it) instead of holding up the queue");
  check(Ne2kProbe.of({ name: "ne2k" }) === null && Ne2kProbe.of(null) === null, "no registers, no probe");
}

// --- the probe's limits for Linux's driver: 8 frames per interrupt, room kept to wake the guest
{
  const fill = (ring, probe, length) => {
    let taken = 0;
    while (probe.room(length)) {
      ring.receive(new Uint8Array(length));
      taken++;
    }
    return taken;
  };
  // The driver idle (ring empty, no RX pending): its next ei_receive reads all it is handed.
  const ring = new Ne2kRing();
  const probe = Ne2kProbe.of(ring);
  check(fill(ring, probe, 1514) === 8 && ring.curpg === PSTART + 48 && ring.dropped === 0,
    "from an idle driver, 8 full frames go (48 of 51 pages)");
  check(!probe.room(60), "no 9th, not even a small one (1 of the 3 pages left would do): Linux reads 9 per interrupt");
  const small = new Ne2kRing();
  const smallProbe = Ne2kProbe.of(small);
  check(fill(small, smallProbe, 66) === 8, "8 small frames go although 44 would fit");

  // ei_receive has read them all but not acknowledged RX yet (the emulator's slice ended
  // there): what goes now may be left behind, so the room for one more full frame is kept.
  ring.boundary = ring.curpg - 1;
  check(fill(ring, probe, 1514) === 7, "inside ei_receive, 7 full frames go and the room for an 8th is kept");
  const kept = new Ne2kRing();
  const keptProbe = Ne2kProbe.of(kept);
  fill(kept, keptProbe, 1514);
  kept.boundary = kept.curpg - 1;
  keptProbe.transmitting = true;
  check(fill(kept, keptProbe, 1514) === 8, "inside the guest's transmission the room is not kept: 8 go");
  keptProbe.transmitting = false;

  // ei_receive acknowledges RX with the 7 left behind: no interrupt will come for them. A frame
  // that fits goes, whatever the count, into the kept room, to raise RX.
  ring.isr = 0;
  check(probe.room(1514) && probe.stats().wakeups === 1, "frames left behind: the kept room takes a frame that raises RX");
  ring.receive(new Uint8Array(1514));
  ring.isr = 0; // acknowledged unseen once more
  check(!probe.room(1514) && probe.stats().refusedWithoutInterrupt === 1, "no room left at all: refused and counted as stuck");
  const stats = probe.stats();
  check(stats.refusals.full === 2 && stats.refusals.unread === 1 && stats.refusals.kept === 1 && stats.refusals.interruptsOff === 0,
    `refusals counted by reason (${JSON.stringify(stats.refusals)})`);
  check(stats.registers.curpg === ring.curpg && stats.registers.isr === 0 && stats.registers.imr === ring.imr,
    `stats show the registers (${JSON.stringify(stats)})`);

  // The guest reads them all and acknowledges: idle again, the count starts over.
  ring.boundary = ring.curpg - 1;
  check(fill(ring, probe, 1514) === 8, "idle again: 8 go");

  // v86 stores what the probe lets through; what it does not store is counted.
  const notStored = Ne2kProbe.of(new Ne2kRing());
  notStored.deliver(new Uint8Array(60), () => {});
  check(notStored.stats().notStored === 1, "a frame v86 did not store is counted");
}

// --- v86's PIC: a frame that would raise the NIC's line waits while the guest's interrupts are
// off and the NIC's IRQ is enabled on the slave 8259 (else the cascade IRQ 2 can stay in
// service for ever on the master)
{
  // v86's CPU as the probe reads it: EFLAGS, the PIC's state image, the PCI routing of
  // PCI.raise_irq (device 5, pin INTA -> isa_bridge_space8[0x60]).
  const slave = [0x15]; // enabled: IRQ 8, 10, 12
  const space = new Int32Array(64);
  space[0x3c >>> 2] = (1 << 8) | 10;
  const bridge = new Uint8Array(256);
  bridge[0x60] = 10;
  const cpu = {
    flags: Int32Array.of(0x202),
    get_state_pic: () => [0xfb, 0x30, 0, 0, 1, slave],
    devices: { pci: { device_spaces: { [5 << 3]: space }, isa_bridge_space8: bridge } },
  };
  const ring = new Ne2kRing();
  ring.cpu = cpu;
  ring.pci_id = 5 << 3;
  const probe = Ne2kProbe.of(ring);
  const lineDown = () => {
    ring.boundary = ring.curpg - 1; // the guest read everything
    ring.isr = 0; // and acknowledged RX
  };
  check(probe.room(1514), "IF set: the frame goes");
  ring.receive(new Uint8Array(1514));
  cpu.flags[0] = 0x002;
  check(probe.room(1514), "IF clear, but RX is already pending (the line is up, no new edge): the frame goes");
  ring.receive(new Uint8Array(1514));
  lineDown();
  check(!probe.room(1514) && probe.stats().refusals.interruptsOff === 1,
    "IF clear, IRQ 10 enabled on the slave, the frame would raise the line: it waits");
  slave[0] = 0x11; // IRQ 10 masked: the guest is in its NIC interrupt handler
  check(probe.room(1514), "IF clear but IRQ 10 masked on the slave: the frame goes");
  ring.receive(new Uint8Array(1514));
  lineDown();
  slave[0] = 0x15;
  bridge[0x60] = 5;
  check(probe.room(1514), "IF clear, the NIC on master IRQ 5 (no cascade): the frame goes");
  ring.receive(new Uint8Array(1514));
  lineDown();
  bridge[0x60] = 10;
  ring.imr = 0;
  check(probe.room(1514), "RX masked in IMR (Linux transmitting): no edge, the frame goes");
  ring.receive(new Uint8Array(1514));
  ring.imr = 0x3f;
  lineDown();
  probe.transmitting = true;
  check(probe.room(1514), "inside the guest's transmission it goes");
  probe.transmitting = false;
  ring.receive(new Uint8Array(1514));
  lineDown();
  const getState = cpu.get_state_pic;
  delete cpu.get_state_pic;
  check(!probe.room(1514) && probe.stats().refusals.interruptsOff === 2, "IF clear and the PIC unreadable: it waits");
  cpu.get_state_pic = getState;
  cpu.flags[0] = 0x202;
  check(probe.room(1514) && probe.stats().refusals.interruptsOff === 2, "IF set again: it goes");
  check(ring.dropped === 0, "v86 stored every frame the probe let through");
  const noCpu = Ne2kProbe.of(new Ne2kRing());
  check(noCpu.raiseIsSafe === null && noCpu.room(1514), "without v86's CPU nothing is checked");
}

// --- frames that arrive after ei_receive looked at curpg for the last time raise an RX the
// driver then acknowledges: without the room kept for a wake-up frame the guest never reads again
{
  // A wide window keeps frames waiting, so every gap finds some to hand over.
  const base = { count: 3000, sizeOf: () => 1514, window: 200, pacing: {}, probe: true, gapEvery: 5, limitMs: 30_000 };
  const kept = transfer(base);
  check(kept.inOrder === 3000 && kept.dropped === 0 && kept.overwritten === 0,
    `with the room kept: all ${kept.inOrder} arrived in ${kept.ms} virtual ms, nothing dropped or overwritten`);
  check(kept.probe.stats().wakeups > 0 && kept.probe.stats().refusedWithoutInterrupt === 0,
    `frames were handed over to wake the guest (${kept.probe.stats().wakeups}), never refused while it was stuck`);
  const none = transfer({ ...base, limits: { wakePages: 0 } });
  check(none.inOrder < 3000 && none.probe.stats().refusedWithoutInterrupt > 0,
    `without it the guest gets stuck with a full ring: ${none.inOrder}/3000 in 30 s, ${none.probe.stats().refusedWithoutInterrupt} refusals while stuck`);
}

// --- the pacer against a fake ring: it hands over only what the probe accepts, in order,
// and loses nothing
{
  const timers = new VirtualTimers();
  const got = [];
  let free = 0; // frames the fake NIC takes before it is full
  let asked = 0;
  const room = () => {
    asked++;
    return free > 0;
  };
  const pacer = new NicPacer((f) => {
    free--;
    got.push(f[0]);
  }, { maxQueuedBytes: 1_000_000 }, timers, room);
  for (let i = 0; i < 50; i++) pacer.push(new Uint8Array(1000).fill(i));
  check(got.length === 0 && pacer.stats().queued === 50 && pacer.stats().deferred === 50, "no room: nothing handed over, all 50 wait");
  timers.advance(100);
  pacer.guestActive();
  check(got.length === 0 && asked > 50, `re-checks (${asked} so far) hand nothing over while the probe says no`);
  check(pacer.stats().refused === asked, `every refusal is counted (${pacer.stats().refused})`);
  free = 3;
  timers.advance(1);
  check(got.join() === "0,1,2" && pacer.stats().releasedByRecheck === 1, `the timer re-check hands over what fits (${got})`);
  free = 2;
  pacer.guestActive();
  check(got.join() === "0,1,2,3,4" && pacer.stats().releasedByGuest === 1, `a guest transmission re-checks (${got})`);
  free = 1;
  pacer.push(new Uint8Array(1000).fill(50));
  check(got.join() === "0,1,2,3,4,5" && pacer.stats().releasedByArrival === 1, `an arriving frame re-checks, waiting frames first (${got})`);
  free = Infinity;
  timers.advance(1);
  const inOrder = got.every((v, i) => v === i);
  check(got.length === 51 && inOrder, `as room appears all 51 go, in order, each once (${got.length})`);
  check(pacer.stats().queued === 0 && pacer.stats().dropped === 0 && pacer.stats().delivered === 51, `nothing lost: ${JSON.stringify(pacer.stats())}`);
  const pending = timers.pending.size;
  check(pending === 0, `no re-check timer runs while nothing waits (${pending})`);
  pacer.push(new Uint8Array([99]));
  check(got.at(-1) === 99 && pacer.stats().deferred === 51, "with room and nothing waiting, a frame goes at once");
  pacer.close();
}

// --- with a probe, the queue bound still drops the newest and counts them
{
  const timers = new VirtualTimers();
  const got = [];
  let open = false;
  const pacer = new NicPacer((f) => got.push(f[0]), { maxQueuedBytes: 5000 }, timers, () => open);
  for (let i = 0; i < 8; i++) pacer.push(new Uint8Array(1000).fill(i));
  check(pacer.stats().queuedBytes === 5000 && pacer.stats().dropped === 3, `5 of 8 wait, 3 dropped (${JSON.stringify(pacer.stats())})`);
  open = true;
  timers.advance(1);
  check(got.join() === "0,1,2,3,4", `the 5 that waited go in order (${got})`);
  pacer.close();
  check(timers.pending.size === 0, "close() leaves no timer");
}

// --- re-entrant delivery with a probe keeps order and asks before each frame
{
  const got = [];
  let pacer;
  let free = 2;
  pacer = new NicPacer((f) => {
    free--;
    got.push(f[0]);
    if (f[0] === 1) pacer.guestActive(); // the emulator runs device code inside a delivery
    if (f[0] === 3) pacer.push(new Uint8Array([100])); // and the stack answers inside it
  }, {}, new VirtualTimers(), () => free > 0);
  for (let i = 0; i < 6; i++) pacer.push(new Uint8Array([i]));
  check(got.join() === "0,1", `two frames had room (${got})`);
  free = 10;
  pacer.guestActive();
  check(got.join() === "0,1,2,3,4,5,100", `re-entrant calls keep the order (${got})`);
  pacer.close();
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
  [{ recheckMs: 0 }, "pacing.recheckMs"],
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
