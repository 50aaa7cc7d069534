//! The certificate authority: generated in the page or imported from PEM, exported as PEM/DER.

use std::fmt;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber, SignatureAlgorithm,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use x509_parser::der_parser::der::parse_der_sequence;
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::clock::{format_utc, to_offset_date_time, Clock};

/// The organization (O=) of generated CA certificates, so users can tell what installed it.
pub const ORGANIZATION: &str = "c2w-net-proxy";

const DAY: i64 = 86_400;

/// Key type of a generated CA (ring cannot generate RSA keys; import one with `from_pem`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaKeyAlgorithm {
    /// ECDSA on P-256 with SHA-256: small, fast, accepted by every current TLS client.
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
}

/// The key algorithm of a CA (generated or imported), which also signs the leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA P-256, signatures with SHA-256.
    EcdsaP256,
    /// ECDSA P-384, signatures with SHA-384.
    EcdsaP384,
    /// RSA (PKCS#1 v1.5 signatures with SHA-256) with a modulus of `bits` bits.
    Rsa {
        /// Modulus size in bits (at least 2048).
        bits: usize,
    },
}

impl KeyAlgorithm {
    fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
        }
    }

    fn same_type(self, other: KeyAlgorithm) -> bool {
        matches!(
            (self, other),
            (KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP256)
                | (KeyAlgorithm::EcdsaP384, KeyAlgorithm::EcdsaP384)
                | (KeyAlgorithm::Rsa { .. }, KeyAlgorithm::Rsa { .. })
        )
    }
}

/// How to generate a CA; `CaParams::default()` gives the defaults of the original proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaParams {
    /// Validity in days from now (default 365, like the original). notBefore is a day earlier
    /// than now to tolerate guest clock skew.
    pub validity_days: u32,
    /// The subject CN; default "c2w-net-proxy CA <8 random hex digits>" so two CAs differ.
    pub common_name: Option<String>,
    /// The CA key type (default ECDSA P-256).
    pub key_algorithm: CaKeyAlgorithm,
}

impl Default for CaParams {
    fn default() -> Self {
        Self {
            validity_days: 365,
            common_name: None,
            key_algorithm: CaKeyAlgorithm::EcdsaP256,
        }
    }
}

/// Why a CA could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A parameter is out of range (zero validity, empty common name, time overflow).
    #[error("invalid CA parameters: {0}")]
    InvalidParams(&'static str),
    /// The system random number generator failed.
    #[error("the random number generator failed")]
    Random,
    /// Generating the key pair failed.
    #[error("generating the CA key pair failed: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    /// Building or signing the certificate failed.
    #[error("signing the CA certificate failed: {0}")]
    Signing(#[source] rcgen::Error),
}

/// Which half of an import an [`ImportError::UnsupportedAlgorithm`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportPart {
    /// The CA certificate's public key.
    Certificate,
    /// The private key.
    PrivateKey,
}

impl fmt::Display for ImportPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImportPart::Certificate => "the certificate's public key",
            ImportPart::PrivateKey => "the private key",
        })
    }
}

