//! Building whole Ethernet frames (Ethernet + IPv4 + UDP/ICMP, ARP) with smoltcp's emitters.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr,
    Icmpv4Packet, Icmpv4Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
    ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, UDP_HEADER_LEN,
};

/// TTL of the packets the stack originates itself.
pub(crate) const HOP_LIMIT: u8 = 64;

fn ethernet(
    src: EthernetAddress,
    dst: EthernetAddress,
    ethertype: EthernetProtocol,
    payload_len: usize,
) -> Vec<u8> {
    let mut buf = vec![0u8; ETHERNET_HEADER_LEN + payload_len];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: src,
        dst_addr: dst,
        ethertype,
    }
    .emit(&mut frame);
    buf
}

/// An Ethernet frame sized for `ip`'s packet with the IPv4 header emitted; the caller emits
/// the payload into the packet's payload.
fn ipv4_header_frame(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    ip: &Ipv4Repr,
    caps: &ChecksumCapabilities,
) -> Vec<u8> {
    let mut buf = ethernet(
        src_mac,
        dst_mac,
        EthernetProtocol::Ipv4,
        IPV4_HEADER_LEN + ip.payload_len,
    );
    ip.emit(
        &mut Ipv4Packet::new_unchecked(&mut buf[ETHERNET_HEADER_LEN..]),
        caps,
    );
    buf
}

/// An Ethernet frame around an already built IPv4 packet.
pub(crate) fn ipv4_frame(src: EthernetAddress, dst: EthernetAddress, packet: &[u8]) -> Vec<u8> {
    let mut buf = ethernet(src, dst, EthernetProtocol::Ipv4, packet.len());
    buf[ETHERNET_HEADER_LEN..].copy_from_slice(packet);
    buf
}

/// An ARP frame; the Ethernet addresses are given separately (a reply goes unicast).
pub(crate) fn arp_frame(src: EthernetAddress, dst: EthernetAddress, repr: &ArpRepr) -> Vec<u8> {
    let mut buf = ethernet(src, dst, EthernetProtocol::Arp, repr.buffer_len());
    repr.emit(&mut ArpPacket::new_unchecked(
        &mut buf[ETHERNET_HEADER_LEN..],
    ));
    buf
}

/// A UDP datagram in IPv4 in Ethernet, with both checksums computed.
pub(crate) fn udp_frame(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    let ip = Ipv4Repr {
        src_addr: *src.ip(),
        dst_addr: *dst.ip(),
        next_header: IpProtocol::Udp,
        payload_len: UDP_HEADER_LEN + payload.len(),
        hop_limit: HOP_LIMIT,
    };
    let caps = ChecksumCapabilities::default();
    let mut buf = ipv4_header_frame(src_mac, dst_mac, &ip, &caps);
    let mut packet = Ipv4Packet::new_unchecked(&mut buf[ETHERNET_HEADER_LEN..]);
    let mut datagram = UdpPacket::new_unchecked(packet.payload_mut());
    udp.emit(
        &mut datagram,
        &IpAddress::Ipv4(*src.ip()),
        &IpAddress::Ipv4(*dst.ip()),
        payload.len(),
        |out| out.copy_from_slice(payload),
        &caps,
    );
    buf
}

/// An ICMPv4 message in IPv4 in Ethernet, with both checksums computed.
pub(crate) fn icmp_frame(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp: &Icmpv4Repr<'_>,
) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: HOP_LIMIT,
    };
    let caps = ChecksumCapabilities::default();
    let mut buf = ipv4_header_frame(src_mac, dst_mac, &ip, &caps);
    let mut packet = Ipv4Packet::new_unchecked(&mut buf[ETHERNET_HEADER_LEN..]);
    icmp.emit(
        &mut Icmpv4Packet::new_unchecked(packet.payload_mut()),
        &caps,
    );
    buf
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn udp_frame_is_byte_exact() {
        let frame = udp_frame(
            EthernetAddress([0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd]),
            EthernetAddress([0x02, 0, 0, 0, 0, 1]),
            SocketAddrV4::new(Ipv4Addr::new(192, 168, 127, 1), 53),
            SocketAddrV4::new(Ipv4Addr::new(192, 168, 127, 3), 40000),
            b"hi",
        );
        #[rustfmt::skip]
        let expected: &[u8] = &[
            // Ethernet: dst, src, IPv4
            0x02, 0, 0, 0, 0, 1, 0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd, 0x08, 0x00,
            // IPv4: v4 ihl5, tos, len 30, id 0, DF, ttl 64, UDP, checksum, src, dst
            0x45, 0x00, 0x00, 0x1e, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xbb, 0x79,
            192, 168, 127, 1, 192, 168, 127, 3,
            // UDP: 53 -> 40000, len 10, checksum, "hi"
            0x00, 0x35, 0x9c, 0x40, 0x00, 0x0a, 0x7b, 0xa5, b'h', b'i',
        ];
        assert_eq!(frame, expected);
    }
}
