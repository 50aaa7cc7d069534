//! `GuestHttp` against a guest made of smoltcp (DHCP client, TCP servers scripted per test)
//! behind a real `Stack`, on a runtime whose clock and tasks the test drives.

use std::collections::VecDeque;
use std::future::Future;

use futures::future::LocalBoxFuture;
use futures::StreamExt;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use super::*;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0x01];
const GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 3);

/// A clock the test advances and the tasks spawned on it.
#[derive(Default)]
struct TestRuntime {
    now_ms: Rc<Cell<u64>>,
    tasks: RefCell<Vec<LocalBoxFuture<'static, ()>>>,
}

impl Runtime for TestRuntime {
    fn now(&self) -> net_stack::Instant {
        net_stack::Instant::from_millis(self.now_ms.get() as i64)
    }

    fn sleep(&self, duration: Duration) -> LocalBoxFuture<'static, ()> {
        let deadline = self.now_ms.get() + duration.as_millis() as u64;
        let clock = self.now_ms.clone();
        Box::pin(future::poll_fn(move |_| {
            if clock.get() >= deadline {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }))
    }

    fn yield_now(&self) -> LocalBoxFuture<'static, ()> {
        Box::pin(future::ready(()))
    }

    fn spawn(&self, task: LocalBoxFuture<'static, ()>) {
        self.tasks.borrow_mut().push(task);
    }
}