/// Why an existing CA (certificate + key PEM) cannot be used; each problem has its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The certificate text holds no parsable PEM "CERTIFICATE" block.
    #[error("the certificate PEM cannot be parsed: {0}")]
    CertificatePem(String),
    /// The PEM block holds no parsable X.509 certificate.
    #[error("the certificate is not valid X.509 DER: {0}")]
    CertificateDer(String),
    /// The key text holds no parsable PEM private key block.
    #[error("the private key PEM cannot be parsed: {0}")]
    KeyPem(String),
    /// The key is PKCS#1 or SEC1, which ring cannot load.
    #[error("the private key is a {found} block, not PKCS#8 (\"PRIVATE KEY\"); convert it with `openssl pkcs8 -topk8 -nocrypt -in key.pem`")]
    KeyNotPkcs8 {
        /// The PEM label found.
        found: &'static str,
    },
    /// The PKCS#8 structure or the key inside it is malformed.
    #[error("the private key is malformed: {0}")]
    KeyMalformed(String),
    /// A key type other than ECDSA P-256/P-384 or RSA (e.g. Ed25519, which many TLS clients
    /// do not accept in certificates).
    #[error("{part} uses {algorithm}, which is not supported (use ECDSA P-256/P-384 or RSA >= 2048 bits)")]
    UnsupportedAlgorithm {
        /// Certificate or private key.
        part: ImportPart,
        /// What was found.
        algorithm: String,
    },
    /// An RSA key smaller than 2048 bits.
    #[error("the RSA key has {bits} bits; at least 2048 are required")]
    RsaKeyTooSmall {
        /// The modulus size found.
        bits: usize,
    },
    /// The private key is not the certificate's key.
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,
    /// basicConstraints is missing or says cA = false.
    #[error("the certificate is not a CA (basicConstraints {0})")]
    NotACa(&'static str),
    /// keyUsage lacks keyCertSign (or is absent, which RFC 5280 forbids for a CA).
    #[error("the certificate may not sign certificates (keyUsage {0})")]
    NoKeyCertSign(&'static str),
    /// The clock's now is after notAfter.
    #[error("the CA certificate expired at {} (now is {})", format_utc(not_after.as_secs()), format_utc(now.as_secs()))]
    Expired {
        /// The certificate's notAfter.
        not_after: UnixTime,
        /// The clock's time.
        now: UnixTime,
    },
    /// The clock's now is before notBefore.
    #[error("the CA certificate is not valid before {} (now is {})", format_utc(not_before.as_secs()), format_utc(now.as_secs()))]
    NotYetValid {
        /// The certificate's notBefore.
        not_before: UnixTime,
        /// The clock's time.
        now: UnixTime,
    },
}

/// A CA certificate with its private key, able to sign leaf certificates.
/// Debug never shows the key; the only way out for it is [`Self::secret_key_pkcs8_pem`].
pub struct CertificateAuthority {
    der: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, KeyPair>,
    subject: String,
    not_before: UnixTime,
    not_after: UnixTime,
    key_algorithm: KeyAlgorithm,
}

impl CertificateAuthority {
    /// Generates a new self-signed CA valid from a day before the clock's now for
    /// `params.validity_days` days: CA with pathLen 0, keyCertSign + cRLSign, SKI.
    pub fn generate(params: &CaParams, clock: &dyn Clock) -> Result<Self, CaError> {
        if params.validity_days == 0 {
            return Err(CaError::InvalidParams("validity_days must be at least 1"));
        }
        let common_name = match &params.common_name {
            Some(cn) if cn.trim().is_empty() => {
                return Err(CaError::InvalidParams("common_name is empty"))
            }
            Some(cn) => cn.clone(),
            None => {
                let id: [u8; 4] = random_bytes().map_err(|()| CaError::Random)?;
                format!("c2w-net-proxy CA {}", hex(&id))
            }
        };
        let now = secs_i64(clock.now());
        let not_before = now - DAY;
        let not_after = now + i64::from(params.validity_days) * DAY;
        let (Some(nb), Some(na)) = (
            to_offset_date_time(not_before),
            to_offset_date_time(not_after),
        ) else {
            return Err(CaError::InvalidParams(
                "validity outside the representable dates",
            ));
        };
        let (alg, key_algorithm) = match params.key_algorithm {
            CaKeyAlgorithm::EcdsaP256 => (&rcgen::PKCS_ECDSA_P256_SHA256, KeyAlgorithm::EcdsaP256),
            CaKeyAlgorithm::EcdsaP384 => (&rcgen::PKCS_ECDSA_P384_SHA384, KeyAlgorithm::EcdsaP384),
        };
        let key = KeyPair::generate_for(alg).map_err(CaError::KeyGeneration)?;

        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name.as_str());
        dn.push(DnType::OrganizationName, ORGANIZATION);
        let mut cert_params = CertificateParams::default();
        cert_params.distinguished_name = dn;
        cert_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        cert_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        cert_params.not_before = nb;
        cert_params.not_after = na;
        cert_params.serial_number = Some(random_serial().map_err(|()| CaError::Random)?);
        let cert = cert_params.self_signed(&key).map_err(CaError::Signing)?;

        Ok(Self {
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(cert_params, key),
            subject: format!("CN={common_name}, O={ORGANIZATION}"),
            not_before: unix_time(not_before),
            not_after: unix_time(not_after),
            key_algorithm,
        })
    }

    /// Imports an existing CA from its certificate PEM (the first CERTIFICATE block is used)
    /// and its PKCS#8 private key PEM, checking that it is a CA usable at the clock's now.
    pub fn from_pem(cert_pem: &str, key_pem: &str, clock: &dyn Clock) -> Result<Self, ImportError> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| ImportError::CertificatePem(e.to_string()))?;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| ImportError::CertificateDer(e.to_string()))?;

        let key_der = match PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| ImportError::KeyPem(e.to_string()))?
        {
            PrivateKeyDer::Pkcs8(k) => k,
            PrivateKeyDer::Pkcs1(_) => {
                return Err(ImportError::KeyNotPkcs8 {
                    found: "RSA PRIVATE KEY",
                })
            }
            PrivateKeyDer::Sec1(_) => {
                return Err(ImportError::KeyNotPkcs8 {
                    found: "EC PRIVATE KEY",
                })
            }
            _ => return Err(ImportError::KeyPem("unknown private key format".into())),
        };

        let cert_alg = certificate_key_algorithm(&cert)?;
        let key_alg = pkcs8_key_algorithm(key_der.secret_pkcs8_der())?;
        if !cert_alg.same_type(key_alg) {
            return Err(ImportError::KeyMismatch);
        }
        let key = KeyPair::from_pkcs8_der_and_sign_algo(&key_der, cert_alg.signature_algorithm())
            .map_err(|e| ImportError::KeyMalformed(e.to_string()))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(ImportError::KeyMismatch);
        }
        // An RSA key can parse and carry the certificate's public key while its private
        // parameters are corrupt: ring then refuses every signature, and every leaf would fail.
        rcgen::SigningKey::sign(&key, b"c2w-net-proxy CA import check")
            .map_err(|e| ImportError::KeyMalformed(format!("it cannot sign: {e}")))?;

        match cert.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            Ok(Some(_)) => return Err(ImportError::NotACa("says cA = false")),
            Ok(None) => return Err(ImportError::NotACa("extension is missing")),
            Err(_) => return Err(ImportError::NotACa("extension is malformed or duplicated")),
        }
        match cert.key_usage() {
            Ok(Some(ku)) if ku.value.key_cert_sign() => {}
            Ok(Some(_)) => return Err(ImportError::NoKeyCertSign("lacks keyCertSign")),
            Ok(None) => {
                return Err(ImportError::NoKeyCertSign(
                    "extension is missing; RFC 5280 requires it with keyCertSign for a CA",
                ))
            }
            Err(_) => {
                return Err(ImportError::NoKeyCertSign(
                    "extension is malformed or duplicated",
                ))
            }
        }

        let now = clock.now();
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        if secs_i64(now) > not_after {
            return Err(ImportError::Expired {
                not_after: unix_time(not_after),
                now,
            });
        }
        if secs_i64(now) < not_before {
            return Err(ImportError::NotYetValid {
                not_before: unix_time(not_before),
                now,
            });
        }

        check_subject_encodable(&cert)?;
        let subject = cert.subject().to_string();
        let issuer = rcgen::Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| ImportError::CertificateDer(e.to_string()))?;
        Ok(Self {
            der: der.into_owned(),
            issuer,
            subject,
            not_before: unix_time(not_before),
            not_after: unix_time(not_after),
            key_algorithm: cert_alg,
        })
    }

    /// The CA certificate as PEM, to install in the guest's trust store (e.g. /.wasmenv/proxy.crt).
    pub fn certificate_pem(&self) -> String {
        // LF line endings (pem's default is CRLF): the file lands in Linux guests.
        let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        pem::encode_config(&pem::Pem::new("CERTIFICATE", self.der.to_vec()), config)
    }

    /// The CA certificate as DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.der
    }

    /// SECRET: the CA private key as PKCS#8 PEM. Anyone holding it can impersonate every site
    /// to guests that trust this CA; never log it. The only way the key leaves this type.
    pub fn secret_key_pkcs8_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The certificate's notBefore.
    pub fn not_before(&self) -> UnixTime {
        self.not_before
    }

    /// The certificate's notAfter; no leaf is issued beyond it.
    pub fn not_after(&self) -> UnixTime {
        self.not_after
    }

    /// The subject distinguished name, e.g. "CN=c2w-net-proxy CA 1a2b3c4d, O=c2w-net-proxy".
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The CA's key algorithm (also the leaves' signature algorithm).
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.key_algorithm
    }

    /// The rcgen issuer used to sign leaves.
    pub(crate) fn rcgen_issuer(&self) -> &rcgen::Issuer<'static, KeyPair> {
        &self.issuer
    }
}

