//! Sans-IO virtual network behind a guest NIC: Ethernet, ARP, IPv4, ICMP, UDP, DHCP, DNS and TCP
//! over smoltcp.
//!
//! The driver pushes the guest's Ethernet frames in (`Stack::push_frame`), calls `Stack::poll`
//! with the current time, pops the frames for the guest (`Stack::pop_frame`) and polls again
//! after `Stack::poll_delay` or when `Stack::poll_wake` is ready. TCP connections to listened
//! addresses come out as `TcpStream`s (`futures::io::AsyncRead + AsyncWrite`). For relaying to
//! the outside world, everything addressed elsewhere (the DNS fake IPs and any address beyond
//! the guest network that is not ours) can come out too: TCP connections through one catch-all
//! listener (`Stack::listen_elsewhere`), UDP datagrams through one `UdpEndpoint`
//! (`Stack::bind_udp_elsewhere`), which also sends the answers back. Nothing here reads a
//! clock, spawns a task or touches a socket; everything is `!Send` and single-threaded.
//!
//! ```
//! use net_stack::{Config, Instant, Stack};
//!
//! let stack = Stack::new(Config::default()).unwrap();
//! // ARP request from 02:00:00:00:00:01 (192.168.127.3): who has 192.168.127.1?
//! let mut arp = vec![0xff; 6];
//! arp.extend([2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
//! arp.extend([2, 0, 0, 0, 0, 1, 192, 168, 127, 3, 0, 0, 0, 0, 0, 0, 192, 168, 127, 1]);
//! stack.push_frame(&arp);
//! stack.poll(Instant::from_millis(0));
//! let reply = stack.pop_frame().unwrap();
//! assert_eq!(&reply[6..12], &[0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd]); // the gateway MAC
//! assert_eq!(stack.stats().arp_replies, 1);
//! ```
//!
//! Wakers registered with listeners, streams and the UDP endpoint are woken from inside
//! `Stack::poll`; they must not poll the stack's streams or endpoint synchronously (every
//! executor defers the poll). For the same reason a `FrameObserver` must not call back into the
//! `Stack`.

#![warn(missing_docs)]

mod arp;
mod clock;
mod config;
mod device;
mod dhcp;
mod dns;
mod fake_ip;
#[cfg(feature = "fault")]
pub mod fault;
mod icmp;
mod observer;
mod pcap;
pub mod qemu;
mod shared;
mod stack;
mod stats;
mod tcp;
mod udp;
mod wire;

pub use smoltcp::time::{Duration, Instant};

pub use config::{
    Config, ConfigError, DhcpConfig, DnsConfig, TcpConfig, UdpConfig, DEFAULT_CLOCK_SCALE,
    MAX_CLOCK_SCALE,
};
pub use dhcp::Lease;
pub use observer::{Direction, FrameObserver};
pub use pcap::PcapWriter;
pub use stack::Stack;
pub use stats::Stats;
pub use tcp::{
    ConnectError, Connecting, ConnectionRequest, ListenAddr, ListenError, TcpListener, TcpStream,
};
pub use udp::{Datagram, UdpBindError, UdpEndpoint, UdpSendError, Unreachable};
