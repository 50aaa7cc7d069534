//! Micro-benchmarks of the CA, printed as JSON lines `{"name","unit","value","iterations"}`:
//! CA generation, a leaf for a new host, a cache hit, and a full in-memory TLS 1.3 handshake
//! for a new host (issuance + both endpoints, the client verifying the chain).
//! Native: `cargo run --profile bench-native -p mitm-ca --example ca_bench`. On wasm32 it runs
//! under node after wasm-bindgen (see `cargo xtask bench`), timing with `performance.now()`.

use std::hint::black_box;
use std::sync::Arc;

use mitm_ca::{
    CaParams, CertificateAuthority, ClockTimeProvider, FixedClock, Issuer, IssuerConfig,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

/// The benchmarks' fixed certificate time (2025-06-15); the library never reads a clock.
const NOW: u64 = 1_750_000_000;

#[cfg(not(target_arch = "wasm32"))]
mod platform {
    use std::sync::OnceLock;
    use std::time::Instant;

    /// Milliseconds since the first call.
    pub fn now_ms() -> f64 {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3
    }

    pub fn emit(line: &str) {
        println!("{line}");
    }

    pub const TARGET: &str = "native";
}

#[cfg(target_arch = "wasm32")]
mod platform {
    use wasm_bindgen::prelude::wasm_bindgen;

    #[wasm_bindgen]
    extern "C" {
        #[wasm_bindgen(js_namespace = performance, js_name = now)]
        fn performance_now() -> f64;
        #[wasm_bindgen(js_namespace = console, js_name = log)]
        fn console_log(line: &str);
    }

    /// Milliseconds from `performance.now()`.
    pub fn now_ms() -> f64 {
        performance_now()
    }

    pub fn emit(line: &str) {
        console_log(line);
    }

    pub const TARGET: &str = "wasm";
}

/// Runs `f` `iterations` times (after `iterations / 10 + 1` warm-up runs) and prints the mean.
fn measure(name: &str, unit: &str, iterations: u32, mut f: impl FnMut(u32)) {
    for i in 0..iterations / 10 + 1 {
        f(u32::MAX - i);
    }
    let start = platform::now_ms();
    for i in 0..iterations {
        f(i);
    }
    let elapsed_ms = platform::now_ms() - start;
    let per_iteration = elapsed_ms / f64::from(iterations);
    let value = match unit {
        "ns" => per_iteration * 1e6,
        "us" => per_iteration * 1e3,
        _ => per_iteration,
    };
    platform::emit(&format!(
        "{{\"name\":\"{}/{name}\",\"unit\":\"{unit}\",\"value\":{value:.3},\"iterations\":{iterations}}}",
        platform::TARGET
    ));
}

fn issuer(clock: &Arc<FixedClock>, config: IssuerConfig) -> Arc<Issuer> {
    let ca = CertificateAuthority::generate(&CaParams::default(), clock.as_ref()).unwrap();
    Arc::new(Issuer::new(ca, config, clock.clone()).unwrap())
}

fn client_config(ca_der: &[u8], clock: Arc<FixedClock>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_details(provider, Arc::new(ClockTimeProvider(clock)))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn transfer<A, B>(from: &mut rustls::ConnectionCommon<A>, to: &mut rustls::ConnectionCommon<B>) {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rest = &buf[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
        to.process_new_packets().expect("handshake succeeds");
    }
}

/// One complete handshake in memory; panics if it fails.
fn handshake(server: &Arc<rustls::ServerConfig>, client: &Arc<ClientConfig>, host: String) {
    let name = ServerName::try_from(host).unwrap();
    let mut client = ClientConnection::new(client.clone(), name).unwrap();
    let mut server = ServerConnection::new(server.clone()).unwrap();
    while client.is_handshaking() || server.is_handshaking() {
        transfer(&mut client, &mut server);
        transfer(&mut server, &mut client);
    }
}

fn main() {
    let clock = Arc::new(FixedClock::new(NOW));
    let params = CaParams::default();

    measure("ca_generate", "us", 50, |_| {
        black_box(CertificateAuthority::generate(&params, clock.as_ref()).unwrap());
    });

    let big_cache = IssuerConfig {
        cache_capacity: 100_000,
        ..IssuerConfig::default()
    };
    let shared = issuer(&clock, big_cache.clone());
    measure("leaf_new_host", "us", 1_000, |i| {
        black_box(shared.issue(&format!("host-{i}.example.com")).unwrap());
    });

    let per_host = issuer(
        &clock,
        IssuerConfig {
            per_host_keys: true,
            ..big_cache
        },
    );
    measure("leaf_new_host_per_host_key", "us", 500, |i| {
        black_box(per_host.issue(&format!("host-{i}.example.com")).unwrap());
    });

    shared.issue("hit.example.com").unwrap();
    measure("cache_hit", "ns", 200_000, |_| {
        black_box(shared.issue(black_box("hit.example.com")).unwrap());
    });

    let tls_issuer = issuer(
        &clock,
        IssuerConfig {
            cache_capacity: 100_000,
            ..IssuerConfig::default()
        },
    );
    let server = tls_issuer.server_config(None);
    let client = client_config(tls_issuer.ca().certificate_der(), clock.clone());
    measure("tls_handshake_new_host", "us", 300, |i| {
        handshake(&server, &client, format!("tls-{i}.example.com"));
    });
}
