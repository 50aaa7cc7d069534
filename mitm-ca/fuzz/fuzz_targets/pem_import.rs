//! CA import: `CertificateAuthority::from_pem` with arbitrary certificate and key text at a
//! fixed time. Whatever is accepted must export again and issue a leaf.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use mitm_ca::{CertificateAuthority, FixedClock, Issuer, IssuerConfig};

fuzz_target!(|data: &[u8]| {
    // The certificate and the key are separated by the first NUL byte.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (cert, key) = text.split_once('\0').unwrap_or((text, ""));
    let clock = Arc::new(FixedClock::new(1_800_000_000));
    let Ok(ca) = CertificateAuthority::from_pem(cert, key, clock.as_ref()) else {
        return;
    };
    let pem = ca.certificate_pem();
    let again = CertificateAuthority::from_pem(&pem, &ca.secret_key_pkcs8_pem(), clock.as_ref())
        .expect("an imported CA re-imports from its own export");
    assert_eq!(again.certificate_der(), ca.certificate_der());
    let _ = (
        ca.subject(),
        ca.not_before(),
        ca.not_after(),
        ca.key_algorithm(),
    );
    let issuer = Issuer::new(ca, IssuerConfig::default(), clock).expect("issuer");
    issuer
        .issue("example.test")
        .expect("a leaf from an imported CA");
});
