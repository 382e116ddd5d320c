//! `[egress]`: where the gateway may connect, and the rules that refuse an
//! address (loopback, private, link-local and cloud metadata, unique-local,
//! shared, unspecified, multicast, reserved, and IPv6 forms that embed an
//! IPv4 address). Hosts are read the way HTTP clients read them (the WHATWG
//! URL host parser), so `127.1`, `2130706433`, `0x7f000001` and
//! `0177.0.0.1` are all `127.0.0.1`. Names are checked on the addresses they
//! resolve to, at connect time, by `crate::egress`.
//!
//! Must never: let an address through that a rule refuses unless the
//! operator's allow list names it (or, in the config file only, an entry
//! says `allow_private_network`).

use ipnet::IpNet;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `[egress]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEgress {
    /// CIDRs, addresses and host names the operator intends to reach.
    #[serde(default)]
    pub(super) allow: Vec<String>,
}

/// The operator's allow list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EgressConfig {
    pub nets: Vec<IpNet>,
    /// Host names, lower-case (`*.example.internal` allows its subdomains).
    pub hosts: Vec<String>,
}

pub(super) fn egress(
    raw: RawEgress,
    bad: &dyn Fn(String) -> crate::GatewayError,
) -> Result<EgressConfig, crate::GatewayError> {
    let mut out = EgressConfig::default();
    for entry in raw.allow {
        if let Ok(net) = entry.parse::<IpNet>() {
            out.nets.push(net);
        } else if let Ok(ip) = entry.parse::<IpAddr>() {
            out.nets.push(IpNet::from(ip));
        } else if matches!(url::Host::parse(&entry), Ok(url::Host::Domain(_)))
            || entry
                .strip_prefix("*.")
                .is_some_and(|d| matches!(url::Host::parse(d), Ok(url::Host::Domain(_))))
        {
            out.hosts.push(entry.to_ascii_lowercase());
        } else {
            return Err(bad(format!(
                "egress.allow `{entry}` is not a CIDR (10.0.0.0/8), an address or a host name"
            )));
        }
    }
    Ok(out)
}

/// The rule that refuses `ip`, if one does.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => refusal_v6(v6),
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match () {
        _ if a == 0 => "unspecified (0.0.0.0/8)",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private (RFC 1918)",
        _ if ip.is_link_local() => "link-local (cloud metadata, 169.254.0.0/16)",
        _ if a == 100 && (64..128).contains(&b) => "shared address space (100.64.0.0/10)",
        _ if ip.is_multicast() => "multicast",
        _ if a >= 240 => "reserved (240.0.0.0/4, broadcast)",
        _ => return None,
    })
}

fn refusal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    // Forms that carry an IPv4 address: mapped (::ffff:a.b.c.d), the
    // deprecated compatible (::a.b.c.d), NAT64 (64:ff9b::/96), 6to4 (2002::/16).
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refusal_v4(v4);
    }
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return refusal_v4(embedded(s[6], s[7])).or(Some("IPv4-compatible IPv6 (deprecated)"));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return refusal_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return refusal_v4(embedded(s[1], s[2]));
    }
    Some(match () {
        _ if ip.is_unspecified() => "unspecified (::)",
        _ if ip.is_loopback() => "loopback",
        _ if (s[0] & 0xfe00) == 0xfc00 => "unique-local (fc00::/7)",
        _ if (s[0] & 0xffc0) == 0xfe80 => "link-local (fe80::/10)",
        _ if (s[0] & 0xffc0) == 0xfec0 => "site-local (fec0::/10, deprecated)",
        _ if ip.is_multicast() => "multicast",
        _ => return None,
    })
}

/// A URL host as an HTTP client reads it: an address, or a name.
pub fn parse_host(host: &str) -> Result<Result<IpAddr, String>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Ok(ip));
    }
    match url::Host::parse(host) {
        Ok(url::Host::Ipv4(ip)) => Ok(Ok(IpAddr::V4(ip))),
        Ok(url::Host::Ipv6(ip)) => Ok(Ok(IpAddr::V6(ip))),
        Ok(url::Host::Domain(d)) => Ok(Err(d.to_ascii_lowercase())),
        Err(e) => Err(format!("`{host}` is not a host: {e}")),
    }
}

impl EgressConfig {
    /// Whether the allow list names this host.
    pub fn allows_host(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(domain) => name.ends_with(&format!(".{domain}")),
            None => *h == name,
        })
    }

    /// Why `ip` may not be dialled (the rule, naming the address), if so.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        match refusal(ip) {
            Some(rule) if !self.nets.iter().any(|n| n.contains(&ip)) => Err(format!(
                "egress refused: {ip} is {rule}; list it in [egress] allow to reach it"
            )),
            _ => Ok(()),
        }
    }

    /// Checks every address a name resolved to (a name the allow list
    /// names passes whatever it resolves to).
    pub fn check_resolved(&self, name: &str, addrs: &[IpAddr]) -> Result<(), String> {
        if self.allows_host(name) {
            return Ok(());
        }
        if addrs.is_empty() {
            return Err(format!("egress refused: `{name}` resolves to no address"));
        }
        for ip in addrs {
            self.check_ip(*ip)
                .map_err(|e| format!("{e} (`{name}` resolves to it)"))?;
        }
        Ok(())
    }

    /// The check of a host written in a URL, without resolving: an address
    /// is checked now; a name (`Ok(Some(name))`) is checked on what it
    /// resolves to, at connect time.
    pub fn check_literal(&self, host: &str) -> Result<Option<String>, String> {
        match parse_host(host)? {
            Ok(ip) => self.check_ip(ip).map(|()| None),
            Err(name) if name == "localhost" || name.ends_with(".localhost") => {
                if self.allows_host(&name) {
                    Ok(None)
                } else {
                    Err(format!("egress refused: `{name}` is loopback; list it in [egress] allow to reach it"))
                }
            }
            Err(name) => Ok(Some(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_textual_and_embedded_form_of_a_refused_address_is_refused_by_its_rule() {
        let open = EgressConfig::default();
        for (host, rule) in [
            ("127.0.0.1", Some("loopback")),
            ("127.1", Some("loopback")),
            ("2130706433", Some("loopback")),
            ("0x7f000001", Some("loopback")),
            ("0177.0.0.1", Some("loopback")),
            ("0", Some("unspecified")),
            ("0.0.0.0", Some("unspecified")),
            ("[::1]", Some("loopback")),
            ("[::]", Some("unspecified")),
            ("[::ffff:127.0.0.1]", Some("loopback")),
            ("[::ffff:7f00:1]", Some("loopback")),
            ("[::127.0.0.1]", Some("loopback")),
            ("[64:ff9b::a9fe:a9fe]", Some("link-local (cloud metadata")),
            ("[2002:a9fe:a9fe::1]", Some("link-local (cloud metadata")),
            ("169.254.169.254", Some("link-local (cloud metadata")),
            ("0xa9fea9fe", Some("link-local (cloud metadata")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("192.168.1.1", Some("private")),
            ("100.64.0.1", Some("shared address space")),
            ("224.0.0.1", Some("multicast")),
            ("255.255.255.255", Some("reserved")),
            ("[fd00::1]", Some("unique-local")),
            ("[fe80::1]", Some("link-local (fe80")),
            ("[ff02::1]", Some("multicast")),
            ("localhost", Some("is loopback")),
            ("api.localhost", Some("is loopback")),
            ("8.8.8.8", None),
            ("[2606:4700::1111]", None),
            ("[::ffff:8.8.8.8]", None),
            ("example.com", None),
        ] {
            let got = open.check_literal(host);
            match rule {
                Some(rule) => {
                    let e = got.unwrap_err();
                    assert!(
                        e.contains(rule) && e.starts_with("egress refused"),
                        "{host}: {e}"
                    );
                }
                None => assert!(got.is_ok(), "{host}: {got:?}"),
            }
        }
    }

    #[test]
    fn the_allow_list_admits_what_it_names_and_nothing_else() {
        let bad = |m: String| crate::GatewayError::Config(m);
        let cfg = egress(
            RawEgress {
                allow: vec![
                    "10.1.0.0/16".into(),
                    "127.0.0.1".into(),
                    "vllm.internal".into(),
                    "*.corp.example".into(),
                ],
            },
            &bad,
        )
        .unwrap();
        assert!(cfg.check_literal("10.1.2.3").is_ok());
        assert!(cfg
            .check_literal("10.2.0.1")
            .unwrap_err()
            .contains("private"));
        assert!(cfg.check_literal("127.1").is_ok(), "the same address");
        assert!(cfg.check_literal("127.0.0.2").is_err());
        let lo = [IpAddr::from([127, 0, 0, 2])];
        assert!(cfg.check_resolved("vllm.internal", &lo).is_ok());
        assert!(cfg.check_resolved("a.corp.example", &lo).is_ok());
        assert!(cfg.check_resolved("corp.example", &lo).is_err());
        let e = cfg
            .check_resolved(
                "evil.example",
                &[
                    IpAddr::from([8, 8, 8, 8]),
                    IpAddr::from([169, 254, 169, 254]),
                ],
            )
            .unwrap_err();
        assert!(
            e.contains("169.254.169.254 is link-local")
                && e.contains("`evil.example` resolves to it"),
            "{e}"
        );
        let e = egress(
            RawEgress {
                allow: vec!["10.0.0.0/33".into()],
            },
            &bad,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("egress.allow `10.0.0.0/33` is not a CIDR"),
            "{e}"
        );
    }
}
