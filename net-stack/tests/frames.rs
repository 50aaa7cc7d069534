//! Frame-level tests of the stack: hand-built guest frames in, exact frames out.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

mod common;

use common::*;
use net_stack::{Config, Instant, ListenAddr, Stack};
use smoltcp::wire::{
    DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress, EthernetFrame, Ipv4Address, Ipv4Packet,
    TcpControl,
};

const T: Instant = Instant::from_millis_const(5_000);

#[test]
fn arp_requests_for_gateway_and_virtual_ip_are_answered() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "arp", || {
        for (target, reply_src) in [("c0a87ffd", "c0a87ffd"), ("c0a87f01", "c0a87f01")] {
            let request = hex(&format!(
                "ffffffffffff 020000000001 0806 0001 0800 06 04 0001 020000000001 c0a87f03 000000000000 {target}"
            ));
            let out = exchange(&stack, &request, T);
            let expected = hex(&format!(
                "020000000001 5a94efe40cdd 0806 0001 0800 06 04 0002 5a94efe40cdd {reply_src} 020000000001 c0a87f03"
            ));
            assert_eq!(out, vec![expected]);
        }
        // Someone else's address, and an ARP probe (sender 0.0.0.0) for a free address: silence.
        let other = hex("ffffffffffff 020000000001 0806 0001 0800 06 04 0001 020000000001 c0a87f03 000000000000 c0a87f02");
        assert!(exchange(&stack, &other, T).is_empty());
        let probe = hex("ffffffffffff 020000000001 0806 0001 0800 06 04 0001 020000000001 00000000 000000000000 c0a87f03");
        assert!(exchange(&stack, &probe, T).is_empty());
        // Truncated ARP: dropped and counted.
        assert!(exchange(&stack, &hex("ffffffffffff 020000000001 0806 0001 0800"), T).is_empty());
        let stats = stack.stats();
        assert_eq!(stats.arp_replies, 2);
        assert_eq!(stats.dropped_malformed, 1);
        assert_eq!(stats.frames_in, 5);
        assert_eq!(stats.frames_out, 2);
    });
}

#[test]
fn icmp_echo_is_answered_only_for_our_addresses() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "icmp", || {
        let request = hex(
            "5a94efe40cdd 020000000001 0800 45000020000040004001bb87c0a87f03c0a87f01 080021041234000161626364",
        );
        let out = exchange(&stack, &request, T);
        let expected = hex(
            "020000000001 5a94efe40cdd 0800 45000020000040004001bb87c0a87f01c0a87f03 000029041234000161626364",
        );
        assert_eq!(out, vec![expected]);
        // The proxy address answers too (source .253).
        let mut to_proxy = request.clone();
        to_proxy[14 + 19] = 0xfd;
        fix_ip_checksum(&mut to_proxy);
        let out = exchange(&stack, &to_proxy, T);
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][14 + 12..14 + 16], &[192, 168, 127, 253]);
        // Another address: nothing.
        let mut elsewhere = request.clone();
        elsewhere[14 + 19] = 0x09;
        fix_ip_checksum(&mut elsewhere);
        assert!(exchange(&stack, &elsewhere, T).is_empty());
        // Bad ICMP checksum: dropped as malformed.
        let mut bad = request.clone();
        bad[14 + 20 + 2] ^= 0xff;
        assert!(exchange(&stack, &bad, T).is_empty());
        let s = stack.stats();
        assert_eq!(
            (
                s.icmp_echo_replies,
                s.dropped_not_for_us,
                s.dropped_malformed
            ),
            (2, 1, 1)
        );
    });
}

fn fix_ip_checksum(frame: &mut [u8]) {
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[14..]);
    ip.fill_checksum();
}

