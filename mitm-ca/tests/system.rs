//! Verification by independent implementations on this machine: `openssl verify` checks the
//! chain, `curl` completes an HTTPS request against a rustls server using an issued leaf, and
//! CAs made by `openssl` import (or are refused) as expected. Native only; these tests use the
//! real system time because openssl and curl do. A missing tool skips loudly (`cargo xtask
//! test` installs them).
#![cfg(not(target_arch = "wasm32"))]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use mitm_ca::{
    CaParams, CertificateAuthority, FixedClock, ImportError, ImportPart, Issuer, IssuerConfig,
    KeyAlgorithm,
};

/// A clock at the real current time (test code only; the library never reads a clock).
fn real_clock() -> Arc<FixedClock> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    Arc::new(FixedClock::new(now.as_secs()))
}

/// Sets `clock` a second past the real time and returns it: openssl stamps notBefore with the
/// second it signs, which can be later than when the clock was first read.
fn caught_up(clock: &FixedClock) -> &FixedClock {
    clock.set(real_clock().secs() + 1);
    clock
}

fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok()
        || Command::new(tool).arg("version").output().is_ok();
    if !found {
        eprintln!("\n!!!!! SKIPPED: `{tool}` is not installed; run `cargo xtask test` !!!!!\n");
    }
    found
}

/// A fresh scratch directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mitm-ca-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn leaf_pem(issuer: &Issuer, host: &str) -> String {
    let key = issuer.issue(host).unwrap();
    ::pem::encode(&::pem::Pem::new("CERTIFICATE", key.cert[0].to_vec()))
}

/// `openssl verify` of `leaf` against `ca`, with a host (-verify_hostname) or IP (-verify_ip).
fn openssl_verify(dir: &Scratch, ca: &Path, leaf_pem: &str, check: &[&str]) -> Output {
    let leaf = dir.write("leaf.pem", leaf_pem);
    run(Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", "sslserver", "-CAfile"])
        .arg(ca)
        .args(check)
        .arg(&leaf))
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn openssl_verify_accepts_issued_chains() {
    if !have("openssl") {
        return;
    }
    let dir = Scratch::new("verify");
    let clock = real_clock();
    let ca = CertificateAuthority::generate(&CaParams::default(), clock.as_ref()).unwrap();
    let ca_path = dir.write("ca.pem", &ca.certificate_pem());
    let issuer = Issuer::new(ca, IssuerConfig::default(), clock.clone()).unwrap();

    for (host, check) in [
        ("www.example.test", ["-verify_hostname", "www.example.test"]),
        ("192.168.127.253", ["-verify_ip", "192.168.127.253"]),
        ("[::1]", ["-verify_ip", "::1"]),
    ] {
        let out = openssl_verify(&dir, &ca_path, &leaf_pem(&issuer, host), &check);
        assert_ok(&out, host);
        assert!(String::from_utf8_lossy(&out.stdout).contains(": OK"));
    }

    // Negative controls: another name, an IP checked as a name, another CA.
    let leaf = leaf_pem(&issuer, "www.example.test");
    let out = openssl_verify(&dir, &ca_path, &leaf, &["-verify_hostname", "evil.test"]);
    assert!(!out.status.success(), "wrong host accepted");
    // openssl's own reading of an IP leaf's SAN: an IP Address entry and no DNS entry.
    // (`-verify_hostname 10.1.2.3` would pass through OpenSSL's legacy CN fallback.)
    let ip_leaf = dir.write("ip-leaf.pem", &leaf_pem(&issuer, "10.1.2.3"));
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&ip_leaf));
    assert_ok(&out, "openssl x509 -ext");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("IP Address:10.1.2.3") && !text.contains("DNS:"),
        "{text}"
    );
    let other = CertificateAuthority::generate(&CaParams::default(), clock.as_ref()).unwrap();
    let other_path = dir.write("other.pem", &other.certificate_pem());
    let out = openssl_verify(&dir, &other_path, &leaf, &[]);
    assert!(!out.status.success(), "unrelated CA accepted");
}

/// Serves one HTTPS request on `listener` with `config`, answering with a fixed body.
fn serve_one(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tls.read(&mut buf).expect("read request");
            assert!(n > 0, "client closed before sending a request");
            request.extend_from_slice(&buf[..n]);
        }
        assert!(request.starts_with(b"GET /hello HTTP/1.1\r\n"));
        let body = "hello from mitm-ca\n";
        write!(
            tls,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        let _ = tls.sock.shutdown(std::net::Shutdown::Write);
    })
}

fn curl(ca: &Path, url: &str, resolve: Option<String>) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--noproxy", "*", "--cacert"])
        .arg(ca);
    if let Some(r) = resolve {
        cmd.args(["--resolve", &r]);
    }
    run(cmd.arg(url))
}

