#!/usr/bin/env python3
"""Where a download's time goes, from a runner capture (`C2W_LOSS_PCAP=FILE cargo xtask bench
loss`, or the runner's `--pcap`): per TCP connection from the proxy (192.168.127.253:80) to
the guest, the data segments sent, how many were retransmissions, and the idle gaps in what the
stack sends (no data segment for longer than THRESHOLD s, default 0.1), which under loss are
retransmission-timeout waits. Usage: loss_gaps.py FILE.pcap [THRESHOLD]"""
import struct, sys, collections

def frames(path):
    with open(path, 'rb') as f:
        hdr = f.read(24)
        magic = struct.unpack('<I', hdr[:4])[0]
        nano = magic == 0xa1b23c4d
        while True:
            h = f.read(16)
            if len(h) < 16:
                return
            sec, frac, incl, orig = struct.unpack('<IIII', h)
            data = f.read(incl)
            yield sec + frac / (1e9 if nano else 1e6), data

conns = collections.defaultdict(lambda: {'segs': 0, 'bytes': 0, 'retx': 0, 'max_end': None,
                                         'times': [], 'first': None, 'last': None, 'retx_after_gap': 0})
for t, d in frames(sys.argv[1]):
    if len(d) < 34 or d[12:14] != b'\x08\x00':
        continue
    ip = d[14:]
    ihl = (ip[0] & 15) * 4
    if ip[9] != 6:
        continue
    src = '.'.join(map(str, ip[12:16])); dst = '.'.join(map(str, ip[16:20]))
    total = struct.unpack('>H', ip[2:4])[0]
    tcp = ip[ihl:total]
    sport, dport, seq = struct.unpack('>HHI', tcp[:8])
    off = (tcp[12] >> 4) * 4
    plen = len(tcp) - off
    if src != '192.168.127.253' or plen == 0:
        continue
    c = conns[(dport, sport)]
    end = seq + plen
    if c['first'] is None:
        c['first'] = t
    if c['times']:
        gap = t - c['times'][-1]
    else:
        gap = 0
    c['times'].append(t)
    c['last'] = t
    c['segs'] += 1
    c['bytes'] += plen
    if c['max_end'] is not None and ((c['max_end'] - end) & 0xffffffff) < 0x80000000:
        c['retx'] += 1
        if gap > 0.1:
            c['retx_after_gap'] += 1
    else:
        c['max_end'] = end
thr = float(sys.argv[2]) if len(sys.argv) > 2 else 0.1
for k, c in sorted(conns.items(), key=lambda kv: -kv[1]['bytes']):
    if c['bytes'] < 1 << 20:
        continue
    ts = c['times']
    gaps = [b - a for a, b in zip(ts, ts[1:]) if b - a > thr]
    dur = c['last'] - c['first']
    hist = collections.Counter(round(g, 1) for g in gaps)
    print(f"guest port {k[0]}: {c['segs']} data segments ({c['bytes']/1e6:.1f} MB), {c['retx']} retransmitted "
          f"({c['retx']*100/max(c['segs'],1):.1f}%), {dur:.1f} s; {len(gaps)} idle gaps > {thr*1000:.0f} ms "
          f"totalling {sum(gaps):.1f} s ({sum(gaps)*100/max(dur,1e-9):.0f}% of the time); "
          f"retransmissions right after such a gap: {c['retx_after_gap']}")
    print("   gaps by length (s, rounded): " + ", ".join(f"{g}: {n}" for g, n in sorted(hist.items())))
