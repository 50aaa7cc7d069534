//! CONNECT and TLS termination in memory: a rustls client whose only root is the proxy's CA
//! tunnels through `CONNECT`, completes a handshake with the leaf the proxy issues for the
//! target, and its request reaches the transport as an `https://` URL.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use async_trait::async_trait;
use fetch_transport::{Body, Transport, TransportError};
use futures::executor::LocalPool;
use futures::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use futures::task::LocalSpawnExt;
use futures_rustls::rustls::pki_types::{CertificateDer, ServerName};
use futures_rustls::rustls::{ClientConfig, RootCertStore};
use futures_rustls::TlsConnector;
use http_proxy::{Entry, Proxy, ProxyConfig};

use common::{pipe, End, NeverTimer};
use mitm_ca::{
    CaParams, CertificateAuthority, ClockTimeProvider, FixedClock, Issuer, IssuerConfig,
};

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// Answers every request with its own URL as the body.
struct EchoUrl;

#[async_trait(?Send)]
impl Transport for EchoUrl {
    async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, TransportError> {
        let body = format!("{} {}", request.method(), request.uri());
        Ok(http::Response::builder()
            .status(200)
            .body(Body::full(body))
            .unwrap())
    }
}

/// 2027-01-15, inside any CA generated at that time.
const NOW: u64 = 1_800_000_000;

fn issuer() -> (Arc<Issuer>, Arc<FixedClock>) {
    let clock = Arc::new(FixedClock::new(NOW));
    let ca = CertificateAuthority::generate(&CaParams::default(), clock.as_ref()).unwrap();
    let issuer = Issuer::new(ca, IssuerConfig::default(), clock.clone()).unwrap();
    (Arc::new(issuer), clock)
}

