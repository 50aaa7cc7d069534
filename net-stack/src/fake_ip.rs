//! The fake-IP pool: every name outside the host table gets a stable address from a reserved
//! network (198.18.0.0/15 by default), so a connection to it can later be mapped back to the name.
//! When every address is taken, the least recently used mapping is recycled for the new name.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use lru::LruCache;

use crate::config::mask;

/// What `FakeIpPool::lookup_or_assign` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Assigned {
    /// The name already had this address.
    Existing(Ipv4Addr),
    /// A never-used address was handed out.
    New(Ipv4Addr),
    /// The pool was full: the least recently used name lost this address to the new one.
    Recycled(Ipv4Addr),
}

impl Assigned {
    /// The address the name now has.
    pub(crate) fn ip(self) -> Ipv4Addr {
        match self {
            Assigned::Existing(ip) | Assigned::New(ip) | Assigned::Recycled(ip) => ip,
        }
    }
}

/// Name ↔ address mapping over one network. Addresses are handed out in order; once all are
/// taken, the mapping used least recently (asked for by DNS, or by `name_of` when a connection
/// to its address is accepted) is recycled.
///
/// The recency order is the `lru` crate's linked hash map: O(1) lookup, promotion and eviction,
/// without a hand-written intrusive list. It is created unbounded (no up-front allocation for a
/// /15's 131,070 slots) because the pool itself decides when to evict: memory grows with the
/// names actually asked for and never beyond one entry per host address of the network.
#[derive(Debug)]
pub(crate) struct FakeIpPool {
    network: u32,
    prefix_len: u8,
    /// Offset of the next never-used address (1 = first host).
    next: u32,
    by_name: LruCache<String, Ipv4Addr>,
    by_ip: HashMap<Ipv4Addr, String>,
}

impl FakeIpPool {
    /// A pool over `network/prefix_len` (validated by `Config::validate`: 1..=30).
    pub(crate) fn new(network: Ipv4Addr, prefix_len: u8) -> Self {
        FakeIpPool {
            network: u32::from(network) & mask(prefix_len),
            prefix_len,
            next: 1,
            by_name: LruCache::unbounded(),
            by_ip: HashMap::new(),
        }
    }

