//! Helpers shared by net-stack's fuzz targets: wrapping payloads in well-formed frames and
//! repairing checksums so mutated frames get past the checksum checks into the parsers.

use std::net::Ipv4Addr;

/// The guest's MAC in the fixtures (02:00:00:00:00:01).
pub const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// The gateway's MAC (`Config::default()`).
pub const GATEWAY_MAC: [u8; 6] = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd];

/// The one's complement sum of `data` (RFC 1071), not yet inverted.
fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// An Ethernet + IPv4 + UDP frame from the guest carrying `payload`, with correct checksums.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let payload = &payload[..payload.len().min(1500 - 28)];
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[
        0x45,
        0,
        (ip_len >> 8) as u8,
        ip_len as u8,
        0,
        1,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ]);
    f.extend_from_slice(&src.0.octets());
    f.extend_from_slice(&dst.0.octets());
    f.extend_from_slice(&src.1.to_be_bytes());
    f.extend_from_slice(&dst.1.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    fix_checksums(&mut f);
    f
}

/// Rewrites the IPv4 header checksum and, for an unfragmented TCP, UDP or ICMP packet, the
/// transport checksum of an Ethernet frame in place. Anything else is left alone.
pub fn fix_checksums(frame: &mut [u8]) {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    let ip = &mut frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip.len() < ihl {
        return;
    }
    ip[10] = 0;
    ip[11] = 0;
    let c = fold(sum(0, &ip[..ihl]));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let fragmented = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if total < ihl || fragmented {
        return;
    }
    let proto = ip[9];
    let (src, dst) = (
        [ip[12], ip[13], ip[14], ip[15]],
        [ip[16], ip[17], ip[18], ip[19]],
    );
    let l4 = &mut ip[ihl..total];
    let offset = match proto {
        1 if l4.len() >= 4 => 2,
        6 if l4.len() >= 20 => 16,
        17 if l4.len() >= 8 => 6,
        _ => return,
    };
    l4[offset] = 0;
    l4[offset + 1] = 0;
    let mut acc = 0;
    if proto != 1 {
        acc = sum(acc, &src);
        acc = sum(acc, &dst);
        acc += u32::from(proto) + l4.len() as u32;
    }
    let mut c = fold(sum(acc, l4));
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    l4[offset..offset + 2].copy_from_slice(&c.to_be_bytes());
}

/// Splits fuzz input into `(time step in ms, frame, fix checksums)` records:
/// `[len: u16 BE][flags: u8][frame: len bytes]`; the low 7 bits of flags are the time step
/// (x 10 ms) taken before the frame, the top bit asks for repaired checksums.
pub fn records(mut data: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    while data.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([data[0], data[1]])).min(data.len() - 3);
        let flags = data[2];
        let mut frame = data[3..3 + len].to_vec();
        if flags & 0x80 != 0 {
            fix_checksums(&mut frame);
        }
        out.push((u64::from(flags & 0x7f) * 10, frame));
        data = &data[3 + len..];
    }
    out
}

/// Encodes frames in the [`records`] format (checksums marked for repair, 10 ms apart).
pub fn encode_records(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&(f.len() as u16).to_be_bytes());
        out.push(0x81);
        out.extend_from_slice(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_frame_checksums_verify() {
        let f = udp_frame(
            GUEST_MAC,
            GATEWAY_MAC,
            (Ipv4Addr::new(192, 168, 127, 3), 40000),
            (Ipv4Addr::new(192, 168, 127, 1), 53),
            b"abc",
        );
        assert_eq!(fold(sum(0, &f[14..34])), 0);
        let mut acc = sum(0, &f[26..34]);
        acc += 17 + 11;
        assert_eq!(fold(sum(acc, &f[34..])), 0);
    }
}