fn client_config(issuer: &Issuer, clock: Arc<FixedClock>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(issuer.ca().certificate_der().to_vec()))
        .unwrap();
    let provider = Arc::new(futures_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_details(provider, Arc::new(ClockTimeProvider(clock)))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Reads until the peer closes.
async fn read_to_end<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `client` against a proxy serving `Entry` on the other end of a pipe.
fn run_with_proxy<F>(entry: Entry, client: impl FnOnce(End, Arc<ClientConfig>) -> F) -> String
where
    F: std::future::Future<Output = String> + 'static,
{
    let (issuer, clock) = issuer();
    let config = client_config(&issuer, clock);
    let proxy = Proxy::new(
        ProxyConfig::default(),
        Rc::new(EchoUrl),
        Rc::new(NeverTimer),
    )
    .with_issuer(issuer);
    let (guest, proxy_end) = pipe();
    let mut pool = LocalPool::new();
    pool.spawner()
        .spawn_local(async move {
            let _ = proxy.serve(proxy_end, entry).await;
        })
        .unwrap();
    pool.run_until(client(guest, config))
}

#[test]
fn connect_then_tls_is_terminated_with_a_leaf_for_the_target() {
    let got = run_with_proxy(Entry::ForwardProxy, |mut guest, config| async move {
        guest
            .write_all(b"CONNECT example.test:8443 HTTP/1.1\r\nHost: example.test:8443\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 39];
        guest.read_exact(&mut head).await.unwrap();
        assert_eq!(&head[..], b"HTTP/1.1 200 Connection established\r\n\r\n");
        let name = ServerName::try_from("example.test").unwrap();
        let mut tls = TlsConnector::from(config)
            .connect(name, guest)
            .await
            .expect("handshake");
        tls.write_all(
            b"GET /x?y=1 HTTP/1.1\r\nHost: example.test:8443\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        read_to_end(&mut tls).await
    });
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(
        got.ends_with("GET https://example.test:8443/x?y=1"),
        "{got}"
    );
}

#[test]
fn tls_for_another_name_than_the_target_fails_verification() {
    // An IP sends no SNI: the leaf is for the CONNECT target, and a client expecting another
    // address must reject it.
    let got = run_with_proxy(Entry::ForwardProxy, |mut guest, config| async move {
        guest
            .write_all(b"CONNECT 127.0.0.1:443 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 39];
        guest.read_exact(&mut head).await.unwrap();
        let name = ServerName::try_from("127.0.0.2").unwrap();
        match TlsConnector::from(config).connect(name, guest).await {
            Ok(_) => "handshake succeeded".to_string(),
            Err(err) => format!("refused: {err}"),
        }
    });
    assert!(got.starts_with("refused:"), "{got}");
}

#[test]
fn tls_entry_uses_sni_and_host_header() {
    let got = run_with_proxy(Entry::Tls { fallback: None }, |guest, config| async move {
        let name = ServerName::try_from("site.test").unwrap();
        let mut tls = TlsConnector::from(config)
            .connect(name, guest)
            .await
            .expect("handshake");
        tls.write_all(b"GET /a HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        read_to_end(&mut tls).await
    });
    assert!(got.ends_with("GET https://site.test/a"), "{got}");
}

#[test]
fn a_tunnel_that_speaks_plain_http_is_served_as_http() {
    let got = run_with_proxy(Entry::ForwardProxy, |mut guest, _config| async move {
        guest
            .write_all(b"CONNECT plain.test:80 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 39];
        guest.read_exact(&mut head).await.unwrap();
        guest
            .write_all(b"GET /p HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        read_to_end(&mut guest).await
    });
    assert!(got.ends_with("GET http://plain.test/p"), "{got}");
}

/// Raw tunnels that lead to an in-memory peer answering `echo:` plus what it read, or refuse
/// hosts named `refused.test`.
struct EchoTunnels {
    opened: Rc<RefCell<Vec<String>>>,
}

#[async_trait(?Send)]
impl http_proxy::RawTunnels for EchoTunnels {
    async fn open(
        &self,
        host: &str,
        port: u16,
    ) -> Result<http_proxy::BoxedStream, http_proxy::TunnelError> {
        self.opened.borrow_mut().push(format!("{host}:{port}"));
        if host == "refused.test" {
            return Err(http_proxy::TunnelError("connection refused (0x44)".into()));
        }
        let (mut peer, ours) = pipe();
        // The peer: echoes what it reads until the guest's side is closed.
        let echo = async move {
            let mut buf = [0u8; 64];
            loop {
                let n = peer.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    let _ = peer.close().await;
                    return;
                }
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = peer.write_all(&reply).await;
            }
        };
        SPAWNER.with(|s| {
            s.borrow()
                .as_ref()
                .expect("spawner")
                .spawn_local(echo)
                .unwrap()
        });
        Ok(Box::new(ours))
    }
}

thread_local! {
    static SPAWNER: RefCell<Option<futures::executor::LocalSpawner>> = const { RefCell::new(None) };
}

/// Runs `client` against a proxy without a CA whose CONNECTs go through [`EchoTunnels`].
fn run_with_raw_tunnels<F>(client: impl FnOnce(End) -> F) -> (String, Vec<String>)
where
    F: std::future::Future<Output = String> + 'static,
{
    let opened = Rc::new(RefCell::new(Vec::new()));
    let proxy = Proxy::new(
        ProxyConfig::default(),
        Rc::new(EchoUrl),
        Rc::new(NeverTimer),
    )
    .with_raw_tunnels(Rc::new(EchoTunnels {
        opened: opened.clone(),
    }));
    let (guest, proxy_end) = pipe();
    let mut pool = LocalPool::new();
    SPAWNER.with(|s| *s.borrow_mut() = Some(pool.spawner()));
    pool.spawner()
        .spawn_local(async move {
            let _ = proxy.serve(proxy_end, Entry::ForwardProxy).await;
        })
        .unwrap();
    let got = pool.run_until(client(guest));
    SPAWNER.with(|s| *s.borrow_mut() = None);
    let opened = opened.borrow().clone();
    (got, opened)
}

#[test]
fn with_raw_tunnels_a_connect_is_carried_end_to_end_without_a_ca() {
    let (got, opened) = run_with_raw_tunnels(|mut guest| async move {
        guest
            .write_all(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 39];
        guest.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200 Connection established\r\n\r\n");
        // Not TLS, not HTTP: bytes the proxy would never pass through a terminated tunnel.
        guest.write_all(b"\x00raw bytes").await.unwrap();
        let mut reply = [0u8; 15];
        guest.read_exact(&mut reply).await.unwrap();
        guest.close().await.unwrap();
        let rest = read_to_end(&mut guest).await;
        format!("{}{rest}", String::from_utf8_lossy(&reply))
    });
    assert_eq!(got, "echo:\u{0}raw bytes");
    assert_eq!(opened, ["origin.test:443"]);
}

#[test]
fn a_raw_tunnel_that_cannot_be_opened_is_a_502_naming_the_destination_and_why() {
    let (got, opened) = run_with_raw_tunnels(|mut guest| async move {
        guest
            .write_all(b"CONNECT refused.test:22 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        read_to_end(&mut guest).await
    });
    assert!(got.starts_with("HTTP/1.1 502 "), "{got}");
    assert!(
        got.contains("refused.test:22") && got.contains("connection refused (0x44)"),
        "{got}"
    );
    assert_eq!(opened, ["refused.test:22"]);
}
