//! The pin check, run inside rustls-webpki's path building on the verified chain.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, ServerName, TrustAnchor, UnixTime,
};
use time::OffsetDateTime;
use webpki::{EndEntityCert, KeyUsage, VerifiedPath};

use crate::observe::{Observers, PinCheck, PinReport};
use crate::pin::Pin;
use crate::policy::{Mode, PinEntry, PinPolicy, Position};

/// The state shared by every verifier and connector made from one [`PinnedTls`](crate::PinnedTls).
pub(crate) struct Shared {
    pub(crate) roots: Vec<TrustAnchor<'static>>,
    /// Certificate pins of the trust anchors we were given as certificates, by SPKI pin.
    pub(crate) anchor_certs: HashMap<Pin, Pin>,
    pub(crate) crls: Vec<webpki::CertRevocationList<'static>>,
    pub(crate) algs: WebPkiSupportedAlgorithms,
    pub(crate) policy: RwLock<Arc<PinPolicy>>,
    pub(crate) observers: Observers,
    pub(crate) reports_seen: Mutex<HashSet<u64>>,
    /// Keep the verified chain in each [`PinCheck`] (for diagnostics such as `portcullis probe`).
    pub(crate) record_chain: bool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("roots", &self.roots.len())
            .field("crls", &self.crls.len())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

const MAX_REMEMBERED_REPORTS: usize = 4096;

impl Shared {
    pub(crate) fn new(
        roots: Vec<TrustAnchor<'static>>,
        anchor_certs: HashMap<Pin, Pin>,
        crls: Vec<CertificateRevocationListDer<'static>>,
        algs: WebPkiSupportedAlgorithms,
        policy: PinPolicy,
        observers: Observers,
    ) -> Result<Self, webpki::Error> {
        let crls = crls
            .iter()
            .map(|der| webpki::OwnedCertRevocationList::from_der(der).map(Into::into))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            roots,
            anchor_certs,
            crls,
            algs,
            policy: RwLock::new(Arc::new(policy)),
            observers,
            reports_seen: Mutex::new(HashSet::new()),
            record_chain: false,
        })
    }

    pub(crate) fn policy(&self) -> Arc<PinPolicy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Verifies `end_entity` for `host` on the client or server side, checking `entry`'s pins
    /// on the verified path.
    pub(crate) fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        peer: &Peer<'_>,
        entry: Option<&PinEntry>,
        usage: KeyUsage,
        now: UnixTime,
    ) -> Result<PinCheck, rustls::Error> {
        let cert = EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        if let Some(name) = peer.server_name {
            cert.verify_is_valid_for_subject_name(name)
                .map_err(pki_error)?;
        }
        let wall = OffsetDateTime::from_unix_timestamp(now.as_secs() as i64)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);

        let crl_refs: Vec<&webpki::CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = webpki::RevocationOptionsBuilder::new(&crl_refs)
            .ok()
            .map(|b| b.build());

        let recorded: RefCell<Option<Vec<ChainLink>>> = RefCell::new(None);
        let record = |path: &VerifiedPath<'_>| {
            if self.record_chain {
                *recorded.borrow_mut() = Some(describe(path, end_entity));
            }
        };

        let Some(entry) = entry else {
            let keep = |path: &VerifiedPath<'_>| -> Result<(), webpki::Error> {
                record(path);
                Ok(())
            };
            cert.verify_for_usage(
                self.algs.all,
                &self.roots,
                intermediates,
                now,
                usage,
                revocation,
                self.record_chain.then_some(&keep as _),
            )
            .map_err(pki_error)?;
            return Ok(PinCheck::unpinned(peer.host).with_chain(recorded.into_inner()));
        };

        let mode = entry.effective_mode(wall);
        let matched: Cell<Option<(Pin, Position)>> = Cell::new(None);
        let rejected: RefCell<Option<Vec<ChainLink>>> = RefCell::new(None);
        let check = |path: &VerifiedPath<'_>| -> Result<(), webpki::Error> {
            if let Some(m) = self.find_match(entry, path, end_entity) {
                matched.set(Some(m));
                record(path);
                return Ok(());
            }
            if rejected.borrow().is_none() {
                *rejected.borrow_mut() = Some(describe(path, end_entity));
            }
            // Keep building: another valid path (a cross-signed root) may carry a pin.
            Err(webpki::Error::UnknownIssuer)
        };
        let result = cert.verify_for_usage(
            self.algs.all,
            &self.roots,
            intermediates,
            now,
            usage,
            revocation,
            Some(&check),
        );

        if entry.expiration().is_some()
            && entry.take_expiry_warning(wall, self.policy().expiry_warning())
        {
            self.observers.expiry_warning(peer.host, entry);
        }

        match (result, matched.get(), rejected.into_inner()) {
            (Ok(_), Some((pin, position)), _) => {
                let check = PinCheck::matched(peer.host, entry, pin, position, mode)
                    .with_chain(recorded.into_inner());
                self.observers.matched(&check);
                Ok(check)
            }
            // A valid path exists but none carries a pin.
            (Err(_), None, Some(chain)) => {
                let failure = PinFailure {
                    host: peer.host.to_owned(),
                    port: peer.port,
                    pattern: entry.pattern().to_string(),
                    position: entry.position_constraint(),
                    pins: entry.pins().to_vec(),
                    chain,
                    mode,
                    expired: entry.is_expired_at(wall),
                };
                let report = self.report(&failure, entry, wall);
                self.observers.violation(&failure, report.as_ref());
                match mode {
                    Mode::Enforce => Err(failure.into()),
                    Mode::ReportOnly => Ok(PinCheck::reported(peer.host, entry, mode)
                        .with_chain(self.record_chain.then(|| failure.chain.clone()))),
                }
            }
            (Err(e), _, _) => Err(pki_error(e)),
            // webpki only returns Ok after the callback accepted the path.
            (Ok(_), None, _) => Err(rustls::Error::General(
                "pin check did not run on the verified path".into(),
            )),
        }
    }

    fn find_match(
        &self,
        entry: &PinEntry,
        path: &VerifiedPath<'_>,
        end_entity: &CertificateDer<'_>,
    ) -> Option<(Pin, Position)> {
        let constraint = entry.position_constraint();
        let pins = entry.pins();
        let want_spki = pins.iter().any(Pin::is_spki);
        let want_cert = pins.iter().any(|p| !p.is_spki());
        let hit = |spki: &[u8], cert: Option<&[u8]>| -> Option<Pin> {
            if want_spki {
                let p = Pin::from_spki_der(spki);
                if pins.contains(&p) {
                    return Some(p);
                }
            }
            if let (true, Some(cert)) = (want_cert, cert) {
                let p = Pin::from_certificate_der(cert);
                if pins.contains(&p) {
                    return Some(p);
                }
            }
            None
        };
        if constraint.allows(Position::Leaf) {
            let spki = path.end_entity().subject_public_key_info();
            if let Some(p) = hit(spki.as_ref(), Some(end_entity.as_ref())) {
                return Some((p, Position::Leaf));
            }
        }
        if constraint.allows(Position::Intermediate) {
            for cert in path.intermediate_certificates() {
                let spki = cert.subject_public_key_info();
                if let Some(p) = hit(spki.as_ref(), Some(cert.der().as_ref())) {
                    return Some((p, Position::Intermediate));
                }
            }
        }
        if constraint.allows(Position::Root) {
            let spki = webpki::spki_for_anchor(path.anchor());
            let spki_pin = Pin::from_spki_der(spki.as_ref());
            if pins.contains(&spki_pin) {
                return Some((spki_pin, Position::Root));
            }
            if let Some(cert_pin) = self.anchor_certs.get(&spki_pin)
                && pins.contains(cert_pin)
            {
                return Some((*cert_pin, Position::Root));
            }
        }
        None
    }

    fn report(
        &self,
        failure: &PinFailure,
        entry: &PinEntry,
        now: OffsetDateTime,
    ) -> Option<PinReport> {
        let report = PinReport::new(failure, entry, now);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &report.hostname,
            report.port,
            &report.validated_certificate_chain,
            &report.known_pins,
            report.enforced,
        )
            .hash(&mut h);
        let key = h.finish();
        let mut seen = self.reports_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_REMEMBERED_REPORTS {
            seen.clear();
        }
        seen.insert(key).then_some(report)
    }
}

