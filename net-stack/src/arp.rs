//! ARP responder: answers requests for the gateway and the virtual IPs with the gateway MAC.

use std::net::Ipv4Addr;

use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetAddress};

/// What an ARP packet from the guest means to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ArpAction {
    /// Send this reply (already a full Ethernet frame).
    Reply(Vec<u8>),
    /// Valid, but nothing to answer (a reply, a probe or a request for someone else).
    Ignore,
    /// Not an Ethernet/IPv4 ARP packet.
    Malformed,
}

/// Handles one ARP packet (the Ethernet payload); `ours` says whether we own an address.
pub(crate) fn handle(
    payload: &[u8],
    our_mac: EthernetAddress,
    ours: impl Fn(Ipv4Addr) -> bool,
) -> (ArpAction, Option<(Ipv4Addr, EthernetAddress)>) {
    let Ok(packet) = ArpPacket::new_checked(payload) else {
        return (ArpAction::Malformed, None);
    };
    let Ok(ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    }) = ArpRepr::parse(&packet)
    else {
        return (ArpAction::Malformed, None);
    };
    // Learn the sender unless it is a probe (0.0.0.0) or a bogus hardware address.
    let learned = (source_hardware_addr.is_unicast() && !source_protocol_addr.is_unspecified())
        .then_some((source_protocol_addr, source_hardware_addr));
    if operation != ArpOperation::Request
        || !ours(target_protocol_addr)
        || !source_hardware_addr.is_unicast()
    {
        return (ArpAction::Ignore, learned);
    }
    let reply = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: our_mac,
        source_protocol_addr: target_protocol_addr,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    (
        ArpAction::Reply(crate::wire::emit::arp_frame(
            our_mac,
            source_hardware_addr,
            &reply,
        )),
        learned,
    )
}
