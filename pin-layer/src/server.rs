//! Server side (mTLS): a client-certificate verifier with pins, and the verified peer identity
//! as a typed request extension.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use tower_layer::Layer;
use tower_service::Service;
use webpki::KeyUsage;

use crate::client::BuildError;
use crate::observe::{Observers, PinCheck};
use crate::pin::Pin;
use crate::policy::{Mode, PinEntry, Position};
use crate::verify::{Peer, PinFailure, Shared, trust_anchor};

/// The name client pins are reported under.
const CLIENTS: &str = "mtls-clients.invalid";

/// A rustls client-certificate verifier: standard webpki client-auth validation, then the
/// client key's pins on the verified path. Client authentication is mandatory.
#[derive(Debug)]
pub struct PinnedClientVerifier {
    shared: Arc<Shared>,
    entry: PinEntry,
    subjects: Vec<DistinguishedName>,
}

impl PinnedClientVerifier {
    /// Starts a verifier accepting clients whose chain, verified up to `roots`, carries one
    /// of `pins`.
    pub fn builder(pins: impl IntoIterator<Item = Pin>) -> PinnedClientVerifierBuilder {
        PinnedClientVerifierBuilder {
            pins: pins.into_iter().collect(),
            roots: Vec::new(),
            crls: Vec::new(),
            mode: Mode::Enforce,
            position: Position::Any,
            allow_single_pin: false,
            observers: Observers::default(),
        }
    }
}

/// Builds a [`PinnedClientVerifier`].
pub struct PinnedClientVerifierBuilder {
    pins: Vec<Pin>,
    roots: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    mode: Mode,
    position: Position,
    allow_single_pin: bool,
    observers: Observers,
}

impl fmt::Debug for PinnedClientVerifierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedClientVerifierBuilder")
            .field("pins", &self.pins)
            .field("roots", &self.roots.len())
            .field("crls", &self.crls.len())
            .finish_non_exhaustive()
    }
}

impl PinnedClientVerifierBuilder {
    /// Trusts these client CA certificates.
    pub fn root_certificates(
        mut self,
        certs: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Self {
        self.roots.extend(certs);
        self
    }

    /// Checks the client's chain against these certificate revocation lists (every
    /// certificate of the chain but the root), as rustls' `WebPkiClientVerifier` builder
    /// does with `with_crls`: a stolen client certificate is refused once its issuer's CRL
    /// lists it, with no change to the pins or the roots.
    ///
    /// # Security
    /// Once CRLs are given, a chain certificate whose status no CRL covers (its issuer's CRL
    /// is missing) is refused with `CertificateError::UnknownRevocationStatus`: give the CRL
    /// of every issuing CA, not only the one that revoked something. A revoked certificate
    /// is refused with `CertificateError::Revoked` (the client receives a
    /// `certificate_revoked` alert), even when its key is pinned.
    pub fn crls(
        mut self,
        crls: impl IntoIterator<Item = CertificateRevocationListDer<'static>>,
    ) -> Self {
        self.crls.extend(crls);
        self
    }

    /// Reports violations instead of refusing the client.
    pub fn report_only(mut self) -> Self {
        self.mode = Mode::ReportOnly;
        self
    }

    /// Only match pins at `position`.
    pub fn position(mut self, position: Position) -> Self {
        self.position = position;
        self
    }

    /// Accept a single pin (no backup).
    pub fn allow_single_pin(mut self) -> Self {
        self.allow_single_pin = true;
        self
    }

    /// Calls `f` after each accepted client.
    pub fn on_match(mut self, f: impl Fn(&PinCheck) + Send + Sync + 'static) -> Self {
        self.observers.on_match.push(Arc::new(f));
        self
    }

    /// Calls `f` on each violation.
    pub fn on_violation(mut self, f: impl Fn(&PinFailure) + Send + Sync + 'static) -> Self {
        self.observers.on_violation.push(Arc::new(f));
        self
    }

    /// Builds the verifier.
    ///
    /// # Errors
    /// No roots, an invalid root, an unparsable CRL, or the backup-pin rule.
    pub fn build(self) -> Result<Arc<PinnedClientVerifier>, BuildError> {
        if self.roots.is_empty() {
            return Err(BuildError::NoRoots);
        }
        let mut anchors = Vec::new();
        let mut subjects = Vec::new();
        let mut anchor_certs = std::collections::HashMap::new();
        for cert in &self.roots {
            let (anchor, spki_pin, cert_pin) = trust_anchor(cert)?;
            subjects.push(DistinguishedName::in_sequence(anchor.subject.as_ref()));
            anchor_certs.insert(spki_pin, cert_pin);
            anchors.push(anchor);
        }
        let mut entry = PinEntry::new(CLIENTS, self.pins)?
            .mode(self.mode)
            .position(self.position);
        if self.allow_single_pin {
            entry = entry.allow_single_pin();
        }
        // Validate the entry with the same rules as host entries.
        let policy = crate::PinPolicy::builder().entry(entry.clone()).build()?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let shared = Shared::new(
            anchors,
            anchor_certs,
            self.crls,
            provider.signature_verification_algorithms,
            policy,
            self.observers,
        )
        .map_err(|e| BuildError::InvalidCrl(e.to_string()))?;
        Ok(Arc::new(PinnedClientVerifier {
            shared: Arc::new(shared),
            entry,
            subjects,
        }))
    }
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let peer = Peer {
            host: CLIENTS,
            port: None,
            server_name: None,
        };
        self.shared.verify(
            end_entity,
            intermediates,
            &peer,
            Some(&self.entry),
            KeyUsage::client_auth(),
            now,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.shared.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.shared.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.shared.algs.supported_schemes()
    }
}

/// The verified identity of an mTLS peer: the SPKI pin, subject and subject alternative names
/// of the client certificate that the server's verifier accepted.
///
/// Only this crate constructs it, from a completed server-side TLS connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    spki_pin: Pin,
    subject: String,
    sans: Vec<String>,
}

