// The page side of container2wasm's relay protocol, shared by the browser e2e's relay page
// (c2w.js) and the benchmark's relay reference (relay-bench.js): the queue of bytes waiting for
// the proxy worker and the splitter of its QEMU-framed stream (a 4-byte big-endian length
// before each frame).

/** Bytes waiting for the proxy worker (guest -> proxy), as a queue of chunks. */
export class ByteQueue {
  constructor() { this.chunks = []; this.head = 0; this.length = 0; }
  push(bytes) { if (bytes.byteLength) { this.chunks.push(bytes); this.length += bytes.byteLength; } }
  /** Copies up to `max` bytes into `dst` and consumes them; returns the count. */
  take(dst, max) {
    let n = 0;
    while (n < max && this.chunks.length) {
      const chunk = this.chunks[0];
      const k = Math.min(max - n, chunk.byteLength - this.head);
      dst.set(chunk.subarray(this.head, this.head + k), n);
      n += k; this.head += k;
      if (this.head === chunk.byteLength) { this.chunks.shift(); this.head = 0; }
    }
    this.length -= n;
    return n;
  }
}

/** Splits the proxy's QEMU-framed byte stream into frames. */
export class Deframer {
  constructor(onFrame) { this.buf = new Uint8Array(0); this.onFrame = onFrame; }
  push(bytes) {
    const joined = new Uint8Array(this.buf.byteLength + bytes.byteLength);
    joined.set(this.buf, 0); joined.set(bytes, this.buf.byteLength);
    let at = 0;
    while (joined.byteLength - at >= 4) {
      const len = new DataView(joined.buffer, at, 4).getUint32(0, false);
      if (len > 65535) throw new Error(`QEMU frame length ${len} from the worker`);
      if (joined.byteLength - at - 4 < len) break;
      this.onFrame(joined.slice(at + 4, at + 4 + len));
      at += 4 + len;
    }
    this.buf = joined.slice(at);
  }
}
