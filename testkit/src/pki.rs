//! Certificate authorities, intermediates and leaves minted at test time with rcgen.
//!
//! [`TestPki::new`] gives the usual three-level hierarchy (root, intermediate, leaf for
//! `localhost`, `127.0.0.1` and `::1`, ECDSA P-256). [`Authority`] and [`LeafSpec`] make the
//! odd ones: expired, not yet valid, wrong host, self-signed, cross-signed.

use std::net::IpAddr;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SignatureAlgorithm,
};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// The names a default leaf is valid for.
pub const LOCAL_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// The key algorithm of a minted certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyAlg {
    /// ECDSA P-256 with SHA-256 (the default).
    #[default]
    EcdsaP256,
    /// ECDSA P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
}

impl KeyAlg {
    fn rcgen(self) -> &'static SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

/// A certificate with its private key and SubjectPublicKeyInfo.
#[derive(Debug)]
pub struct Issued {
    /// The DER certificate.
    pub cert: CertificateDer<'static>,
    /// The PKCS#8 DER private key.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// The DER SubjectPublicKeyInfo of the key, as rcgen encoded it.
    pub spki: Vec<u8>,
}

impl Issued {
    /// The private key as a rustls [`PrivateKeyDer`].
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// `sha256/<base64>` of the SPKI, computed here independently of the code under test.
    pub fn spki_pin(&self) -> String {
        spki_pin_of(&self.spki)
    }

    /// The colon-hex SHA-256 fingerprint of the whole certificate, as openssl prints it.
    pub fn cert_fingerprint(&self) -> String {
        colon_hex(&Sha256::digest(self.cert.as_ref()))
    }

    /// The certificate in PEM.
    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", self.cert.as_ref())
    }

    /// The private key in PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", self.key.secret_pkcs8_der())
    }
}

/// `sha256/<base64>` of an SPKI DER.
pub fn spki_pin_of(spki_der: &[u8]) -> String {
    format!(
        "sha256/{}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki_der))
    )
}

/// Upper-case colon-separated hex, the form `openssl x509 -fingerprint` prints.
pub fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// PEM-encodes `der` under `label`.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A certificate authority (root or intermediate) that can issue certificates.
#[derive(Debug)]
pub struct Authority {
    name: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
    params: CertificateParams,
}

fn ca_params(name: &str, alg_days: (OffsetDateTime, OffsetDateTime)) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Portcullis Test");
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = alg_days.0;
    params.not_after = alg_days.1;
    params.use_authority_key_identifier_extension = true;
    params
}

fn default_validity() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - Duration::days(1), now + Duration::days(365))
}

impl Authority {
    /// A new self-signed root CA named `name` (ECDSA P-256).
    pub fn root(name: &str) -> Self {
        Self::root_with(name, KeyAlg::EcdsaP256)
    }

    /// A new self-signed root CA with the given key algorithm.
    pub fn root_with(name: &str, alg: KeyAlg) -> Self {
        let key = KeyPair::generate_for(alg.rcgen()).expect("generate CA key");
        let params = ca_params(name, default_validity());
        let issuer = CertifiedIssuer::self_signed(params.clone(), key).expect("self-sign CA");
        Self {
            name: name.to_owned(),
            issuer,
            params,
        }
    }

    /// A new intermediate CA named `name`, issued by this authority.
    pub fn intermediate(&self, name: &str) -> Self {
        let key = KeyPair::generate_for(KeyAlg::EcdsaP256.rcgen()).expect("generate CA key");
        let params = ca_params(name, default_validity());
        let issuer =
            CertifiedIssuer::signed_by(params.clone(), key, &self.issuer).expect("sign CA");
        Self {
            name: name.to_owned(),
            issuer,
            params,
        }
    }

    /// Cross-signs `other`: a second certificate for `other`'s name and key, issued by this
    /// authority, so chains through `other` can also be built up to this one.
    pub fn cross_sign(&self, other: &Authority) -> CertificateDer<'static> {
        other
            .params
            .signed_by(other.issuer.key(), &self.issuer)
            .expect("cross-sign")
            .der()
            .clone()
    }

    /// The authority's common name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The authority's own certificate.
    pub fn cert(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// The authority's SPKI DER.
    pub fn spki(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(self.issuer.key())
    }

    /// `sha256/<base64>` of the authority's SPKI.
    pub fn spki_pin(&self) -> String {
        spki_pin_of(&self.spki())
    }

    /// The authority's certificate in PEM.
    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", self.issuer.der().as_ref())
    }

    /// A root store that trusts only this authority.
    pub fn root_store(&self) -> RootCertStore {
        let mut store = RootCertStore::empty();
        store.add(self.cert()).expect("add test root");
        store
    }

    /// Issues an end-entity certificate per `spec`.
    pub fn issue(&self, spec: &LeafSpec) -> Issued {
        let key = KeyPair::generate_for(spec.alg.rcgen()).expect("generate leaf key");
        let params = spec.params();
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Issued {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            spki: rcgen::PublicKeyData::subject_public_key_info(&key),
        }
    }

    /// A CRL signed by this authority revoking `serials`, valid from an hour ago for a week.
    pub fn crl(&self, serials: &[u64]) -> rustls_pki_types::CertificateRevocationListDer<'static> {
        let now = OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: now + Duration::days(7),
            crl_number: rcgen::SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&s.to_be_bytes()),
                    revocation_time: now - Duration::minutes(30),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .expect("sign CRL")
            .der()
            .clone()
    }

    /// Issues a server leaf for [`LOCAL_NAMES`].
    pub fn issue_leaf(&self) -> Issued {
        self.issue(&LeafSpec::server())
    }
}