impl PeerIdentity {
    /// The identity of the client of a completed handshake, or `None` when the client
    /// presented no certificate.
    pub fn from_connection(conn: &rustls::ServerConnection) -> Option<Self> {
        let leaf = conn.peer_certificates()?.first()?;
        Self::from_verified_leaf(leaf)
    }

    fn from_verified_leaf(leaf: &CertificateDer<'_>) -> Option<Self> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(leaf.as_ref()).ok()?;
        let spki_pin = Pin::from_spki_der(cert.tbs_certificate.subject_pki.raw);
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                    GeneralName::IPAddress(ip) => sans.push(format!("IP:{}", fmt_ip(ip))),
                    GeneralName::RFC822Name(e) => sans.push(format!("email:{e}")),
                    GeneralName::URI(u) => sans.push(format!("URI:{u}")),
                    _ => {}
                }
            }
        }
        Some(Self {
            spki_pin,
            subject: cert.subject().to_string(),
            sans,
        })
    }

    /// The SPKI pin of the client key.
    pub fn spki_pin(&self) -> &Pin {
        &self.spki_pin
    }

    /// The subject distinguished name.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The subject alternative names (`DNS:`, `IP:`, `email:`, `URI:`).
    pub fn sans(&self) -> &[String] {
        &self.sans
    }
}

fn fmt_ip(raw: &[u8]) -> String {
    match raw.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(raw).unwrap_or_default()).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(raw).unwrap_or_default()).to_string(),
        _ => "?".to_owned(),
    }
}

/// Puts a connection's [`PeerIdentity`] into every request's extensions. Made per connection.
#[derive(Clone, Debug)]
pub struct PeerIdentityLayer {
    identity: Option<Arc<PeerIdentity>>,
}

impl PeerIdentityLayer {
    /// For a connection whose handshake is complete.
    pub fn from_connection(conn: &rustls::ServerConnection) -> Self {
        Self {
            identity: PeerIdentity::from_connection(conn).map(Arc::new),
        }
    }
}

impl<S> Layer<S> for PeerIdentityLayer {
    type Service = AddPeerIdentity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AddPeerIdentity {
            inner,
            identity: self.identity.clone(),
        }
    }
}

/// The service made by [`PeerIdentityLayer`].
#[derive(Clone, Debug)]
pub struct AddPeerIdentity<S> {
    inner: S,
    identity: Option<Arc<PeerIdentity>>,
}

impl<S> AddPeerIdentity<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for AddPeerIdentity<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(id) = &self.identity {
            req.extensions_mut().insert(PeerIdentity::clone(id));
        }
        self.inner.call(req)
    }
}
