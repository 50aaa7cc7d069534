//! ICMP echo responder for the gateway and the virtual IPs.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr};

/// What an ICMP message addressed to one of our IPs means to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IcmpAction<'a> {
    /// Answer with an echo reply carrying this identifier, sequence number and data.
    EchoReply {
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
    /// A valid message we do not answer (replies, errors from the guest).
    Ignore,
    /// Too short or bad checksum.
    Malformed,
}

/// Handles one ICMP message (the IPv4 payload).
pub(crate) fn handle(payload: &[u8]) -> IcmpAction<'_> {
    let Ok(packet) = Icmpv4Packet::new_checked(payload) else {
        return IcmpAction::Malformed;
    };
    match Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default()) {
        Ok(Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        }) => IcmpAction::EchoReply {
            ident,
            seq_no,
            data,
        },
        Ok(_) => IcmpAction::Ignore,
        Err(_) if packet.verify_checksum() => IcmpAction::Ignore,
        Err(_) => IcmpAction::Malformed,
    }
}
