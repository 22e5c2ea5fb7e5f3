//! The SPF record mailroom's DNS server publishes at the include name it advises tenants
//! to use, built from the operator's settings and checked when mailroom starts: a record
//! that a receiver would find broken must stop the start, not every tenant's SPF.

use std::net::IpAddr;

use crate::config::Settings;

/// An SPF record and the name it is published at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfRecord {
    /// Lowercase, without the trailing dot.
    pub name: String,
    pub value: String,
}

/// DNS lookups one SPF evaluation may cause (RFC 7208 §4.6.4); the tenant's include of
/// mailroom's record is one of them.
const LOOKUP_LIMIT: usize = 10;

/// Upstream includes mailroom's record may hold. Each costs the tenant one lookup and its
/// own (a provider's record often spends two to four), out of the tenant's ten, which their
/// own `mx`, `a` and includes need too.
const UPSTREAM_LIMIT: usize = 3;

/// A plain 512-byte UDP answer holds the record (RFC 7208 §3.4), so that no receiver needs
/// to retry over TCP: the question and the answer each name the record's owner; the
/// question's and the record's fixed fields take 14 bytes, and the header and an OPT
/// record fit in the 64 bytes the server keeps spare before it flags an answer truncated.
const UDP_ANSWER: usize = 512;
const ANSWER_OVERHEAD: usize = 4 + 10 + 64;