/// A trusted root certificate as a webpki trust anchor, with its (SPKI pin, certificate pin)
/// so certificate-fingerprint pins can match trust anchors too.
pub(crate) fn trust_anchor(
    cert: &CertificateDer<'_>,
) -> Result<(TrustAnchor<'static>, Pin, Pin), crate::BuildError> {
    let anchor = webpki::anchor_from_trusted_cert(cert)
        .map_err(|e| crate::BuildError::InvalidRoot(e.to_string()))?;
    let spki = Pin::from_spki_der(webpki::spki_for_anchor(&anchor).as_ref());
    Ok((
        anchor.to_owned(),
        spki,
        Pin::from_certificate_der(cert.as_ref()),
    ))
}

/// Who is being verified.
pub(crate) struct Peer<'a> {
    pub(crate) host: &'a str,
    pub(crate) port: Option<u16>,
    pub(crate) server_name: Option<&'a ServerName<'a>>,
}

/// One certificate of a verified chain, as a failure message shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLink {
    /// Its place on the chain.
    pub position: Position,
    /// The SPKI pin of its key.
    pub spki_pin: Pin,
    /// Its subject distinguished name.
    pub subject: String,
    /// The end of its validity (`None` for a trust anchor, which has no certificate here).
    pub not_after: Option<OffsetDateTime>,
}