    /// True when `ip` lies in the pool's network (assigned or not).
    pub(crate) fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix_len) == self.network
    }

    /// Host addresses of the network (network and broadcast addresses excluded).
    fn capacity(&self) -> u64 {
        (1u64 << (32 - u32::from(self.prefix_len.min(31)))) - 2
    }

    /// The address for `name` (already normalized), allocating one on first use and marking
    /// the mapping as just used. None only for a pool without host addresses (never after
    /// `Config::validate`).
    pub(crate) fn lookup_or_assign(&mut self, name: &str) -> Option<Assigned> {
        if let Some(ip) = self.by_name.get(name) {
            return Some(Assigned::Existing(*ip));
        }
        if u64::from(self.next) <= self.capacity() {
            let ip = Ipv4Addr::from(self.network.wrapping_add(self.next));
            self.next += 1;
            self.insert(name, ip);
            return Some(Assigned::New(ip));
        }
        // The evicted name's reverse entry is overwritten by the new name's.
        let (_, ip) = self.by_name.pop_lru()?;
        self.insert(name, ip);
        Some(Assigned::Recycled(ip))
    }

    fn insert(&mut self, name: &str, ip: Ipv4Addr) {
        self.by_name.put(name.to_string(), ip);
        self.by_ip.insert(ip, name.to_string());
    }

    /// The name an assigned address stands for, marking the mapping as just used (a connection
    /// to it is being accepted).
    pub(crate) fn name_of(&mut self, ip: Ipv4Addr) -> Option<&str> {
        let name = self.by_ip.get(&ip)?;
        self.by_name.promote(name.as_str());
        Some(name.as_str())
    }

    /// The name an assigned address stands for, without touching the recency order.
    #[cfg(test)]
    pub(crate) fn peek_name(&self, ip: Ipv4Addr) -> Option<&str> {
        self.by_ip.get(&ip).map(String::as_str)
    }

    /// Mappings held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, d)
    }

    #[test]
    fn assigns_stable_addresses_and_maps_back() {
        let mut pool = FakeIpPool::new(Ipv4Addr::new(198, 18, 0, 0), 15);
        assert_eq!(
            pool.lookup_or_assign("a.example"),
            Some(Assigned::New(Ipv4Addr::new(198, 18, 0, 1)))
        );
        assert_eq!(
            pool.lookup_or_assign("b.example"),
            Some(Assigned::New(Ipv4Addr::new(198, 18, 0, 2)))
        );
        assert_eq!(
            pool.lookup_or_assign("a.example"),
            Some(Assigned::Existing(Ipv4Addr::new(198, 18, 0, 1)))
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
    fn a_full_slash_30_recycles_the_least_recently_used_name() {
        let mut pool = FakeIpPool::new(Ipv4Addr::new(10, 0, 0, 0), 30);
        // Two host addresses: .1 and .2 (network .0 and broadcast .3 are skipped).
        assert_eq!(pool.lookup_or_assign("a"), Some(Assigned::New(ip(1))));
        assert_eq!(pool.lookup_or_assign("b"), Some(Assigned::New(ip(2))));
        // "a" is older: it goes.
        assert_eq!(pool.lookup_or_assign("c"), Some(Assigned::Recycled(ip(1))));
        assert_eq!(pool.peek_name(ip(1)), Some("c"));
        assert_eq!(pool.len(), 2);
        // "a" comes back and takes the address of "b", now the least recently used.
        assert_eq!(pool.lookup_or_assign("a"), Some(Assigned::Recycled(ip(2))));
        assert_eq!(pool.peek_name(ip(2)), Some("a"));
        assert_eq!(pool.lookup_or_assign("c"), Some(Assigned::Existing(ip(1))));
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn a_recently_used_name_survives_recycling() {
        let mut pool = FakeIpPool::new(Ipv4Addr::new(10, 0, 0, 0), 30);
        pool.lookup_or_assign("a");
        pool.lookup_or_assign("b");
        // A DNS lookup of "a" makes "b" the least recently used.
        assert_eq!(pool.lookup_or_assign("a"), Some(Assigned::Existing(ip(1))));
        assert_eq!(pool.lookup_or_assign("c"), Some(Assigned::Recycled(ip(2))));
        assert_eq!(pool.peek_name(ip(1)), Some("a"));
        // A connection to "a"'s address (name_of) keeps it too, even though "c" is newer.
        assert_eq!(pool.name_of(ip(1)), Some("a"));
        assert_eq!(pool.lookup_or_assign("d"), Some(Assigned::Recycled(ip(2))));
        assert_eq!(pool.peek_name(ip(1)), Some("a"));
        assert_eq!(pool.peek_name(ip(2)), Some("d"));
    }

    #[test]
    fn reverse_map_of_a_recycled_address_points_to_the_new_name_only() {
        let mut pool = FakeIpPool::new(Ipv4Addr::new(10, 0, 0, 0), 30);
        pool.lookup_or_assign("old-a");
        pool.lookup_or_assign("old-b");
        pool.lookup_or_assign("new");
        assert_eq!(pool.name_of(ip(1)), Some("new"));
        // The evicted name is gone from both directions: asking for it again is a fresh mapping.
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.by_ip.len(), 2);
        assert!(pool.by_ip.values().all(|n| n != "old-a"));
        assert_eq!(
            pool.lookup_or_assign("old-a"),
            Some(Assigned::Recycled(ip(2)))
        );
        assert_eq!(pool.name_of(ip(2)), Some("old-a"));
        assert!(pool.by_ip.values().all(|n| n != "old-b"));
    }

    #[test]
    fn many_names_through_a_small_pool_stay_bounded_and_consistent() {
        let mut pool = FakeIpPool::new(Ipv4Addr::new(10, 0, 0, 0), 28);
        for i in 0..1000u32 {
            let name = format!("n{}", i % 37);
            let addr = pool.lookup_or_assign(&name).unwrap().ip();
            assert!(pool.contains(addr) && addr != ip(0) && addr != ip(15));
            assert_eq!(pool.peek_name(addr), Some(name.as_str()));
            assert!(pool.len() <= 14 && pool.by_ip.len() == pool.len());
        }
    }
}
