//! Free text: names and descriptions people type, and text put into HTML.

/// A human-readable name: trimmed, 1 to `max_chars` characters, no control characters.
pub fn parse_name(value: &str, max_chars: usize) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("must not be empty".to_string());
    }
    if value.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".to_string());
    }
    Ok(value.to_string())
}

/// `value` with the characters HTML gives a meaning to replaced by entities.
pub fn escape_html(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_name;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(parse_name("  Acme  ", 10).unwrap(), "Acme");
        assert!(parse_name("   ", 10).is_err());
        assert!(parse_name("ééééééééééé", 10).is_err());
        assert!(parse_name("éééééééééé", 10).is_ok());
        assert!(parse_name("a\u{0}b", 10).is_err());
        assert!(parse_name("a\nb", 10).is_err());
    }
}
