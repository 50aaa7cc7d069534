//! What the CA and the leaves contain (checked with x509-parser), the cache, expiry and
//! the issuer's errors.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mitm_ca::{
    CaKeyAlgorithm, CaParams, CertificateAuthority, FixedClock, HostError, IssueError, Issuer,
    IssuerConfig, KeyAlgorithm,
};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::X509Certificate;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).expect("valid X.509");
    assert!(rest.is_empty());
    cert
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        })
}

fn common_name<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a str> {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
}

#[test]
fn generated_ca_has_the_required_fields() {
    let clock = clock();
    let ca = generate_ca(&clock);
    let cert = parse(ca.certificate_der());
    let cn = common_name(&cert).unwrap();
    let id = cn.strip_prefix("c2w-net-proxy CA ").expect(cn);
    assert!(
        id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{cn}"
    );
    let org = cert.subject().iter_organization().next().unwrap();
    assert_eq!(org.as_str().unwrap(), "c2w-net-proxy");
    assert_eq!(ca.subject(), format!("CN={cn}, O=c2w-net-proxy"));
    assert_eq!(
        cert.issuer().as_raw(),
        cert.subject().as_raw(),
        "self-signed"
    );
    cert.verify_signature(None)
        .expect("self-signature verifies");

    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    assert!(subject_key_id(&cert).is_some_and(|id| !id.is_empty()));

    assert_eq!(cert.validity().not_before.timestamp(), (NOW - DAY) as i64);
    assert_eq!(
        cert.validity().not_after.timestamp(),
        (NOW + 365 * DAY) as i64
    );
    assert_eq!(ca.not_after().as_secs(), NOW + 365 * DAY);
    assert_eq!(ca.not_before().as_secs(), NOW - DAY);
    assert_eq!(ca.key_algorithm(), KeyAlgorithm::EcdsaP256);
    let spki = cert.public_key();
    assert_eq!(
        spki.algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    assert_eq!(
        spki.subject_public_key.data.len(),
        65,
        "uncompressed P-256 point"
    );
    let serial = cert.raw_serial();
    assert_eq!(serial.len(), 16);
    assert!(serial[0] & 0x80 == 0 && serial[0] != 0);

    let other = generate_ca(&clock);
    let other_cert = parse(other.certificate_der());
    assert_ne!(common_name(&other_cert), Some(cn), "random id differs");
    assert_ne!(other_cert.raw_serial(), serial);
}

#[test]
fn ca_parameters_are_honoured() {
    let clock = clock();
    let params = CaParams {
        validity_days: 10,
        common_name: Some("My Lab CA".into()),
        key_algorithm: CaKeyAlgorithm::EcdsaP384,
    };
    let ca = CertificateAuthority::generate(&params, clock.as_ref()).unwrap();
    let cert = parse(ca.certificate_der());
    assert_eq!(common_name(&cert), Some("My Lab CA"));
    assert_eq!(
        cert.validity().not_after.timestamp(),
        (NOW + 10 * DAY) as i64
    );
    assert_eq!(ca.key_algorithm(), KeyAlgorithm::EcdsaP384);
    assert_eq!(
        cert.public_key().subject_public_key.data.len(),
        97,
        "P-384 point"
    );

    for bad in [
        CaParams {
            validity_days: 0,
            ..CaParams::default()
        },
        CaParams {
            common_name: Some(" ".into()),
            ..CaParams::default()
        },
    ] {
        assert!(matches!(
            CertificateAuthority::generate(&bad, clock.as_ref()),
            Err(mitm_ca::CaError::InvalidParams(_))
        ));
    }
}

#[test]
fn exports_round_trip_and_debug_hides_the_key() {
    let clock = clock();
    let ca = generate_ca(&clock);
    let pem = ca.certificate_pem();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert!(!pem.contains('\r') && pem.ends_with("-----END CERTIFICATE-----\n"));
    let from_pem = ::pem::parse(&pem).unwrap();
    assert_eq!(from_pem.contents(), ca.certificate_der());

    let secret = ca.secret_key_pkcs8_pem();
    assert!(secret.starts_with("-----BEGIN PRIVATE KEY-----"));
    let secret_body: String = secret.lines().nth(1).unwrap().to_string();
    let debug = format!("{ca:?}");
    assert!(debug.contains("<secret>"));
    assert!(!debug.contains(&secret_body), "Debug leaks the key");

    let reloaded = CertificateAuthority::from_pem(&pem, &secret, clock.as_ref()).unwrap();
    assert_eq!(reloaded.certificate_der(), ca.certificate_der());
    assert_eq!(reloaded.not_after(), ca.not_after());
    assert_eq!(reloaded.subject(), ca.subject());

    let issuer = Issuer::new(reloaded, IssuerConfig::default(), clock.clone()).unwrap();
    let debug = format!("{issuer:?}");
    assert!(!debug.contains(&secret_body));
    let leaf = issuer.issue("reloaded.example").unwrap();
    let leaf_cert = parse(leaf_der(&leaf));
    let ca_cert = parse(ca.certificate_der());
    assert_eq!(authority_key_id(&leaf_cert), subject_key_id(&ca_cert));
    leaf_cert
        .verify_signature(Some(ca_cert.public_key()))
        .expect("signed by the original CA key");
}

#[test]
fn dns_leaf_has_the_required_fields() {
    let clock = clock();
    let issuer = issuer(clock.clone());
    let leaf = issuer.issue("WWW.Example.COM.").unwrap();
    let cert = parse(leaf_der(&leaf));
    let ca_cert = parse(issuer.ca().certificate_der());

    assert_eq!(common_name(&cert), Some("www.example.com"));
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::DNSName("www.example.com")]
    );
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && !eku.value.any && !eku.value.client_auth);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature());
    assert!(!ku.value.key_encipherment() && !ku.value.key_cert_sign());
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);

    assert_eq!(authority_key_id(&cert), subject_key_id(&ca_cert));
    assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
    cert.verify_signature(Some(ca_cert.public_key()))
        .expect("signed by the CA");

    let serial = cert.raw_serial();
    assert_eq!(serial.len(), 16);
    assert!(
        serial[0] & 0x80 == 0 && serial[0] != 0,
        "positive, 16 bytes"
    );
    assert_eq!(cert.validity().not_before.timestamp(), (NOW - 3600) as i64);
    assert_eq!(
        cert.validity().not_after.timestamp(),
        (NOW + 30 * DAY) as i64
    );
}