#[derive(Default)]
struct Device {
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
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

impl phy::Device for Device {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((Rx(frame), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// What a scripted guest server does once it has a whole request.
#[derive(Clone)]
enum Answer {
    /// Writes these bytes and keeps the connection.
    Keep(&'static [u8]),
    /// Writes these bytes and closes.
    Close(&'static [u8]),
    /// Says nothing.
    Silent,
}

/// One listening socket of the guest and what it was sent.
struct Server {
    handle: SocketHandle,
    port: u16,
    received: Vec<u8>,
    /// Requests answered so far.
    answered: usize,
}

/// The stack, the smoltcp guest, and `GuestHttp` on the test runtime.
struct World {
    stack: Stack,
    runtime: Rc<TestRuntime>,
    http: Rc<GuestHttp>,
    iface: Interface,
    device: Device,
    sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    servers: Vec<Server>,
    answer: Answer,
}

impl World {
    fn new(answer: Answer) -> Self {
        let stack = Stack::new(net_stack::Config::default()).unwrap();
        let runtime = Rc::new(TestRuntime::default());
        runtime.now_ms.set(1000);
        let dyn_runtime: Rc<dyn Runtime> = runtime.clone();
        let http = Rc::new(GuestHttp::new(
            stack.clone(),
            dyn_runtime,
            GuestConfig::default(),
        ));
        let mut device = Device::default();
        let mut config = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        config.random_seed = 19;
        let iface = Interface::new(
            config,
            &mut device,
            smoltcp::time::Instant::from_millis(1000),
        );
        Self {
            stack,
            runtime,
            http,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            dhcp: None,
            servers: Vec::new(),
            answer,
        }
    }

    /// The guest takes a lease over DHCP and configures its address.
    fn with_lease(mut self) -> Self {
        self.dhcp = Some(self.sockets.add(dhcpv4::Socket::new()));
        for _ in 0..5000 {
            self.step();
            if !self.iface.ip_addrs().is_empty() {
                return self;
            }
        }
        panic!("no lease");
    }

    /// A guest server listening on `port`.
    fn listen(&mut self, port: u16) {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        );
        socket.listen(port).unwrap();
        let handle = self.sockets.add(socket);
        self.servers.push(Server {
            handle,
            port,
            received: Vec::new(),
            answered: 0,
        });
    }

    /// One millisecond of the network: guest, frames both ways, stack, servers, tasks.
    fn step(&mut self) {
        let now = self.runtime.now_ms.get() + 1;
        self.runtime.now_ms.set(now);
        let t = smoltcp::time::Instant::from_millis(now as i64);
        self.iface.poll(t, &mut self.device, &mut self.sockets);
        if let Some(dhcp) = self.dhcp {
            let event = self.sockets.get_mut::<dhcpv4::Socket>(dhcp).poll();
            if let Some(dhcpv4::Event::Configured(config)) = event {
                self.iface.update_ip_addrs(|addrs| {
                    addrs.clear();
                    addrs.push(IpCidr::Ipv4(config.address)).unwrap();
                });
                if let Some(router) = config.router {
                    self.iface
                        .routes_mut()
                        .add_default_ipv4_route(router)
                        .unwrap();
                }
            }
        }
        while let Some(frame) = self.device.tx.pop_front() {
            self.stack.push_frame(&frame);
        }
        self.stack.poll(self.runtime.now());
        while let Some(frame) = self.stack.pop_frame() {
            self.device.rx.push_back(frame);
        }
        for server in &mut self.servers {
            let socket = self.sockets.get_mut::<tcp::Socket>(server.handle);
            while socket.can_recv() {
                let _ = socket.recv(|data| {
                    server.received.extend_from_slice(data);
                    (data.len(), ())
                });
            }
            let requests = count_requests(&server.received);
            if requests > server.answered {
                server.answered = requests;
                match &self.answer {
                    Answer::Keep(bytes) => {
                        socket.send_slice(bytes).unwrap();
                    }
                    Answer::Close(bytes) => {
                        socket.send_slice(bytes).unwrap();
                        socket.close();
                    }
                    Answer::Silent => {}
                }
            }
        }
        let tasks = std::mem::take(&mut *self.runtime.tasks.borrow_mut());
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut pending: Vec<_> = tasks
            .into_iter()
            .filter_map(|mut task| task.as_mut().poll(&mut cx).is_pending().then_some(task))
            .collect();
        pending.append(&mut self.runtime.tasks.borrow_mut());
        *self.runtime.tasks.borrow_mut() = pending;
    }

    /// Runs `future` with the network until it completes (at most `ms` milliseconds).
    fn run<F: Future>(&mut self, future: F, ms: u64) -> F::Output {
        let mut future = std::pin::pin!(future);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..ms {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
            self.step();
        }
        panic!("not done within {ms} ms");
    }

    fn server(&mut self, port: u16) -> &mut Server {
        self.servers.iter_mut().find(|s| s.port == port).unwrap()
    }

    fn state(&mut self, port: u16) -> tcp::State {
        let handle = self.server(port).handle;
        self.sockets.get::<tcp::Socket>(handle).state()
    }
}

/// Complete requests in what a server received (a chunked one ends with its last chunk).
fn count_requests(bytes: &[u8]) -> usize {
    let find = |from: usize, what: &[u8]| {
        bytes
            .get(from..)?
            .windows(what.len())
            .position(|w| w == what)
            .map(|i| from + i + what.len())
    };
    let (mut count, mut pos) = (0, 0);
    while let Some(head_end) = find(pos, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[pos..head_end]);
        let end = if head.contains("Transfer-Encoding: chunked") {
            match find(head_end, b"0\r\n\r\n") {
                Some(end) => end,
                None => break,
            }
        } else {
            head_end
        };
        count += 1;
        pos = end;
    }
    count
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

async fn read_body(body: GuestBody) -> Result<Vec<u8>, GuestError> {
    let mut body = body;
    let mut out = Vec::new();
    while let Some(piece) = body.next().await {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

#[test]
fn ports_and_addresses_are_checked_before_anything_is_sent() {
    let world = World::new(Answer::Silent);
    for bad in [0.0, -1.0, 1.5, 65536.0, f64::NAN, f64::INFINITY] {
        assert!(
            matches!(port_number(bad), Err(GuestError::BadPort(_))),
            "{bad}"
        );
    }
    assert_eq!(port_number(65535.0).unwrap(), 65535);
    assert!(matches!(
        world.http.address(0, Some(GUEST)),
        Err(GuestError::PortZero)
    ));
    assert!(matches!(
        world.http.address(80, None),
        Err(GuestError::NoLease)
    ));
    assert_eq!(
        world.http.address(80, Some(GUEST)).unwrap(),
        SocketAddrV4::new(GUEST, 80)
    );
    // An address the guest never used: the stack cannot reach it.
    let unknown = SocketAddrV4::new(Ipv4Addr::new(192, 168, 127, 9), 80);
    let mut world = world;
    let http = world.http.clone();
    let result = world.run(async move { http.connect(unknown).await }, 10);
    assert!(matches!(
        result,
        Err(GuestError::Connect(_, ConnectError::UnknownGuest(_)))
    ));
    assert_eq!(world.stack.pop_frame(), None);
}

#[test]
fn requests_reach_the_leased_guest_and_reuse_its_connection() {
    let mut world = World::new(Answer::Keep(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    ))
    .with_lease();
    world.listen(8000);
    let guest = world.http.address(8000, None).unwrap();
    assert_eq!(guest, SocketAddrV4::new(GUEST, 8000));
    for path in ["/a", "/b?x=1"] {
        let http = world.http.clone();
        let body = world.run(
            async move {
                let response = http.send(guest, get(path)).await?;
                assert_eq!(response.status(), 200);
                assert_eq!(response.body().len(), Some(5));
                read_body(response.into_body()).await
            },
            2000,
        );
        assert_eq!(body.unwrap(), b"hello");
        assert_eq!(world.http.idle_connections(), 1);
    }
    // One listening socket, two requests: the second came on the same connection.
    assert_eq!(
        String::from_utf8_lossy(&world.server(8000).received),
        "GET /a HTTP/1.1\r\nHost: 192.168.127.3:8000\r\n\r\n\
         GET /b?x=1 HTTP/1.1\r\nHost: 192.168.127.3:8000\r\n\r\n"
    );
    // Idle past the pool's time: dropped, and the guest sees the connection close.
    for _ in 0..POOL_IDLE.as_millis() + 500 {
        world.step();
    }
    assert_eq!(world.http.idle_connections(), 0);
    assert!(
        !matches!(world.state(8000), tcp::State::Established),
        "{:?}",
        world.state(8000)
    );
}

#[test]
fn a_response_that_closes_is_not_kept_and_a_short_upload_goes_with_its_length() {
    let answer = b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
    let mut world = World::new(Answer::Close(answer)).with_lease();
    world.listen(8080);
    let guest = SocketAddrV4::new(GUEST, 8080);
    let pieces = vec![
        Ok(Bytes::from_static(b"abc")),
        Ok(Bytes::from_static(b"defgh")),
    ];
    let request = Request::post("/up")
        .body(Body::from_stream(futures::stream::iter(pieces), None))
        .unwrap();
    let http = world.http.clone();
    let body = world.run(
        async move {
            let response = http.send(guest, request).await?;
            assert_eq!(response.status(), 201);
            read_body(response.into_body()).await
        },
        2000,
    );
    assert_eq!(body.unwrap(), b"ok");
    assert_eq!(
        String::from_utf8_lossy(&world.server(8080).received),
        // A stream of unknown length that ends within the client's probe (64 KiB).
        "POST /up HTTP/1.1\r\nHost: 192.168.127.3:8080\r\nContent-Length: 8\r\n\r\nabcdefgh"
    );
    assert_eq!(world.http.idle_connections(), 0);
}

#[test]
fn refusals_closes_garbage_and_silence_are_typed_errors() {
    // Nothing listens: refused at once.
    let mut world = World::new(Answer::Silent).with_lease();
    let guest = SocketAddrV4::new(GUEST, 9);
    let http = world.http.clone();
    // (smoltcp's guest waits out its ARP silence before its RST; a Linux guest answers at once)
    let result = world.run(async move { http.send(guest, get("/")).await }, 3000);
    assert!(matches!(result, Err(GuestError::Refused(addr)) if addr == guest));
    let http = world.http.clone();
    let result = world.run(
        async move { http.probe(guest, Duration::from_secs(3)).await },
        200,
    );
    assert!(matches!(result, Ok(false)));

    // Listens and says nothing: the probe says so, a request times out after the idle time.
    world.listen(7000);
    let guest = SocketAddrV4::new(GUEST, 7000);
    let http = world.http.clone();
    let result = world.run(
        async move { http.probe(guest, Duration::from_secs(3)).await },
        200,
    );
    assert!(matches!(result, Ok(true)));
    world.listen(7000);
    let idle = ClientConfig::default().idle_timeout;
    let http = world.http.clone();
    let result = world.run(
        async move { http.send(guest, get("/")).await },
        idle.as_millis() as u64 + 2000,
    );
    assert!(matches!(
        result,
        Err(GuestError::Http(_, ClientError::TimedOut(t))) if t == idle
    ));

    // Garbage instead of a response.
    let mut world = World::new(Answer::Close(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")).with_lease();
    world.listen(22);
    let guest = SocketAddrV4::new(GUEST, 22);
    let http = world.http.clone();
    let result = world.run(async move { http.send(guest, get("/")).await }, 2000);
    assert!(matches!(
        result,
        Err(GuestError::Http(_, ClientError::Malformed(_)))
    ));

    // Closed mid-body.
    let mut world = World::new(Answer::Close(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf",
    ))
    .with_lease();
    world.listen(8000);
    let guest = SocketAddrV4::new(GUEST, 8000);
    let http = world.http.clone();
    let result = world.run(
        async move {
            let response = http.send(guest, get("/")).await?;
            read_body(response.into_body()).await
        },
        2000,
    );
    assert!(matches!(
        result,
        Err(GuestError::Http(_, ClientError::ClosedMidBody))
    ));
    assert_eq!(world.http.idle_connections(), 0);
    // Back to idle once the closing handshake is over.
    let mut waited = 0;
    while world.stack.stats().tcp_open > 0 && waited < 30_000 {
        world.step();
        waited += 1;
    }
    assert_eq!(world.stack.stats().tcp_open, 0);
}
