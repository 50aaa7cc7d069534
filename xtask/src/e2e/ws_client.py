# A WebSocket client for the guest-WebSocket checks of `cargo xtask e2e` (native and browser):
#   python3 ws_client.py LIBRARY COMMAND URL [ARGS...]
# LIBRARY is `websocket-client` (Debian python3-websocket: synchronous; honours http_proxy /
# https_proxy and tunnels through CONNECT) or `websockets` (Debian python3-websockets 10.x:
# asyncio, no proxy support, so it goes straight to the name: transparent mode).
# A `wss://` URL trusts only the CA file in $PROXY_CA (the proxy's). Each command prints one
# JSON object on stdout; the harness judges it.
import asyncio, hashlib, json, os, ssl, struct, sys, time

LIBRARY, COMMAND, URL = sys.argv[1], sys.argv[2], sys.argv[3]
ARGS = sys.argv[4:]


class Closed(Exception):
    """The server closed: its code (None without one) and reason."""

    def __init__(self, code, reason):
        super().__init__("closed %r %r" % (code, reason))
        self.code, self.reason = code, reason


class Refused(Exception):
    """The handshake was answered with something else than 101."""

    def __init__(self, status):
        super().__init__("status %r" % status)
        self.status = status


def ssl_context():
    return ssl.create_default_context(cafile=os.environ["PROXY_CA"])


class WebsocketClient:
    """python3-websocket (websocket-client), through the proxy variables."""

    def __init__(self, url, protocols):
        import websocket
        self.lib = websocket
        options = {"timeout": 60}
        if url.startswith("wss:"):
            options["sslopt"] = {"ca_certs": os.environ["PROXY_CA"]}
        if protocols:
            options["subprotocols"] = protocols
        try:
            self.ws = websocket.create_connection(url, **options)
        except websocket.WebSocketBadStatusException as e:
            raise Refused(e.status_code)

    def protocol(self):
        return self.ws.getsubprotocol()

    def send(self, data):
        if isinstance(data, str):
            self.ws.send(data)
        else:
            self.ws.send_binary(data)

    def recv(self):
        opcode, data = self.ws.recv_data()
        if opcode == self.lib.ABNF.OPCODE_CLOSE:
            payload = data.data if hasattr(data, "data") else data
            if len(payload) >= 2:
                raise Closed(struct.unpack("!H", payload[:2])[0], payload[2:].decode())
            raise Closed(None, "")
        if opcode == self.lib.ABNF.OPCODE_TEXT:
            return data.decode()
        return bytes(data)

    def close(self, code, reason):
        self.ws.close(status=code, reason=reason.encode())


class Websockets:
    """python3-websockets (asyncio), driven from this thread's own event loop."""

    def __init__(self, url, protocols):
        import websockets
        self.lib = websockets
        # websockets 10 binds a connection to the current loop when it is created.
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        options = {"max_size": None, "max_queue": None, "open_timeout": 60}
        if url.startswith("wss:"):
            options["ssl"] = ssl_context()
        if protocols:
            options["subprotocols"] = protocols
        try:
            self.ws = self.run(websockets.connect(url, **options))
        except websockets.exceptions.InvalidStatusCode as e:
            raise Refused(e.status_code)

    def run(self, awaitable):
        async def bounded():
            return await asyncio.wait_for(awaitable, 60)
        return self.loop.run_until_complete(bounded())

    def protocol(self):
        return self.ws.subprotocol

    def send(self, data):
        self.run(self.ws.send(data))

    def recv(self):
        try:
            return self.run(self.ws.recv())
        except self.lib.exceptions.ConnectionClosed:
            raise Closed(self.ws.close_code, self.ws.close_reason)

    def close(self, code, reason):
        self.run(self.ws.close(code=code, reason=reason))


def connect(url, protocols=None):
    kind = {"websocket-client": WebsocketClient, "websockets": Websockets}[LIBRARY]
    return kind(url, protocols or [])


