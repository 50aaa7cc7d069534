//! Replays real client traffic captured by `cargo xtask fixtures` (see tests/fixtures/README.md)
//! into a fresh Stack and checks the replies, against the real servers' replies where ours must
//! be identical. A failing test writes its exchange to target/fixture-failures/NAME.pcap.

mod common;

use std::path::Path;

use common::*;
use net_stack::{Config, Instant, ListenAddr, Stack};
use pcap_file::pcap::PcapReader;
use smoltcp::wire::{
    ArpPacket, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetFrame, EthernetProtocol,
    Icmpv4Packet, IpProtocol, Ipv4Address, Ipv4Packet, TcpOption, TcpPacket,
};

/// (timestamp, frame) of every record in a fixture.
fn load(name: &str) -> Vec<(Instant, Vec<u8>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.pcap"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = PcapReader::new(file).unwrap();
    let mut frames = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.unwrap();
        let micros = packet.timestamp.as_micros() as i64;
        frames.push((Instant::from_micros(micros), packet.data.into_owned()));
    }
    assert!(!frames.is_empty(), "{name} has no frames");
    frames
}

fn from_guest(frame: &[u8]) -> bool {
    frame.len() >= 12 && frame[6..12] == GUEST_MAC
}

/// Each guest frame with the stack's replies to it.
struct Exchange {
    guest: Vec<u8>,
    ours: Vec<Vec<u8>>,
}

/// Replays the guest's frames; returns the exchanges and the real server's frames (clients may
/// send several requests before the first reply, so tests pair replies by content, not order).
fn replay(stack: &Stack, frames: &[(Instant, Vec<u8>)]) -> (Vec<Exchange>, Vec<Vec<u8>>) {
    let mut exchanges = Vec::new();
    let mut theirs = Vec::new();
    for (time, frame) in frames {
        if from_guest(frame) {
            exchanges.push(Exchange {
                guest: frame.clone(),
                ours: exchange(stack, frame, *time),
            });
        } else {
            theirs.push(frame.clone());
        }
    }
    (exchanges, theirs)
}

fn udp_payload(frame: &[u8]) -> Vec<u8> {
    parse_udp(frame).2
}

#[test]
fn dhcp_fixture_gets_offer_and_ack_for_the_first_pool_address() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "fixture_dhcp", || {
        let (exchanges, theirs) = replay(&stack, &load("dhcp"));
        let mut seen = Vec::new();
        for x in &exchanges {
            let payload = udp_payload(&x.guest);
            let kind = DhcpRepr::parse(&DhcpPacket::new_checked(&payload[..]).unwrap())
                .unwrap()
                .message_type;
            seen.push(kind);
            let expected = match kind {
                DhcpMessageType::Discover => DhcpMessageType::Offer,
                DhcpMessageType::Request => DhcpMessageType::Ack,
                other => panic!("unexpected {other:?} from udhcpc"),
            };
            assert_eq!(x.ours.len(), 1, "one reply to {expected:?}");
            let ours = udp_payload(&x.ours[0]);
            let ours = DhcpPacket::new_checked(&ours[..]).unwrap();
            let repr = DhcpRepr::parse(&ours).unwrap();
            assert_eq!(repr.message_type, expected);
            assert_eq!(repr.your_ip, GUEST_IP);
            // udhcpc sets no broadcast flag: the reply goes to the new address and the MAC.
            let guest = udp_payload(&x.guest);
            let broadcast_flag =
                DhcpPacket::new_checked(&guest[..]).unwrap().flags().bits() & 0x8000 != 0;
            assert!(!broadcast_flag);
            let eth = EthernetFrame::new_checked(&x.ours[0][..]).unwrap();
            assert_eq!(eth.dst_addr().0, GUEST_MAC);
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            assert_eq!((ip.src_addr(), ip.dst_addr()), (GW_IP, GUEST_IP));
            // Every option udhcpd sent, we send with the same value.
            let reply = theirs
                .iter()
                .map(|f| udp_payload(f))
                .find(|p| {
                    let packet = DhcpPacket::new_checked(&p[..]).unwrap();
                    DhcpRepr::parse(&packet).unwrap().message_type == expected
                })
                .expect("udhcpd replied");
            let theirs = DhcpPacket::new_checked(&reply[..]).unwrap();
            let ours_opts: Vec<_> = ours.options().map(|o| (o.kind, o.data.to_vec())).collect();
            for opt in theirs.options() {
                assert!(
                    ours_opts.contains(&(opt.kind, opt.data.to_vec())),
                    "option {} {:?} missing or different in ours: {ours_opts:?}",
                    opt.kind,
                    opt.data
                );
            }
            for kind in [1u8, 3, 6, 26, 28, 51, 54] {
                assert!(ours_opts.iter().any(|(k, _)| *k == kind), "option {kind}");
            }
        }
        assert_eq!(seen.first(), Some(&DhcpMessageType::Discover));
        assert_eq!(seen.last(), Some(&DhcpMessageType::Request));
        let lease = stack.leases();
        assert_eq!((lease[0].mac, lease[0].ip), (GUEST_MAC, GUEST_IP));
    });
}

