//! Test harness: a Stack wired frame by frame to a second smoltcp interface acting as the guest,
//! plus frame builders and a pcap dump of the exchange for failing tests.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::io::{AsyncRead, AsyncWrite};
use net_stack::{Config, Direction, FrameObserver, Instant, PcapWriter, Stack};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, HardwareAddress, IpAddress,
    IpCidr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl, TcpOption, TcpPacket,
    TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

pub const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const GW_MAC: [u8; 6] = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd];
pub const GUEST_IP: Ipv4Address = Ipv4Address::new(192, 168, 127, 3);
pub const GW_IP: Ipv4Address = Ipv4Address::new(192, 168, 127, 1);
pub const PROXY_IP: Ipv4Address = Ipv4Address::new(192, 168, 127, 253);

/// Records every frame both ways; shared with the test so it can dump them on failure.
#[derive(Clone, Default)]
pub struct Recorder(pub std::rc::Rc<std::cell::RefCell<Vec<Record>>>);

/// One observed frame.
pub type Record = (Direction, Vec<u8>, Instant);

impl FrameObserver for Recorder {
    fn on_frame(&mut self, direction: Direction, frame: &[u8], now: Instant) {
        self.0.borrow_mut().push((direction, frame.to_vec(), now));
    }
}

impl Recorder {
    /// Writes the recorded exchange to target/fixture-failures/NAME.pcap and returns the path.
    pub fn dump(&self, name: &str) -> std::path::PathBuf {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fixture-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        let path = dir.join(format!("{name}.pcap"));
        let mut w = PcapWriter::new(std::fs::File::create(&path).unwrap()).unwrap();
        for (_, frame, now) in self.0.borrow().iter() {
            w.write_frame(frame, *now).unwrap();
        }
        path
    }

    /// Frames the stack sent to the guest.
    pub fn to_guest(&self) -> Vec<Vec<u8>> {
        self.0
            .borrow()
            .iter()
            .filter(|(d, _, _)| *d == Direction::ToGuest)
            .map(|(_, f, _)| f.clone())
            .collect()
    }
}

/// Runs `f`; when it panics, dumps the recorded exchange as pcap and says where.
pub fn with_dump<R>(recorder: &Recorder, name: &str, f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let path = recorder.dump(name);
            eprintln!(
                "exchange written to {} (open with Wireshark)",
                path.display()
            );
            std::panic::resume_unwind(panic)
        }
    }
}

/// A stack with a recorder installed.
pub fn stack_with(config: Config) -> (Stack, Recorder) {
    let stack = Stack::new(config).unwrap();
    let recorder = Recorder::default();
    stack.set_frame_observer(Some(Box::new(recorder.clone())));
    (stack, recorder)
}

/// Pushes one frame, polls, and returns every frame the stack produced.
pub fn exchange(stack: &Stack, frame: &[u8], now: Instant) -> Vec<Vec<u8>> {
    stack.push_frame(frame);
    stack.poll(now);
    std::iter::from_fn(|| stack.pop_frame()).collect()
}

/// An IPv4/UDP frame from the guest MAC, checksums computed by smoltcp.
pub fn udp_frame(
    src: (Ipv4Address, u16),
    dst: (Ipv4Address, u16),
    dst_mac: [u8; 6],
    payload: &[u8],
) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: src.0,
        dst_addr: dst.0,
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; 14 + 20 + 8 + payload.len()];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(dst_mac),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let caps = ChecksumCapabilities::default();
    let mut packet = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut packet, &caps);
    UdpRepr {
        src_port: src.1,
        dst_port: dst.1,
    }
    .emit(
        &mut UdpPacket::new_unchecked(packet.payload_mut()),
        &IpAddress::Ipv4(src.0),
        &IpAddress::Ipv4(dst.0),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    buf
}

