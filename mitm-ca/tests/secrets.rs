//! The CA private key never shows up in logs or debug output: everything mitm-ca does
//! (generate, export the certificate, import, issue, handshakes that succeed and fail) runs
//! under a subscriber capturing every event at TRACE level, and the captured text must not
//! contain the PKCS#8 key or any line of its PEM.

mod common;

use std::io;
use std::sync::{Arc, Mutex};

use common::*;
use mitm_ca::{CertificateAuthority, Issuer, IssuerConfig};

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// A `MakeWriter` appending everything to a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The base64 body lines of a PEM block (the parts that identify the key).
fn pem_body_lines(pem: &str) -> Vec<&str> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect()
}

#[test]
fn trace_logs_and_debug_output_never_contain_the_ca_key() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .without_time() // no SystemTime on wasm32
        .with_writer(move || writer.clone())
        .finish();

    let mut keys = Vec::new();
    let mut debug = String::new();
    tracing::subscriber::with_default(subscriber, || {
        let clock = clock();
        let generated = generate_ca(&clock);
        let cert = generated.certificate_pem();
        let key = generated.secret_key_pkcs8_pem();
        let imported = CertificateAuthority::from_pem(&cert, &key, clock.as_ref()).unwrap();
        // A mismatched key and a truncated key fail to import.
        let other = generate_ca(&clock);
        assert!(CertificateAuthority::from_pem(
            &cert,
            &other.secret_key_pkcs8_pem(),
            clock.as_ref()
        )
        .is_err());
        assert!(
            CertificateAuthority::from_pem(&cert, &key[..key.len() / 2], clock.as_ref()).is_err()
        );
        keys.push(key);
        keys.push(other.secret_key_pkcs8_pem());
        debug.push_str(&format!("{generated:?} {other:?} {imported:?}"));

        let issuer =
            Arc::new(Issuer::new(imported, IssuerConfig::default(), clock.clone()).unwrap());
        issuer.issue("www.example.com").unwrap();
        let client = client_config(issuer.ca().certificate_der(), clock.clone());
        handshake(issuer.server_config(None), client, dns("www.example.com")).unwrap();
        // No SNI and a fallback that is not a host: the resolver logs why it has no leaf.
        let client = client_config(issuer.ca().certificate_der(), clock.clone());
        assert!(handshake(
            issuer.server_config(Some("not a host!")),
            client,
            ip("192.168.127.253")
        )
        .is_err());
        debug.push_str(&format!("{issuer:?}"));
    });

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    // The capture works: the failed handshake was logged.
    assert!(
        logs.contains("no certificate for the TLS handshake"),
        "nothing captured: {logs}"
    );
    for key in &keys {
        let lines = pem_body_lines(key);
        assert!(!lines.is_empty());
        let body: String = lines.concat();
        for text in [&logs, &debug] {
            assert!(!text.contains(&body), "the CA key appears in: {text}");
            for line in &lines {
                assert!(
                    !text.contains(line),
                    "a line of the CA key appears in: {text}"
                );
            }
        }
    }
}
