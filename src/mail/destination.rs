//! Where tenants' relays may connect: public addresses on SMTP ports, and whatever the
//! operator allows on top (`MAILROOM_DESTINATION_ALLOW`, address ranges in which any port
//! goes). The check is made on the resolved addresses at connect time, and the connection
//! goes to an address that was checked: a name that resolves elsewhere a moment later
//! (DNS rebinding) gains nothing. The system relay is the operator's and is not checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpStream;

use crate::config::Settings;

/// The ports a tenant's relay may use outside the operator's ranges.
pub const SMTP_PORTS: [u16; 4] = [25, 465, 587, 2525];

/// What a refusal says, wherever it is reported.
pub const RULE: &str = "relays may reach only public addresses on ports 25, 465, 587 and 2525 (the operator can allow more)";

/// An address range such as `10.0.0.0/8` or `fd00::/8`; a bare address is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let invalid = || format!("`{text}` is not an address range such as 10.0.0.0/8 or fd00::/8");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| invalid())?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(prefix) if prefix <= bits => prefix,
                _ => return Err(invalid()),
            },
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => same_prefix(
                u32::from(network).into(),
                u32::from(ip).into(),
                32,
                self.prefix,
            ),
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                same_prefix(u128::from(network), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` of the `bits` low bits of `a` and `b` are equal.
fn same_prefix(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (a >> shift) == (b >> shift)
}

/// Ranges that are not hosts on the Internet: this network, private, shared (CGNAT),
/// loopback, link-local (cloud metadata lives at 169.254.169.254), protocol assignments,
/// documentation, 6to4 relays, benchmarking, multicast, reserved and broadcast.
const NOT_PUBLIC_V4: [(Ipv4Addr, u8); 15] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(192, 88, 99, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// Inside global unicast (2000::/3), ranges that are not plain hosts: protocol assignments
/// (Teredo among them), documentation, and 6to4 (which embeds any IPv4 address).
const NOT_PUBLIC_V6: [(Ipv6Addr, u8); 4] = [
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16),
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),
];

/// Whether `ip` is an address on the public Internet. An IPv4 address written as IPv6
/// (`::ffff:127.0.0.1`) is judged as the IPv4 address it is.
pub fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(ip) => {
            let ip = u32::from(ip).into();
            !NOT_PUBLIC_V4
                .iter()
                .any(|&(network, prefix)| same_prefix(u32::from(network).into(), ip, 32, prefix))
        }
        IpAddr::V6(ip) => {
            let ip = u128::from(ip);
            // Outside 2000::/3 all is loopback, unspecified, unique-local (fc00::/7),
            // link-local, multicast, NAT64, IPv4-compatible or not assigned.
            same_prefix(0x2000 << 112, ip, 128, 3)
                && !NOT_PUBLIC_V6
                    .iter()
                    .any(|&(network, prefix)| same_prefix(u128::from(network), ip, 128, prefix))
        }
    }
}

/// Where tenants' relays may connect.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The operator's ranges: any port goes there.
    allow: Vec<Cidr>,
}

impl Policy {
    /// The policy of the settings (checked at start-up, so it fails only there).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Policy> {
        Policy::parse(&settings.destination_allow)
            .map_err(|e| anyhow::anyhow!("MAILROOM_DESTINATION_ALLOW: {e}"))
    }

    /// The policy of `MAILROOM_DESTINATION_ALLOW`'s ranges.
    pub fn parse(ranges: &[String]) -> Result<Policy, String> {
        let allow = ranges
            .iter()
            .map(|range| range.trim())
            .filter(|range| !range.is_empty())
            .map(Cidr::parse)
            .collect::<Result<_, _>>()?;
        Ok(Policy { allow })
    }

    /// Whether a relay may connect to `address`.
    pub fn allows(&self, address: SocketAddr) -> bool {
        self.allowed_range(address.ip())
            || (is_public(address.ip()) && SMTP_PORTS.contains(&address.port()))
    }

    fn allowed_range(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|range| range.contains(ip))
    }

    /// Whether settings naming a host by name may use `port`: an SMTP port, or any when
    /// the operator allows ranges (the name may resolve into one; the connect-time check
    /// decides).
    pub fn name_may_use(&self, port: u16) -> bool {
        SMTP_PORTS.contains(&port) || !self.allow.is_empty()
    }

    /// Whether settings naming the address `ip` may be saved: the address is in an
    /// allowed range, or public (then only on an SMTP port, checked apart).
    pub fn address_may_be_saved(&self, ip: IpAddr) -> bool {
        self.allowed_range(ip) || is_public(ip)
    }

    /// Whether settings naming the address `ip` may use `port`.
    pub fn address_may_use(&self, ip: IpAddr, port: u16) -> bool {
        self.allowed_range(ip) || SMTP_PORTS.contains(&port)
    }
}

/// The ports a webhook on a public address may use (HTTPS only).
pub const WEBHOOK_PORTS: [u16; 2] = [443, 8443];

/// What a webhook's refusal says, wherever it is reported.
pub const WEBHOOK_RULE: &str = "webhooks may reach only public addresses over https on ports 443 and 8443 (the operator can allow more, where plain http goes too)";

/// The rule, as a delivery that found no address it allows reports it.
pub const WEBHOOK_RULE_SHORT: &str = "that webhooks may reach (public addresses over https on ports 443 and 8443, or ones the operator allows)";

impl Policy {
    /// Whether a webhook may connect to `address`, over TLS when `https`: anywhere in the
    /// operator's ranges, else a public address over https on a webhook port.
    pub fn allows_webhook(&self, address: SocketAddr, https: bool) -> bool {
        self.allowed_range(address.ip())
            || (https && is_public(address.ip()) && WEBHOOK_PORTS.contains(&address.port()))
    }

    /// Whether a webhook URL may be saved, from what is known before resolving it: its
    /// scheme, port and host's address when the host is one (`None`: a name, checked on
    /// what it resolves to at each delivery).
    pub fn webhook_may_be_saved(&self, address: Option<IpAddr>, port: u16, https: bool) -> bool {
        match address {
            Some(ip) => self.allows_webhook(SocketAddr::new(ip, port), https),
            // A name may resolve into the operator's ranges, where anything goes.
            None => !self.allow.is_empty() || (https && WEBHOOK_PORTS.contains(&port)),
        }
    }
}

/// Why no connection was made.
#[derive(Debug)]
pub enum ConnectError {
    /// The policy refuses the destination; says why.
    Refused(String),
    /// The name does not resolve, or to no address. The cause is for the operator's log.
    NoAddress(String),
    /// No address accepted: refused, dropped or unreachable alike. The cause is for the
    /// operator's log only: tenants' probes must not tell a closed port from a filtered one.
    Unreachable(String),
}

/// Resolves `host`, checks every address against `policy` (`None`: the operator's own
/// relay, not checked), and connects to the first checked address that accepts; answers
/// the connection and the address it reached.
pub async fn connect(
    host: &str,
    port: u16,
    policy: Option<&Policy>,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let allowed = |address| policy.is_none_or(|policy| policy.allows(address));
    connect_where(host, port, allowed, RULE).await
}

/// Resolves `host` (unless it is an address), checks every address with `allowed` (one
/// refused refuses the name, whose answers could alternate, with `rule` as the reason),
/// and connects to the first that accepts; answers the connection and the address.
pub async fn connect_where(
    host: &str,
    port: u16,
    allowed: impl Fn(SocketAddr) -> bool,
    rule: &str,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| ConnectError::NoAddress(format!("cannot resolve {host}: {e}")))?
            .collect(),
    };
    if addresses.is_empty() {
        return Err(ConnectError::NoAddress(format!("{host} has no address")));
    }
    if addresses.iter().any(|address| !allowed(*address)) {
        return Err(ConnectError::Refused(rule.to_string()));
    }
    let mut last = String::new();
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok((stream, address)),
            Err(error) => last = format!("{address}: {error}"),
        }
    }
    Err(ConnectError::Unreachable(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_are_parsed_and_matched() {
        let private = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(private.contains(ip("10.1.2.3")));
        assert!(!private.contains(ip("11.0.0.1")));
        assert!(
            private.contains(ip("::ffff:10.0.0.1")),
            "IPv4 written as IPv6"
        );
        let one = Cidr::parse("::1").unwrap();
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(
            !Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("2001:4860::8888"))
        );
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "localhost/8",
            "10.0.0.0/x",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_internet_addresses_are_public() {
        for public in ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "2a00:1450::1"] {
            assert!(is_public(ip(public)), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.2",
            "::1",
            "::",
            "fd00::2",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "2001::1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip(private)), "{private}");
        }
    }

    #[test]
    fn the_policy_opens_ranges_to_every_port() {
        let strict = Policy::default();
        assert!(strict.allows("8.8.8.8:587".parse().unwrap()));
        assert!(!strict.allows("8.8.8.8:22".parse().unwrap()));
        assert!(!strict.allows("127.0.0.1:25".parse().unwrap()));
        assert!(!strict.allows("[::ffff:10.0.0.1]:25".parse().unwrap()));
        let open = Policy::parse(&["127.0.0.0/8".into(), " ::1/128 ".into(), "".into()]).unwrap();
        assert!(open.allows("127.0.0.1:2222".parse().unwrap()));
        assert!(open.allows("[::1]:2222".parse().unwrap()));
        assert!(!open.allows("10.0.0.1:25".parse().unwrap()));
        assert!(open.allows("8.8.8.8:465".parse().unwrap()));
        assert!(!open.allows("8.8.8.8:80".parse().unwrap()));
        assert!(Policy::parse(&["127.0.0.0/40".into()]).is_err());
    }

    #[tokio::test]
    async fn a_name_is_checked_on_what_it_resolves_to() {
        let refused = connect("localhost", 25, Some(&Policy::default())).await;
        assert!(
            matches!(refused, Err(ConnectError::Refused(_))),
            "{refused:?}"
        );
        let refused = connect("2130706433", 25, Some(&Policy::default())).await;
        assert!(
            matches!(refused, Err(ConnectError::Refused(_))),
            "{refused:?}"
        );
    }
}
