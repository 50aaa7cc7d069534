//! The fake-IP pool: every name outside the host table gets a stable address from a reserved
//! network (198.18.0.0/15 by default), so a connection to it can later be mapped back to the name.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::config::mask;

/// Name ↔ address mapping over one network; addresses are handed out in order and never reused.
#[derive(Debug)]
pub(crate) struct FakeIpPool {
    network: u32,
    prefix_len: u8,
    /// Offset of the next address to hand out (1 = first host).
    next: u32,
    by_name: HashMap<String, Ipv4Addr>,
    by_ip: HashMap<Ipv4Addr, String>,
}

impl FakeIpPool {
    /// A pool over `network/prefix_len` (validated by `Config::validate`).
    pub(crate) fn new(network: Ipv4Addr, prefix_len: u8) -> Self {
        FakeIpPool {
            network: u32::from(network) & mask(prefix_len),
            prefix_len,
            next: 1,
            by_name: HashMap::new(),
            by_ip: HashMap::new(),
        }
    }

    /// True when `ip` lies in the pool's network (assigned or not).
    pub(crate) fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix_len) == self.network
    }

    /// The address for `name` (already normalized), allocating one on first use; None when the
    /// pool is exhausted. The bool is true when a new address was allocated.
    pub(crate) fn lookup_or_assign(&mut self, name: &str) -> Option<(Ipv4Addr, bool)> {
        if let Some(ip) = self.by_name.get(name) {
            return Some((*ip, false));
        }
        // Host offsets run from 1 to size - 2: the network and broadcast addresses are skipped.
        let size = 1u64 << (32 - u32::from(self.prefix_len));
        if u64::from(self.next) >= size - 1 {
            return None;
        }
        let ip = Ipv4Addr::from(self.network + self.next);
        self.next += 1;
        self.by_name.insert(name.to_string(), ip);
        self.by_ip.insert(ip, name.to_string());
        Some((ip, true))
    }

    /// The name an assigned address stands for.
    pub(crate) fn name_of(&self, ip: Ipv4Addr) -> Option<&str> {
        self.by_ip.get(&ip).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn assigns_stable_addresses_and_maps_back() {
        let mut pool = FakeIpPool::new(Ipv4Addr::new(198, 18, 0, 0), 15);
        assert_eq!(
            pool.lookup_or_assign("a.example"),
            Some((Ipv4Addr::new(198, 18, 0, 1), true))
        );
        assert_eq!(
            pool.lookup_or_assign("b.example"),
            Some((Ipv4Addr::new(198, 18, 0, 2), true))
        );
        assert_eq!(
            pool.lookup_or_assign("a.example"),
            Some((Ipv4Addr::new(198, 18, 0, 1), false))
        );
        assert_eq!(
            pool.name_of(Ipv4Addr::new(198, 18, 0, 2)),
            Some("b.example")
        );
        assert_eq!(pool.name_of(Ipv4Addr::new(198, 18, 0, 3)), None);
        assert!(pool.contains(Ipv4Addr::new(198, 19, 255, 255)));
        assert!(!pool.contains(Ipv4Addr::new(198, 20, 0, 0)));
    }

    #[test]
    fn skips_network_and_broadcast_and_reports_exhaustion() {
        let mut pool = FakeIpPool::new(Ipv4Addr::new(10, 0, 0, 0), 30);
        assert_eq!(
            pool.lookup_or_assign("a").unwrap().0,
            Ipv4Addr::new(10, 0, 0, 1)
        );
        assert_eq!(
            pool.lookup_or_assign("b").unwrap().0,
            Ipv4Addr::new(10, 0, 0, 2)
        );
        assert_eq!(pool.lookup_or_assign("c"), None);
        assert!(pool.lookup_or_assign("a").is_some());
    }
}
