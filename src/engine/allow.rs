//! Source address allowlists for the media listeners.
//!
//! Owns: matching a peer IP against `audiosocket.allowed_remote_hosts` /
//! `external_media.allowed_remote_hosts` (IPs and CIDR prefixes, validated by the
//! config loader). Must not: allocate per check (the list is parsed once).

#![forbid(unsafe_code)]

use std::net::IpAddr;

/// A parsed allowlist. Empty means "allow nobody" (the config default is loopback).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<(IpAddr, u8)>,
}

impl AllowList {
    /// Parse entries such as `127.0.0.1`, `::1`, `10.0.0.0/8`; returns the first entry
    /// that does not parse.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, String> {
        let mut nets = Vec::with_capacity(entries.len());
        for e in entries {
            let e = e.as_ref().trim();
            let (addr, prefix) = match e.split_once('/') {
                None => (e, None),
                Some((a, p)) => (a, Some(p)),
            };
            let ip: IpAddr = addr.parse().map_err(|_| e.to_string())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(p) => p
                    .parse::<u8>()
                    .ok()
                    .filter(|&p| p <= max)
                    .ok_or_else(|| e.to_string())?,
            };
            nets.push((ip, prefix));
        }
        Ok(AllowList { nets })
    }

    /// Whether `ip` is inside one of the entries (IPv4-mapped IPv6 peers are matched
    /// as IPv4).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.nets.iter().any(|&(net, prefix)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(prefix))
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(prefix))
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_prefix_matches() {
        let a = AllowList::parse(&["127.0.0.1", "::1", "10.1.0.0/16", "2001:db8::/32"]).unwrap();
        assert!(a.allows("127.0.0.1".parse().unwrap()));
        assert!(!a.allows("127.0.0.2".parse().unwrap()));
        assert!(a.allows("10.1.200.3".parse().unwrap()));
        assert!(!a.allows("10.2.0.1".parse().unwrap()));
        assert!(a.allows("::1".parse().unwrap()));
        assert!(a.allows("2001:db8:ffff::1".parse().unwrap()));
        assert!(a.allows("::ffff:127.0.0.1".parse().unwrap()), "v4-mapped");
        assert!(!AllowList::default().allows("127.0.0.1".parse().unwrap()));
        assert!(AllowList::parse(&["0.0.0.0/0"])
            .unwrap()
            .allows("8.8.8.8".parse().unwrap()));
        assert_eq!(
            AllowList::parse(&["10.0.0.0/33"]),
            Err("10.0.0.0/33".into())
        );
        assert_eq!(AllowList::parse(&["nope"]), Err("nope".into()));
    }
}
