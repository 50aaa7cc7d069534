//! Full in-memory TLS handshakes: a rustls client whose only trust anchor is the CA against a
//! rustls server using `Issuer::server_config` (the resolver issuing leaves on the fly).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mitm_ca::{CertificateAuthority, FixedClock, Issuer, IssuerConfig};
use rustls::{CertificateError, Error as TlsError};

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

#[test]
fn dns_name_with_sni() {
    let clock = clock();
    let issuer = issuer(clock.clone());
    let client = client_config(issuer.ca().certificate_der(), clock);
    let (client, server) =
        handshake(issuer.server_config(None), client, dns("www.example.com")).unwrap();
    assert_eq!(server.server_name(), Some("www.example.com"));
    assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));
    let presented = client.peer_certificates().unwrap();
    assert_eq!(presented.len(), 1, "leaf only; the client has the CA");
    let cached = issuer.issue("www.example.com").unwrap();
    assert_eq!(
        presented[0].as_ref(),
        leaf_der(&cached),
        "served from the cache"
    );
}

#[test]
fn ipv4_host_through_fallback() {
    let clock = clock();
    let issuer = issuer(clock.clone());
    let client = client_config(issuer.ca().certificate_der(), clock);
    // Clients send no SNI for IP literals: the fallback (CONNECT target) decides.
    let (_, server) = handshake(
        issuer.server_config(Some("192.168.127.253")),
        client,
        ip("192.168.127.253"),
    )
    .unwrap();
    assert_eq!(server.server_name(), None);
}

#[test]
fn ipv6_host_through_fallback() {
    let clock = clock();
    let issuer = issuer(clock.clone());
    for fallback in ["[2001:db8::1]", "2001:db8::1"] {
        let client = client_config(issuer.ca().certificate_der(), clock.clone());
        handshake(
            issuer.server_config(Some(fallback)),
            client,
            ip("2001:db8::1"),
        )
        .unwrap_or_else(|e| panic!("{fallback}: {e:?}"));
    }
    assert_eq!(issuer.cache_len(), 1, "both spellings share one leaf");
}

#[test]
fn no_sni_gets_the_fallback_hosts_leaf() {
    let clock = clock();
    let issuer = issuer(clock.clone());
    let mut client = (*client_config(issuer.ca().certificate_der(), clock)).clone();
    client.enable_sni = false;
    let (_, server) = handshake(
        issuer.server_config(Some("fallback.example")),
        Arc::new(client),
        dns("fallback.example"),
    )
    .unwrap();
    assert_eq!(server.server_name(), None);
    assert_eq!(issuer.cache_len(), 1);
}

#[test]
fn no_sni_and_no_fallback_aborts() {
    let clock = clock();
    let issuer = issuer(clock.clone());
    let mut client = (*client_config(issuer.ca().certificate_der(), clock)).clone();
    client.enable_sni = false;
    let err = handshake(
        issuer.server_config(None),
        Arc::new(client),
        dns("a.example"),
    )
    .expect_err("no certificate to present");
    assert!(matches!(err, Failure::Server(_)), "{err:?}");
}

