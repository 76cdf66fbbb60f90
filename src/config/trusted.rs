//! `--trusted-proxy`: which peers' `X-Forwarded-For` the gateway believes.

use super::{ConfigError, invalid};

/// `--trusted-proxy`: the addresses whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Reads addresses (`10.0.0.1`, `::1`) and CIDR ranges (`10.0.0.0/8`).
    pub fn parse(items: &[String]) -> Result<Self, ConfigError> {
        items
            .iter()
            .map(|item| {
                let item = item.trim();
                item.parse::<ipnet::IpNet>()
                    .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "--trusted-proxy",
                            format!("{item:?}: expected an IP address or a CIDR range such as 10.0.0.0/8"),
                        )
                    })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether none is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is a trusted proxy (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}
