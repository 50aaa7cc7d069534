//! DNS: reading one query with smoltcp's `DnsPacket`/`DnsQuestion`, and emitting our answers.
//!
//! The answer emitter is ours rather than `simple-dns`: every answer we send is the query's
//! 12-byte header rewritten, its question copied verbatim (keeping the client's letter case, which
//! resolvers using 0x20 randomisation check), and at most one 16-byte A record pointing back at the
//! question name. That is a few lines of fixed layout; a general DNS library would re-encode the
//! name and add a dependency without making this stricter.

use std::net::Ipv4Addr;

use smoltcp::wire::{DnsFlags, DnsOpcode, DnsPacket, DnsQuestion};

/// Size of the DNS header.
pub(crate) const HEADER_LEN: usize = 12;
/// Record type A.
pub(crate) const TYPE_A: u16 = 1;
/// Record type AAAA.
pub(crate) const TYPE_AAAA: u16 = 28;
/// Class IN.
const CLASS_IN: u16 = 1;
/// Longest name in presentation form (RFC 1035: 255 octets on the wire).
const MAX_NAME_LEN: usize = 253;

/// Response codes we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
}

/// One parsed query: header fields we echo plus the single question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query<'a> {
    pub id: u16,
    pub opcode: u8,
    pub recursion_desired: bool,
    /// The name in lower case, dot-separated, without trailing dot ("" is the root).
    pub name: String,
    pub qtype: u16,
    /// The question section exactly as received (name, type, class).
    pub question: &'a [u8],
}

/// Why a datagram is not a query we can answer normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueryError {
    /// Not even a header, or a response: drop silently.
    Drop,
    /// The header is readable but the rest is not a query we understand: answer with this code.
    Reply {
        id: u16,
        opcode: u8,
        recursion_desired: bool,
        rcode: Rcode,
    },
}

/// Parses a query datagram (exactly one question, class IN, opcode QUERY).
pub(crate) fn parse_query(datagram: &[u8]) -> Result<Query<'_>, QueryError> {
    let packet = DnsPacket::new_checked(datagram).map_err(|_| QueryError::Drop)?;
    let flags = packet.flags();
    if flags.contains(DnsFlags::RESPONSE) {
        return Err(QueryError::Drop);
    }
    let id = packet.transaction_id();
    let opcode = u8::from(packet.opcode());
    let recursion_desired = flags.contains(DnsFlags::RECURSION_DESIRED);
    let reply = |rcode| QueryError::Reply {
        id,
        opcode,
        recursion_desired,
        rcode,
    };
    if packet.opcode() != DnsOpcode::Query {
        return Err(reply(Rcode::NotImp));
    }
    if packet.question_count() != 1 {
        return Err(reply(Rcode::FormErr));
    }
    // smoltcp's Question also rejects classes other than IN; those become FORMERR.
    let payload = &datagram[HEADER_LEN..];
    let (rest, question) = DnsQuestion::parse(payload).map_err(|_| reply(Rcode::FormErr))?;
    let question_bytes = &payload[..payload.len() - rest.len()];
    let mut name = String::new();
    for label in packet.parse_name(question.name) {
        let label = label.map_err(|_| reply(Rcode::FormErr))?;
        if label.is_empty() || label.iter().any(|b| *b == b'.' || !b.is_ascii_graphic()) {
            return Err(reply(Rcode::FormErr));
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
        if name.len() > MAX_NAME_LEN {
            return Err(reply(Rcode::FormErr));
        }
    }
    Ok(Query {
        id,
        opcode,
        recursion_desired,
        name,
        qtype: u16::from(question.type_),
        question: question_bytes,
    })
}

/// Normalizes a configured host name: lower case, no trailing dot; None if it is not a DNS name.
pub(crate) fn normalize_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return None;
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 || !label.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
    }
    Some(name.to_ascii_lowercase())
}

/// Encodes a name into wire labels (for building queries in tests and validating config).
pub(crate) fn encode_name(name: &str) -> Option<Vec<u8>> {
    let name = normalize_name(name)?;
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    Some(out)
}

fn header(id: u16, opcode: u8, rd: bool, rcode: Rcode, qd: u16, an: u16) -> [u8; HEADER_LEN] {
    let mut flags = DnsFlags::RESPONSE | DnsFlags::RECURSION_AVAILABLE;
    if rd {
        flags |= DnsFlags::RECURSION_DESIRED;
    }
    let flags = flags.bits() | (u16::from(opcode & 0x0f) << 11) | rcode as u16;
    let mut h = [0u8; HEADER_LEN];
    h[0..2].copy_from_slice(&id.to_be_bytes());
    h[2..4].copy_from_slice(&flags.to_be_bytes());
    h[4..6].copy_from_slice(&qd.to_be_bytes());
    h[6..8].copy_from_slice(&an.to_be_bytes());
    h
}