#[test]
fn ip_leaves_use_ip_address_sans_only() {
    let clock = clock();
    let issuer = issuer(clock);
    for (host, bytes, cn) in [
        (
            "192.168.127.253",
            vec![192, 168, 127, 253],
            "192.168.127.253",
        ),
        (
            "[::1]",
            [0u8; 15].iter().copied().chain([1]).collect(),
            "::1",
        ),
        (
            "2001:DB8::a",
            vec![
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a,
            ],
            "2001:db8::a",
        ),
    ] {
        let leaf = issuer.issue(host).unwrap();
        let cert = parse(leaf_der(&leaf));
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::IPAddress(&bytes)],
            "{host}: only an iPAddress SAN, never a dNSName"
        );
        assert_eq!(common_name(&cert), Some(cn));
    }
    let a = issuer.issue("::1").unwrap();
    let b = issuer.issue("[::1]").unwrap();
    assert!(Arc::ptr_eq(&a, &b), "IPv6 spellings share the cache entry");
}

#[test]
fn leaf_never_outlives_the_ca() {
    let clock = clock();
    let params = CaParams {
        validity_days: 10,
        ..CaParams::default()
    };
    let ca = CertificateAuthority::generate(&params, clock.as_ref()).unwrap();
    let ca_not_after = ca.not_after();
    let issuer = Issuer::new(ca, IssuerConfig::default(), clock.clone()).unwrap();
    let cert_key = issuer.issue("short.example").unwrap();
    let cert = parse(leaf_der(&cert_key));
    assert_eq!(
        cert.validity().not_after.timestamp(),
        ca_not_after.as_secs() as i64,
        "30-day leaf capped at the CA's notAfter"
    );
    // Nine days later a fresh leaf is still capped; past the CA's end nothing is issued.
    clock.advance(Duration::from_secs(9 * DAY));
    let later = parse_owned_not_after(&issuer.issue("later.example").unwrap());
    assert_eq!(later, ca_not_after.as_secs() as i64);
    clock.advance(Duration::from_secs(2 * DAY));
    assert!(matches!(
        issuer.issue("late.example"),
        Err(IssueError::CaExpired { .. })
    ));
}

fn parse_owned_not_after(key: &rustls::sign::CertifiedKey) -> i64 {
    parse(leaf_der(key)).validity().not_after.timestamp()
}

#[test]
fn cache_hits_share_the_certificate() {
    let clock = clock();
    let issuer = issuer(clock.clone());
    let first = issuer.issue("cache.example").unwrap();
    for spelling in ["cache.example", "CACHE.example", "cache.example."] {
        let again = issuer.issue(spelling).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "{spelling}");
    }
    clock.advance(Duration::from_secs(29 * DAY));
    assert!(Arc::ptr_eq(&first, &issuer.issue("cache.example").unwrap()));
    assert_eq!(issuer.cache_len(), 1);
}

#[test]
fn expired_entries_are_reissued() {
    let clock = clock();
    let issuer = issuer(clock.clone());
    let first = issuer.issue("renew.example").unwrap();
    let first_end = parse_owned_not_after(&first);
    clock.advance(Duration::from_secs(30 * DAY));
    let second = issuer.issue("renew.example").unwrap();
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(
        parse_owned_not_after(&second),
        first_end + (30 * DAY) as i64
    );
    assert!(Arc::ptr_eq(
        &second,
        &issuer.issue("renew.example").unwrap()
    ));
    // A clock that went back before the cached leaf's notBefore also gets a fresh leaf.
    clock.set(NOW);
    let third = issuer.issue("renew.example").unwrap();
    assert!(!Arc::ptr_eq(&second, &third));
}