/// rcgen copies the CA's subject into every leaf: it panics on an empty RDN set, and yasna
/// panics writing an attribute type OID without a canonical encoding (first arc above 2, or
/// second arc above 39 under arcs 0 and 1). Such a CA is refused at import instead.
fn check_subject_encodable(cert: &X509Certificate<'_>) -> Result<(), ImportError> {
    for rdn in cert.subject().iter() {
        if rdn.iter().next().is_none() {
            return Err(ImportError::CertificateDer(
                "the subject has an empty relative distinguished name".into(),
            ));
        }
        for attr in rdn.iter() {
            let arcs: Option<Vec<u64>> = attr.attr_type().iter().map(|arcs| arcs.collect());
            let encodable = matches!(
                arcs.as_deref(),
                Some([a, b, ..]) if *a < 3 && (*a == 2 || *b < 40) && *b < u64::MAX - 80
            );
            if !encodable {
                return Err(ImportError::CertificateDer(format!(
                    "the subject has an attribute type OID that cannot be re-encoded ({})",
                    attr.attr_type().to_id_string()
                )));
            }
        }
    }
    Ok(())
}

impl fmt::Debug for CertificateAuthority {
    /// Shows what the CA is, never the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .field("not_before", &format_utc(self.not_before.as_secs()))
            .field("not_after", &format_utc(self.not_after.as_secs()))
            .field("key_algorithm", &self.key_algorithm)
            .field("private_key", &"<secret>")
            .finish()
    }
}