fn describe(path: &VerifiedPath<'_>, end_entity: &CertificateDer<'_>) -> Vec<ChainLink> {
    let mut chain = Vec::with_capacity(4);
    chain.push(ChainLink {
        position: Position::Leaf,
        spki_pin: Pin::from_spki_der(path.end_entity().subject_public_key_info().as_ref()),
        subject: cert_subject(end_entity.as_ref()),
        not_after: cert_not_after(end_entity.as_ref()),
    });
    for cert in path.intermediate_certificates() {
        chain.push(ChainLink {
            position: Position::Intermediate,
            spki_pin: Pin::from_spki_der(cert.subject_public_key_info().as_ref()),
            subject: cert_subject(cert.der().as_ref()),
            not_after: cert_not_after(cert.der().as_ref()),
        });
    }
    let anchor = path.anchor();
    chain.push(ChainLink {
        position: Position::Root,
        spki_pin: Pin::from_spki_der(webpki::spki_for_anchor(anchor).as_ref()),
        subject: name_subject(anchor.subject.as_ref()),
        not_after: None,
    });
    chain
}

pub(crate) fn cert_subject(der: &[u8]) -> String {
    use x509_parser::prelude::FromDer;
    match x509_parser::certificate::X509Certificate::from_der(der) {
        Ok((_, cert)) => cert.subject().to_string(),
        Err(_) => "<unparsable subject>".to_owned(),
    }
}

fn cert_not_after(der: &[u8]) -> Option<OffsetDateTime> {
    use x509_parser::prelude::FromDer;
    x509_parser::certificate::X509Certificate::from_der(der)
        .ok()
        .map(|(_, c)| c.validity().not_after.to_datetime())
}