/// The record mailroom's DNS server answers at `spf_include`, when that name is in its zone
/// and the settings give it content; an error names the setting that is wrong.
pub fn published(settings: &Settings) -> Result<Option<SpfRecord>, String> {
    let zone = settings
        .dkim_zone
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let networks = settings
        .spf_ips
        .iter()
        .map(|network| mechanism(network).map_err(|e| format!("MAILROOM_SPF_IPS: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let configured = !networks.is_empty() || !settings.spf_upstream.is_empty();
    let Some(name) = settings.spf_include() else {
        return Ok(None);
    };
    spf_domain(&name).map_err(|e| format!("MAILROOM_SPF_INCLUDE: {e}"))?;
    if !in_zone(&name, &zone) {
        if configured {
            return Err(format!(
                "MAILROOM_SPF_INCLUDE ({name}) is outside mailroom's zone ({zone}), so \
                 mailroom does not publish it: put the addresses of MAILROOM_SPF_IPS and \
                 the includes of MAILROOM_SPF_UPSTREAM in the record you publish there, and \
                 unset them"
            ));
        }
        return Ok(None);
    }
    if !configured {
        return Err(format!(
            "MAILROOM_SPF_INCLUDE ({name}) is in mailroom's zone, which answers it from \
             MAILROOM_SPF_IPS and MAILROOM_SPF_UPSTREAM: set at least one, or unset \
             MAILROOM_SPF_INCLUDE to advise no SPF record"
        ));
    }
    let mut terms = vec!["v=spf1".to_string()];
    terms.extend(networks);
    for upstream in &settings.spf_upstream {
        let upstream = spf_domain(upstream).map_err(|e| format!("MAILROOM_SPF_UPSTREAM: {e}"))?;
        if upstream == name {
            return Err(format!(
                "MAILROOM_SPF_UPSTREAM: {upstream} is the record itself; an SPF record \
                 that includes itself never ends"
            ));
        }
        if in_zone(&upstream, &zone) {
            return Err(format!(
                "MAILROOM_SPF_UPSTREAM: {upstream} is in mailroom's zone, which answers \
                 nothing there"
            ));
        }
        terms.push(format!("include:{upstream}"));
    }
    let includes = settings.spf_upstream.len();
    if includes > UPSTREAM_LIMIT {
        return Err(format!(
            "MAILROOM_SPF_UPSTREAM: {includes} includes, more than {UPSTREAM_LIMIT}: with the \
             tenant's include of this record and each upstream record's own lookups they \
             would spend most of SPF's limit of {LOOKUP_LIMIT} DNS lookups, which the \
             tenant's own record needs too"
        ));
    }
    // The include is a match only for the addresses listed; anything else is left to the
    // rest of the tenant's record.
    terms.push("-all".to_string());
    let value = terms.join(" ");
    let size =
        ANSWER_OVERHEAD + 2 * (name.len() + 2) + value.len() + character_strings(&value).len();
    if size > UDP_ANSWER {
        return Err(format!(
            "MAILROOM_SPF_IPS and MAILROOM_SPF_UPSTREAM make an SPF record of {} bytes, \
             too long for a {UDP_ANSWER}-byte DNS answer: list networks rather than single \
             addresses",
            value.len()
        ));
    }
    Ok(Some(SpfRecord { name, value }))
}

/// A TXT value as DNS character-strings of at most 255 bytes each; SPF and DKIM readers
/// join them without separators (RFC 7208 §3.3, RFC 6376 §3.6.2.2).
pub fn character_strings(value: &str) -> Vec<String> {
    let mut strings = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let mut end = rest.len().min(255);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        strings.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    if strings.is_empty() {
        strings.push(String::new());
    }
    strings
}

fn in_zone(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

/// `ip4:…` or `ip6:…` for an address or a network in CIDR notation.
fn mechanism(text: &str) -> Result<String, String> {
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let address: IpAddr = address
        .parse()
        .map_err(|_| format!("`{text}` is not an IP address or a network such as 192.0.2.0/24"))?;
    let (kind, bits) = match address {
        IpAddr::V4(_) => ("ip4", 32),
        IpAddr::V6(_) => ("ip6", 128),
    };
    let prefix = match prefix {
        None => bits,
        Some(prefix) => prefix
            .parse::<u32>()
            .ok()
            .filter(|p| *p <= bits)
            .ok_or_else(|| format!("`{text}`: the prefix length is 0 to {bits}"))?,
    };
    if prefix == 0 {
        return Err(format!("`{text}` authorises every address"));
    }
    let host_bits = bits - prefix;
    let number = match address {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    };
    if host_bits > 0 && number & ((1u128 << host_bits) - 1) != 0 {
        return Err(format!(
            "`{text}` has bits set after the prefix; give the network's first address"
        ));
    }
    Ok(if prefix == bits {
        format!("{kind}:{address}")
    } else {
        format!("{kind}:{address}/{prefix}")
    })
}

/// A domain name as SPF names it: letters, digits, hyphens and underscores (`_spf.…`), no
/// macros, at least two labels. Answers it lowercase, without the trailing dot.
fn spf_domain(text: &str) -> Result<String, String> {
    let name = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = name.split('.').collect();
    let fine = name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && !labels[labels.len() - 1].bytes().all(|b| b.is_ascii_digit());
    if fine {
        Ok(name)
    } else {
        Err(format!("`{text}` is not a domain name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ips: &[&str], upstream: &[&str]) -> Settings {
        Settings {
            dkim_zone: "dkim.example.net".into(),
            spf_ips: ips.iter().map(|s| s.to_string()).collect(),
            spf_upstream: upstream.iter().map(|s| s.to_string()).collect(),
            ..Settings::default()
        }
    }

    #[test]
    fn addresses_networks_and_upstreams_make_one_record() {
        let record = published(&settings(
            &[
                "192.0.2.10",
                "198.51.100.0/24",
                "2001:DB8::/32",
                "2001:db8::1/128",
            ],
            &["_spf.Relay.example."],
        ))
        .unwrap()
        .unwrap();
        assert_eq!(record.name, "spf.dkim.example.net");
        assert_eq!(
            record.value,
            "v=spf1 ip4:192.0.2.10 ip4:198.51.100.0/24 ip6:2001:db8::/32 ip6:2001:db8::1 \
             include:_spf.relay.example -all"
        );
    }

    #[test]
    fn nothing_configured_publishes_and_advises_nothing() {
        let s = settings(&[], &[]);
        assert_eq!(s.spf_include(), None);
        assert_eq!(published(&s).unwrap(), None);
    }

    #[test]
    fn an_include_in_the_zone_needs_content() {
        let s = Settings {
            spf_include: Some("_spf.dkim.example.net".into()),
            ..settings(&[], &[])
        };
        let error = published(&s).unwrap_err();
        assert!(error.contains("MAILROOM_SPF_IPS"), "{error}");
        let s = Settings {
            spf_include: Some("_spf.dkim.example.net".into()),
            ..settings(&["192.0.2.1"], &[])
        };
        assert_eq!(
            published(&s).unwrap().unwrap().name,
            "_spf.dkim.example.net"
        );
    }

    #[test]
    fn an_include_outside_the_zone_is_the_operators() {
        let s = Settings {
            spf_include: Some("_spf.operator.example".into()),
            ..settings(&[], &[])
        };
        assert_eq!(published(&s).unwrap(), None);
        assert_eq!(s.spf_include().as_deref(), Some("_spf.operator.example"));
        let s = Settings {
            spf_include: Some("_spf.operator.example".into()),
            ..settings(&["192.0.2.1"], &[])
        };
        assert!(published(&s).unwrap_err().contains("outside"));
    }

    #[test]
    fn malformed_settings_are_refused_naming_them() {
        for (ips, upstream, expected) in [
            (&["192.0.2.300"][..], &[][..], "MAILROOM_SPF_IPS"),
            (&["192.0.2.0/33"], &[], "prefix"),
            (&["192.0.2.1/24"], &[], "first address"),
            (&["0.0.0.0/0"], &[], "every address"),
            (&["::/0"], &[], "every address"),
            (&["192.0.2.1 include:evil.example"], &[], "MAILROOM_SPF_IPS"),
            (&[], &["relay"], "MAILROOM_SPF_UPSTREAM"),
            (&[], &["%{i}.relay.example"], "MAILROOM_SPF_UPSTREAM"),
            (&[], &["relay.example -all"], "MAILROOM_SPF_UPSTREAM"),
            (&[], &["spf.dkim.example.net"], "itself"),
            (&[], &["x.dkim.example.net"], "zone"),
        ] {
            let error = published(&settings(ips, upstream)).unwrap_err();
            assert!(error.contains(expected), "{ips:?} {upstream:?}: {error}");
        }
    }

    #[test]
    fn the_record_keeps_to_the_lookup_limit() {
        let three: Vec<String> = (0..3).map(|i| format!("r{i}.relay.example")).collect();
        let three: Vec<&str> = three.iter().map(String::as_str).collect();
        assert!(published(&settings(&[], &three)).is_ok());
        let four: Vec<String> = (0..4).map(|i| format!("r{i}.relay.example")).collect();
        let four: Vec<&str> = four.iter().map(String::as_str).collect();
        let error = published(&settings(&[], &four)).unwrap_err();
        assert!(error.contains("more than 3"), "{error}");
    }

    #[test]
    fn the_record_fits_a_plain_udp_answer() {
        let many: Vec<String> = (0..40).map(|i| format!("192.0.2.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let error = published(&settings(&many, &[])).unwrap_err();
        assert!(error.contains("512"), "{error}");
        let some: Vec<String> = (0..15).map(|i| format!("2001:db8:{i}::/48")).collect();
        let some: Vec<&str> = some.iter().map(String::as_str).collect();
        let record = published(&settings(&some, &[])).unwrap().unwrap();
        assert!(record.value.len() > 255, "long enough to need two strings");
    }

    #[test]
    fn long_values_split_into_255_byte_strings() {
        let value = "x".repeat(600);
        let strings = character_strings(&value);
        assert_eq!(
            strings.iter().map(String::len).collect::<Vec<_>>(),
            vec![255, 255, 90]
        );
        assert_eq!(strings.concat(), value);
        assert_eq!(character_strings("v=spf1 -all"), vec!["v=spf1 -all"]);
        assert_eq!(character_strings(""), vec![""]);
    }
}