/// Classifies the certificate's public key.
fn certificate_key_algorithm(cert: &X509Certificate<'_>) -> Result<KeyAlgorithm, ImportError> {
    let spki = cert.public_key();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    let alg = classify(
        &spki.algorithm.algorithm,
        curve.as_ref(),
        ImportPart::Certificate,
    )?;
    match alg {
        KeyAlgorithm::Rsa { .. } => match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => {
                let bits = rsa.key_size();
                if bits < 2048 {
                    Err(ImportError::RsaKeyTooSmall { bits })
                } else {
                    Ok(KeyAlgorithm::Rsa { bits })
                }
            }
            _ => Err(ImportError::CertificateDer(
                "the RSA public key is malformed".into(),
            )),
        },
        other => Ok(other),
    }
}

/// Classifies a PKCS#8 private key by its AlgorithmIdentifier (RSA size is checked on the
/// certificate side and by ring).
fn pkcs8_key_algorithm(pkcs8: &[u8]) -> Result<KeyAlgorithm, ImportError> {
    let malformed = || ImportError::KeyMalformed("not a PKCS#8 PrivateKeyInfo".into());
    let (_, info) = parse_der_sequence(pkcs8).map_err(|_| malformed())?;
    let fields = info.as_sequence().map_err(|_| malformed())?;
    let alg = fields
        .get(1)
        .and_then(|a| a.as_sequence().ok())
        .ok_or_else(malformed)?;
    let oid = alg
        .first()
        .and_then(|o| o.as_oid().ok())
        .ok_or_else(malformed)?;
    let curve = alg.get(1).and_then(|p| p.as_oid().ok());
    classify(oid, curve, ImportPart::PrivateKey)
}

fn classify(
    oid: &Oid<'_>,
    curve: Option<&Oid<'_>>,
    part: ImportPart,
) -> Result<KeyAlgorithm, ImportError> {
    let unsupported = |algorithm: String| ImportError::UnsupportedAlgorithm { part, algorithm };
    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        match curve {
            Some(c) if *c == OID_EC_P256 => Ok(KeyAlgorithm::EcdsaP256),
            Some(c) if *c == OID_NIST_EC_P384 => Ok(KeyAlgorithm::EcdsaP384),
            Some(c) => Err(unsupported(format!("ECDSA on the curve {c}"))),
            None => Err(unsupported("ECDSA without a named curve".into())),
        }
    } else if *oid == OID_PKCS1_RSAENCRYPTION {
        Ok(KeyAlgorithm::Rsa { bits: 0 })
    } else if *oid == OID_SIG_ED25519 {
        Err(unsupported("Ed25519".into()))
    } else {
        Err(unsupported(format!("the key algorithm {oid}")))
    }
}

/// `N` bytes from the system RNG (ring: getrandom, or crypto.getRandomValues in the browser).
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], ()> {
    let mut buf = [0u8; N];
    SystemRandom::new().fill(&mut buf).map_err(|_| ())?;
    Ok(buf)
}

/// A random positive serial number of exactly 16 bytes (first byte 0x01..=0x7f).
pub(crate) fn random_serial() -> Result<SerialNumber, ()> {
    let mut bytes: [u8; 16] = random_bytes()?;
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    Ok(SerialNumber::from_slice(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn secs_i64(t: UnixTime) -> i64 {
    i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
}

pub(crate) fn unix_time(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}