#[test]
fn curl_completes_a_request_with_an_issued_leaf() {
    if !have("curl") {
        return;
    }
    let dir = Scratch::new("curl");
    let clock = real_clock();
    let ca = CertificateAuthority::generate(&CaParams::default(), clock.as_ref()).unwrap();
    let ca_path = dir.write("ca.pem", &ca.certificate_pem());
    let issuer = Arc::new(Issuer::new(ca, IssuerConfig::default(), clock).unwrap());

    // A DNS name (SNI), then the IPv4 literal (no SNI: the fallback host decides).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = serve_one(listener, issuer.server_config(None));
    let out = curl(
        &ca_path,
        &format!("https://proxy.example.test:{port}/hello"),
        Some(format!("proxy.example.test:{port}:127.0.0.1")),
    );
    server.join().unwrap();
    assert_ok(&out, "curl by name");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from mitm-ca\n");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = serve_one(listener, issuer.server_config(Some("127.0.0.1")));
    let out = curl(&ca_path, &format!("https://127.0.0.1:{port}/hello"), None);
    server.join().unwrap();
    assert_ok(&out, "curl by IPv4");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from mitm-ca\n");

    match TcpListener::bind("[::1]:0") {
        Ok(listener) => {
            let port = listener.local_addr().unwrap().port();
            let server = serve_one(listener, issuer.server_config(Some("[::1]")));
            let out = curl(&ca_path, &format!("https://[::1]:{port}/hello"), None);
            server.join().unwrap();
            assert_ok(&out, "curl by IPv6");
        }
        Err(e) => eprintln!("\n!!!!! IPv6 curl check skipped: cannot bind [::1]: {e} !!!!!\n"),
    }

    // Negative control: a leaf for another name makes curl fail verification.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = serve_one_expect_failure(listener, issuer.server_config(Some("other.test")));
    let out = curl(&ca_path, &format!("https://127.0.0.1:{port}/hello"), None);
    server.join().unwrap();
    assert!(
        !out.status.success(),
        "curl accepted a leaf for another host"
    );
}

/// Accepts one connection and lets the handshake run (the client is expected to abort).
fn serve_one_expect_failure(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut conn = rustls::ServerConnection::new(config).unwrap();
        let _ = conn.complete_io(&mut tcp);
        let _ = TcpStream::shutdown(&tcp, std::net::Shutdown::Both);
    })
}

/// Runs openssl to make a CA with `key_args` (genpkey arguments) and the given extensions.
fn openssl_ca(dir: &Scratch, name: &str, key_args: &[&str], exts: &[&str]) -> (String, String) {
    let key = dir.path(&format!("{name}.key"));
    let cert = dir.path(&format!("{name}.crt"));
    let mut genpkey = Command::new("openssl");
    genpkey.arg("genpkey").args(key_args).arg("-out").arg(&key);
    assert_ok(&run(&mut genpkey), "openssl genpkey");
    let mut req = Command::new("openssl");
    req.args([
        "req",
        "-x509",
        "-new",
        "-subj",
        "/CN=openssl test CA",
        "-days",
        "30",
    ])
    .arg("-key")
    .arg(&key)
    .arg("-out")
    .arg(&cert);
    for ext in exts {
        req.args(["-addext", ext]);
    }
    assert_ok(&run(&mut req), "openssl req");
    (
        std::fs::read_to_string(cert).unwrap(),
        std::fs::read_to_string(key).unwrap(),
    )
}

const CA_EXTS: [&str; 2] = [
    "basicConstraints=critical,CA:TRUE",
    "keyUsage=critical,keyCertSign,cRLSign",
];

#[test]
fn openssl_made_cas_import_or_are_refused() {
    if !have("openssl") {
        return;
    }
    let dir = Scratch::new("import");
    let clock = real_clock();

    let rsa = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
    let p256 = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    for (name, args, expected) in [
        ("rsa", &rsa, KeyAlgorithm::Rsa { bits: 2048 }),
        ("p256", &p256, KeyAlgorithm::EcdsaP256),
    ] {
        let (cert, key) = openssl_ca(&dir, name, args, &CA_EXTS);
        let ca = CertificateAuthority::from_pem(&cert, &key, caught_up(&clock))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ca.key_algorithm(), expected);
        let ca_path = dir.write("imported-ca.pem", &cert);
        let issuer = Issuer::new(ca, IssuerConfig::default(), clock.clone()).unwrap();
        let out = openssl_verify(
            &dir,
            &ca_path,
            &leaf_pem(&issuer, "imported.test"),
            &["-verify_hostname", "imported.test"],
        );
        assert_ok(&out, name);
    }

    let (cert, key) = openssl_ca(
        &dir,
        "rsa1024",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
        &CA_EXTS,
    );
    assert_eq!(
        CertificateAuthority::from_pem(&cert, &key, caught_up(&clock)).unwrap_err(),
        ImportError::RsaKeyTooSmall { bits: 1024 }
    );

    let (cert, key) = openssl_ca(
        &dir,
        "p521",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
        &CA_EXTS,
    );
    assert!(matches!(
        CertificateAuthority::from_pem(&cert, &key, caught_up(&clock)).unwrap_err(),
        ImportError::UnsupportedAlgorithm { part: ImportPart::Certificate, algorithm }
            if algorithm.contains("1.3.132.0.35")
    ));

    // `openssl ecparam -genkey` writes SEC1 ("EC PRIVATE KEY"): refused with the fix named.
    let (cert, _) = openssl_ca(&dir, "sec1", &p256, &CA_EXTS);
    let sec1 =
        run(Command::new("openssl").args(["ecparam", "-name", "prime256v1", "-genkey", "-noout"]));
    assert_ok(&sec1, "openssl ecparam");
    let err = CertificateAuthority::from_pem(
        &cert,
        &String::from_utf8_lossy(&sec1.stdout),
        caught_up(&clock),
    )
    .unwrap_err();
    assert_eq!(
        err,
        ImportError::KeyNotPkcs8 {
            found: "EC PRIVATE KEY"
        }
    );
    assert!(err.to_string().contains("openssl pkcs8 -topk8"));
}
