// The bridge reference of `cargo xtask bench net`, node variant: the same echo as
// xtask/bench/pages/echo.js (every IPv4/UDP frame back with Ethernet addresses, IPv4 addresses and
// UDP ports swapped, so both checksums stay valid), from node's WebSocket client instead of a
// browser page. `node --experimental-websocket echo.mjs ws://127.0.0.1:PORT`
const url = process.argv[2];
if (!url) {
    console.error("usage: echo.mjs <ws-url>");
    process.exit(2);
}
if (typeof WebSocket !== "function") {
    console.error("echo: no global WebSocket (run node with --experimental-websocket)");
    process.exit(2);
}

/** Swaps a frame's addresses and ports in place; false when it is not IPv4/UDP. */
function swap(frame) {
    if (frame.length < 42 || frame[12] !== 0x08 || frame[13] !== 0x00) return false;
    const ihl = (frame[14] & 0x0f) * 4;
    if (frame[14] >> 4 !== 4 || frame[23] !== 17 || ihl < 20 || frame.length < 14 + ihl + 8) {
        return false;
    }
    const exchange = (a, b, n) => {
        for (let i = 0; i < n; i++) {
            const t = frame[a + i];
            frame[a + i] = frame[b + i];
            frame[b + i] = t;
        }
    };
    exchange(0, 6, 6);
    exchange(26, 30, 4);
    exchange(14 + ihl, 14 + ihl + 2, 2);
    return true;
}

const counters = { echoed: 0, dropped: 0 };
const ws = new WebSocket(url);
ws.binaryType = "arraybuffer";
ws.onopen = () => process.stdout.write("echo: connected\n");
ws.onmessage = (e) => {
    const frame = new Uint8Array(e.data);
    if (swap(frame)) {
        counters.echoed++;
        ws.send(frame);
    } else {
        counters.dropped++;
    }
};
ws.onerror = (e) => console.error(`echo: WebSocket error: ${e.message ?? e}`);
ws.onclose = () => {
    console.error(`echo: closed ${JSON.stringify(counters)}`);
    process.exit(0);
};
