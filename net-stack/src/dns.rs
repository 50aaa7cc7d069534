//! DNS server on the gateway: A answers from the host table or the fake-IP pool, empty AAAA,
//! NOTIMP for other types, FORMERR for unreadable questions. A pure function of query → answer.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::config::DnsConfig;
use crate::fake_ip::{Assigned, FakeIpPool};
use crate::wire::dns::{self, QueryError, Rcode};

/// What answering one datagram did, for the stack's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct DnsOutcome {
    /// A new fake IP was allocated.
    pub new_fake_ip: bool,
    /// The fake-IP pool was full: the least recently used mapping was recycled for this name.
    pub recycled_fake_ip: bool,
    /// The query was answered with an error code (FORMERR, NOTIMP, SERVFAIL).
    pub error: bool,
}

/// The DNS server's state: host table and fake-IP pool.
#[derive(Debug)]
pub(crate) struct DnsServer {
    hosts: HashMap<String, Ipv4Addr>,
    pub(crate) fake_ips: FakeIpPool,
    ttl: u32,
}

impl DnsServer {
    /// A server for a validated config.
    pub(crate) fn new(config: &DnsConfig) -> Self {
        let hosts = config
            .hosts
            .iter()
            .filter_map(|(name, ip)| Some((dns::normalize_name(name)?, *ip)))
            .collect();
        DnsServer {
            hosts,
            fake_ips: FakeIpPool::new(config.fake_ip_net, config.fake_ip_prefix_len),
            ttl: config.ttl,
        }
    }

