//! Client addresses as keys for limits, penalties and replay-cache shares.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv6Addr};

/// The IPv6 prefix length a client is keyed by unless configured otherwise: one subscriber or
/// host usually holds a whole /64, so keying per address would let it rotate through 2⁶⁴ keys.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The network a client address stands for when keying rate limits, penalties and shares:
/// an IPv4 address as is, an IPv4-mapped IPv6 address as its IPv4 address, any other IPv6
/// address masked to its first `ipv6_prefix` bits (at most 128).
///
/// ```
/// use std::net::IpAddr;
/// use portcullis_core::{DEFAULT_IPV6_PREFIX, client_network};
///
/// let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
/// let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
/// assert_eq!(client_network(a, DEFAULT_IPV6_PREFIX), client_network(b, DEFAULT_IPV6_PREFIX));
/// assert_eq!(client_network(a, 64).to_string(), "2001:db8:1:2::");
/// let v4: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
/// assert_eq!(client_network(v4, 64).to_string(), "192.0.2.7");
/// ```
pub fn client_network(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u32::from(ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

/// [`client_network`] for a peer written as text (as in `client.address`): an IPv6 address
/// becomes `network/prefix`, an IPv4 address and anything that is not an address stay as
/// they are.
///
/// ```
/// use portcullis_core::peer_key;
///
/// assert_eq!(peer_key("2001:db8::1", 64), "2001:db8::/64");
/// assert_eq!(peer_key("203.0.113.9", 64), "203.0.113.9");
/// assert_eq!(peer_key("api.example.com", 64), "api.example.com");
/// ```
pub fn peer_key(peer: &str, ipv6_prefix: u8) -> Cow<'_, str> {
    match peer.parse::<IpAddr>() {
        Ok(ip @ IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let prefix = ipv6_prefix.min(128);
            Cow::Owned(format!("{}/{prefix}", client_network(ip, prefix)))
        }
        Ok(ip @ IpAddr::V6(_)) => Cow::Owned(client_network(ip, ipv6_prefix).to_string()),
        _ => Cow::Borrowed(peer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_at_the_edges() {
        let ip: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        assert_eq!(client_network(ip, 128), ip);
        assert_eq!(client_network(ip, 0).to_string(), "::");
        assert_eq!(client_network(ip, 200), ip, "clamped to 128");
        assert_eq!(client_network(ip, 48).to_string(), "2001:db8::");
    }
}
