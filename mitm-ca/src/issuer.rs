//! Leaf issuance: one signature per new host, an LRU cache of issued leaves, rustls glue.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::ServerConfig;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

use crate::ca::{random_serial, secs_i64, unix_time, CertificateAuthority, ORGANIZATION};
use crate::clock::{format_utc, to_offset_date_time, Clock, ClockTimeProvider};
use crate::host::{Host, HostError};

const DAY: i64 = 86_400;
/// notBefore of a leaf lies this far in the past, for guests whose clock is a little behind.
const BACKDATE_SECS: i64 = 3_600;
/// A cached leaf this close to its notAfter is treated as expired and re-issued, so no
/// handshake gets a certificate that expires while it is in use.
const RENEW_MARGIN_SECS: u64 = 60;
/// Apple platforms reject TLS server certificates valid for longer than 825 days.
const MAX_LEAF_VALIDITY_DAYS: u32 = 825;
/// X.520 upper bound of a commonName; longer hosts appear only in the SAN.
const MAX_CN_LEN: usize = 64;

/// How leaves are issued; `IssuerConfig::default()` is 30 days, 1024 cached hosts, one shared key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// Leaf validity in days (1..=825), capped by the CA's notAfter.
    pub leaf_validity_days: u32,
    /// How many hosts' leaves the LRU cache keeps (at least 1).
    pub cache_capacity: usize,
    /// A fresh key pair per host instead of one shared leaf key (as mitmproxy shares one);
    /// costs a key generation per new host.
    pub per_host_keys: bool,
}

impl Default for IssuerConfig {
    fn default() -> Self {
        Self {
            leaf_validity_days: 30,
            cache_capacity: 1024,
            per_host_keys: false,
        }
    }
}

