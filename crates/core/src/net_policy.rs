//! Which addresses payoutd may connect to when it calls a URL a client gave it (webhooks).
//! A client-supplied URL must not reach payoutd's own network (SSRF): loopback, link-local
//! (cloud metadata at 169.254.169.254), private, unspecified and other special ranges are
//! refused unless an operator allow-lists them. The check is meant for the address actually
//! connected to, after DNS resolution, not for the URL's host name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range, `10.0.0.0/8`, `::1/128`, or a bare address (a single-address range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address range (expected e.g. 10.0.0.0/8, 127.0.0.1 or ::1/128)")]
pub struct BadCidr(pub String);

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadCidr(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// An IPv4 address written as IPv6 (mapped `::ffff:a.b.c.d`, or NAT64 `64:ff9b::a.b.c.d`) is
/// judged as the IPv4 address it reaches.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// The special range `ip` falls in, if any: every one of them is refused unless allow-listed.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        _ if ip.is_unspecified() => "unspecified",
        [0, ..] => "\"this network\" (0.0.0.0/8)",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        _ if ip.is_link_local() => "link-local",
        [100, b, ..] if (64..128).contains(&b) => "shared (carrier-grade NAT)",
        [192, 0, 0, _] => "IETF protocol assignment",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking",
        _ if ip.is_documentation() => "documentation",
        _ if ip.is_multicast() => "multicast",
        _ if ip.is_broadcast() => "broadcast",
        [a, ..] if a >= 240 => "reserved",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(match s {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        [a, ..] if (a & 0xfe00) == 0xfc00 => "private (unique local)",
        [a, ..] if (a & 0xffc0) == 0xfe80 => "link-local",
        [a, ..] if (a & 0xffc0) == 0xfec0 => "site-local",
        [a, ..] if (a & 0xff00) == 0xff00 => "multicast",
        [0x2001, 0x0db8, ..] => "documentation",
        // IPv4-compatible (deprecated) addresses: ::a.b.c.d
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible",
        _ => return None,
    })
}

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ip} is a {range} address and not in the webhook allow-list")]
pub struct ForbiddenAddress {
    pub ip: IpAddr,
    pub range: &'static str,
}

/// Addresses outside the special ranges are allowed; inside them only what `allow` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow: Vec<Cidr>,
}

impl AddressPolicy {
    pub fn new(allow: Vec<Cidr>) -> Self {
        Self { allow }
    }

    /// A comma- or space-separated list of ranges (empty: nothing special allowed).
    pub fn parse_list(text: &str) -> Result<Self, BadCidr> {
        let allow = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { allow })
    }

    pub fn allow_list(&self) -> &[Cidr] {
        &self.allow
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), ForbiddenAddress> {
        match special_range(ip) {
            None => Ok(()),
            Some(_) if self.allow.iter().any(|c| c.contains(ip)) => Ok(()),
            Some(range) => Err(ForbiddenAddress { ip, range }),
        }
    }
}

/// The longest URL an endpoint may have.
pub const MAX_URL_LEN: usize = 2048;

/// Why a URL cannot receive webhooks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("not a URL")]
    Malformed,
    #[error("longer than {MAX_URL_LEN} characters")]
    TooLong,
    #[error("only http and https URLs are allowed, not {0:?}")]
    Scheme(String),
    #[error("the URL has no host")]
    NoHost,
    #[error("credentials in the URL are not allowed (they would be stored and shown in clear)")]
    Credentials,
    #[error("{0}")]
    Forbidden(ForbiddenAddress),
    #[error("{0:?} names this machine and is not in the webhook allow-list")]
    LocalName(String),
}