/// A response to `query` with `rcode`, the question echoed and an optional A record (name
/// compressed as a pointer to the question at offset 12).
pub(crate) fn emit_response(
    query: &Query<'_>,
    rcode: Rcode,
    answer: Option<(Ipv4Addr, u32)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + query.question.len() + 16);
    out.extend_from_slice(&header(
        query.id,
        query.opcode,
        query.recursion_desired,
        rcode,
        1,
        u16::from(answer.is_some()),
    ));
    out.extend_from_slice(query.question);
    if let Some((ip, ttl)) = answer {
        out.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// A response without question section for a query we could not read past its header.
pub(crate) fn emit_error(id: u16, opcode: u8, rd: bool, rcode: Rcode) -> Vec<u8> {
    header(id, opcode, rd, rcode, 0, 0).to_vec()
}

#[cfg(test)]
pub(crate) mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// Builds a query datagram (RD set) for tests.
    pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0u8; HEADER_LEN];
        q[0..2].copy_from_slice(&id.to_be_bytes());
        q[2] = 0x01; // RD
        q[5] = 1; // QDCOUNT
        q.extend(encode_name(name).unwrap());
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    #[test]
    fn parses_a_query_lowercasing_the_name() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0,
            7, b'E', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'C', b'o', b'M', 0,
            0, 1, 0, 1,
        ];
        let q = parse_query(bytes).unwrap();
        assert_eq!(q.id, 0x1234);
        assert!(q.recursion_desired);
        assert_eq!(q.name, "example.com");
        assert_eq!(q.qtype, TYPE_A);
        assert_eq!(q.question, &bytes[12..]);
    }

    #[test]
    fn emits_an_a_answer_byte_exact() {
        let bytes = query(0xbeef, "a.b", TYPE_A);
        let q = parse_query(&bytes).unwrap();
        let out = emit_response(&q, Rcode::NoError, Some((Ipv4Addr::new(198, 18, 0, 1), 60)));
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0xbe, 0xef, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0,
            1, b'a', 1, b'b', 0, 0, 1, 0, 1,
            0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 0, 1,
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn classifies_bad_queries() {
        assert_eq!(parse_query(&[1, 2, 3]), Err(QueryError::Drop));
        // A response (QR set) is dropped.
        let mut resp = query(1, "x", TYPE_A);
        resp[2] |= 0x80;
        assert_eq!(parse_query(&resp), Err(QueryError::Drop));
        // Two questions: FORMERR.
        let mut two = query(7, "x", TYPE_A);
        two[5] = 2;
        let formerr = |id| QueryError::Reply {
            id,
            opcode: 0,
            recursion_desired: true,
            rcode: Rcode::FormErr,
        };
        assert_eq!(parse_query(&two), Err(formerr(7)));
        // Truncated question: FORMERR.
        let q = query(8, "example", TYPE_A);
        assert_eq!(parse_query(&q[..q.len() - 3]), Err(formerr(8)));
        // Label with a dot inside: FORMERR.
        let mut dotted = query(9, "abc", TYPE_A);
        dotted[14] = b'.';
        assert_eq!(parse_query(&dotted), Err(formerr(9)));
        // Opcode STATUS: NOTIMP.
        let mut status = query(10, "x", TYPE_A);
        status[2] |= 2 << 3;
        assert_eq!(
            parse_query(&status),
            Err(QueryError::Reply {
                id: 10,
                opcode: 2,
                recursion_desired: true,
                rcode: Rcode::NotImp
            })
        );
        assert_eq!(
            emit_error(10, 2, true, Rcode::NotImp),
            [0, 10, 0x91, 0x84, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn names_are_validated() {
        assert_eq!(
            normalize_name("Proxy.C2W.internal."),
            Some("proxy.c2w.internal".into())
        );
        assert_eq!(normalize_name(""), None);
        assert_eq!(normalize_name("a..b"), None);
        assert_eq!(normalize_name(&"a".repeat(64)), None);
        assert_eq!(encode_name("ab.c"), Some(vec![2, b'a', b'b', 1, b'c', 0]));
    }
}