#[test]
fn malformed_and_unsupported_frames_are_counted_never_panic() {
    let config = Config {
        max_queued_frames: 4,
        ..Config::default()
    };
    let (stack, _rec) = stack_with(config);
    // Oversized: 1515 bytes.
    let mut big = vec![0u8; 1515];
    big[..6].copy_from_slice(&GW_MAC);
    big[12..14].copy_from_slice(&[0x08, 0x00]);
    stack.push_frame(&big);
    stack.push_frame(&[1, 2, 3]); // shorter than an Ethernet header
    stack.push_frame(&hex("5a94efe40cdd 020000000001 86dd 6000000000003a40")); // IPv6
    stack.push_frame(&hex("5a94efe40cdd 020000000001 0800 4500")); // truncated IPv4
    stack.push_frame(&hex("5a94efe40cdd 020000000001 0800 4500")); // beyond the queue limit
    stack.poll(T);
    assert_eq!(stack.pop_frame(), None);
    let s = stack.stats();
    assert_eq!(s.dropped_oversized, 1);
    assert_eq!(s.dropped_malformed, 2);
    assert_eq!(s.dropped_unsupported, 1);
    assert_eq!(s.dropped_queue_full, 1);
    assert_eq!(s.frames_dropped, 5);
    // Frames for another MAC.
    let mut other = hex("020000000099 020000000001 0806 0001 0800 06 04 0001 020000000001 c0a87f03 000000000000 c0a87f01");
    assert!(exchange(&stack, &other, T).is_empty());
    assert_eq!(stack.stats().dropped_not_for_us, 1);
    // Deterministic garbage after a valid Ethernet header, every ethertype we handle.
    let mut x: u32 = 0xdead_beef;
    for i in 0..3000 {
        let len = 14 + (i % 200);
        other.resize(len, 0);
        other[..6].copy_from_slice(&GW_MAC);
        other[12..14].copy_from_slice(&[[0x08, 0x00], [0x08, 0x06]][i % 2]);
        for b in &mut other[14..] {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        if i % 4 == 0 && len > 34 {
            other[14] = 0x45;
            fix_ip_checksum(&mut other);
        }
        let _ = exchange(&stack, &other, T);
    }
}

fn dhcp_msg(
    message_type: DhcpMessageType,
    ciaddr: Ipv4Address,
    requested: Option<Ipv4Address>,
    server: Option<Ipv4Address>,
    broadcast_flag: bool,
) -> Vec<u8> {
    dhcp_msg_from(
        GUEST_MAC,
        message_type,
        ciaddr,
        requested,
        server,
        broadcast_flag,
    )
}

/// A DHCP message whose client hardware address is `chaddr`.
fn dhcp_msg_from(
    chaddr: [u8; 6],
    message_type: DhcpMessageType,
    ciaddr: Ipv4Address,
    requested: Option<Ipv4Address>,
    server: Option<Ipv4Address>,
    broadcast_flag: bool,
) -> Vec<u8> {
    let repr = DhcpRepr {
        message_type,
        transaction_id: 0xcafe_f00d,
        secs: 0,
        client_hardware_address: EthernetAddress(chaddr),
        client_ip: ciaddr,
        your_ip: Ipv4Address::UNSPECIFIED,
        server_ip: Ipv4Address::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Address::UNSPECIFIED,
        broadcast: broadcast_flag,
        requested_ip: requested,
        client_identifier: None,
        server_identifier: server,
        parameter_request_list: Some(&[1, 3, 6, 26, 28, 51]),
        dns_servers: None,
        max_size: None,
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let mut payload = vec![0u8; repr.buffer_len()];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut payload))
        .unwrap();
    let (src_ip, dst_ip, dst_mac) = if ciaddr.is_unspecified() {
        (Ipv4Address::UNSPECIFIED, Ipv4Address::BROADCAST, [0xff; 6])
    } else {
        (ciaddr, GW_IP, GW_MAC)
    };
    udp_frame((src_ip, 68), (dst_ip, 67), dst_mac, &payload)
}

struct DhcpReply {
    dst_mac: [u8; 6],
    dst_ip: Ipv4Address,
    message_type: DhcpMessageType,
    your_ip: Ipv4Address,
    options: Vec<(u8, Vec<u8>)>,
}

fn dhcp_reply(frame: &[u8]) -> DhcpReply {
    let (src, dst, payload) = parse_udp(frame);
    assert_eq!(src, (GW_IP, 67));
    assert_eq!(dst.1, 68);
    let packet = DhcpPacket::new_checked(&payload[..]).unwrap();
    let repr = DhcpRepr::parse(&packet).unwrap();
    assert_eq!(repr.transaction_id, 0xcafe_f00d);
    assert_eq!(repr.client_hardware_address, EthernetAddress(GUEST_MAC));
    let eth = EthernetFrame::new_checked(frame).unwrap();
    assert_eq!(eth.src_addr(), EthernetAddress(GW_MAC));
    DhcpReply {
        dst_mac: eth.dst_addr().0,
        dst_ip: dst.0,
        message_type: repr.message_type,
        your_ip: repr.your_ip,
        options: packet
            .options()
            .map(|o| (o.kind, o.data.to_vec()))
            .collect(),
    }
}

fn opt(reply: &DhcpReply, kind: u8) -> Option<Vec<u8>> {
    reply
        .options
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, d)| d.clone())
}

