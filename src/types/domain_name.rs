//! `DomainName`: a domain as mailroom stores it, built only by `parse`.

use std::fmt;

/// A registrable-looking DNS name in ASCII (IDNA A-labels), lowercase, without a
/// trailing dot, with at least two labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainName(String);

const MAX_LENGTH: usize = 253;
const MAX_LABEL: usize = 63;

impl DomainName {
    pub fn parse(input: &str) -> Result<DomainName, String> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err("a domain name is required".to_string());
        }
        if trimmed.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("a domain name cannot contain spaces or control characters".to_string());
        }
        if trimmed.starts_with('[') || trimmed.parse::<std::net::IpAddr>().is_ok() {
            return Err("an IP address is not a domain name".to_string());
        }
        if trimmed.contains('@') || trimmed.contains('/') || trimmed.contains(':') {
            return Err(format!(
                "`{trimmed}` looks like an address or URL; give only the domain, such as example.com"
            ));
        }
        let without_dot = trimmed.strip_suffix('.').unwrap_or(trimmed);
        let ascii = if without_dot.is_ascii() {
            without_dot.to_ascii_lowercase()
        } else {
            idna::domain_to_ascii(without_dot)
                .map_err(|_| format!("`{trimmed}` is not a valid internationalised domain name"))?
        };
        if ascii.len() > MAX_LENGTH {
            return Err(format!("a domain name is at most {MAX_LENGTH} characters"));
        }
        let labels: Vec<&str> = ascii.split('.').collect();
        if labels.len() < 2 {
            return Err(format!(
                "`{trimmed}` has no dot; give a full domain such as example.com"
            ));
        }
        for label in &labels {
            if label.is_empty() {
                return Err(format!(
                    "`{trimmed}` has an empty label (two dots in a row)"
                ));
            }
            if label.len() > MAX_LABEL {
                return Err(format!(
                    "the label `{label}` is longer than {MAX_LABEL} characters"
                ));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(format!(
                    "the label `{label}` may hold only letters, digits and hyphens"
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(format!(
                    "the label `{label}` cannot start or end with a hyphen"
                ));
            }
        }
        let top = labels[labels.len() - 1];
        if top.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "`{trimmed}` ends in a number, so it is not a domain name"
            ));
        }
        if labels.iter().any(|label| label.starts_with("xn--"))
            && idna::domain_to_ascii_strict(&ascii).is_err()
        {
            return Err(format!(
                "`{trimmed}` is not a valid internationalised domain name"
            ));
        }
        Ok(DomainName(ascii))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::DomainName;

    fn ok(input: &str) -> String {
        DomainName::parse(input)
            .unwrap_or_else(|e| panic!("{input}: {e}"))
            .0
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(ok("Customer.COM"), "customer.com");
        assert_eq!(ok(" customer.com. "), "customer.com");
        assert_eq!(ok("mail.customer.co.uk"), "mail.customer.co.uk");
        assert_eq!(ok("bücher.de"), "xn--bcher-kva.de");
        assert_eq!(ok("xn--bcher-kva.de"), "xn--bcher-kva.de");
        assert_eq!(ok("a-b.io"), "a-b.io");
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        for (input, reason) in [
            ("", "required"),
            ("localhost", "no dot"),
            ("192.168.0.1", "IP address"),
            ("[::1]", "IP address"),
            ("user@customer.com", "address or URL"),
            ("https://customer.com", "address or URL"),
            ("a..com", "empty label"),
            ("-a.com", "hyphen"),
            ("a_b.com", "letters, digits and hyphens"),
            ("exa mple.com", "spaces"),
            ("customer.123", "number"),
        ] {
            let error = DomainName::parse(input).unwrap_err();
            assert!(error.contains(reason), "{input}: {error}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(DomainName::parse(&long_label).is_err());
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        assert!(DomainName::parse(&long_name).unwrap_err().contains("253"));
    }
}
