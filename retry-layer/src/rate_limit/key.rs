//! Where rate-limit keys come from.

use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use http::{Extensions, HeaderMap, Method, Request, Uri};

/// The parts of a request a [`KeyExtractor`] may look at.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI.
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions (peer address, verified identities from other layers).
    pub extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// The head of `req`.
    pub fn of<B>(req: &'a Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }
}

/// Chooses the bucket a request is counted in.
///
/// Implemented by `()` (one global bucket), [`PeerIp`], [`ExtensionKey`] and any
/// `Fn(&RequestHead<'_>) -> Option<K>` closure. `None` means "no key": the layer's
/// [`MissingKey`] policy decides.
pub trait KeyExtractor {
    /// The key type.
    type Key: Hash + Eq + Clone + Send + Sync + 'static;

    /// The key of this request, if it has one.
    fn extract(&self, req: &RequestHead<'_>) -> Option<Self::Key>;
}

impl KeyExtractor for () {
    type Key = ();

    fn extract(&self, _req: &RequestHead<'_>) -> Option<()> {
        Some(())
    }
}

impl<F, K> KeyExtractor for F
where
    F: Fn(&RequestHead<'_>) -> Option<K>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;

    fn extract(&self, req: &RequestHead<'_>) -> Option<K> {
        self(req)
    }
}

/// What a limiter does with a request that has no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Refuse it: `403 Forbidden` on servers, a [`MissingRateLimitKey`](super::MissingRateLimitKey)
    /// error on clients (the default: nothing passes unlimited).
    #[default]
    Reject,
    /// Count it in one shared bucket with the same quota, for all keyless requests together.
    SharedBucket,
}

/// The peer's socket address, as a typed request extension.
///
/// Servers insert it when they accept a connection (the hyper `service_fn` closure knows the
/// address). [`PeerIp`] also reads a bare `SocketAddr` extension, hyper-util's `HttpInfo`, and
/// any other type through [`PeerIp::with_lookup`] (for axum's `ConnectInfo<SocketAddr>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address) of trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// A malformed [`IpNet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidIpNet(String);

impl fmt::Display for InvalidIpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid ip network {:?}: expected an address or address/prefix such as 10.0.0.0/8 or ::1/128",
            self.0
        )
    }
}

impl std::error::Error for InvalidIpNet {}