/// The UDP payload of an IPv4/UDP frame, with (src, dst) endpoints; checks both checksums.
pub fn parse_udp(frame: &[u8]) -> ((Ipv4Address, u16), (Ipv4Address, u16), Vec<u8>) {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    assert_eq!(eth.ethertype(), EthernetProtocol::Ipv4);
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert!(ip.verify_checksum(), "IPv4 checksum");
    assert_eq!(ip.next_header(), IpProtocol::Udp);
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert!(
        udp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr())
        ),
        "UDP checksum"
    );
    (
        (ip.src_addr(), udp.src_port()),
        (ip.dst_addr(), udp.dst_port()),
        udp.payload().to_vec(),
    )
}

/// An Ethernet device made of two queues, for the guest's smoltcp interface.
#[derive(Default)]
pub struct EthDevice {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
}

pub struct EthRx(Vec<u8>);
pub struct EthTx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for EthRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for EthTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl phy::Device for EthDevice {
    type RxToken<'a> = EthRx;
    type TxToken<'a> = EthTx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(EthRx, EthTx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((EthRx(frame), EthTx(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<EthTx<'_>> {
        Some(EthTx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// The guest: a smoltcp interface at 192.168.127.3 with its own TCP sockets.
pub struct Guest {
    pub iface: Interface,
    pub dev: EthDevice,
    pub sockets: SocketSet<'static>,
    next_port: u16,
}

/// Stack + guest wired together, with a clock advanced by `pump`.
pub struct Net {
    pub stack: Stack,
    pub guest: Guest,
    pub now: Instant,
    pub recorder: Recorder,
}

impl Net {
    pub fn new(config: Config) -> Net {
        let (stack, recorder) = stack_with(config);
        let mut dev = EthDevice::default();
        let mut cfg = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        cfg.random_seed = 7;
        let mut iface = Interface::new(cfg, &mut dev, Instant::ZERO);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(GUEST_IP), 24)).unwrap();
        });
        iface.routes_mut().add_default_ipv4_route(GW_IP).unwrap();
        Net {
            stack,
            guest: Guest {
                iface,
                dev,
                sockets: SocketSet::new(Vec::new()),
                next_port: 40000,
            },
            now: Instant::from_millis(1000),
            recorder,
        }
    }

    /// Opens a guest TCP connection to `ip:port` with the given buffer sizes.
    pub fn connect(&mut self, ip: Ipv4Address, port: u16, rx: usize, tx: usize) -> SocketHandle {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; rx]),
            tcp::SocketBuffer::new(vec![0; tx]),
        );
        let local = self.guest.next_port;
        self.guest.next_port += 1;
        socket
            .connect(
                self.guest.iface.context(),
                (IpAddress::Ipv4(ip), port),
                local,
            )
            .unwrap();
        self.guest.sockets.add(socket)
    }

    pub fn socket(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.guest.sockets.get_mut::<tcp::Socket>(h)
    }

    /// Moves frames both ways, advancing time 1 ms per round, until 30 rounds pass quietly.
    pub fn pump(&mut self) {
        let mut quiet = 0;
        for _ in 0..20_000 {
            let g = &mut self.guest;
            g.iface.poll(self.now, &mut g.dev, &mut g.sockets);
            let mut moved = 0;
            while let Some(frame) = g.dev.tx.pop_front() {
                self.stack.push_frame(&frame);
                moved += 1;
            }
            self.stack.poll(self.now);
            while let Some(frame) = self.stack.pop_frame() {
                g.dev.rx.push_back(frame);
                moved += 1;
            }
            if moved == 0 {
                quiet += 1;
                if quiet >= 30 {
                    return;
                }
            } else {
                quiet = 0;
            }
            self.now += net_stack::Duration::from_millis(1);
        }
        panic!("network never went quiet");
    }
}

/// Polls a future-style read once with a no-op waker.
pub fn try_read<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> Poll<io::Result<usize>> {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    Pin::new(s).poll_read(&mut cx, buf)
}

/// Polls a write once with a no-op waker.
pub fn try_write<S: AsyncWrite + Unpin>(s: &mut S, buf: &[u8]) -> Poll<io::Result<usize>> {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    Pin::new(s).poll_write(&mut cx, buf)
}