#[test]
fn dhcp_without_broadcast_flag_unicasts_to_the_offered_address() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "dhcp_unicast", || {
        let out = exchange(
            &stack,
            &dhcp_msg(
                DhcpMessageType::Discover,
                Ipv4Address::UNSPECIFIED,
                None,
                None,
                false,
            ),
            T,
        );
        assert_eq!(out.len(), 1);
        let offer = dhcp_reply(&out[0]);
        assert_eq!(offer.message_type, DhcpMessageType::Offer);
        assert_eq!((offer.dst_mac, offer.dst_ip), (GUEST_MAC, GUEST_IP));
        assert_eq!(offer.your_ip, GUEST_IP);
        assert_eq!(opt(&offer, 1), Some(vec![255, 255, 255, 0]));
        assert_eq!(opt(&offer, 3), Some(vec![192, 168, 127, 1]));
        assert_eq!(opt(&offer, 6), Some(vec![192, 168, 127, 1]));
        assert_eq!(opt(&offer, 26), Some(vec![0x05, 0xdc]));
        assert_eq!(opt(&offer, 28), Some(vec![192, 168, 127, 255]));
        assert_eq!(opt(&offer, 51), Some(3600u32.to_be_bytes().to_vec()));
        assert_eq!(opt(&offer, 54), Some(vec![192, 168, 127, 1]));

        let req = dhcp_msg(
            DhcpMessageType::Request,
            Ipv4Address::UNSPECIFIED,
            Some(GUEST_IP),
            Some(GW_IP),
            false,
        );
        let out = exchange(&stack, &req, T);
        let ack = dhcp_reply(&out[0]);
        assert_eq!(ack.message_type, DhcpMessageType::Ack);
        assert_eq!(
            (ack.dst_mac, ack.dst_ip, ack.your_ip),
            (GUEST_MAC, GUEST_IP, GUEST_IP)
        );
        let leases = stack.leases();
        assert_eq!(leases.len(), 1);
        assert_eq!((leases[0].mac, leases[0].ip), (GUEST_MAC, GUEST_IP));

        // RELEASE (unicast from the leased address): no reply, lease gone.
        assert!(exchange(
            &stack,
            &dhcp_msg(DhcpMessageType::Release, GUEST_IP, None, Some(GW_IP), false),
            T
        )
        .is_empty());
        assert!(stack.leases().is_empty());
        // INFORM: ACK unicast to ciaddr, options but no lease time.
        let out = exchange(
            &stack,
            &dhcp_msg(DhcpMessageType::Inform, GUEST_IP, None, None, false),
            T,
        );
        let inform = dhcp_reply(&out[0]);
        assert_eq!(inform.message_type, DhcpMessageType::Ack);
        assert_eq!(
            (inform.dst_ip, inform.your_ip),
            (GUEST_IP, Ipv4Address::UNSPECIFIED)
        );
        assert_eq!(opt(&inform, 51), None);
        assert_eq!(opt(&inform, 3), Some(vec![192, 168, 127, 1]));
        // INIT-REBOOT asking for someone else's / a foreign address: broadcast NAK.
        let out = exchange(
            &stack,
            &dhcp_msg(
                DhcpMessageType::Request,
                Ipv4Address::UNSPECIFIED,
                Some(Ipv4Address::new(10, 1, 2, 3)),
                None,
                false,
            ),
            T,
        );
        let nak = dhcp_reply(&out[0]);
        assert_eq!(nak.message_type, DhcpMessageType::Nak);
        assert_eq!(
            (nak.dst_mac, nak.dst_ip),
            ([0xff; 6], Ipv4Address::BROADCAST)
        );
        let s = stack.stats();
        assert_eq!((s.dhcp_offers, s.dhcp_acks, s.dhcp_naks), (1, 2, 1));
    });
}

#[test]
fn dhcp_with_broadcast_flag_broadcasts() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "dhcp_broadcast", || {
        let out = exchange(
            &stack,
            &dhcp_msg(
                DhcpMessageType::Discover,
                Ipv4Address::UNSPECIFIED,
                None,
                None,
                true,
            ),
            T,
        );
        let offer = dhcp_reply(&out[0]);
        assert_eq!(
            (offer.dst_mac, offer.dst_ip),
            ([0xff; 6], Ipv4Address::BROADCAST)
        );
        let req = dhcp_msg(
            DhcpMessageType::Request,
            Ipv4Address::UNSPECIFIED,
            Some(GUEST_IP),
            Some(GW_IP),
            true,
        );
        let ack = dhcp_reply(&exchange(&stack, &req, T)[0]);
        assert_eq!(
            (ack.message_type, ack.dst_ip),
            (DhcpMessageType::Ack, Ipv4Address::BROADCAST)
        );
        // A REQUEST naming another server: silence.
        let other = dhcp_msg(
            DhcpMessageType::Request,
            Ipv4Address::UNSPECIFIED,
            Some(GUEST_IP),
            Some(Ipv4Address::new(192, 168, 127, 2)),
            true,
        );
        assert!(exchange(&stack, &other, T).is_empty());
        // Garbage on port 67: dropped as malformed.
        let junk = udp_frame(
            (Ipv4Address::UNSPECIFIED, 68),
            (Ipv4Address::BROADCAST, 67),
            [0xff; 6],
            &[1, 2, 3],
        );
        assert!(exchange(&stack, &junk, T).is_empty());
        assert_eq!(stack.stats().dropped_malformed, 1);
    });
}

fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = vec![
        (id >> 8) as u8,
        id as u8,
        0x01,
        0x00,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, (qtype >> 8) as u8, qtype as u8, 0, 1]);
    q
}

fn ask(stack: &Stack, payload: &[u8]) -> Option<Vec<u8>> {
    let frame = udp_frame((GUEST_IP, 33333), (GW_IP, 53), GW_MAC, payload);
    let out = exchange(stack, &frame, T);
    assert!(out.len() <= 1);
    let frame = out.into_iter().next()?;
    let (src, dst, payload) = parse_udp(&frame);
    assert_eq!((src, dst), ((GW_IP, 53), (GUEST_IP, 33333)));
    Some(payload)
}

#[test]
fn dns_answers_table_fake_aaaa_notimp_formerr() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "dns", || {
        let q = dns_query(0x0102, "Proxy.C2W.internal", 1);
        let mut expected = q.clone();
        expected[2..4].copy_from_slice(&[0x81, 0x80]);
        expected[7] = 1;
        expected.extend_from_slice(&hex("c00c 0001 0001 0000003c 0004 c0a87ffd"));
        assert_eq!(ask(&stack, &q), Some(expected));

        let fake = ask(&stack, &dns_query(2, "example.com", 1)).unwrap();
        assert_eq!(&fake[fake.len() - 4..], &[198, 18, 0, 1]);
        assert_eq!(
            stack.fake_ip_name(Ipv4Address::new(198, 18, 0, 1)),
            Some("example.com".into())
        );
        let again = ask(&stack, &dns_query(3, "EXAMPLE.COM", 1)).unwrap();
        assert_eq!(&again[again.len() - 4..], &[198, 18, 0, 1]);

        let aaaa = ask(&stack, &dns_query(4, "example.com", 28)).unwrap();
        assert_eq!((aaaa[3] & 0xf, aaaa[7]), (0, 0));
        let mx = ask(&stack, &dns_query(5, "example.com", 15)).unwrap();
        assert_eq!(mx[3] & 0xf, 4);
        let formerr = ask(&stack, &hex("abcd 0100 0001 0000 0000 0000 05 6162")).unwrap();
        assert_eq!(formerr, hex("abcd 8181 0000 0000 0000 0000"));
        assert_eq!(ask(&stack, &[0x12]), None);
        let s = stack.stats();
        assert_eq!((s.dns_queries, s.dns_fake_ips, s.dns_errors), (6, 1, 2));
        assert_eq!(s.dropped_malformed, 1);
    });
}

#[test]
fn syn_to_listener_gets_syn_ack_with_mss_and_window_scale() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "tcp_syn", || {
        let _listener = stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
        // The guest resolved nothing yet, but ARPs first in reality; here the SYN's source teaches the MAC.
        let out = exchange(
            &stack,
            &tcp_frame(PROXY_IP, 40000, 80, TcpControl::Syn, 1000, None),
            T,
        );
        assert_eq!(out.len(), 1);
        let s = segment(&out[0]);
        assert!(s.syn && s.ack && !s.rst);
        assert_eq!(s.src, (PROXY_IP, 80));
        assert_eq!(s.ack_number, 1001);
        assert_eq!(s.mss, Some(1460));
        // A 256 KiB receive buffer is 262,140 bytes (see `safe_rx_capacity`): shift 2.
        assert_eq!(s.wscale, Some(2));
        assert_eq!(s.window, 65535);
        // A retransmitted SYN does not create a second connection.
        let _ = exchange(
            &stack,
            &tcp_frame(PROXY_IP, 40000, 80, TcpControl::Syn, 1000, None),
            T,
        );
        assert_eq!(stack.stats().tcp_open, 1);
    });
}

