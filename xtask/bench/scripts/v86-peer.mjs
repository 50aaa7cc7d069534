// The v86 peer of `cargo xtask bench net`: v86's own fetch network backend
// (`FetchNetworkAdapter` from the npm package `v86`, pinned by xtask) answering a real guest's
// Ethernet frames, which arrive over the harness's TAP-to-WebSocket bridge (one binary message =
// one frame). Outbound, the adapter uses node's global fetch().
//
// The adapter is not exported by the package. It is reached the way v86 itself creates it: an
// emulator constructed with `net_device.relay_url = "fetch"` builds one as its
// `network_adapter`; this script takes that object's constructor (and the constructor of the
// emulator's message bus) and builds a fresh adapter on a bus pair of its own, then destroys the
// emulator, which never runs. No v86 code is copied.
//
// usage: node --experimental-websocket v86-peer.mjs <node_modules/v86> <ws://127.0.0.1:PORT> <guest MAC>
//
// Prints one line `v86-peer: connected` on stdout once the WebSocket is open, and on SIGUSR2 one
// JSON line of counters. Exits when the WebSocket closes.

import { pathToFileURL } from "node:url";
import path from "node:path";

const [pkg, wsUrl, guestMac] = process.argv.slice(2);
if (!pkg || !wsUrl || !guestMac) {
    console.error("usage: v86-peer.mjs <node_modules/v86> <ws-url> <guest-mac>");
    process.exit(2);
}
if (typeof WebSocket !== "function") {
    console.error("v86-peer: no global WebSocket (run node with --experimental-websocket)");
    process.exit(2);
}

const build = path.join(pkg, "build");
const { V86 } = await import(pathToFileURL(path.join(build, "libv86.mjs")).href);

/** The adapter's and the bus's constructors, taken from an emulator that is then destroyed. */
async function v86Classes() {
    const emulator = new V86({
        wasm_path: path.join(build, "v86.wasm"),
        net_device: { relay_url: "fetch", type: "ne2k" },
        autostart: false,
        disable_keyboard: true,
        disable_mouse: true,
        disable_speaker: true,
        memory_size: 8 << 20,
        vga_memory_size: 2 << 20,
    });
    const deadline = Date.now() + 30_000;
    while (!emulator.network_adapter) {
        if (Date.now() > deadline) {
            throw new Error("the v86 emulator did not create its network adapter within 30 s");
        }
        await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const Adapter = emulator.network_adapter.constructor;
    const Bus = emulator.bus.constructor;
    await emulator.destroy();
    return { Adapter, Bus };
}

const { Adapter, Bus } = await v86Classes();
// A bus pair as v86 makes them: the adapter listens on one end, this script on the other.
const adapterEnd = new Bus();
const wireEnd = new Bus();
adapterEnd.pair = wireEnd;
wireEnd.pair = adapterEnd;
const adapter = new Adapter(adapterEnd, { id: 0, mtu: 1500 });

const stats = { toGuest: 0, fromGuest: 0, bytesToGuest: 0, bytesFromGuest: 0, dropped: 0 };
const ws = new WebSocket(wsUrl);
ws.binaryType = "arraybuffer";

wireEnd.register("net0-receive", (frame) => {
    if (ws.readyState !== WebSocket.OPEN) {
        stats.dropped += 1;
        return;
    }
    stats.toGuest += 1;
    stats.bytesToGuest += frame.length;
    ws.send(frame);
});

ws.onopen = () => {
    wireEnd.send("net0-mac", guestMac);
    process.stdout.write("v86-peer: connected\n");
};
ws.onmessage = (event) => {
    if (!(event.data instanceof ArrayBuffer)) {
        return;
    }
    const frame = new Uint8Array(event.data);
    stats.fromGuest += 1;
    stats.bytesFromGuest += frame.length;
    wireEnd.send("net0-send", frame);
};
ws.onerror = (event) => {
    console.error(`v86-peer: WebSocket error: ${event.message ?? event}`);
};
ws.onclose = () => {
    console.error(`v86-peer: WebSocket closed ${JSON.stringify(stats)}`);
    adapter.destroy();
    process.exit(0);
};
process.on("SIGUSR2", () => {
    process.stdout.write(`${JSON.stringify(stats)}\n`);
});