impl IpNet {
    /// The network `addr/prefix`.
    ///
    /// # Errors
    /// When `prefix` is longer than the address (32 for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, InvalidIpNet> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(InvalidIpNet(format!("{addr}/{prefix}")));
        }
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is in this network (IPv4-mapped IPv6 addresses match IPv4 networks).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (canonical(self.addr), ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl From<IpAddr> for IpNet {
    fn from(addr: IpAddr) -> Self {
        Self {
            addr,
            prefix: if addr.is_ipv4() { 32 } else { 128 },
        }
    }
}

impl FromStr for IpNet {
    type Err = InvalidIpNet;

    fn from_str(s: &str) -> Result<Self, InvalidIpNet> {
        let bad = || InvalidIpNet(s.to_string());
        match s.split_once('/') {
            None => s
                .trim()
                .parse::<IpAddr>()
                .map(Self::from)
                .map_err(|_| bad()),
            Some((addr, prefix)) => {
                let addr = addr.trim().parse::<IpAddr>().map_err(|_| bad())?;
                let prefix = prefix.trim().parse::<u8>().map_err(|_| bad())?;
                Self::new(addr, prefix).map_err(|_| bad())
            }
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

type Lookup = Arc<dyn Fn(&Extensions) -> Option<IpAddr> + Send + Sync>;

/// Keys requests by the client's network: the connection's peer, or, only when that peer
/// is a configured trusted proxy, the nearest untrusted address in `X-Forwarded-For`; IPv6
/// addresses are keyed by their /64 (see [`PeerIp::ipv6_prefix`]).
///
/// # Security
/// `X-Forwarded-For` is written by whoever sends the request; from any peer that is not a
/// trusted proxy it is ignored, so a client cannot pick its own bucket. One IPv6 host usually
/// holds a whole /64: keyed per address it could rotate through 2⁶⁴ buckets.
#[derive(Clone)]
pub struct PeerIp {
    trusted: Arc<[IpNet]>,
    lookups: Arc<[Lookup]>,
    ipv6_prefix: u8,
}

impl Default for PeerIp {
    fn default() -> Self {
        Self {
            trusted: Arc::new([]),
            lookups: Arc::new([]),
            ipv6_prefix: portcullis_core::DEFAULT_IPV6_PREFIX,
        }
    }
}

impl fmt::Debug for PeerIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerIp")
            .field("trusted", &self.trusted)
            .field("lookups", &self.lookups.len())
            .field("ipv6_prefix", &self.ipv6_prefix)
            .finish()
    }
}

impl PeerIp {
    /// The peer address only; forwarded headers are ignored.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys IPv6 clients by their first `bits` bits (default 64; 128 keys each address).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.min(128);
        self
    }

    /// Trusts `X-Forwarded-For` from these proxy networks.
    pub fn trust_proxies<I, N>(mut self, proxies: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<IpNet>,
    {
        let mut all: Vec<IpNet> = self.trusted.to_vec();
        all.extend(proxies.into_iter().map(Into::into));
        self.trusted = all.into();
        self
    }

    /// Also finds the peer address through `lookup` (tried after the built-in extension
    /// types), e.g. for axum:
    /// `PeerIp::new().with_lookup(|ext| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()))`.
    pub fn with_lookup(
        mut self,
        lookup: impl Fn(&Extensions) -> Option<IpAddr> + Send + Sync + 'static,
    ) -> Self {
        let mut all: Vec<Lookup> = self.lookups.to_vec();
        all.push(Arc::new(lookup));
        self.lookups = all.into();
        self
    }

    fn peer(&self, ext: &Extensions) -> Option<IpAddr> {
        if let Some(PeerAddr(addr)) = ext.get::<PeerAddr>() {
            return Some(addr.ip());
        }
        if let Some(addr) = ext.get::<SocketAddr>() {
            return Some(addr.ip());
        }
        if let Some(info) = ext.get::<hyper_util::client::legacy::connect::HttpInfo>() {
            return Some(info.remote_addr().ip());
        }
        self.lookups.iter().find_map(|lookup| lookup(ext))
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }

    /// The client address of a request (see the type docs).
    pub fn client_ip(&self, req: &RequestHead<'_>) -> Option<IpAddr> {
        let peer = canonical(self.peer(req.extensions)?);
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        // From a trusted proxy: walk the chain right to left, skipping trusted hops.
        let mut hops: Vec<&str> = Vec::new();
        for value in req.headers.get_all("x-forwarded-for") {
            let Ok(value) = value.to_str() else {
                return Some(peer);
            };
            hops.extend(value.split(',').map(str::trim));
        }
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // A malformed entry ends what can be believed.
                return Some(client);
            };
            client = canonical(ip);
            if !self.is_trusted(client) {
                return Some(client);
            }
        }
        Some(client)
    }
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    hop.parse::<SocketAddr>().ok().map(|s| s.ip())
}

impl KeyExtractor for PeerIp {
    type Key = IpAddr;

    fn extract(&self, req: &RequestHead<'_>) -> Option<IpAddr> {
        self.client_ip(req)
            .map(|ip| portcullis_core::client_network(ip, self.ipv6_prefix))
    }
}

/// Keys requests by a verified identity another layer put into the extensions (an mTLS
/// peer, a token subject, a signature key id), through a hook that reads it.
///
/// ```
/// # use portcullis_retry::rate_limit::ExtensionKey;
/// #[derive(Clone)]
/// struct VerifiedSubject(String);
/// let key = ExtensionKey::new(|s: &VerifiedSubject| Some(s.0.clone()));
/// # let _ = key;
/// ```
pub struct ExtensionKey<T, F> {
    read: F,
    _marker: std::marker::PhantomData<fn(&T)>,
}

impl<T, F: Clone> Clone for ExtensionKey<T, F> {
    fn clone(&self) -> Self {
        Self {
            read: self.read.clone(),
            _marker: std::marker::PhantomData,
        }
    }
}

