"""The guest side of the bridge reference of `cargo xtask bench net`.

Sends UDP datagrams to PEER:PORT (an address behind the TAP-to-WebSocket bridge whose other
side echoes every frame back with addresses and ports swapped) and counts what comes back:
first the round trip of one datagram at a time, then the throughput with WINDOW datagrams in
flight for SECONDS. Every echo is checked against what was sent (sequence number and bytes).
Prints one JSON object.

usage: python3 udp_echo.py PEER PORT SIZE WINDOW SECONDS
"""

import json
import select
import socket
import struct
import sys
import time

# A window with no echo for this long is given up on (its datagrams count as lost).
STALL_S = 0.2
ROUND_TRIPS = 200


def payload(size, seq):
    """The datagram with sequence number `seq`: the number, then a fixed pattern."""
    head = struct.pack("!Q", seq)
    body = bytes((i * 7 + 3) & 0xFF for i in range(size - len(head)))
    return head + body


def main():
    peer, port, size, window, seconds = sys.argv[1:6]
    port, size, window, seconds = int(port), int(size), int(window), float(seconds)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind(("0.0.0.0", port))
    sock.connect((peer, port))
    template = bytearray(payload(size, 0))
    body = bytes(template[8:])

    def datagram(seq):
        struct.pack_into("!Q", template, 0, seq)
        return bytes(template)

    bad = 0

    def check(data):
        nonlocal bad
        if len(data) != size or data[8:] != body:
            bad += 1
            return None
        return struct.unpack_from("!Q", data, 0)[0]

    # Round trips, one datagram in flight.
    rtts = []
    rtt_lost = 0
    for seq in range(ROUND_TRIPS):
        start = time.perf_counter()
        sock.send(datagram(seq))
        deadline = start + 1.0
        while True:
            left = deadline - time.perf_counter()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                rtt_lost += 1
                break
            if check(sock.recv(65536)) == seq:
                rtts.append((time.perf_counter() - start) * 1e6)
                break

    # Throughput with a window.
    sock.setblocking(False)
    sent = received = given_up = 0
    start = time.perf_counter()
    end = start + seconds
    last_echo = start
    last_time = start
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        while sent - received - given_up < window:
            try:
                sock.send(datagram(sent))
            except BlockingIOError:
                break
            sent += 1
        select.select([sock], [], [], 0.05)
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            if check(data) is not None:
                received += 1
                last_echo = time.perf_counter()
        if time.perf_counter() - last_echo > STALL_S and sent - received - given_up > 0:
            given_up = sent - received
            last_echo = time.perf_counter()
    last_time = last_echo
    # Late echoes still count; the rate is taken up to the last one.
    drain_end = time.perf_counter() + 0.5
    while time.perf_counter() < drain_end:
        if not select.select([sock], [], [], 0.05)[0]:
            continue
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            if check(data) is not None:
                received += 1
                last_time = time.perf_counter()
    elapsed = max(last_time - start, 1e-9)
    rtts.sort()
    print(
        json.dumps(
            {
                "size": size,
                "window": window,
                "rtt_median_us": rtts[len(rtts) // 2] if rtts else None,
                "rtt_lost": rtt_lost,
                "sent": sent,
                "received": received,
                "bad": bad,
                "seconds": elapsed,
                "datagrams_per_s": received / elapsed,
                "payload_mb_per_s": received * size / 1e6 / elapsed,
            }
        )
    )


main()