#[test]
fn leaf_for_another_host_is_rejected() {
    let clock = clock();
    let issuer = issuer(clock.clone());
    let leaf = issuer.issue("a.example").unwrap();
    let client = client_config(issuer.ca().certificate_der(), clock.clone());
    let err = handshake(fixed_server_config(leaf), client, dns("b.example")).unwrap_err();
    assert!(
        matches!(
            err,
            Failure::Client(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{err:?}"
    );
    // An IP client reaching a server whose fallback is another IP: wrong iPAddress SAN.
    let client = client_config(issuer.ca().certificate_der(), clock);
    let err = handshake(
        issuer.server_config(Some("10.0.0.1")),
        client,
        ip("10.0.0.2"),
    )
    .unwrap_err();
    assert!(
        matches!(err, Failure::Client(TlsError::InvalidCertificate(_))),
        "{err:?}"
    );
}

#[test]
fn ip_leaf_does_not_match_as_dns_name() {
    // A leaf for 10.0.0.1 carries an iPAddress SAN, so a client asking for the DNS name
    // "10.0.0.1.example" or for any name is refused, and no dNSName holds the IP.
    let clock = clock();
    let issuer = issuer(clock.clone());
    let leaf = issuer.issue("10.0.0.1").unwrap();
    let client = client_config(issuer.ca().certificate_der(), clock);
    let err = handshake(fixed_server_config(leaf), client, dns("ip.example")).unwrap_err();
    assert!(matches!(err, Failure::Client(_)), "{err:?}");
}

#[test]
fn client_trusting_another_ca_rejects() {
    let clock = clock();
    let issuer = issuer(clock.clone());
    let other = generate_ca(&clock);
    let client = client_config(other.certificate_der(), clock);
    let err = handshake(issuer.server_config(None), client, dns("a.example")).unwrap_err();
    assert!(
        matches!(
            err,
            Failure::Client(TlsError::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ),
        "{err:?}"
    );
}

#[test]
fn client_past_the_leaf_validity_rejects() {
    let clock = clock();
    let issuer = issuer(clock.clone());
    let _ = issuer.issue("a.example").unwrap();
    // The client lives 31 days later than the server that issued a 30-day leaf.
    let client_clock = Arc::new(FixedClock::new(NOW + 31 * DAY));
    let leaf = issuer.issue("a.example").unwrap();
    let client = client_config(issuer.ca().certificate_der(), client_clock);
    let err = handshake(fixed_server_config(leaf), client, dns("a.example")).unwrap_err();
    assert!(
        matches!(
            err,
            Failure::Client(TlsError::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ),
        "{err:?}"
    );
}

#[test]
fn expired_leaf_is_reissued_and_accepted() {
    let clock = clock();
    let issuer = issuer(clock.clone());
    let first = issuer.issue("a.example").unwrap();
    clock.advance(Duration::from_secs(31 * DAY));
    let client = client_config(issuer.ca().certificate_der(), clock);
    let (client, _) = handshake(issuer.server_config(None), client, dns("a.example")).unwrap();
    assert_ne!(
        client.peer_certificates().unwrap()[0].as_ref(),
        leaf_der(&first)
    );
}

#[test]
fn both_tls_versions_with_per_host_keys() {
    let clock = clock();
    let config = IssuerConfig {
        per_host_keys: true,
        ..IssuerConfig::default()
    };
    let issuer = issuer_with(clock.clone(), config);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let client = client_config_version(issuer.ca().certificate_der(), clock.clone(), version);
        let (client, _) = handshake(issuer.server_config(None), client, dns("v.example")).unwrap();
        assert_eq!(client.protocol_version(), Some(version.version));
    }
}

#[test]
fn rsa_ca_and_rsa_leaf_key() {
    // An imported RSA 2048 CA signing leaves that carry the same (test-only) RSA key.
    let clock = clock();
    let ca = rsa_ca(&clock);
    let issuer = Arc::new(
        Issuer::with_leaf_key(ca, IssuerConfig::default(), clock.clone(), RSA_2048_KEY).unwrap(),
    );
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let client = client_config_version(issuer.ca().certificate_der(), clock.clone(), version);
        handshake(issuer.server_config(None), client, dns("rsa.example")).unwrap();
    }
}

/// A CA certificate for the test-only RSA key, made with rcgen and imported.
fn rsa_ca(clock: &FixedClock) -> CertificateAuthority {
    let key = rcgen::KeyPair::from_pem(RSA_2048_KEY).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params.not_before = time::OffsetDateTime::from_unix_timestamp((NOW - DAY) as i64).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp((NOW + 90 * DAY) as i64).unwrap();
    let cert = params.self_signed(&key).unwrap();
    CertificateAuthority::from_pem(&cert.pem(), RSA_2048_KEY, clock).unwrap()
}