/// What an end-entity certificate looks like.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// DNS names and IP addresses for the subjectAltName.
    pub names: Vec<String>,
    /// The subject common name.
    pub common_name: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Key algorithm.
    pub alg: KeyAlg,
    /// Extended key usage: server auth (`true`) or client auth (`false`).
    pub server: bool,
    /// The serial number (random when `None`).
    pub serial: Option<u64>,
}

impl LeafSpec {
    /// A server leaf for [`LOCAL_NAMES`], valid from yesterday for 90 days.
    pub fn server() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            names: LOCAL_NAMES.iter().map(|s| (*s).to_owned()).collect(),
            common_name: "localhost".to_owned(),
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(90),
            alg: KeyAlg::EcdsaP256,
            server: true,
            serial: None,
        }
    }

    /// A client-auth leaf (mTLS) for `name`.
    pub fn client(name: &str) -> Self {
        Self {
            names: vec![name.to_owned()],
            common_name: name.to_owned(),
            server: false,
            ..Self::server()
        }
    }

    /// This spec, expired since yesterday.
    pub fn expired(mut self) -> Self {
        let now = OffsetDateTime::now_utc();
        self.not_before = now - Duration::days(30);
        self.not_after = now - Duration::days(1);
        self
    }

    /// This spec, valid only from tomorrow.
    pub fn not_yet_valid(mut self) -> Self {
        let now = OffsetDateTime::now_utc();
        self.not_before = now + Duration::days(1);
        self.not_after = now + Duration::days(30);
        self
    }

    /// This spec, with serial number `serial`.
    pub fn with_serial(mut self, serial: u64) -> Self {
        self.serial = Some(serial);
        self
    }

    /// This spec, for other names.
    pub fn with_names(mut self, names: &[&str]) -> Self {
        self.names = names.iter().map(|s| (*s).to_owned()).collect();
        if let Some(first) = names.first() {
            self.common_name = (*first).to_owned();
        }
        self
    }

    fn params(&self) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.subject_alt_names = self
            .names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into().expect("valid dns name")),
            })
            .collect();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Portcullis Test");
        dn.push(DnType::CommonName, self.common_name.clone());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if self.server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.use_authority_key_identifier_extension = true;
        params.serial_number = self
            .serial
            .map(|s| rcgen::SerialNumber::from_slice(&s.to_be_bytes()));
        params
    }
}

/// A self-signed end-entity certificate for `spec` (no CA behind it).
pub fn self_signed(spec: &LeafSpec) -> Issued {
    let key = KeyPair::generate_for(spec.alg.rcgen()).expect("generate key");
    let cert = spec.params().self_signed(&key).expect("self-sign");
    Issued {
        cert: cert.der().clone(),
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        spki: rcgen::PublicKeyData::subject_public_key_info(&key),
    }
}

/// The usual hierarchy: a root, an intermediate under it and a server leaf under that.
#[derive(Debug)]
pub struct TestPki {
    /// The trust anchor.
    pub root: Authority,
    /// The issuing intermediate.
    pub intermediate: Authority,
    /// The server leaf for [`LOCAL_NAMES`].
    pub leaf: Issued,
}

impl TestPki {
    /// Mints a fresh root, intermediate and leaf.
    pub fn new() -> Self {
        Self::named("Portcullis Test")
    }

    /// Mints a fresh hierarchy whose CA names start with `prefix`.
    pub fn named(prefix: &str) -> Self {
        let root = Authority::root(&format!("{prefix} Root CA"));
        let intermediate = root.intermediate(&format!("{prefix} Intermediate CA"));
        let leaf = intermediate.issue_leaf();
        Self {
            root,
            intermediate,
            leaf,
        }
    }

    /// The chain a server sends: leaf then intermediate (no root).
    pub fn server_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.leaf.cert.clone(), self.intermediate.cert()]
    }

    /// A server chain for another leaf issued by this hierarchy's intermediate.
    pub fn chain_for(&self, leaf: &Issued) -> Vec<CertificateDer<'static>> {
        vec![leaf.cert.clone(), self.intermediate.cert()]
    }

    /// A root store trusting only this hierarchy's root.
    pub fn root_store(&self) -> RootCertStore {
        self.root.root_store()
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