#[test]
fn buffer_budget_shrinks_the_windows_of_new_connections_down_to_the_floor() {
    // 1 MiB for all: a connection gets at most an eighth of what is left.
    let mut config = Config::default();
    config.tcp.buffer_budget = Some(1 << 20);
    let (stack, _rec) = stack_with(config);
    let _listener = stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
    let syn_ack = |port: u16| {
        let out = exchange(
            &stack,
            &tcp_frame(PROXY_IP, port, 80, TcpControl::Syn, 1000, None),
            T,
        );
        assert_eq!(out.len(), 1, "one SYN-ACK for {port}");
        let s = segment(&out[0]);
        assert!(s.syn && s.ack && !s.rst);
        (s.wscale, s.window)
    };
    // 1 MiB left: 128 KiB per connection, 64 KiB each way (65,535 receive: no scaling).
    assert_eq!(syn_ack(40000), (Some(0), 65535));
    // 896 KiB left: 112 KiB, 56 KiB each way.
    assert_eq!(syn_ack(40001), (Some(0), 57344));
    // Then smaller still, until the floor: 16 segments of 1,460 bytes.
    let windows: Vec<u16> = (40002..40040).map(|port| syn_ack(port).1).collect();
    assert!(windows.windows(2).all(|w| w[1] <= w[0]), "{windows:?}");
    assert_eq!(*windows.last().unwrap(), 16 * 1460);
    assert_eq!(stack.stats().tcp_open, 40);
}

#[test]
fn syn_without_listener_gets_rst_for_every_kind_of_address() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "tcp_rst", || {
        let _listener = stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
        for (dst, port) in [
            (PROXY_IP, 81),
            (GW_IP, 80),
            (Ipv4Address::new(198, 18, 0, 5), 80),
            (Ipv4Address::new(93, 184, 215, 14), 443),
        ] {
            let out = exchange(
                &stack,
                &tcp_frame(dst, 40001, port, TcpControl::Syn, 5, None),
                T,
            );
            assert_eq!(out.len(), 1, "{dst}:{port}");
            let s = segment(&out[0]);
            assert!(s.rst && s.ack, "{dst}:{port}");
            assert_eq!(s.src, (dst, port));
            assert_eq!(s.ack_number, 6);
        }
        let s = stack.stats();
        assert_eq!((s.tcp_refused, s.tcp_open), (4, 0));
    });
}

#[test]
fn fake_ip_listener_accepts_any_pool_address() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "tcp_fake", || {
        let _listener = stack.listen(ListenAddr::FakeIps, 443).unwrap();
        let dst = Ipv4Address::new(198, 19, 1, 2);
        let out = exchange(
            &stack,
            &tcp_frame(dst, 40002, 443, TcpControl::Syn, 77, None),
            T,
        );
        let s = segment(&out[0]);
        assert!(s.syn && s.ack);
        assert_eq!(s.src, (dst, 443));
    });
}

#[test]
fn listen_checks_its_arguments() {
    let stack = Stack::new(Config::default()).unwrap();
    assert!(stack
        .listen(ListenAddr::Ip(Ipv4Address::new(192, 168, 127, 9)), 80)
        .is_err());
    assert!(stack.listen(ListenAddr::Ip(PROXY_IP), 0).is_err());
    let l = stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
    assert_eq!(l.local_port(), 80);
    assert!(stack.listen(ListenAddr::Ip(PROXY_IP), 80).is_err());
    drop(l);
    assert!(stack.listen(ListenAddr::Ip(PROXY_IP), 80).is_ok());
}

#[test]
fn connection_limit_refuses_with_rst() {
    let mut config = Config::default();
    config.tcp.max_connections = 2;
    let (stack, rec) = stack_with(config);
    with_dump(&rec, "tcp_limit", || {
        let _listener = stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
        for port in [40010, 40011] {
            let out = exchange(
                &stack,
                &tcp_frame(PROXY_IP, port, 80, TcpControl::Syn, 1, None),
                T,
            );
            assert!(segment(&out[0]).syn);
        }
        let out = exchange(
            &stack,
            &tcp_frame(PROXY_IP, 40012, 80, TcpControl::Syn, 1, None),
            T,
        );
        // Exactly the RST a closed port gets (RFC 9293 3.10.7.1): seq 0, ACK of the SYN,
        // window 0, no options, from the address and port the guest tried.
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0],
            tcp_reply_frame(PROXY_IP, 80, 40012, TcpControl::Rst, 0, Some(2))
        );
        let s = stack.stats();
        assert_eq!((s.tcp_refused, s.tcp_refused_limit, s.tcp_open), (1, 1, 2));
        // Retransmissions of the refused SYN are refused and counted again, never queued.
        let out = exchange(
            &stack,
            &tcp_frame(PROXY_IP, 40012, 80, TcpControl::Syn, 1, None),
            T,
        );
        assert!(segment(&out[0]).rst);
        assert_eq!(stack.stats().tcp_refused_limit, 2);
        // The guest gives up on one handshake with RST: its socket is freed.
        let rst = tcp_frame(PROXY_IP, 40010, 80, TcpControl::Rst, 2, None);
        assert!(exchange(&stack, &rst, T).is_empty());
        assert_eq!(stack.stats().tcp_open, 1);
        // Below the limit again: the next SYN is served.
        let out = exchange(
            &stack,
            &tcp_frame(PROXY_IP, 40013, 80, TcpControl::Syn, 1, None),
            T,
        );
        let s = segment(&out[0]);
        assert!(s.syn && s.ack);
        assert_eq!(stack.stats().tcp_refused_limit, 2);
    });
}

