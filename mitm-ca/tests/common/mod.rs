//! Shared helpers of the integration tests: a fixed clock, CA and issuer builders, rustls
//! clients trusting only the CA, and an in-memory TLS handshake between two rustls endpoints.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;

use mitm_ca::{
    CaParams, CertificateAuthority, ClockTimeProvider, FixedClock, Issuer, IssuerConfig,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

/// 2025-06-15T15:06:40Z: the tests' "now".
pub const NOW: u64 = 1_750_000_000;
pub const DAY: u64 = 86_400;

/// The test-only RSA 2048 PKCS#8 key (see tests/data/README.md).
pub const RSA_2048_KEY: &str = include_str!("../data/test-only-rsa2048-key.pem");

pub fn clock() -> Arc<FixedClock> {
    Arc::new(FixedClock::new(NOW))
}

pub fn generate_ca(clock: &FixedClock) -> CertificateAuthority {
    CertificateAuthority::generate(&CaParams::default(), clock).expect("CA generation")
}

pub fn issuer_with(clock: Arc<FixedClock>, config: IssuerConfig) -> Arc<Issuer> {
    let ca = generate_ca(&clock);
    Arc::new(Issuer::new(ca, config, clock).expect("issuer"))
}

pub fn issuer(clock: Arc<FixedClock>) -> Arc<Issuer> {
    issuer_with(clock, IssuerConfig::default())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client trusting only `ca_der`, at the given clock's time, offering ALPN http/1.1.
pub fn client_config(ca_der: &[u8], clock: Arc<FixedClock>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .expect("CA accepted as trust anchor");
    let mut config =
        ClientConfig::builder_with_details(provider(), Arc::new(ClockTimeProvider(clock)))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Like [`client_config`] but restricted to one TLS version.
pub fn client_config_version(
    ca_der: &[u8],
    clock: Arc<FixedClock>,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).unwrap();
    Arc::new(
        ClientConfig::builder_with_details(provider(), Arc::new(ClockTimeProvider(clock)))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Which endpoint rejected the handshake, and why.
#[derive(Debug)]
pub enum Failure {
    Client(rustls::Error),
    Server(rustls::Error),
}

/// Pumps bytes between a client and a server in memory until both finish the handshake,
/// then sends "ping" client→server and "pong" back to prove the keys work.
pub fn handshake(
    server_config: Arc<ServerConfig>,
    client_config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<(ClientConnection, ServerConnection), Failure> {
    let mut client = ClientConnection::new(client_config, name).map_err(Failure::Client)?;
    let mut server = ServerConnection::new(server_config).map_err(Failure::Server)?;
    for _ in 0..32 {
        transfer(&mut client, &mut server).map_err(Failure::Server)?;
        transfer(&mut server, &mut client).map_err(Failure::Client)?;
        if !client.is_handshaking() && !server.is_handshaking() {
            exchange(&mut client, &mut server);
            return Ok((client, server));
        }
    }
    panic!("handshake did not finish in 32 round trips");
}

/// Moves every pending TLS byte from `from` to `to` and lets `to` process them.
fn transfer<A, B>(
    from: &mut rustls::ConnectionCommon<A>,
    to: &mut rustls::ConnectionCommon<B>,
) -> Result<(), rustls::Error> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).expect("write to memory");
    }
    let mut rest = &buf[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).expect("read from memory");
        to.process_new_packets()?;
    }
    Ok(())
}

/// Application data both ways over an established connection.
fn exchange(client: &mut ClientConnection, server: &mut ServerConnection) {
    use std::io::{Read, Write};
    client.writer().write_all(b"ping").unwrap();
    transfer(client, server).expect("server reads data");
    let mut got = [0u8; 4];
    server.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    server.writer().write_all(b"pong").unwrap();
    transfer(server, client).expect("client reads data");
    client.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
}

/// A server resolver that always presents the same certificate (to test name mismatches).
#[derive(Debug)]
pub struct FixedResolver(pub Arc<CertifiedKey>);

impl ResolvesServerCert for FixedResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A server presenting `key` whatever the client asks for.
pub fn fixed_server_config(key: Arc<CertifiedKey>) -> Arc<ServerConfig> {
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FixedResolver(key))),
    )
}

pub fn dns(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_string()).expect("valid DNS name")
}

pub fn ip(addr: &str) -> ServerName<'static> {
    ServerName::IpAddress(addr.parse::<std::net::IpAddr>().unwrap().into())
}

/// The leaf DER inside an issued `CertifiedKey`.
pub fn leaf_der(key: &CertifiedKey) -> &[u8] {
    key.cert[0].as_ref()
}
