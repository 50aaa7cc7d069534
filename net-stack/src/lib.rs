//! Sans-IO virtual network behind a guest NIC: Ethernet, ARP, IPv4, ICMP, DHCP, DNS and TCP over
//! smoltcp.
//!
//! The driver pushes the guest's Ethernet frames in (`Stack::push_frame`), calls `Stack::poll`
//! with the current time, pops the frames for the guest (`Stack::pop_frame`) and polls again
//! after `Stack::poll_delay` or when `Stack::poll_wake` is ready. TCP connections to listened
//! addresses come out as `TcpStream`s (`futures::io::AsyncRead + AsyncWrite`). Nothing here reads
//! a clock, spawns a task or touches a socket; everything is `!Send` and single-threaded.

mod arp;
mod config;
mod device;
mod dhcp;
mod dns;
mod fake_ip;
mod icmp;
mod observer;
mod pcap;
pub mod qemu;
mod stack;
mod stats;
mod tcp;
mod wire;

pub use smoltcp::time::{Duration, Instant};

pub use config::{Config, ConfigError, DhcpConfig, DnsConfig, TcpConfig};
pub use dhcp::Lease;
pub use observer::{Direction, FrameObserver};
pub use pcap::PcapWriter;
pub use stack::Stack;
pub use stats::Stats;
pub use tcp::{ListenAddr, ListenError, TcpListener, TcpStream};