/// Formats a Name given without its outer SEQUENCE (as trust anchors store it).
fn name_subject(contents: &[u8]) -> String {
    use x509_parser::prelude::FromDer;
    let mut der = Vec::with_capacity(contents.len() + 4);
    der.push(0x30);
    let len = contents.len();
    if len < 0x80 {
        der.push(len as u8);
    } else if len < 0x100 {
        der.extend_from_slice(&[0x81, len as u8]);
    } else {
        der.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
    der.extend_from_slice(contents);
    match x509_parser::x509::X509Name::from_der(&der) {
        Ok((_, name)) => name.to_string(),
        Err(_) => "<unparsable subject>".to_owned(),
    }
}

/// A certificate chain that validated but carried none of the host's pins.
///
/// It reaches callers inside `rustls::Error::InvalidCertificate(CertificateError::Other(..))`;
/// [`PinFailure::find`] digs it out of any error's source chain (hyper-util, hyper-rustls,
/// tokio-rustls and reqwest errors included). Its `Debug` is its message, so rustls' own
/// error text reads well too.
#[derive(Clone)]
pub struct PinFailure {
    host: String,
    port: Option<u16>,
    pattern: String,
    position: Position,
    pins: Vec<Pin>,
    chain: Vec<ChainLink>,
    mode: Mode,
    expired: bool,
}

impl PinFailure {
    /// The host that was verified.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, when the connector knew it.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The pattern of the policy entry that applied.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The pins configured for the host.
    pub fn pins(&self) -> &[Pin] {
        &self.pins
    }

    /// The verified chain, leaf first, trust anchor last.
    pub fn chain(&self) -> &[ChainLink] {
        &self.chain
    }

    /// The position constraint of the entry.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The effective mode: `Enforce` refused the connection, `ReportOnly` let it through.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether the entry had expired (and so only reported).
    pub fn entry_expired(&self) -> bool {
        self.expired
    }

    /// Finds a `PinFailure` in `err` or its sources.
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a PinFailure> {
        find_other(err)
    }
}

impl fmt::Display for PinFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "certificate pinning failure for {}!", self.host)?;
        writeln!(f, "  Peer certificate chain (verified):")?;
        for link in &self.chain {
            let role = match link.position {
                Position::Root => " (trust anchor)",
                _ => "",
            };
            writeln!(f, "    {}: {}{}", link.spki_pin, link.subject, role)?;
        }
        write!(
            f,
            "  Pinned certificates for {} (pattern {}, position {}):",
            self.host, self.pattern, self.position
        )?;
        for pin in &self.pins {
            write!(f, "\n    {pin}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PinFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for PinFailure {}

impl From<PinFailure> for rustls::Error {
    fn from(f: PinFailure) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(f))))
    }
}