#[test]
fn dhcp_pool_exhaustion_sends_no_offer_and_is_counted() {
    let mut config = Config::default();
    config.dhcp.pool_start = Ipv4Address::new(192, 168, 127, 3);
    config.dhcp.pool_end = Ipv4Address::new(192, 168, 127, 4);
    let (stack, rec) = stack_with(config);
    with_dump(&rec, "dhcp_exhausted", || {
        let discover = |mac: [u8; 6]| {
            dhcp_msg_from(
                mac,
                DhcpMessageType::Discover,
                Ipv4Address::UNSPECIFIED,
                None,
                None,
                true,
            )
        };
        let request = |mac: [u8; 6], ip: Ipv4Address| {
            dhcp_msg_from(
                mac,
                DhcpMessageType::Request,
                Ipv4Address::UNSPECIFIED,
                Some(ip),
                Some(GW_IP),
                true,
            )
        };
        // Two clients take the two addresses (offered and acknowledged).
        for (n, ip) in [(1u8, 3u8), (2, 4)] {
            let mac = [2, 0, 0, 0, 9, n];
            let ip = Ipv4Address::new(192, 168, 127, ip);
            let out = exchange(&stack, &discover(mac), T);
            assert_eq!(out.len(), 1);
            let offer = dhcp_reply_any(&out[0]);
            assert_eq!((offer.0, offer.1), (DhcpMessageType::Offer, ip));
            let out = exchange(&stack, &request(mac, ip), T);
            assert_eq!(dhcp_reply_any(&out[0]).0, DhcpMessageType::Ack);
        }
        // A third client: silence (no OFFER, no NAK), counted each time it asks.
        let third = [2, 0, 0, 0, 9, 3];
        assert!(exchange(&stack, &discover(third), T).is_empty());
        assert!(exchange(&stack, &discover(third), T).is_empty());
        let s = stack.stats();
        assert_eq!(
            (s.dhcp_offers, s.dhcp_acks, s.dhcp_pool_exhausted),
            (2, 2, 2)
        );
        assert_eq!(stack.leases().len(), 2);
        // The bound clients still get their own address back.
        let out = exchange(&stack, &discover([2, 0, 0, 0, 9, 1]), T);
        let again = dhcp_reply_any(&out[0]);
        assert_eq!(
            (again.0, again.1),
            (DhcpMessageType::Offer, Ipv4Address::new(192, 168, 127, 3))
        );
        assert_eq!(stack.stats().dhcp_pool_exhausted, 2);
    });
}

/// The message type and offered address of a DHCP reply to any client.
fn dhcp_reply_any(frame: &[u8]) -> (DhcpMessageType, Ipv4Address) {
    let (src, dst, payload) = parse_udp(frame);
    assert_eq!((src, dst.1), ((GW_IP, 67), 68));
    let packet = DhcpPacket::new_checked(&payload[..]).unwrap();
    let repr = DhcpRepr::parse(&packet).unwrap();
    (repr.message_type, repr.your_ip)
}

#[test]
fn full_fake_ip_pool_recycles_the_least_recently_used_name() {
    let mut config = Config::default();
    config.dns.fake_ip_net = Ipv4Address::new(100, 64, 0, 0);
    config.dns.fake_ip_prefix_len = 30;
    let (stack, rec) = stack_with(config);
    with_dump(&rec, "fake_ip_recycle", || {
        let _listener = stack.listen(ListenAddr::FakeIps, 80).unwrap();
        let resolve = |id: u16, name: &str| {
            let reply = ask(&stack, &dns_query(id, name, 1)).unwrap();
            assert_eq!(reply[3] & 0xf, 0, "{name}: NOERROR");
            let n = reply.len();
            Ipv4Address::new(reply[n - 4], reply[n - 3], reply[n - 2], reply[n - 1])
        };
        let a = resolve(1, "a.example");
        let b = resolve(2, "b.example");
        assert_eq!(
            (a, b),
            (
                Ipv4Address::new(100, 64, 0, 1),
                Ipv4Address::new(100, 64, 0, 2)
            )
        );
        // A connection to "a.example" is accepted: the composition asks for its name, which
        // marks it as used, so "b.example" is now the least recently used.
        let out = exchange(
            &stack,
            &tcp_frame(a, 40100, 80, TcpControl::Syn, 1, None),
            T,
        );
        assert!(segment(&out[0]).syn);
        assert_eq!(stack.fake_ip_name(a), Some("a.example".into()));
        let c = resolve(3, "c.example");
        assert_eq!(c, b, "b.example's address recycled");
        assert_eq!(stack.fake_ip_name(b), Some("c.example".into()));
        assert_eq!(stack.fake_ip_name(a), Some("a.example".into()));
        // "a.example" was used last (the name lookup just above): "b.example" asked again
        // gets a fresh mapping on the address of "c.example", now the least recently used.
        assert_eq!(resolve(4, "b.example"), b);
        assert_eq!(stack.fake_ip_name(b), Some("b.example".into()));
        assert_eq!(stack.fake_ip_name(a), Some("a.example".into()));
        let s = stack.stats();
        assert_eq!(
            (
                s.dns_queries,
                s.dns_fake_ips,
                s.dns_fake_ips_recycled,
                s.dns_errors
            ),
            (4, 4, 2, 0)
        );
    });
}