/// Checks a URL a client wants webhooks sent to: http or https, a host, no credentials. A
/// literal address is judged by `policy` here; a host name is judged on every connection, by
/// the addresses it resolves to then (names change: DNS rebinding), except the names of this
/// machine (`localhost`), which are refused here as loopback unless loopback is allow-listed.
pub fn check_url(text: &str, policy: &AddressPolicy) -> Result<url::Url, UrlRefused> {
    if text.len() > MAX_URL_LEN {
        return Err(UrlRefused::TooLong);
    }
    let url = url::Url::parse(text).map_err(|_| UrlRefused::Malformed)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlRefused::Scheme(url.scheme().to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefused::Credentials);
    }
    match url.host() {
        None => return Err(UrlRefused::NoHost),
        Some(url::Host::Ipv4(ip)) => policy.check(IpAddr::V4(ip)).map_err(UrlRefused::Forbidden)?,
        Some(url::Host::Ipv6(ip)) => policy.check(IpAddr::V6(ip)).map_err(UrlRefused::Forbidden)?,
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if (name == "localhost" || name.ends_with(".localhost"))
                && policy.check(IpAddr::V4(Ipv4Addr::LOCALHOST)).is_err()
            {
                return Err(UrlRefused::LocalName(name));
            }
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_ranges_are_refused_public_addresses_allowed() {
        let p = AddressPolicy::default();
        for bad in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
        ] {
            assert!(p.check(ip(bad)).is_err(), "{bad} must be refused");
        }
        for good in ["93.184.216.34", "172.32.0.1", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(p.check(ip(good)).is_ok(), "{good} must be allowed");
        }
    }

    #[test]
    fn the_allow_list_opens_exactly_its_ranges() {
        let p = AddressPolicy::parse_list("127.0.0.1/32, 10.0.0.0/8").unwrap();
        assert!(p.check(ip("127.0.0.1")).is_ok());
        assert!(p.check(ip("::ffff:127.0.0.1")).is_ok(), "mapped form of an allowed address");
        assert!(p.check(ip("127.0.0.2")).is_err());
        assert!(p.check(ip("10.200.0.1")).is_ok());
        assert!(p.check(ip("::1")).is_err());
        assert!(p.check(ip("169.254.169.254")).is_err());
        let err = p.check(ip("192.168.0.1")).unwrap_err();
        assert_eq!(err.range, "private");
        assert!(AddressPolicy::parse_list("10.0.0.0/33").is_err());
        assert!(AddressPolicy::parse_list("nonsense").is_err());
        assert_eq!(AddressPolicy::parse_list("").unwrap(), AddressPolicy::default());
        assert!("172.16.0.0/12".parse::<Cidr>().unwrap().contains(ip("172.20.1.1")));
        assert!(!"172.16.0.0/12".parse::<Cidr>().unwrap().contains(ip("172.32.0.1")));
    }

    #[test]
    fn urls_are_checked_for_scheme_credentials_and_literal_addresses() {
        let p = AddressPolicy::default();
        assert!(check_url("https://hooks.example.com/payoutd?x=1", &p).is_ok());
        assert!(check_url("http://93.184.216.34:8080/", &p).is_ok());
        assert!(matches!(check_url("ftp://example.com/", &p), Err(UrlRefused::Scheme(_))));
        assert!(matches!(check_url("file:///etc/passwd", &p), Err(UrlRefused::Scheme(_))));
        assert!(matches!(check_url("https://u:p@example.com/", &p), Err(UrlRefused::Credentials)));
        assert!(matches!(check_url("http://127.0.0.1:9/", &p), Err(UrlRefused::Forbidden(_))));
        assert!(matches!(check_url("http://[::1]/", &p), Err(UrlRefused::Forbidden(_))));
        // Other spellings of loopback and metadata addresses are normalised by the URL parser.
        assert!(matches!(check_url("http://2130706433/", &p), Err(UrlRefused::Forbidden(_))));
        assert!(matches!(check_url("http://0x7f.1/", &p), Err(UrlRefused::Forbidden(_))));
        assert!(matches!(check_url("http://169.254.169.254/latest", &p), Err(UrlRefused::Forbidden(_))));
        assert!(matches!(check_url("http://10.0.0.1/", &p), Err(UrlRefused::Forbidden(_))));
        assert!(matches!(check_url("http://LocalHost./", &p), Err(UrlRefused::LocalName(_))));
        assert!(matches!(check_url("not a url", &p), Err(UrlRefused::Malformed)));
        let loopback = AddressPolicy::parse_list("127.0.0.0/8").unwrap();
        assert!(check_url("http://127.0.0.1:9/", &loopback).is_ok());
        assert!(check_url("http://localhost:9/", &loopback).is_ok());
    }
}
