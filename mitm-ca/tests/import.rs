//! Importing an existing CA: every rejection reason has its own error, made here with rcgen.

mod common;

use common::*;
use mitm_ca::{CertificateAuthority, FixedClock, ImportError, ImportPart, KeyAlgorithm};
use rcgen::{
    BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SignatureAlgorithm,
};
use time::OffsetDateTime;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// A valid CA setup to start from: CA true, keyCertSign + cRLSign, valid around NOW.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = at(NOW - DAY);
    params.not_after = at(NOW + 30 * DAY);
    params
}

fn at(secs: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs as i64).unwrap()
}

fn key(alg: &'static SignatureAlgorithm) -> KeyPair {
    KeyPair::generate_for(alg).unwrap()
}

/// Self-signs `params` with a fresh key of `alg`; returns (cert PEM, key PEM).
fn make(params: &CertificateParams, alg: &'static SignatureAlgorithm) -> (String, String) {
    let key = key(alg);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn import(cert: &str, key: &str) -> Result<CertificateAuthority, ImportError> {
    CertificateAuthority::from_pem(cert, key, &FixedClock::new(NOW))
}

#[test]
fn valid_ecdsa_cas_import() {
    for (alg, expected) in [
        (&rcgen::PKCS_ECDSA_P256_SHA256, KeyAlgorithm::EcdsaP256),
        (&rcgen::PKCS_ECDSA_P384_SHA384, KeyAlgorithm::EcdsaP384),
    ] {
        let (cert, key) = make(&ca_params(), alg);
        let ca = import(&cert, &key).unwrap();
        assert_eq!(ca.key_algorithm(), expected);
        assert_eq!(ca.not_after().as_secs(), NOW + 30 * DAY);
        assert_eq!(ca.certificate_pem().trim(), cert.trim());
    }
}

#[test]
fn rsa_2048_ca_imports() {
    let key = KeyPair::from_pem(RSA_2048_KEY).unwrap();
    let cert = ca_params().self_signed(&key).unwrap();
    let ca = import(&cert.pem(), RSA_2048_KEY).unwrap();
    assert_eq!(ca.key_algorithm(), KeyAlgorithm::Rsa { bits: 2048 });
}

#[test]
fn a_chain_file_uses_its_first_certificate() {
    let (cert, key) = make(&ca_params(), &rcgen::PKCS_ECDSA_P256_SHA256);
    let (other, _) = make(&ca_params(), &rcgen::PKCS_ECDSA_P256_SHA256);
    let ca = import(&format!("{cert}{other}"), &key).unwrap();
    assert_eq!(ca.certificate_pem().trim(), cert.trim());
}

#[test]
fn not_a_ca() {
    for (is_ca, reason) in [
        (IsCa::NoCa, "extension is missing"),
        (IsCa::ExplicitNoCa, "says cA = false"),
    ] {
        let mut params = ca_params();
        params.is_ca = is_ca;
        let (cert, key) = make(&params, &rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            import(&cert, &key).unwrap_err(),
            ImportError::NotACa(reason)
        );
    }
}

#[test]
fn ca_without_key_cert_sign() {
    let mut params = ca_params();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    let (cert, key) = make(&params, &rcgen::PKCS_ECDSA_P256_SHA256);
    assert_eq!(
        import(&cert, &key).unwrap_err(),
        ImportError::NoKeyCertSign("lacks keyCertSign")
    );
    params.key_usages = vec![];
    let (cert, key) = make(&params, &rcgen::PKCS_ECDSA_P256_SHA256);
    assert!(matches!(
        import(&cert, &key).unwrap_err(),
        ImportError::NoKeyCertSign(reason) if reason.contains("missing")
    ));
}

#[test]
fn expired_ca() {
    let mut params = ca_params();
    params.not_before = at(NOW - 400 * DAY);
    params.not_after = at(NOW - DAY);
    let (cert, key) = make(&params, &rcgen::PKCS_ECDSA_P256_SHA256);
    let err = import(&cert, &key).unwrap_err();
    match &err {
        ImportError::Expired { not_after, now } => {
            assert_eq!(not_after.as_secs(), NOW - DAY);
            assert_eq!(now.as_secs(), NOW);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "the CA certificate expired at 2025-06-14T15:06:40Z (now is 2025-06-15T15:06:40Z)"
    );
}

#[test]
fn not_yet_valid_ca() {
    let mut params = ca_params();
    params.not_before = at(NOW + DAY);
    params.not_after = at(NOW + 400 * DAY);
    let (cert, key) = make(&params, &rcgen::PKCS_ECDSA_P256_SHA256);
    assert!(matches!(
        import(&cert, &key).unwrap_err(),
        ImportError::NotYetValid { not_before, .. } if not_before.as_secs() == NOW + DAY
    ));
}

#[test]
fn mismatched_keys() {
    let (cert, _) = make(&ca_params(), &rcgen::PKCS_ECDSA_P256_SHA256);
    let other_p256 = key(&rcgen::PKCS_ECDSA_P256_SHA256).serialize_pem();
    assert_eq!(
        import(&cert, &other_p256).unwrap_err(),
        ImportError::KeyMismatch
    );
    let p384 = key(&rcgen::PKCS_ECDSA_P384_SHA384).serialize_pem();
    assert_eq!(import(&cert, &p384).unwrap_err(), ImportError::KeyMismatch);
    assert_eq!(
        import(&cert, RSA_2048_KEY).unwrap_err(),
        ImportError::KeyMismatch
    );
}

#[test]
fn ed25519_is_unsupported() {
    let (cert, key) = make(&ca_params(), &rcgen::PKCS_ED25519);
    assert_eq!(
        import(&cert, &key).unwrap_err(),
        ImportError::UnsupportedAlgorithm {
            part: ImportPart::Certificate,
            algorithm: "Ed25519".into()
        }
    );
    let (p256_cert, _) = make(&ca_params(), &rcgen::PKCS_ECDSA_P256_SHA256);
    assert_eq!(
        import(&p256_cert, &key).unwrap_err(),
        ImportError::UnsupportedAlgorithm {
            part: ImportPart::PrivateKey,
            algorithm: "Ed25519".into()
        }
    );
}

#[test]
fn unparsable_inputs() {
    let (cert, key) = make(&ca_params(), &rcgen::PKCS_ECDSA_P256_SHA256);
    assert!(matches!(
        import("garbage", &key).unwrap_err(),
        ImportError::CertificatePem(_)
    ));
    assert!(matches!(
        import(&key, &key).unwrap_err(),
        ImportError::CertificatePem(_)
    ));
    let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        import(not_der, &key).unwrap_err(),
        ImportError::CertificateDer(_)
    ));
    assert!(matches!(
        import(&cert, "garbage").unwrap_err(),
        ImportError::KeyPem(_)
    ));
    assert!(matches!(
        import(&cert, &cert).unwrap_err(),
        ImportError::KeyPem(_)
    ));
    let not_pkcs8 = "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n";
    assert!(matches!(
        import(&cert, not_pkcs8).unwrap_err(),
        ImportError::KeyMalformed(_)
    ));
    let sec1 = "-----BEGIN EC PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END EC PRIVATE KEY-----\n";
    assert_eq!(
        import(&cert, sec1).unwrap_err(),
        ImportError::KeyNotPkcs8 {
            found: "EC PRIVATE KEY"
        }
    );
    let pkcs1 = "-----BEGIN RSA PRIVATE KEY-----\naGVsbG8=\n-----END RSA PRIVATE KEY-----\n";
    assert_eq!(
        import(&cert, pkcs1).unwrap_err(),
        ImportError::KeyNotPkcs8 {
            found: "RSA PRIVATE KEY"
        }
    );
}