def blob(n):
    """n bytes of a fixed pattern every byte value appears in."""
    seed = hashlib.sha256(b"c2w websocket").digest()
    out = bytearray()
    while len(out) < n:
        seed = hashlib.sha256(seed).digest()
        out += seed
    return bytes(out[:n])


def main():
    out = {}
    if COMMAND == "echo":
        ws = connect(URL)
        text = "hello, WebSocket: \u00fc\u00f1\u00ee\u00e7\u00f8d\u00e9 \u2713"
        ws.send(text)
        got = ws.recv()
        out["text_ok"] = got == text
        out["text"] = got if isinstance(got, str) else repr(got)
        data = bytes(range(256)) * 4
        ws.send(data)
        got = ws.recv()
        out["binary_ok"] = got == data
        out["binary_type"] = type(got).__name__
        ws.close(1000, "done")
    elif COMMAND == "big":
        n = int(ARGS[0])
        ws = connect(URL)
        data = blob(n)
        started = time.time()
        ws.send(data)
        got = ws.recv()
        out["seconds"] = time.time() - started
        out["len"] = len(got)
        out["sha_ok"] = hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        text = data.hex()[:n]
        ws.send(text)
        got = ws.recv()
        out["text_len"] = len(got)
        out["text_ok"] = got == text
        ws.close(1000, "done")
    elif COMMAND == "many":
        n = int(ARGS[0])
        ws = connect(URL)
        started = time.time()
        for i in range(n):
            ws.send("message %05d" % i)
        got = [ws.recv() for _ in range(n)]
        out["seconds"] = time.time() - started
        want = ["message %05d" % i for i in range(n)]
        out["count"] = len(got)
        out["in_order"] = got == want
        out["first_wrong"] = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), None)
        ws.close(1000, "done")
    elif COMMAND == "protocol":
        ws = connect(URL, ARGS[0].split(","))
        out["protocol"] = ws.protocol()
        ws.send("after the handshake")
        out["echo"] = ws.recv()
        ws.close(1000, "done")
    elif COMMAND == "server-close":
        ws = connect(URL)
        ws.send(ARGS[0])
        try:
            got = ws.recv()
            out["unexpected"] = repr(got)
        except Closed as c:
            out["code"], out["reason"] = c.code, c.reason
    elif COMMAND == "client-close":
        ws = connect(URL)
        ws.send("before the close")
        out["echo"] = ws.recv()
        ws.close(int(ARGS[0]), ARGS[1])
        out["closed"] = True
    elif COMMAND == "refused":
        try:
            connect(URL)
            out["status"] = 101
        except Refused as r:
            out["status"] = r.status
    elif COMMAND == "counted":
        n, size = int(ARGS[0]), int(ARGS[1])
        ws = connect(URL)
        ok = True
        for i in range(n):
            data = blob(size)
            ws.send(data)
            ok = ok and ws.recv() == data
        out["echoed"] = ok
        ws.close(1000, "done")
    elif COMMAND == "timed":
        # For `cargo xtask bench websocket`: N sequential echoes of SIZE bytes, each sent only
        # once the previous came back; the time of all of them.
        n, size = int(ARGS[0]), int(ARGS[1])
        ws = connect(URL)
        data = blob(size)
        ws.send(data)
        ok = ws.recv() == data
        started = time.time()
        for _ in range(n):
            ws.send(data)
            ok = ws.recv() == data and ok
        out["seconds"] = time.time() - started
        out["echoed"] = ok
        ws.close(1000, "done")
    elif COMMAND == "hold":
        # Open, say so, then send and read 1 KiB messages until killed.
        ws = connect(URL)
        print(json.dumps({"open": True}), flush=True)
        data = blob(1024)
        while True:
            ws.send(data)
            ws.recv()
            time.sleep(0.02)
    else:
        raise SystemExit("unknown command " + COMMAND)
    print(json.dumps(out), flush=True)


main()
