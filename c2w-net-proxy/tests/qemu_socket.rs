//! The runner's `--qemu-listen` path end to end: the real binary listens, a guest made of
//! smoltcp connects over QEMU's stream framing (TCP and Unix sockets), gets a lease from the
//! DHCP server, and fetches the proxy's status page over TCP through the stack.

#![cfg(not(target_arch = "wasm32"))]

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant as StdInstant};

use net_stack::qemu::{encode_frame, FrameDecoder};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

/// A byte stream to the runner: a TCP or Unix socket.
trait Link: Read + Write {}
impl<T: Read + Write> Link for T {}

/// The guest's NIC: frames go out QEMU-framed on the socket and come back deframed.
struct FramedDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl phy::Device for FramedDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((Rx(frame), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// The runner process; killed when dropped.
struct Runner(Child);

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_runner(listen: &str) -> Runner {
    let child = Command::new(env!("CARGO_BIN_EXE_c2w-net-proxy"))
        .args([
            "--qemu-listen",
            listen,
            "--log",
            "warn",
            "--allow",
            "loopback",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the runner");
    Runner(child)
}

/// Retries `connect` until the runner listens (or 10 s pass).
fn connect_with_retry<T>(mut connect: impl FnMut() -> std::io::Result<T>) -> T {
    let deadline = StdInstant::now() + Duration::from_secs(10);
    loop {
        match connect() {
            Ok(s) => return s,
            Err(e) if StdInstant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("the runner never listened: {e}"),
        }
    }
}

/// What the guest achieved.
#[derive(Debug, Default)]
struct Outcome {
    lease: Option<(Ipv4Address, Option<Ipv4Address>)>,
    page: Vec<u8>,
}

/// Runs a smoltcp guest over `link`: DHCP, then `GET /` from the proxy at .253:80.
fn run_guest(link: &mut dyn Link, set_nonblocking: &dyn Fn(bool)) -> Outcome {
    set_nonblocking(true);
    let mac = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    let mut device = FramedDevice {
        rx: VecDeque::new(),
        tx: VecDeque::new(),
    };
    let started = StdInstant::now();
    let now = || Instant::from_micros(started.elapsed().as_micros() as i64);
    let mut iface = Interface::new(
        IfaceConfig::new(HardwareAddress::Ethernet(mac)),
        &mut device,
        now(),
    );
    let mut sockets = SocketSet::new(Vec::new());
    let dhcp = sockets.add(dhcpv4::Socket::new());
    let mut tcp_handle = None;
    let mut decoder = FrameDecoder::new(65536);
    let mut outcome = Outcome::default();
    let mut sent_request = false;
    let mut buf = vec![0u8; 65536];
    let mut wire = Vec::new();
    while started.elapsed() < Duration::from_secs(20) {
        iface.poll(now(), &mut device, &mut sockets);
        while let Some(frame) = device.tx.pop_front() {
            wire.clear();
            encode_frame(&frame, &mut wire);
            set_nonblocking(false);
            link.write_all(&wire).expect("write to the runner");
            set_nonblocking(true);
        }
        match link.read(&mut buf) {
            Ok(0) => panic!("the runner closed the connection"),
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => panic!("read from the runner: {e}"),
        }
        while let Some(frame) = decoder.next_frame().expect("valid framing from the runner") {
            device.rx.push_back(frame);
        }
        if let Some(dhcpv4::Event::Configured(config)) =
            sockets.get_mut::<dhcpv4::Socket>(dhcp).poll()
        {
            iface.update_ip_addrs(|addrs| {
                addrs.clear();
                addrs.push(IpCidr::Ipv4(config.address)).unwrap();
            });
            if let Some(router) = config.router {
                iface.routes_mut().add_default_ipv4_route(router).unwrap();
            }
            outcome.lease = Some((config.address.address(), config.router));
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 65536]),
                tcp::SocketBuffer::new(vec![0; 4096]),
            );
            socket
                .connect(
                    iface.context(),
                    (IpAddress::v4(192, 168, 127, 253), 80),
                    40000,
                )
                .expect("connect");
            tcp_handle = Some(sockets.add(socket));
        }
        if let Some(h) = tcp_handle {
            let socket = sockets.get_mut::<tcp::Socket>(h);
            if socket.may_send() && !sent_request {
                socket
                    .send_slice(
                        b"GET / HTTP/1.1\r\nHost: 192.168.127.253\r\nConnection: close\r\n\r\n",
                    )
                    .unwrap();
                sent_request = true;
            }
            while socket.can_recv() {
                socket
                    .recv(|data| {
                        outcome.page.extend_from_slice(data);
                        (data.len(), ())
                    })
                    .unwrap();
            }
            if sent_request && !socket.may_recv() && !outcome.page.is_empty() {
                break;
            }
        }
    }
    outcome
}

fn assert_outcome(outcome: &Outcome) {
    let (ip, router) = outcome.lease.expect("a DHCP lease");
    assert_eq!(ip, Ipv4Address::new(192, 168, 127, 3));
    assert_eq!(router, Some(Ipv4Address::new(192, 168, 127, 1)));
    let page = String::from_utf8_lossy(&outcome.page);
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("This is the HTTP proxy"), "{page}");
}

#[test]
fn qemu_stream_over_tcp_gets_a_lease_and_a_page() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _runner = start_runner(&format!("127.0.0.1:{port}"));
    let mut stream = connect_with_retry(|| std::net::TcpStream::connect(("127.0.0.1", port)));
    let control = stream.try_clone().unwrap();
    let outcome = run_guest(&mut stream, &|on| control.set_nonblocking(on).unwrap());
    assert_outcome(&outcome);
}

#[test]
fn qemu_stream_over_unix_socket_gets_a_lease_and_a_page() {
    let dir = std::env::temp_dir().join(format!("c2w-qemu-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("net.sock");
    let _runner = start_runner(&format!("unix:{}", path.display()));
    let mut stream = connect_with_retry(|| std::os::unix::net::UnixStream::connect(&path));
    let control = stream.try_clone().unwrap();
    let outcome = run_guest(&mut stream, &|on| control.set_nonblocking(on).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    assert_outcome(&outcome);
}