#[test]
fn rsa_key_that_cannot_sign_is_rejected() {
    // Found by the pem_import fuzz target: an RSA CA whose key PEM has a few mutated base64
    // characters in its private parameters. The key parses and its public key matches the
    // certificate, but ring refuses to sign with it, so every leaf would fail to issue.
    let cert = include_str!("data/fuzz-rsa-ca.crt");
    let key = include_str!("data/fuzz-rsa-key-cannot-sign.pem");
    match CertificateAuthority::from_pem(cert, key, &FixedClock::new(1_800_000_000)) {
        Err(ImportError::KeyMalformed(reason)) => assert!(reason.contains("cannot sign")),
        other => panic!("expected KeyMalformed, got {other:?}"),
    }
}

#[test]
fn subject_that_cannot_be_re_encoded_is_rejected() {
    // Found by the pem_import fuzz target: a CA whose subject's attribute type OID decodes as
    // 3.6.4.3 imported fine, then rcgen (yasna) panicked writing it into the first leaf.
    let cert = include_str!("data/fuzz-bad-oid-ca.crt");
    let key = include_str!("data/fuzz-bad-oid-ca-key.pem");
    match CertificateAuthority::from_pem(cert, key, &FixedClock::new(1_800_000_000)) {
        Err(ImportError::CertificateDer(reason)) => assert!(reason.contains("OID"), "{reason}"),
        other => panic!("expected CertificateDer, got {other:?}"),
    }
}
