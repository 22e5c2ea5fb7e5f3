//! `HelloName`: the name mailroom gives in EHLO, built only by `parse`.

use std::fmt;
use std::net::IpAddr;

use super::DomainName;

/// A domain name or an address literal, as RFC 5321 allows after EHLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloName {
    Domain(DomainName),
    Address(IpAddr),
}

impl HelloName {
    /// `mail.example.com`, `192.0.2.1`, `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
    pub fn parse(input: &str) -> Result<HelloName, String> {
        let trimmed = input.trim();
        let literal = trimmed
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'));
        let address = match literal {
            Some(inner) => {
                let bare = inner
                    .strip_prefix("IPv6:")
                    .or_else(|| inner.strip_prefix("ipv6:"))
                    .unwrap_or(inner);
                Some(bare.parse::<IpAddr>().map_err(|_| {
                    format!("`{trimmed}` is not an address literal such as [192.0.2.1]")
                })?)
            }
            None => trimmed.parse::<IpAddr>().ok(),
        };
        match address {
            Some(address) => Ok(HelloName::Address(address)),
            None => DomainName::parse(trimmed)
                .map(HelloName::Domain)
                .map_err(|e| {
                    format!("`{trimmed}` is neither a domain name nor an address literal: {e}")
                }),
        }
    }
}

/// As it goes after EHLO.
impl fmt::Display for HelloName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HelloName::Domain(name) => write!(f, "{name}"),
            HelloName::Address(IpAddr::V4(address)) => write!(f, "[{address}]"),
            HelloName::Address(IpAddr::V6(address)) => write!(f, "[IPv6:{address}]"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for HelloName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        HelloName::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::HelloName;

    #[test]
    fn names_and_address_literals() {
        let shown = |input: &str| HelloName::parse(input).map(|n| n.to_string());
        assert_eq!(shown("Mail.Example.com").unwrap(), "mail.example.com");
        assert_eq!(shown("192.0.2.1").unwrap(), "[192.0.2.1]");
        assert_eq!(shown("[192.0.2.1]").unwrap(), "[192.0.2.1]");
        assert_eq!(shown("[IPv6:2001:db8::1]").unwrap(), "[IPv6:2001:db8::1]");
        assert_eq!(shown("2001:db8::1").unwrap(), "[IPv6:2001:db8::1]");
        for bad in [
            "",
            "localhost",
            "mail example.com",
            "mail.example.com\r\nMAIL FROM:<x@y>",
            "[not-an-address]",
            "[192.0.2.1",
            "http://mail.example.com",
        ] {
            assert!(HelloName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