/// Why a leaf (or an issuer) could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The host is empty or not a valid DNS name / IP literal.
    #[error("cannot issue a certificate for {host:?}: {source}")]
    InvalidHost {
        /// The host as given.
        host: String,
        /// What is wrong with it.
        #[source]
        source: HostError,
    },
    /// An [`IssuerConfig`] value is out of range or contradicts another.
    #[error("invalid issuer configuration: {0}")]
    InvalidConfig(&'static str),
    /// The clock is past the CA's notAfter: a new CA is needed.
    #[error("the CA expired at {}", format_utc(not_after.as_secs()))]
    CaExpired {
        /// The CA's notAfter.
        not_after: UnixTime,
    },
    /// The clock is before the CA's notBefore.
    #[error("the CA is not valid before {}", format_utc(not_before.as_secs()))]
    CaNotYetValid {
        /// The CA's notBefore.
        not_before: UnixTime,
    },
    /// The system random number generator failed.
    #[error("the random number generator failed")]
    Random,
    /// Generating a leaf key pair failed.
    #[error("generating a leaf key pair failed: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    /// A supplied leaf key cannot be loaded or used by rustls.
    #[error("the leaf key cannot be used: {0}")]
    LeafKey(String),
    /// Building or signing the leaf certificate failed.
    #[error("signing the leaf certificate failed: {0}")]
    Signing(#[source] rcgen::Error),
}

/// A leaf key pair: its public half goes into certificates, rustls signs handshakes with it.
struct LeafKey {
    pair: KeyPair,
    signer: Arc<dyn SigningKey>,
    rsa: bool,
}

impl LeafKey {
    fn generate() -> Result<Self, IssueError> {
        let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(IssueError::KeyGeneration)?;
        Self::from_pair(pair)
    }

    fn from_pair(pair: KeyPair) -> Result<Self, IssueError> {
        let alg = pair.algorithm();
        let rsa = alg == &rcgen::PKCS_RSA_SHA256;
        if !(rsa || alg == &rcgen::PKCS_ECDSA_P256_SHA256 || alg == &rcgen::PKCS_ECDSA_P384_SHA384)
        {
            return Err(IssueError::LeafKey(
                "only ECDSA P-256/P-384 and RSA leaf keys are supported".into(),
            ));
        }
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pair.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_supported_type(&der)
            .map_err(|e| IssueError::LeafKey(e.to_string()))?;
        Ok(Self { pair, signer, rsa })
    }
}

/// A cached leaf and its validity window (seconds since the epoch).
#[derive(Clone)]
struct CachedLeaf {
    key: Arc<CertifiedKey>,
    not_before: u64,
    not_after: u64,
}

impl CachedLeaf {
    fn usable_at(&self, now: u64) -> bool {
        now >= self.not_before && now.saturating_add(RENEW_MARGIN_SECS) < self.not_after
    }
}

/// Issues leaf certificates signed by a CA, cached per host; `Send + Sync` so rustls'
/// certificate resolver can call it from any connection.
pub struct Issuer {
    ca: CertificateAuthority,
    config: IssuerConfig,
    clock: Arc<dyn Clock>,
    shared_key: Option<LeafKey>,
    cache: Mutex<LruCache<String, CachedLeaf>>,
}

impl Issuer {
    /// An issuer for `ca`; generates the shared ECDSA P-256 leaf key unless `per_host_keys`.
    pub fn new(
        ca: CertificateAuthority,
        config: IssuerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, IssueError> {
        let shared_key = if config.per_host_keys {
            None
        } else {
            Some(LeafKey::generate()?)
        };
        Self::build(ca, config, clock, shared_key)
    }

    /// An issuer whose leaves all carry the given PKCS#8 key (ECDSA P-256/P-384 or RSA, e.g.
    /// for clients without ECDSA); `config.per_host_keys` must be false.
    pub fn with_leaf_key(
        ca: CertificateAuthority,
        config: IssuerConfig,
        clock: Arc<dyn Clock>,
        leaf_key_pkcs8_pem: &str,
    ) -> Result<Self, IssueError> {
        if config.per_host_keys {
            return Err(IssueError::InvalidConfig(
                "per_host_keys cannot be combined with a given leaf key",
            ));
        }
        let pair = KeyPair::from_pem(leaf_key_pkcs8_pem)
            .map_err(|e| IssueError::LeafKey(e.to_string()))?;
        Self::build(ca, config, clock, Some(LeafKey::from_pair(pair)?))
    }

    fn build(
        ca: CertificateAuthority,
        config: IssuerConfig,
        clock: Arc<dyn Clock>,
        shared_key: Option<LeafKey>,
    ) -> Result<Self, IssueError> {
        if config.leaf_validity_days == 0 || config.leaf_validity_days > MAX_LEAF_VALIDITY_DAYS {
            return Err(IssueError::InvalidConfig(
                "leaf_validity_days must be between 1 and 825",
            ));
        }
        let capacity = NonZeroUsize::new(config.cache_capacity).ok_or(
            IssueError::InvalidConfig("cache_capacity must be at least 1"),
        )?;
        Ok(Self {
            ca,
            config,
            clock,
            shared_key,
            cache: Mutex::new(LruCache::new(capacity)),
        })
    }

    /// The CA that signs the leaves (its certificate is what guests must trust).
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The configuration this issuer was built with.
    pub fn config(&self) -> &IssuerConfig {
        &self.config
    }

    /// How many hosts currently have a cached leaf.
    pub fn cache_len(&self) -> usize {
        self.lock_cache().len()
    }

    /// A leaf for `host` (DNS name, IPv4, IPv6 with or without brackets), from the cache when
    /// it holds one still valid at the clock's now, else freshly signed and cached.
    pub fn issue(&self, host: &str) -> Result<Arc<CertifiedKey>, IssueError> {
        let parsed = Host::parse(host).map_err(|source| IssueError::InvalidHost {
            host: host.to_string(),
            source,
        })?;
        let cache_key = parsed.to_string();
        let now = self.clock.now().as_secs();
        if let Some(hit) = self.lock_cache().get(&cache_key) {
            if hit.usable_at(now) {
                return Ok(hit.key.clone());
            }
        }
        // Signed without holding the lock: two racing first requests for one host both sign,
        // which is harmless and keeps hits for other hosts from waiting on a signature.
        let leaf = self.sign_leaf(&parsed, now)?;
        let key = leaf.key.clone();
        self.lock_cache().put(cache_key, leaf);
        Ok(key)
    }

    /// A rustls server configuration (TLS 1.2 + 1.3, ALPN "http/1.1" or "http/1.0" — clients
    /// such as `curl -0` offer only the latter —, no client auth) whose
    /// certificate is issued for the ClientHello's SNI, else for `fallback_host`.
    pub fn server_config(self: &Arc<Self>, fallback_host: Option<&str>) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let time = Arc::new(ClockTimeProvider(self.clock.clone()));
        let mut config = ServerConfig::builder_with_details(provider, time)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(LeafResolver::new(self.clone(), fallback_host)));
        config.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
        Arc::new(config)
    }

    fn lock_cache(&self) -> MutexGuard<'_, LruCache<String, CachedLeaf>> {
        // A panic while holding the lock cannot leave the LRU half-updated in a way that
        // matters (entries are whole values), so a poisoned lock is still used.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sign_leaf(&self, host: &Host, now: u64) -> Result<CachedLeaf, IssueError> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let ca_not_before = secs_i64(self.ca.not_before());
        let ca_not_after = secs_i64(self.ca.not_after());
        if now > ca_not_after {
            return Err(IssueError::CaExpired {
                not_after: self.ca.not_after(),
            });
        }
        if now < ca_not_before {
            return Err(IssueError::CaNotYetValid {
                not_before: self.ca.not_before(),
            });
        }
        let not_before = now - BACKDATE_SECS;
        let not_after = now
            .saturating_add(i64::from(self.config.leaf_validity_days) * DAY)
            .min(ca_not_after);

        let per_host;
        let key = match &self.shared_key {
            Some(shared) => shared,
            None => {
                per_host = LeafKey::generate()?;
                &per_host
            }
        };

        let name = host.to_string();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if name.len() <= MAX_CN_LEN {
            dn.push(DnType::CommonName, name.as_str());
        }
        dn.push(DnType::OrganizationName, ORGANIZATION);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![match host {
            Host::Dns(dns) => {
                SanType::DnsName(dns.as_str().try_into().map_err(IssueError::Signing)?)
            }
            Host::Ip(ip) => SanType::IpAddress(*ip),
        }];
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = if key.rsa {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial().map_err(|()| IssueError::Random)?);
        let (Some(nb), Some(na)) = (
            to_offset_date_time(not_before),
            to_offset_date_time(not_after),
        ) else {
            return Err(IssueError::InvalidConfig(
                "leaf validity outside the representable dates",
            ));
        };
        params.not_before = nb;
        params.not_after = na;

        let cert = params
            .signed_by(&key.pair, self.ca.rcgen_issuer())
            .map_err(IssueError::Signing)?;
        Ok(CachedLeaf {
            key: Arc::new(CertifiedKey::new(
                vec![cert.der().clone()],
                key.signer.clone(),
            )),
            not_before: unix_time(not_before).as_secs(),
            not_after: unix_time(not_after).as_secs(),
        })
    }
}

impl fmt::Debug for Issuer {
    /// Shows the CA and configuration, never a key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("ca", &self.ca)
            .field("config", &self.config)
            .field("clock", &self.clock)
            .field("cached_hosts", &self.cache_len())
            .finish_non_exhaustive()
    }
}

/// rustls certificate resolver: issues for the ClientHello's SNI, else for the fallback host
/// (the CONNECT target or the IP dialed, since clients send no SNI for IP literals).
#[derive(Debug)]
pub struct LeafResolver {
    issuer: Arc<Issuer>,
    fallback_host: Option<String>,
}

impl LeafResolver {
    /// A resolver issuing from `issuer`, using `fallback_host` when the client sends no SNI.
    pub fn new(issuer: Arc<Issuer>, fallback_host: Option<&str>) -> Self {
        Self {
            issuer,
            fallback_host: fallback_host.map(str::to_string),
        }
    }
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = client_hello
            .server_name()
            .or(self.fallback_host.as_deref())?;
        match self.issuer.issue(host) {
            Ok(key) => Some(key),
            Err(err) => {
                tracing::warn!(host, %err, "no certificate for the TLS handshake");
                None
            }
        }
    }
}