#[test]
fn cache_is_bounded_lru() {
    let clock = clock();
    let config = IssuerConfig {
        cache_capacity: 2,
        ..IssuerConfig::default()
    };
    let issuer = issuer_with(clock, config);
    let a = issuer.issue("a.example").unwrap();
    let b = issuer.issue("b.example").unwrap();
    assert!(Arc::ptr_eq(&a, &issuer.issue("a.example").unwrap())); // a is now most recent
    let _c = issuer.issue("c.example").unwrap(); // evicts b
    assert_eq!(issuer.cache_len(), 2);
    assert!(Arc::ptr_eq(&a, &issuer.issue("a.example").unwrap()));
    assert!(!Arc::ptr_eq(&b, &issuer.issue("b.example").unwrap()));
}

#[test]
fn shared_or_per_host_leaf_keys() {
    let clock = clock();
    let shared = issuer(clock.clone());
    let spki = |issuer: &Issuer, host: &str| {
        let key = issuer.issue(host).unwrap();
        parse(leaf_der(&key)).public_key().raw.to_vec()
    };
    assert_eq!(spki(&shared, "one.example"), spki(&shared, "two.example"));
    let per_host = issuer_with(
        clock,
        IssuerConfig {
            per_host_keys: true,
            ..IssuerConfig::default()
        },
    );
    assert_ne!(
        spki(&per_host, "one.example"),
        spki(&per_host, "two.example")
    );
}

#[test]
fn rsa_leaf_keys_get_key_encipherment() {
    let clock = clock();
    let ca = generate_ca(&clock);
    let issuer =
        Issuer::with_leaf_key(ca, IssuerConfig::default(), clock.clone(), RSA_2048_KEY).unwrap();
    let leaf = issuer.issue("rsa.example").unwrap();
    let ku = *parse(leaf_der(&leaf)).key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());

    let ca = generate_ca(&clock);
    let per_host = IssuerConfig {
        per_host_keys: true,
        ..IssuerConfig::default()
    };
    assert!(matches!(
        Issuer::with_leaf_key(ca, per_host, clock.clone(), RSA_2048_KEY),
        Err(IssueError::InvalidConfig(_))
    ));
    let ca = generate_ca(&clock);
    assert!(matches!(
        Issuer::with_leaf_key(ca, IssuerConfig::default(), clock, "nonsense"),
        Err(IssueError::LeafKey(_))
    ));
}

#[test]
fn invalid_hosts_and_configs_are_errors() {
    let clock = clock();
    let issuer = issuer(clock.clone());
    for host in [
        "",
        ".",
        "a..b",
        "exa mple.com",
        "*.example.com",
        "host:443",
        "[::1",
    ] {
        match issuer.issue(host) {
            Err(IssueError::InvalidHost { host: h, .. }) => assert_eq!(h, host),
            other => panic!("{host:?}: {other:?}"),
        }
    }
    assert!(matches!(
        issuer.issue(""),
        Err(IssueError::InvalidHost {
            source: HostError::Empty,
            ..
        })
    ));
    assert_eq!(issuer.cache_len(), 0);

    for config in [
        IssuerConfig {
            cache_capacity: 0,
            ..IssuerConfig::default()
        },
        IssuerConfig {
            leaf_validity_days: 0,
            ..IssuerConfig::default()
        },
        IssuerConfig {
            leaf_validity_days: 826,
            ..IssuerConfig::default()
        },
    ] {
        let ca = generate_ca(&clock);
        assert!(matches!(
            Issuer::new(ca, config, clock.clone()),
            Err(IssueError::InvalidConfig(_))
        ));
    }
}

#[test]
fn long_names_have_no_common_name() {
    let clock = clock();
    let issuer = issuer(clock);
    let host = format!("{}.example.com", "a".repeat(60));
    let cert_key = issuer.issue(&host).unwrap();
    let cert = parse(leaf_der(&cert_key));
    assert_eq!(common_name(&cert), None, "CN is limited to 64 characters");
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::DNSName(host.as_str())]
    );
}

#[test]
fn issuer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Issuer>();
    assert_send_sync::<CertificateAuthority>();
    assert_send_sync::<mitm_ca::LeafResolver>();
    let _ = FixedClock::new(0);
}

#[test]
fn clock_before_the_ca_is_an_error() {
    let clock = clock();
    let issuer = issuer(clock.clone());
    clock.set(NOW - 2 * DAY); // the CA's notBefore is NOW - 1 day
    assert!(matches!(
        issuer.issue("early.example"),
        Err(IssueError::CaNotYetValid { not_before }) if not_before.as_secs() == NOW - DAY
    ));
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn concurrent_issuance_from_threads() {
    let clock = clock();
    let issuer = issuer(clock);
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let issuer = issuer.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let host = format!("h{}.example", (i + t) % 20);
                    let leaf = issuer.issue(&host).unwrap();
                    let cert = parse(leaf_der(&leaf));
                    assert_eq!(common_name(&cert), Some(host.as_str()));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(issuer.cache_len(), 20);
}