impl<T, F> fmt::Debug for ExtensionKey<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtensionKey")
            .field("extension", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T, F> ExtensionKey<T, F> {
    /// Reads the key from the `T` extension with `read`.
    pub fn new<K>(read: F) -> Self
    where
        F: Fn(&T) -> Option<K>,
    {
        Self {
            read,
            _marker: std::marker::PhantomData,
        }
    }
}

impl<T, F, K> KeyExtractor for ExtensionKey<T, F>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> Option<K>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;

    fn extract(&self, req: &RequestHead<'_>) -> Option<K> {
        req.extensions.get::<T>().and_then(&self.read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_with(peer: &str, xff: &[&str]) -> Request<()> {
        let mut b = Request::get("/");
        for v in xff {
            b = b.header("x-forwarded-for", *v);
        }
        let mut req = b.body(()).unwrap();
        req.extensions_mut()
            .insert(PeerAddr(format!("{peer}:4000").parse().unwrap()));
        req
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_network() {
        let a = head_with("[2001:db8:1:2::1]", &[]);
        let b = head_with("[2001:db8:1:2:ffff:ffff:ffff:fffe]", &[]);
        let other = head_with("[2001:db8:1:3::1]", &[]);
        let x = PeerIp::new();
        let key = |r: &Request<()>| x.extract(&RequestHead::of(r));
        assert_eq!(key(&a), Some(ip("2001:db8:1:2::")));
        assert_eq!(key(&a), key(&b), "one /64, one bucket");
        assert_ne!(key(&a), key(&other));
        let per_address = PeerIp::new().ipv6_prefix(128);
        assert_ne!(
            per_address.extract(&RequestHead::of(&a)),
            per_address.extract(&RequestHead::of(&b))
        );
        let mapped = head_with("[::ffff:203.0.113.9]", &[]);
        assert_eq!(key(&mapped), Some(ip("203.0.113.9")));
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let x = PeerIp::new().trust_proxies(["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        // Untrusted peer: the header is ignored.
        let req = head_with("203.0.113.9", &["198.51.100.1"]);
        assert_eq!(x.extract(&RequestHead::of(&req)), Some(ip("203.0.113.9")));
        // Trusted proxy: nearest untrusted hop, skipping inner proxies.
        let req = head_with("10.0.0.2", &["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        assert_eq!(x.extract(&RequestHead::of(&req)), Some(ip("198.51.100.7")));
        // Trusted proxy without the header: the proxy itself.
        let req = head_with("10.0.0.2", &[]);
        assert_eq!(x.extract(&RequestHead::of(&req)), Some(ip("10.0.0.2")));
        // Garbage stops the walk at what was believable.
        let req = head_with("10.0.0.2", &["1.2.3.4, nonsense"]);
        assert_eq!(x.extract(&RequestHead::of(&req)), Some(ip("10.0.0.2")));
        // No proxy configured: never trusted.
        let req = head_with("10.0.0.2", &["1.2.3.4"]);
        assert_eq!(
            PeerIp::new().extract(&RequestHead::of(&req)),
            Some(ip("10.0.0.2"))
        );
    }

    #[test]
    fn ip_networks() {
        let net: IpNet = "192.168.0.0/16".parse().unwrap();
        assert!(net.contains(ip("192.168.44.1")));
        assert!(net.contains(ip("::ffff:192.168.1.1")));
        assert!(!net.contains(ip("192.169.0.1")));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(
            "0.0.0.0/0"
                .parse::<IpNet>()
                .unwrap()
                .contains(ip("8.8.8.8"))
        );
        let err = "10.0.0.0/33".parse::<IpNet>().unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/33"));
        assert!("ten".parse::<IpNet>().is_err());
    }

    #[test]
    fn peer_from_other_extension_types() {
        let mut req = Request::new(());
        req.extensions_mut()
            .insert("127.0.0.9:1".parse::<SocketAddr>().unwrap());
        assert_eq!(
            PeerIp::new().extract(&RequestHead::of(&req)),
            Some(ip("127.0.0.9"))
        );

        #[derive(Clone)]
        struct ConnectInfo(SocketAddr);
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(ConnectInfo("127.0.0.7:1".parse().unwrap()));
        assert_eq!(PeerIp::new().extract(&RequestHead::of(&req)), None);
        let x = PeerIp::new().with_lookup(|e| e.get::<ConnectInfo>().map(|c| c.0.ip()));
        assert_eq!(x.extract(&RequestHead::of(&req)), Some(ip("127.0.0.7")));
    }
}