#[test]
fn observer_sees_both_directions() {
    let (stack, rec) = stack_with(Config::default());
    let request = hex("ffffffffffff 020000000001 0806 0001 0800 06 04 0001 020000000001 c0a87f03 000000000000 c0a87f01");
    exchange(&stack, &request, T);
    let seen = rec.0.borrow();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, net_stack::Direction::FromGuest);
    assert_eq!(seen[0].1, request);
    assert_eq!(seen[1].0, net_stack::Direction::ToGuest);
    assert_eq!(seen[1].2, T);
}

#[test]
fn accepted_stream_reports_the_tuple_smoltcp_actually_served() {
    // SYN from port 40020, RST of that handshake, then a SYN from 40021, all in one poll: smoltcp
    // gives the second SYN to the first socket (back in LISTEN), not to the one created for it.
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "tcp_tuple", || {
        let listener = stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
        stack.push_frame(&tcp_frame(PROXY_IP, 40020, 80, TcpControl::Syn, 100, None));
        stack.push_frame(&tcp_frame(PROXY_IP, 40020, 80, TcpControl::Rst, 101, None));
        stack.push_frame(&tcp_frame(PROXY_IP, 40021, 80, TcpControl::Syn, 500, None));
        stack.poll(T);
        let out: Vec<_> = std::iter::from_fn(|| stack.pop_frame()).collect();
        let synack = out
            .iter()
            .map(|f| segment(f))
            .find(|s| s.syn && s.ack_number == 501)
            .unwrap();
        let ack = tcp_frame(
            PROXY_IP,
            40021,
            80,
            TcpControl::None,
            501,
            Some(synack.seq_number.wrapping_add(1)),
        );
        exchange(&stack, &ack, T);
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        let std::task::Poll::Ready(stream) = listener.poll_accept(&mut cx) else {
            panic!("not accepted");
        };
        assert_eq!(stream.peer_addr().port(), 40021);
        assert_eq!(stack.stats().tcp_open, 1);
    });
}

#[test]
fn listen_backlog_refuses_with_rst() {
    let mut config = Config::default();
    config.tcp.listen_backlog = 2;
    let (stack, rec) = stack_with(config);
    with_dump(&rec, "tcp_backlog", || {
        let _listener = stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
        let _other = stack.listen(ListenAddr::Ip(GW_IP), 8080).unwrap();
        for port in [40030, 40031] {
            let out = exchange(
                &stack,
                &tcp_frame(PROXY_IP, port, 80, TcpControl::Syn, 1, None),
                T,
            );
            assert!(segment(&out[0]).syn);
        }
        let out = exchange(
            &stack,
            &tcp_frame(PROXY_IP, 40032, 80, TcpControl::Syn, 1, None),
            T,
        );
        assert!(segment(&out[0]).rst);
        // The backlog is per listener.
        let out = exchange(
            &stack,
            &tcp_frame(GW_IP, 40033, 8080, TcpControl::Syn, 1, None),
            T,
        );
        assert!(segment(&out[0]).syn);
        assert_eq!(stack.stats().tcp_refused_limit, 1);
    });
}