#[test]
fn arp_fixture_replies_equal_the_kernels() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "fixture_arp", || {
        let (exchanges, theirs) = replay(&stack, &load("arp"));
        assert_eq!(exchanges.len(), 2);
        for x in &exchanges {
            let eth = EthernetFrame::new_checked(&x.guest[..]).unwrap();
            assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
            let target = ArpPacket::new_checked(eth.payload())
                .unwrap()
                .target_protocol_addr()
                .to_vec();
            let kernel = theirs
                .iter()
                .find(|f| {
                    ArpPacket::new_checked(&f[14..])
                        .unwrap()
                        .source_protocol_addr()
                        == &target[..]
                })
                .expect("the kernel replied");
            assert_eq!(
                x.ours,
                vec![kernel.clone()],
                "our ARP reply differs from the kernel's"
            );
        }
        assert_eq!(stack.stats().arp_replies, 2);
    });
}

#[test]
fn icmp_fixture_echo_replies_match_the_kernels() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "fixture_icmp", || {
        let (exchanges, kernel) = replay(&stack, &load("icmp"));
        assert_eq!(exchanges.len(), 4);
        for x in &exchanges {
            assert_eq!(x.ours.len(), 1);
            let id_seq = &x.guest[14 + 20 + 4..14 + 20 + 8];
            let ours = &x.ours[0];
            let theirs = kernel
                .iter()
                .find(|f| &f[14 + 20 + 4..14 + 20 + 8] == id_seq)
                .expect("the kernel replied");
            let ip_o = Ipv4Packet::new_checked(&ours[14..]).unwrap();
            let ip_t = Ipv4Packet::new_checked(&theirs[14..]).unwrap();
            assert!(ip_o.verify_checksum());
            assert_eq!(ip_o.next_header(), IpProtocol::Icmp);
            assert_eq!(
                (ip_o.src_addr(), ip_o.dst_addr()),
                (ip_t.src_addr(), ip_t.dst_addr())
            );
            // The ICMP message (type, checksum, id, seq, data) is identical; only the IP id differs.
            Icmpv4Packet::new_checked(ip_o.payload()).unwrap();
            assert_eq!(ip_o.payload(), ip_t.payload());
            assert_eq!(ours[..12], theirs[..12]);
        }
        assert_eq!(stack.stats().icmp_echo_replies, 4);
    });
}

#[test]
fn dns_fixture_answers_match_the_reference_responder() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "fixture_dns", || {
        let (exchanges, theirs) = replay(&stack, &load("dns"));
        assert_eq!(exchanges.len(), 4, "A + AAAA for two names");
        for x in &exchanges {
            assert_eq!(x.ours.len(), 1);
            let id = udp_payload(&x.guest)[..2].to_vec();
            let reference = theirs
                .iter()
                .find(|f| udp_payload(f)[..2] == id[..])
                .expect("the responder replied");
            // The reference responder answers exactly as specified (A from the table, first fake IP
            // 198.18.0.1 for example.com, empty AAAA, RD copied, RA set, TTL 60).
            assert_eq!(udp_payload(&x.ours[0]), udp_payload(reference));
            let (src, dst, _) = parse_udp(&x.ours[0]);
            let (gsrc, gdst, _) = parse_udp(&x.guest);
            assert_eq!((src, dst), (gdst, gsrc));
        }
        assert_eq!(
            stack
                .fake_ip_name(Ipv4Address::new(198, 18, 0, 1))
                .as_deref(),
            Some("example.com")
        );
        assert_eq!(stack.stats().dns_queries, 4);
    });
}

#[test]
fn tcp_fixture_syn_gets_a_sane_syn_ack() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "fixture_tcp_http", || {
        let _listener = stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
        let frames = load("tcp_http");
        let (time, syn) = frames.iter().find(|(_, f)| from_guest(f)).unwrap();
        let syn_ip = Ipv4Packet::new_checked(&syn[14..]).unwrap();
        let syn_tcp = TcpPacket::new_checked(syn_ip.payload()).unwrap();
        assert!(syn_tcp.syn() && !syn_tcp.ack());
        let out = exchange(&stack, syn, *time);
        assert_eq!(out.len(), 1);
        let ip = Ipv4Packet::new_checked(&out[0][14..]).unwrap();
        assert!(ip.verify_checksum());
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        assert!(tcp.syn() && tcp.ack() && !tcp.rst());
        assert_eq!((ip.src_addr(), tcp.src_port()), (PROXY_IP, 80));
        assert_eq!(
            (ip.dst_addr(), tcp.dst_port()),
            (GUEST_IP, syn_tcp.src_port())
        );
        assert_eq!(tcp.ack_number(), syn_tcp.seq_number() + 1);
        assert_eq!(tcp.window_len(), 65535);
        let (mut mss, mut wscale) = (None, None);
        let mut options = tcp.options();
        while let Ok((rest, option)) = TcpOption::parse(options) {
            match option {
                TcpOption::MaxSegmentSize(v) => mss = Some(v),
                TcpOption::WindowScale(v) => wscale = Some(v),
                TcpOption::EndOfList => break,
                _ => {}
            }
            if rest.is_empty() {
                break;
            }
            options = rest;
        }
        assert_eq!(mss, Some(1460));
        // 256 KiB asked, 262,140 bytes given (see `safe_rx_capacity`): 65,535 << 2.
        assert_eq!(wscale, Some(2));
    });
}
