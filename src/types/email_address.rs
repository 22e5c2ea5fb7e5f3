//! `EmailAddress`: a mailbox address as mailroom accepts it, built only by `parse`.

use std::fmt;

use super::DomainName;

/// `local@domain`: a dot-atom local part (RFC 5322) of at most 64 octets and a domain that
/// passes the `DomainName` rules, at most 254 octets in all (RFC 5321). The domain is
/// normalised; the local part keeps its case, as mail servers may tell cases apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress {
    local: String,
    domain: DomainName,
}

const MAX_LOCAL: usize = 64;
const MAX_TOTAL: usize = 254;

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

/// The part before the @: a dot-atom (RFC 5322) of 1 to 64 octets (RFC 5321).
pub fn check_local_part(local: &str) -> Result<(), String> {
    if local.is_empty() {
        return Err("the part before the @ is empty".to_string());
    }
    if local.len() > MAX_LOCAL {
        return Err(format!(
            "the part before the @ is longer than {MAX_LOCAL} characters"
        ));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(
            "the part before the @ cannot start or end with a dot, or hold two in a row"
                .to_string(),
        );
    }
    if let Some(bad) = local.chars().find(|c| !is_atext(*c) && *c != '.') {
        return Err(format!(
            "the part before the @ cannot contain `{}`",
            bad.escape_default()
        ));
    }
    Ok(())
}

impl EmailAddress {
    pub fn parse(input: &str) -> Result<EmailAddress, String> {
        let input = input.trim();
        if input.is_empty() {
            return Err("an email address is required".to_string());
        }
        if input.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("an email address cannot contain spaces or control characters".to_string());
        }
        let Some((local, domain)) = input.rsplit_once('@') else {
            return Err(format!(
                "`{input}` has no @; give an address such as name@example.com"
            ));
        };
        check_local_part(local)?;
        let domain = DomainName::parse(domain).map_err(|e| format!("after the @: {e}"))?;
        let address = EmailAddress {
            local: local.to_string(),
            domain,
        };
        if address.to_string().len() > MAX_TOTAL {
            return Err(format!(
                "an email address is at most {MAX_TOTAL} characters"
            ));
        }
        Ok(address)
    }

    pub fn local(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &DomainName {
        &self.domain
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

#[cfg(test)]
mod tests {
    use super::EmailAddress;

    #[test]
    fn addresses_are_parsed_and_their_domain_normalised() {
        let address = EmailAddress::parse(" Jane.Doe+tag@Customer.COM ").unwrap();
        assert_eq!(address.to_string(), "Jane.Doe+tag@customer.com");
        assert_eq!(address.domain().as_str(), "customer.com");
        assert_eq!(
            EmailAddress::parse("a@bücher.de").unwrap().to_string(),
            "a@xn--bcher-kva.de"
        );
    }

    #[test]
    fn bad_addresses_are_refused_with_a_reason() {
        for (input, reason) in [
            ("", "required"),
            ("jane", "no @"),
            ("@customer.com", "empty"),
            ("jane@", "after the @"),
            ("jane@localhost", "no dot"),
            ("ja ne@customer.com", "spaces"),
            ("jane..doe@customer.com", "two in a row"),
            (".jane@customer.com", "start or end"),
            ("ja\"ne@customer.com", "cannot contain"),
            ("jane@customer.com\r\nBcc: x@y.com", "spaces or control"),
        ] {
            let error = EmailAddress::parse(input).unwrap_err();
            assert!(error.contains(reason), "{input:?}: {error}");
        }
        let long_local = format!("{}@customer.com", "a".repeat(65));
        assert!(EmailAddress::parse(&long_local).unwrap_err().contains("64"));
    }
}