/// Polls a close once with a no-op waker.
pub fn try_close<S: AsyncWrite + Unpin>(s: &mut S) -> Poll<io::Result<()>> {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    Pin::new(s).poll_close(&mut cx)
}

/// Bytes from hex digits (whitespace ignored).
pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A TCP segment from the guest, built with smoltcp's emitter.
pub fn tcp_frame(
    dst: Ipv4Address,
    src_port: u16,
    dst_port: u16,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
) -> Vec<u8> {
    tcp_data_frame(dst, src_port, dst_port, control, seq, ack, &[])
}

/// [`tcp_frame`] carrying `payload`.
pub fn tcp_data_frame(
    dst: Ipv4Address,
    src_port: u16,
    dst_port: u16,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port,
        dst_port,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 64240,
        window_scale: (control == TcpControl::Syn).then_some(7),
        max_seg_size: (control == TcpControl::Syn).then_some(1460),
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload,
    };
    let ip = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: repr.buffer_len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; 14 + 20 + repr.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(GW_MAC),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let caps = ChecksumCapabilities::default();
    let mut packet = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut packet, &caps);
    repr.emit(
        &mut TcpPacket::new_unchecked(packet.payload_mut()),
        &IpAddress::Ipv4(GUEST_IP),
        &IpAddress::Ipv4(dst),
        &caps,
    );
    buf
}

/// The fields of a TCP segment towards the guest the tests look at.
pub struct Segment {
    pub src: (Ipv4Address, u16),
    pub syn: bool,
    pub ack: bool,
    pub rst: bool,
    pub seq_number: u32,
    pub ack_number: u32,
    pub window: u16,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
}

/// Parses a TCP segment towards the guest, checking both checksums.
pub fn segment(frame: &[u8]) -> Segment {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    assert_eq!(eth.dst_addr(), EthernetAddress(GUEST_MAC));
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert!(ip.verify_checksum());
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(tcp.verify_checksum(
        &IpAddress::Ipv4(ip.src_addr()),
        &IpAddress::Ipv4(ip.dst_addr())
    ));
    let (mut mss, mut wscale) = (None, None);
    let mut options = tcp.options();
    while !options.is_empty() {
        let Ok((rest, option)) = TcpOption::parse(options) else {
            break;
        };
        match option {
            TcpOption::MaxSegmentSize(v) => mss = Some(v),
            TcpOption::WindowScale(v) => wscale = Some(v),
            TcpOption::EndOfList => break,
            _ => {}
        }
        options = rest;
    }
    Segment {
        src: (ip.src_addr(), tcp.src_port()),
        syn: tcp.syn(),
        ack: tcp.ack(),
        rst: tcp.rst(),
        seq_number: tcp.seq_number().0 as u32,
        ack_number: tcp.ack_number().0 as u32,
        window: tcp.window_len(),
        mss,
        wscale,
    }
}

/// A TCP segment from `src:src_port` to the guest as the stack must emit it (no options,
/// window 0: a RST refusing a SYN).
pub fn tcp_reply_frame(
    src: Ipv4Address,
    src_port: u16,
    dst_port: u16,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port,
        dst_port,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    tcp_to_guest_frame(src, &repr)
}

/// Any TCP segment from `src` to the guest, in Ethernet from the gateway MAC, checksums
/// computed: what the stack must emit for `repr`.
pub fn tcp_to_guest_frame(src: Ipv4Address, repr: &TcpRepr) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: GUEST_IP,
        next_header: IpProtocol::Tcp,
        payload_len: repr.buffer_len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; 14 + 20 + repr.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(GW_MAC),
        dst_addr: EthernetAddress(GUEST_MAC),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let caps = ChecksumCapabilities::default();
    let mut packet = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut packet, &caps);
    repr.emit(
        &mut TcpPacket::new_unchecked(packet.payload_mut()),
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(GUEST_IP),
        &caps,
    );
    buf
}