/// A server name whose pins cannot be looked up, because it has no canonical form (the same
/// lower-case, UTS-46 ASCII form the policy's patterns are kept in): an `xn--` label that is
/// not valid punycode, for instance. Whether such a host is pinned cannot be decided, so the
/// handshake is refused (under a non-empty policy) rather than treated as unpinned.
///
/// It reaches callers like a [`PinFailure`], inside
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))`; [`UnpinnableHost::find`]
/// digs it out of any error's source chain.
#[derive(Clone)]
pub struct UnpinnableHost {
    host: String,
}

impl UnpinnableHost {
    /// The server name as the handshake gave it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Finds an `UnpinnableHost` in `err` or its sources.
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a UnpinnableHost> {
        find_other(err)
    }
}

impl fmt::Display for UnpinnableHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot decide whether {:?} is pinned: the name has no canonical form (lower case, \
             UTS-46 ASCII), so no pin policy entry can be looked up; the connection is refused. \
             Connect with the name's canonical form",
            self.host
        )
    }
}

impl fmt::Debug for UnpinnableHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for UnpinnableHost {}

impl From<UnpinnableHost> for rustls::Error {
    fn from(e: UnpinnableHost) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
    }
}

/// Finds a `T` carried in `err` or its sources: directly, inside a rustls
/// `CertificateError::Other`, or inside an `io::Error`.
fn find_other<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(f) = e.downcast_ref::<T>() {
            return Some(f);
        }
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) =
            e.downcast_ref::<rustls::Error>()
            && let Some(f) = other.0.downcast_ref::<T>()
        {
            return Some(f);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(f) = find_other::<T>(inner)
        {
            return Some(f);
        }
        cur = e.source();
    }
    None
}

/// A rustls server-certificate verifier: standard webpki validation, then the host's pins on
/// the verified path.
///
/// A [`PinnedTls`](crate::PinnedTls) has one instance per policy generation, each serving every
/// connection of its generation: rustls only resumes a session under the verifier that
/// verified it, so sessions resume within a generation and never across a policy swap.
#[derive(Debug, Clone)]
pub struct PinVerifier {
    pub(crate) shared: Arc<Shared>,
}

tokio::task_local! {
    /// The connection being made by [`PinnedConnector`](crate::PinnedConnector), set while its
    /// handshake future is polled.
    pub(crate) static CONNECTION: Arc<ConnSlot>;
}

/// Per-connection context: the port, and where the outcome is left for the connector.
#[derive(Debug, Default)]
pub(crate) struct ConnSlot {
    pub(crate) port: u16,
    pub(crate) outcome: Mutex<Option<PinCheck>>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (host, canonical) = match server_name {
            ServerName::DnsName(d) => (
                d.as_ref().to_owned(),
                crate::policy::canonical_server_name(d.as_ref()),
            ),
            ServerName::IpAddress(ip) => {
                let ip = std::net::IpAddr::from(*ip).to_string();
                (ip.clone(), Some(ip))
            }
            _ => return Err(CertificateError::NotValidForName.into()),
        };
        let host = host.as_str();
        let conn = CONNECTION.try_with(Arc::clone).ok();
        let policy = self.shared.policy();
        let entry = match canonical.as_deref() {
            Some(h) => policy.entry_for_canonical(h),
            // Nothing can be pinned under an empty policy, whatever the name.
            None if policy.entries().is_empty() => None,
            // Whether the host is pinned cannot be decided: fail closed, never "unpinned".
            None => {
                let refused = UnpinnableHost {
                    host: host.to_owned(),
                };
                self.shared.observers.unpinnable(&refused);
                return Err(refused.into());
            }
        };
        let peer = Peer {
            host,
            port: conn.as_ref().map(|c| c.port),
            server_name: Some(server_name),
        };
        let check = self.shared.verify(
            end_entity,
            intermediates,
            &peer,
            entry,
            KeyUsage::server_auth(),
            now,
        )?;
        if let Some(conn) = &conn {
            *conn.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(check);
        }
        Ok(ServerCertVerified::assertion())
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

/// Maps a webpki error to the rustls error its own verifier would give.
pub(crate) fn pki_error(error: webpki::Error) -> rustls::Error {
    use webpki::Error::*;
    match error {
        BadDer | BadDerTime | TrailingData(_) => CertificateError::BadEncoding.into(),
        CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }.into()
        }
        CertExpired { time, not_after } => {
            CertificateError::ExpiredContext { time, not_after }.into()
        }
        InvalidCertValidity => CertificateError::Expired.into(),
        UnknownIssuer => CertificateError::UnknownIssuer.into(),
        CertNotValidForName(ctx) => CertificateError::NotValidForNameContext {
            expected: ctx.expected,
            presented: ctx.presented,
        }
        .into(),
        CertRevoked => CertificateError::Revoked.into(),
        UnknownRevocationStatus => CertificateError::UnknownRevocationStatus.into(),
        CrlExpired { time, next_update } => {
            CertificateError::ExpiredRevocationListContext { time, next_update }.into()
        }
        InvalidSignatureForPublicKey => CertificateError::BadSignature.into(),
        #[allow(deprecated)]
        UnsupportedSignatureAlgorithm | UnsupportedSignatureAlgorithmForPublicKey => {
            CertificateError::UnsupportedSignatureAlgorithm.into()
        }
        #[allow(deprecated)]
        RequiredEkuNotFound | RequiredEkuNotFoundContext(_) => {
            CertificateError::InvalidPurpose.into()
        }
        CaUsedAsEndEntity | EndEntityUsedAsCa => CertificateError::BadEncoding.into(),
        e => CertificateError::Other(rustls::OtherError(Arc::new(e))).into(),
    }
}
