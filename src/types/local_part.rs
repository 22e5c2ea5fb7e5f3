//! `LocalPart`: the part of a mailbox address before the @, built only by `parse`.

use std::fmt;

/// A dot-atom of 1 to 64 octets, lowercased (mailboxes are found case-insensitively),
/// without `/`. The mail servers keep a mailbox under `{domain}/{local part}`: with a `/`
/// one mailbox's home would be a folder inside another's (`a/cur` inside `a`'s Maildir).
/// The dot-atom rules already keep out `.` and `..` (no leading dot), so the local part is
/// always one plain folder name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPart(String);

impl LocalPart {
    pub fn parse(input: &str) -> Result<LocalPart, String> {
        let lowered = input.trim().to_ascii_lowercase();
        if !lowered.is_ascii() {
            return Err(
                "local_part may hold only ASCII letters, digits and !#$%&'*+-=?^_`{|}~."
                    .to_string(),
            );
        }
        if lowered.contains('/') {
            return Err(
                "local_part cannot contain `/`: it names the mailbox's folder on the mail server"
                    .to_string(),
            );
        }
        super::email_address::check_local_part(&lowered)
            .map_err(|e| e.replace("the part before the @", "local_part"))?;
        Ok(LocalPart(lowered))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LocalPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::LocalPart;

    #[test]
    fn local_parts_are_lowercased_dot_atoms() {
        assert_eq!(
            LocalPart::parse(" Billing.Team ").unwrap().as_str(),
            "billing.team"
        );
        assert_eq!(LocalPart::parse("a+b").unwrap().as_str(), "a+b");
        for bad in [
            "",
            ".",
            "..",
            ".a",
            "a.",
            "a..b",
            "a b",
            "a@b",
            "é",
            "a/b",
            "../a",
            "a/..",
            "/a",
            "a\\b",
            &"x".repeat(65),
        ] {
            assert!(LocalPart::parse(bad).is_err(), "{bad:?}");
        }
        assert!(LocalPart::parse(&"x".repeat(64)).is_ok());
    }
}
