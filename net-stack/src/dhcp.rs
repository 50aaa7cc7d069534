//! DHCP server on the gateway (RFC 2131): a pure state machine from a parsed client message and
//! the current time to at most one reply, with leases kept per client MAC address.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress, DHCP_CLIENT_PORT,
};

use crate::config::Config;

/// How long an OFFER reserves its address for the client that was offered it.
const OFFER_HOLD: Duration = Duration::from_secs(60);
/// How long an address declined by a client (found in use on the link) is not handed out.
const DECLINE_HOLD: Duration = Duration::from_secs(600);
/// Classic BOOTP minimum message size; some clients drop shorter replies.
const MIN_MESSAGE_LEN: usize = 300;

const OPT_DNS: u8 = 6;
const OPT_MTU: u8 = 26;
const OPT_BROADCAST: u8 = 28;
const OPT_RENEWAL: u8 = 58;
const OPT_REBINDING: u8 = 59;

/// A lease handed out by the DHCP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The client's hardware address.
    pub mac: [u8; 6],
    /// The leased address.
    pub ip: Ipv4Addr,
    /// When the lease runs out unless renewed.
    pub expires: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Offered,
    Bound,
    /// Released or expired: the address is remembered for this client but free for others.
    Released,
}

#[derive(Debug, Clone, Copy)]
struct Binding {
    ip: Ipv4Addr,
    state: State,
    expires: Instant,
}

impl Binding {
    fn active(&self, now: Instant) -> bool {
        self.state != State::Released && self.expires > now
    }
}

/// What handling one message did, for the stack's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DhcpOutcome {
    Offer,
    Ack,
    Nak,
    /// A DISCOVER found no free address.
    PoolExhausted,
    /// Nothing to send (RELEASE, DECLINE, a REQUEST for another server, unusable message).
    Silent,
}

/// Where a reply goes: IP destination and Ethernet destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Destination {
    pub ip: Ipv4Addr,
    pub mac: EthernetAddress,
    pub port: u16,
}

/// A reply ready to be wrapped in UDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DhcpReply {
    pub payload: Vec<u8>,
    pub dst: Destination,
}

/// Static answers of the server, derived from the stack config.
#[derive(Debug, Clone)]
struct Settings {
    server_ip: Ipv4Addr,
    netmask: Ipv4Addr,
    broadcast: Ipv4Addr,
    mtu: u16,
    lease_secs: u32,
    pool_start: u32,
    pool_end: u32,
    excluded: Vec<Ipv4Addr>,
    subnet_mask: u32,
}

/// The DHCP server's state: bindings per client MAC, in MAC order for determinism.
#[derive(Debug)]
pub(crate) struct DhcpServer {
    settings: Settings,
    bindings: BTreeMap<EthernetAddress, Binding>,
    /// Which client an address is bound to or remembered for (at most one).
    owners: HashMap<Ipv4Addr, EthernetAddress>,
    declined: HashMap<Ipv4Addr, Instant>,
}

impl DhcpServer {
    /// A server for a validated config.
    pub(crate) fn new(config: &Config) -> Self {
        let mut excluded = vec![config.gateway_ip];
        excluded.extend(&config.virtual_ips);
        DhcpServer {
            settings: Settings {
                server_ip: config.gateway_ip,
                netmask: config.netmask(),
                broadcast: config.broadcast(),
                mtu: config.mtu.min(usize::from(u16::MAX)) as u16,
                lease_secs: config.dhcp.lease_time.secs().min(u64::from(u32::MAX)) as u32,
                pool_start: u32::from(config.dhcp.pool_start),
                pool_end: u32::from(config.dhcp.pool_end),
                excluded,
                subnet_mask: crate::config::mask(config.prefix_len),
            },
            bindings: BTreeMap::new(),
            owners: HashMap::new(),
            declined: HashMap::new(),
        }
    }

    /// Current bound leases.
    pub(crate) fn leases(&self) -> Vec<Lease> {
        self.bindings
            .iter()
            .filter(|(_, b)| b.state == State::Bound)
            .map(|(mac, b)| Lease {
                mac: mac.0,
                ip: b.ip,
                expires: b.expires,
            })
            .collect()
    }

    fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        let m = self.settings.subnet_mask;
        u32::from(ip) & m == u32::from(self.settings.server_ip) & m
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        (self.settings.pool_start..=self.settings.pool_end).contains(&n)
            && !self.settings.excluded.contains(&ip)
            && self.in_subnet(ip)
            && ip != self.settings.broadcast
            && n & !self.settings.subnet_mask != 0
    }

    /// True when `ip` may be given to `mac` now: in the pool, not declined, and not bound or
    /// offered to another client.
    fn available_for(&self, ip: Ipv4Addr, mac: EthernetAddress, now: Instant) -> bool {
        if !self.in_pool(ip) || self.declined.get(&ip).is_some_and(|until| *until > now) {
            return false;
        }
        match self.owners.get(&ip) {
            Some(owner) if *owner != mac => {
                !self.bindings.get(owner).is_some_and(|b| b.active(now))
            }
            _ => true,
        }
    }

    /// Records `mac` → `ip` in `state`, dropping any other client's memory of `ip`.
    fn bind(&mut self, mac: EthernetAddress, ip: Ipv4Addr, state: State, expires: Instant) {
        if let Some(old) = self.bindings.get(&mac) {
            if old.ip != ip {
                self.owners.remove(&old.ip);
            }
        }
        if let Some(prev) = self.owners.insert(ip, mac) {
            if prev != mac {
                self.bindings.remove(&prev);
            }
        }
        self.bindings.insert(mac, Binding { ip, state, expires });
    }

    /// The address to offer `mac`: its own previous one, the one it asks for, a never-used one,
    /// then one only remembered for another client.
    fn choose(
        &self,
        mac: EthernetAddress,
        requested: Option<Ipv4Addr>,
        now: Instant,
    ) -> Option<Ipv4Addr> {
        if let Some(b) = self.bindings.get(&mac) {
            if self.available_for(b.ip, mac, now) {
                return Some(b.ip);
            }
        }
        if let Some(ip) = requested {
            if self.available_for(ip, mac, now) && !self.owners.contains_key(&ip) {
                return Some(ip);
            }
        }
        let pool = || (self.settings.pool_start..=self.settings.pool_end).map(Ipv4Addr::from);
        pool()
            .find(|ip| self.available_for(*ip, mac, now) && !self.owners.contains_key(ip))
            .or_else(|| pool().find(|ip| self.available_for(*ip, mac, now)))
    }

    /// Handles one client message; `repr` comes from `DhcpRepr::parse`.
    pub(crate) fn handle(
        &mut self,
        repr: &DhcpRepr<'_>,
        now: Instant,
    ) -> (Option<DhcpReply>, DhcpOutcome) {
        let mac = repr.client_hardware_address;
        if !mac.is_unicast() {
            return (None, DhcpOutcome::Silent);
        }
        self.declined.retain(|_, until| *until > now);
        match repr.message_type {
            DhcpMessageType::Discover => match self.choose(mac, repr.requested_ip, now) {
                Some(ip) => {
                    // A bound client that starts over keeps its lease until it lapses.
                    let bound = self
                        .bindings
                        .get(&mac)
                        .is_some_and(|b| b.ip == ip && b.state == State::Bound && b.active(now));
                    if !bound {
                        self.bind(mac, ip, State::Offered, now + OFFER_HOLD);
                    }
                    (
                        Some(self.reply(repr, DhcpMessageType::Offer, ip)),
                        DhcpOutcome::Offer,
                    )
                }
                None => (None, DhcpOutcome::PoolExhausted),
            },
            DhcpMessageType::Request => self.request(repr, now),
            DhcpMessageType::Release => {
                if let Some(b) = self.bindings.get_mut(&mac) {
                    if b.ip == repr.client_ip {
                        b.state = State::Released;
                    }
                }
                (None, DhcpOutcome::Silent)
            }
            DhcpMessageType::Decline => {
                if let Some(ip) = repr.requested_ip {
                    if self.bindings.get(&mac).is_some_and(|b| b.ip == ip) {
                        self.bindings.remove(&mac);
                        self.owners.remove(&ip);
                        self.declined.insert(ip, now + DECLINE_HOLD);
                    }
                }
                (None, DhcpOutcome::Silent)
            }
            DhcpMessageType::Inform => (
                Some(self.reply(repr, DhcpMessageType::Ack, Ipv4Addr::UNSPECIFIED)),
                DhcpOutcome::Ack,
            ),
            _ => (None, DhcpOutcome::Silent),
        }
    }

    fn request(&mut self, repr: &DhcpRepr<'_>, now: Instant) -> (Option<DhcpReply>, DhcpOutcome) {
        let mac = repr.client_hardware_address;
        let own = self.bindings.get(&mac).map(|b| b.ip);
        let wanted = if let Some(server) = repr.server_identifier {
            // SELECTING: the client answers an OFFER, maybe another server's.
            if server != self.settings.server_ip {
                if let Some(b) = self.bindings.get_mut(&mac) {
                    if b.state == State::Offered {
                        b.state = State::Released;
                    }
                }
                return (None, DhcpOutcome::Silent);
            }
            repr.requested_ip.unwrap_or(repr.client_ip)
        } else if let Some(ip) = repr.requested_ip {
            // INIT-REBOOT: the client wants the address it had.
            ip
        } else if !repr.client_ip.is_unspecified() {
            // RENEWING / REBINDING.
            repr.client_ip
        } else {
            return (None, DhcpOutcome::Silent);
        };
        if own == Some(wanted) && self.available_for(wanted, mac, now) {
            let expires = now + Duration::from_secs(u64::from(self.settings.lease_secs));
            self.bind(mac, wanted, State::Bound, expires);
            (
                Some(self.reply(repr, DhcpMessageType::Ack, wanted)),
                DhcpOutcome::Ack,
            )
        } else {
            (
                Some(self.reply(repr, DhcpMessageType::Nak, Ipv4Addr::UNSPECIFIED)),
                DhcpOutcome::Nak,
            )
        }
    }

    /// Builds an OFFER/ACK/NAK for `req` giving `your_ip`, and decides where it goes.
    fn reply(
        &self,
        req: &DhcpRepr<'_>,
        message_type: DhcpMessageType,
        your_ip: Ipv4Addr,
    ) -> DhcpReply {
        let s = &self.settings;
        let inform = req.message_type == DhcpMessageType::Inform;
        let nak = message_type == DhcpMessageType::Nak;
        let lease = s.lease_secs;
        let (t1, t2) = ((lease / 2).to_be_bytes(), (lease / 8 * 7).to_be_bytes());
        let (dns, mtu, bcast) = (
            s.server_ip.octets(),
            s.mtu.to_be_bytes(),
            s.broadcast.octets(),
        );
        let mut options = vec![
            DhcpOption {
                kind: OPT_DNS,
                data: &dns,
            },
            DhcpOption {
                kind: OPT_MTU,
                data: &mtu,
            },
            DhcpOption {
                kind: OPT_BROADCAST,
                data: &bcast,
            },
        ];
        if !inform {
            options.push(DhcpOption {
                kind: OPT_RENEWAL,
                data: &t1,
            });
            options.push(DhcpOption {
                kind: OPT_REBINDING,
                data: &t2,
            });
        }
        // A NAK carries nothing but its type and the server identifier (RFC 2131 table 3).
        let repr = DhcpRepr {
            message_type,
            transaction_id: req.transaction_id,
            secs: 0,
            client_hardware_address: req.client_hardware_address,
            client_ip: if nak {
                Ipv4Addr::UNSPECIFIED
            } else {
                req.client_ip
            },
            your_ip,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: (!nak).then_some(s.server_ip),
            subnet_mask: (!nak).then_some(s.netmask),
            relay_agent_ip: req.relay_agent_ip,
            broadcast: req.broadcast,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(s.server_ip),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: (!nak && !inform).then_some(lease),
            renew_duration: None,
            rebind_duration: None,
            additional_options: if nak { &[] } else { &options },
        };
        let mut payload = vec![0u8; repr.buffer_len().max(MIN_MESSAGE_LEN)];
        // The buffer is sized by buffer_len, so emitting cannot fail.
        let _ = repr.emit(&mut DhcpPacket::new_unchecked(&mut payload));
        // RFC 2131 4.1: NAKs are broadcast; a configured client (ciaddr) gets unicast; otherwise
        // broadcast if the client asked for it, else unicast to the new address and its MAC.
        let broadcast = Destination {
            ip: Ipv4Addr::BROADCAST,
            mac: EthernetAddress::BROADCAST,
            port: DHCP_CLIENT_PORT,
        };
        let dst = if nak {
            broadcast
        } else if !req.client_ip.is_unspecified() {
            Destination {
                ip: req.client_ip,
                mac: req.client_hardware_address,
                port: DHCP_CLIENT_PORT,
            }
        } else if req.broadcast || your_ip.is_unspecified() {
            broadcast
        } else {
            Destination {
                ip: your_ip,
                mac: req.client_hardware_address,
                port: DHCP_CLIENT_PORT,
            }
        };
        DhcpReply { payload, dst }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use smoltcp::wire::DHCP_SERVER_PORT;

    pub(crate) const CLIENT: EthernetAddress =
        EthernetAddress([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]);
    const OTHER: EthernetAddress = EthernetAddress([0x02, 0x00, 0x00, 0x00, 0x00, 0x02]);
    const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 1);

    pub(crate) fn client_msg(
        mac: EthernetAddress,
        message_type: DhcpMessageType,
        ciaddr: Ipv4Addr,
        requested: Option<Ipv4Addr>,
        server: Option<Ipv4Addr>,
        broadcast: bool,
    ) -> Vec<u8> {
        let repr = DhcpRepr {
            message_type,
            transaction_id: 0x1122_3344,
            secs: 0,
            client_hardware_address: mac,
            client_ip: ciaddr,
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast,
            requested_ip: requested,
            client_identifier: Some(mac),
            server_identifier: server,
            parameter_request_list: Some(&[1, 3, 6, 15, 26, 28, 51, 58, 59]),
            dns_servers: None,
            max_size: None,
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut buf)).unwrap();
        buf
    }

    fn run(s: &mut DhcpServer, msg: &[u8], now: Instant) -> (Option<DhcpReply>, DhcpOutcome) {
        let packet = DhcpPacket::new_checked(msg).unwrap();
        let repr = DhcpRepr::parse(&packet).unwrap();
        s.handle(&repr, now)
    }

    /// Parses a reply; the bytes are leaked so the borrowed repr can outlive the call (tests only).
    fn parsed(reply: &DhcpReply) -> DhcpRepr<'static> {
        let bytes: &'static [u8] = Box::leak(reply.payload.clone().into_boxed_slice());
        let packet: &'static DhcpPacket<&'static [u8]> =
            Box::leak(Box::new(DhcpPacket::new_unchecked(bytes)));
        DhcpRepr::parse(packet).unwrap()
    }

    fn option(reply: &DhcpReply, kind: u8) -> Option<Vec<u8>> {
        DhcpPacket::new_unchecked(&reply.payload[..])
            .options()
            .find(|o| o.kind == kind)
            .map(|o| o.data.to_vec())
    }

    const ZERO: Ipv4Addr = Ipv4Addr::UNSPECIFIED;
    const T0: Instant = Instant::from_millis_const(100_000);

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 127, last)
    }

    fn server() -> DhcpServer {
        DhcpServer::new(&Config::default())
    }

    #[test]
    fn discover_request_without_broadcast_flag_is_unicast() {
        let mut s = server();
        let (offer, outcome) = run(
            &mut s,
            &client_msg(CLIENT, DhcpMessageType::Discover, ZERO, None, None, false),
            T0,
        );
        assert_eq!(outcome, DhcpOutcome::Offer);
        let offer = offer.unwrap();
        assert_eq!(
            offer.dst,
            Destination {
                ip: ip(3),
                mac: CLIENT,
                port: 68
            }
        );
        assert!(offer.payload.len() >= 300);
        let r = parsed(&offer);
        assert_eq!(r.message_type, DhcpMessageType::Offer);
        assert_eq!(r.your_ip, ip(3));
        assert_eq!(r.transaction_id, 0x1122_3344);
        assert_eq!(r.server_identifier, Some(GW));
        assert_eq!(r.router, Some(GW));
        assert_eq!(r.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(r.lease_duration, Some(3600));
        assert_eq!(option(&offer, OPT_DNS), Some([192, 168, 127, 1].to_vec()));
        assert_eq!(option(&offer, OPT_MTU), Some([0x05, 0xdc].to_vec()));
        assert_eq!(
            option(&offer, OPT_BROADCAST),
            Some([192, 168, 127, 255].to_vec())
        );
        assert_eq!(
            option(&offer, OPT_RENEWAL),
            Some(1800u32.to_be_bytes().to_vec())
        );
        assert_eq!(
            option(&offer, OPT_REBINDING),
            Some(3150u32.to_be_bytes().to_vec())
        );

        let req = client_msg(
            CLIENT,
            DhcpMessageType::Request,
            ZERO,
            Some(ip(3)),
            Some(GW),
            false,
        );
        let (ack, outcome) = run(&mut s, &req, T0);
        assert_eq!(outcome, DhcpOutcome::Ack);
        let ack = ack.unwrap();
        assert_eq!(ack.dst.ip, ip(3));
        assert_eq!(parsed(&ack).message_type, DhcpMessageType::Ack);
        assert_eq!(parsed(&ack).your_ip, ip(3));
        assert_eq!(
            s.leases(),
            vec![Lease {
                mac: CLIENT.0,
                ip: ip(3),
                expires: T0 + Duration::from_secs(3600)
            }]
        );
    }

    #[test]
    fn broadcast_flag_gets_broadcast_replies() {
        let mut s = server();
        let (offer, _) = run(
            &mut s,
            &client_msg(CLIENT, DhcpMessageType::Discover, ZERO, None, None, true),
            T0,
        );
        let offer = offer.unwrap();
        assert_eq!(offer.dst.ip, Ipv4Addr::BROADCAST);
        assert_eq!(offer.dst.mac, EthernetAddress::BROADCAST);
        assert!(parsed(&offer).broadcast);
    }

    #[test]
    fn second_client_gets_next_address_and_same_mac_same_address() {
        let mut s = server();
        let d = |mac| client_msg(mac, DhcpMessageType::Discover, ZERO, None, None, false);
        let r = |mac, ip| {
            client_msg(
                mac,
                DhcpMessageType::Request,
                ZERO,
                Some(ip),
                Some(GW),
                false,
            )
        };
        run(&mut s, &d(CLIENT), T0);
        run(&mut s, &r(CLIENT, ip(3)), T0);
        let (offer, _) = run(&mut s, &d(OTHER), T0);
        assert_eq!(parsed(&offer.unwrap()).your_ip, ip(4));
        // Asking for the first client's address: NAK, and the lease is untouched.
        let (nak, outcome) = run(&mut s, &r(OTHER, ip(3)), T0);
        assert_eq!(outcome, DhcpOutcome::Nak);
        let nak = nak.unwrap();
        assert_eq!(nak.dst.ip, Ipv4Addr::BROADCAST);
        let n = parsed(&nak);
        assert_eq!((n.your_ip, n.lease_duration, n.router), (ZERO, None, None));
        assert_eq!(n.server_identifier, Some(GW));
        // RELEASE, then DISCOVER again: the same address comes back.
        run(
            &mut s,
            &client_msg(
                CLIENT,
                DhcpMessageType::Release,
                ip(3),
                None,
                Some(GW),
                false,
            ),
            T0,
        );
        assert!(s.leases().iter().all(|l| l.mac != CLIENT.0));
        let (offer, _) = run(&mut s, &d(CLIENT), T0);
        assert_eq!(parsed(&offer.unwrap()).your_ip, ip(3));
    }

    #[test]
    fn init_reboot_renew_and_naks() {
        let mut s = server();
        // Unknown client rebooting with an address: NAK (not leased to it).
        let reboot = |ip| {
            client_msg(
                CLIENT,
                DhcpMessageType::Request,
                ZERO,
                Some(ip),
                None,
                false,
            )
        };
        assert_eq!(run(&mut s, &reboot(ip(3)), T0).1, DhcpOutcome::Nak);
        // Wrong subnet: NAK.
        assert_eq!(
            run(&mut s, &reboot(Ipv4Addr::new(10, 0, 0, 5)), T0).1,
            DhcpOutcome::Nak
        );
        run(
            &mut s,
            &client_msg(CLIENT, DhcpMessageType::Discover, ZERO, None, None, false),
            T0,
        );
        run(
            &mut s,
            &client_msg(
                CLIENT,
                DhcpMessageType::Request,
                ZERO,
                Some(ip(3)),
                Some(GW),
                false,
            ),
            T0,
        );
        // INIT-REBOOT with its own address: ACK.
        assert_eq!(run(&mut s, &reboot(ip(3)), T0).1, DhcpOutcome::Ack);
        // RENEWING: ciaddr set, no server id, no requested IP: unicast ACK to ciaddr.
        let later = T0 + Duration::from_secs(1800);
        let (ack, outcome) = run(
            &mut s,
            &client_msg(CLIENT, DhcpMessageType::Request, ip(3), None, None, false),
            later,
        );
        assert_eq!(outcome, DhcpOutcome::Ack);
        let ack = ack.unwrap();
        assert_eq!(
            ack.dst,
            Destination {
                ip: ip(3),
                mac: CLIENT,
                port: 68
            }
        );
        assert_eq!(parsed(&ack).client_ip, ip(3));
        assert_eq!(s.leases()[0].expires, later + Duration::from_secs(3600));
        // Renewing an address that is not its own: NAK.
        assert_eq!(
            run(
                &mut s,
                &client_msg(CLIENT, DhcpMessageType::Request, ip(9), None, None, false),
                later
            )
            .1,
            DhcpOutcome::Nak
        );
    }

    #[test]
    fn request_for_another_server_is_ignored_and_frees_the_offer() {
        let mut s = server();
        run(
            &mut s,
            &client_msg(CLIENT, DhcpMessageType::Discover, ZERO, None, None, false),
            T0,
        );
        let other_server = Ipv4Addr::new(192, 168, 127, 2);
        let req = client_msg(
            CLIENT,
            DhcpMessageType::Request,
            ZERO,
            Some(ip(3)),
            Some(other_server),
            false,
        );
        assert_eq!(run(&mut s, &req, T0), (None, DhcpOutcome::Silent));
        // The offer is released: another client is not blocked by it, yet the address stays
        // remembered for the first client, so a newcomer gets the next never-used one.
        let (offer, _) = run(
            &mut s,
            &client_msg(OTHER, DhcpMessageType::Discover, ZERO, None, None, false),
            T0,
        );
        assert_eq!(parsed(&offer.unwrap()).your_ip, ip(4));
    }

    #[test]
    fn inform_acks_with_options_but_no_lease() {
        let mut s = server();
        let (ack, outcome) = run(
            &mut s,
            &client_msg(CLIENT, DhcpMessageType::Inform, ip(50), None, None, false),
            T0,
        );
        assert_eq!(outcome, DhcpOutcome::Ack);
        let ack = ack.unwrap();
        assert_eq!(
            ack.dst,
            Destination {
                ip: ip(50),
                mac: CLIENT,
                port: 68
            }
        );
        let r = parsed(&ack);
        assert_eq!((r.your_ip, r.lease_duration), (ZERO, None));
        assert_eq!(r.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(option(&ack, OPT_RENEWAL), None);
        assert!(s.leases().is_empty());
    }

    #[test]
    fn pool_exhaustion_and_offer_expiry() {
        let mut config = Config::default();
        config.dhcp.pool_start = ip(252);
        config.dhcp.pool_end = ip(254); // .253 is the proxy: two addresses.
        let mut s = DhcpServer::new(&config);
        let mac = |n| EthernetAddress([2, 0, 0, 0, 1, n]);
        let d = |n| client_msg(mac(n), DhcpMessageType::Discover, ZERO, None, None, true);
        assert_eq!(parsed(&run(&mut s, &d(1), T0).0.unwrap()).your_ip, ip(252));
        assert_eq!(parsed(&run(&mut s, &d(2), T0).0.unwrap()).your_ip, ip(254));
        assert_eq!(run(&mut s, &d(3), T0), (None, DhcpOutcome::PoolExhausted));
        // Offers expire: a minute later the third client gets the first address.
        let later = T0 + OFFER_HOLD + Duration::from_secs(1);
        assert_eq!(
            parsed(&run(&mut s, &d(3), later).0.unwrap()).your_ip,
            ip(252)
        );
        let _ = DHCP_SERVER_PORT;
    }

    #[test]
    fn discover_from_a_bound_client_keeps_its_lease() {
        let mut s = server();
        let d = client_msg(CLIENT, DhcpMessageType::Discover, ZERO, None, None, false);
        run(&mut s, &d, T0);
        run(
            &mut s,
            &client_msg(
                CLIENT,
                DhcpMessageType::Request,
                ZERO,
                Some(ip(3)),
                Some(GW),
                false,
            ),
            T0,
        );
        let (offer, _) = run(&mut s, &d, T0 + Duration::from_secs(10));
        assert_eq!(parsed(&offer.unwrap()).your_ip, ip(3));
        let leases = s.leases();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].expires, T0 + Duration::from_secs(3600));
    }

    #[test]
    fn decline_blocks_the_address() {
        let mut s = server();
        run(
            &mut s,
            &client_msg(CLIENT, DhcpMessageType::Discover, ZERO, None, None, false),
            T0,
        );
        run(
            &mut s,
            &client_msg(
                CLIENT,
                DhcpMessageType::Decline,
                ZERO,
                Some(ip(3)),
                Some(GW),
                false,
            ),
            T0,
        );
        let (offer, _) = run(
            &mut s,
            &client_msg(CLIENT, DhcpMessageType::Discover, ZERO, None, None, false),
            T0,
        );
        assert_eq!(parsed(&offer.unwrap()).your_ip, ip(4));
    }
}