    /// The response datagram for one query datagram, or None when it must be dropped.
    pub(crate) fn answer(&mut self, datagram: &[u8]) -> (Option<Vec<u8>>, DnsOutcome) {
        let mut outcome = DnsOutcome::default();
        let query = match dns::parse_query(datagram) {
            Ok(query) => query,
            Err(QueryError::Drop) => return (None, outcome),
            Err(QueryError::Reply {
                id,
                opcode,
                recursion_desired,
                rcode,
            }) => {
                outcome.error = true;
                return (
                    Some(dns::emit_error(id, opcode, recursion_desired, rcode)),
                    outcome,
                );
            }
        };
        let reply = match query.qtype {
            dns::TYPE_A if query.name.is_empty() => {
                dns::emit_response(&query, Rcode::NxDomain, None)
            }
            dns::TYPE_A => {
                if let Some(ip) = self.hosts.get(&query.name) {
                    dns::emit_response(&query, Rcode::NoError, Some((*ip, self.ttl)))
                } else {
                    match self.fake_ips.lookup_or_assign(&query.name) {
                        Some(assigned) => {
                            outcome.new_fake_ip = !matches!(assigned, Assigned::Existing(_));
                            outcome.recycled_fake_ip = matches!(assigned, Assigned::Recycled(_));
                            let ip = assigned.ip();
                            dns::emit_response(&query, Rcode::NoError, Some((ip, self.ttl)))
                        }
                        None => {
                            outcome.error = true;
                            dns::emit_response(&query, Rcode::ServFail, None)
                        }
                    }
                }
            }
            // No IPv6 here: "this name exists but has no AAAA" makes clients fall back to A at once.
            dns::TYPE_AAAA => dns::emit_response(&query, Rcode::NoError, None),
            _ => {
                outcome.error = true;
                dns::emit_response(&query, Rcode::NotImp, None)
            }
        };
        (Some(reply), outcome)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::wire::dns::tests::query;

    fn server() -> DnsServer {
        DnsServer::new(&DnsConfig::default())
    }

    fn rcode(reply: &[u8]) -> u8 {
        reply[3] & 0x0f
    }

    fn answer_ip(reply: &[u8]) -> Ipv4Addr {
        let n = reply.len();
        Ipv4Addr::new(reply[n - 4], reply[n - 3], reply[n - 2], reply[n - 1])
    }

    #[test]
    fn host_table_is_case_insensitive() {
        let mut s = server();
        let (reply, outcome) = s.answer(&query(1, "PROXY.c2w.Internal", dns::TYPE_A));
        let reply = reply.unwrap();
        assert_eq!(rcode(&reply), 0);
        assert_eq!(&reply[6..8], &[0, 1]);
        assert_eq!(answer_ip(&reply), Ipv4Addr::new(192, 168, 127, 253));
        assert!(!outcome.new_fake_ip);
    }

    #[test]
    fn other_names_get_stable_fake_ips() {
        let mut s = server();
        let (r1, o1) = s.answer(&query(1, "example.com", dns::TYPE_A));
        let (r2, o2) = s.answer(&query(2, "EXAMPLE.com", dns::TYPE_A));
        let (r3, _) = s.answer(&query(3, "other.org", dns::TYPE_A));
        assert!(o1.new_fake_ip && !o2.new_fake_ip);
        assert_eq!(answer_ip(&r1.unwrap()), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(answer_ip(&r2.unwrap()), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(answer_ip(&r3.unwrap()), Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(
            s.fake_ips.name_of(Ipv4Addr::new(198, 18, 0, 1)),
            Some("example.com")
        );
    }

    #[test]
    fn a_full_pool_recycles_and_says_so() {
        let config = DnsConfig {
            fake_ip_net: Ipv4Addr::new(100, 64, 0, 0),
            fake_ip_prefix_len: 30,
            ..DnsConfig::default()
        };
        let mut s = DnsServer::new(&config);
        let (_, a) = s.answer(&query(1, "a.test", dns::TYPE_A));
        let (_, b) = s.answer(&query(2, "b.test", dns::TYPE_A));
        assert!(a.new_fake_ip && b.new_fake_ip && !a.recycled_fake_ip && !b.recycled_fake_ip);
        // "a.test" asked again: "b.test" is now the least recently used.
        let (_, again) = s.answer(&query(3, "a.test", dns::TYPE_A));
        assert!(!again.new_fake_ip && !again.recycled_fake_ip);
        let (reply, c) = s.answer(&query(4, "c.test", dns::TYPE_A));
        let reply = reply.unwrap();
        assert!(c.new_fake_ip && c.recycled_fake_ip && !c.error);
        assert_eq!(rcode(&reply), 0);
        assert_eq!(answer_ip(&reply), Ipv4Addr::new(100, 64, 0, 2));
        assert_eq!(
            s.fake_ips.name_of(Ipv4Addr::new(100, 64, 0, 2)),
            Some("c.test")
        );
    }

    #[test]
    fn aaaa_is_empty_and_other_types_not_implemented() {
        let mut s = server();
        let q = query(5, "example.com", dns::TYPE_AAAA);
        let reply = s.answer(&q).0.unwrap();
        // NOERROR, one question echoed, no answer.
        let mut expected = q.clone();
        expected[2] = 0x81;
        expected[3] = 0x80;
        assert_eq!(reply, expected);
        let (reply, outcome) = s.answer(&query(6, "example.com", 16));
        assert_eq!(rcode(&reply.unwrap()), 4);
        assert!(outcome.error);
    }

    #[test]
    fn garbage_never_panics() {
        let mut s = server();
        assert_eq!(s.answer(&[]).0, None);
        assert_eq!(s.answer(&[0xff; 5]).0, None);
        // Header only, QDCOUNT 1, no question: FORMERR with the ID.
        let reply = s
            .answer(&[0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])
            .0
            .unwrap();
        assert_eq!(reply, [0xab, 0xcd, 0x81, 0x81, 0, 0, 0, 0, 0, 0, 0, 0]);
        // A compression pointer loop in the question.
        let q = [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert_eq!(rcode(&s.answer(&q).0.unwrap()), 1);
        // Deterministic pseudo-random garbage.
        let mut x: u32 = 0x1234_5678;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = s.answer(&bytes);
        }
    }
}