#[test]
fn udp_to_an_unserved_port_of_ours_gets_port_unreachable() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "udp_unreachable", || {
        let datagram = udp_frame((GUEST_IP, 40404), (PROXY_IP, 53), GW_MAC, b"query");
        let out = exchange(&stack, &datagram, T);
        assert_eq!(out.len(), 1);
        let eth = EthernetFrame::new_checked(&out[0][..]).unwrap();
        assert_eq!(eth.dst_addr(), EthernetAddress(GUEST_MAC));
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (PROXY_IP, GUEST_IP));
        let icmp = ip.payload();
        // Type 3 (destination unreachable), code 3 (port unreachable), then unused 4 bytes.
        assert_eq!(&icmp[..2], &[3, 3]);
        assert_eq!(&icmp[4..8], &[0, 0, 0, 0]);
        // The quoted IPv4 header and the whole small datagram (UDP header + "query").
        let quoted = Ipv4Packet::new_checked(&icmp[8..]).unwrap();
        assert_eq!((quoted.src_addr(), quoted.dst_addr()), (GUEST_IP, PROXY_IP));
        assert_eq!(&icmp[28..36], &datagram[34..42]);
        assert_eq!(&icmp[36..], b"query");
        let sum = smoltcp::wire::Icmpv4Packet::new_checked(icmp).unwrap();
        assert!(sum.verify_checksum());
        // Broadcast and foreign destinations never get ICMP errors.
        let bcast = udp_frame(
            (GUEST_IP, 40404),
            (Ipv4Address::BROADCAST, 9999),
            [0xff; 6],
            b"x",
        );
        assert!(exchange(&stack, &bcast, T).is_empty());
        let foreign = udp_frame(
            (GUEST_IP, 40404),
            (Ipv4Address::new(8, 8, 8, 8), 53),
            GW_MAC,
            b"x",
        );
        assert!(exchange(&stack, &foreign, T).is_empty());
        let s = stack.stats();
        assert_eq!(
            (
                s.udp_port_unreachable,
                s.dropped_unsupported,
                s.dropped_not_for_us
            ),
            (1, 1, 1)
        );
    });
}

#[test]
fn a_burst_of_256_syns_to_one_port_is_served_by_default() {
    // The backlog follows the connection limit: 256 handshakes at once to one listener, none
    // accepted yet, all get SYN-ACK; the 257th is refused by the connection limit.
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "tcp_burst", || {
        let _listener = stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
        for port in 0..256u16 {
            stack.push_frame(&tcp_frame(
                PROXY_IP,
                30000 + port,
                80,
                TcpControl::Syn,
                1,
                None,
            ));
        }
        stack.poll(T);
        let out: Vec<_> = std::iter::from_fn(|| stack.pop_frame()).collect();
        assert_eq!(out.len(), 256);
        assert!(out.iter().all(|f| {
            let s = segment(f);
            s.syn && s.ack
        }));
        let out = exchange(
            &stack,
            &tcp_frame(PROXY_IP, 30256, 80, TcpControl::Syn, 1, None),
            T,
        );
        assert!(segment(&out[0]).rst);
        let s = stack.stats();
        assert_eq!((s.tcp_open, s.tcp_refused_limit), (256, 1));
    });
}

/// Found by the `frames` fuzz target: right after the SYN-ACK (window 65,535, unscaled),
/// smoltcp 0.14 judged data against that window shifted by its own scale, past the end of a
/// 256 KiB buffer. Data just past the buffer must be refused, and a full window of data
/// afterwards arrive intact, with nothing the guest did not send.
#[test]
fn data_beyond_the_first_window_is_refused_and_the_window_stays_intact() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "tcp_first_window", || {
        let listener = stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
        let port = 40100;
        let out = exchange(
            &stack,
            &tcp_frame(PROXY_IP, port, 80, TcpControl::Syn, 1000, None),
            T,
        );
        let syn_ack = segment(&out[0]);
        assert!(syn_ack.syn && syn_ack.ack);
        let ours = syn_ack.seq_number.wrapping_add(1);
        let window = usize::from(syn_ack.window) << syn_ack.wscale.unwrap();
        let ack = tcp_frame(PROXY_IP, port, 80, TcpControl::None, 1001, Some(ours));
        assert!(exchange(&stack, &ack, T).is_empty());
        // Four bytes at 256 KiB: past the announced window (and the buffer).
        let beyond = tcp_data_frame(
            PROXY_IP,
            port,
            80,
            TcpControl::None,
            1001 + (256 << 10),
            Some(ours),
            b"evil",
        );
        let out = exchange(&stack, &beyond, T);
        assert!(
            out.iter().all(|f| segment(f).ack_number == 1001),
            "not acknowledged"
        );
        // A whole window of real data, in order.
        let data: Vec<u8> = (0..window).map(|i| (i % 251) as u8).collect();
        for (i, chunk) in data.chunks(1460).enumerate() {
            let seq = 1001 + (i * 1460) as u32;
            let frame = tcp_data_frame(PROXY_IP, port, 80, TcpControl::Psh, seq, Some(ours), chunk);
            let _ = exchange(&stack, &frame, T);
        }
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        let std::task::Poll::Ready(mut stream) = listener.poll_accept(&mut cx) else {
            panic!("no connection to accept");
        };
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let std::task::Poll::Ready(Ok(n)) = try_read(&mut stream, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the received bytes differ from those sent");
    });
}
