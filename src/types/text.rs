//! Free text: names and descriptions people type, text put into HTML, and text from
//! outside written into logs.

use std::fmt;

/// Characters that change how the text around them is shown while showing nothing
/// themselves: bidi embeddings, overrides, isolates and marks, and zero-width characters.
/// In a name they make one name look like another (`admin\u{202E}txt.exe`), or two equal
/// looking names differ.
pub fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{061C}'
            | '\u{200B}'..='\u{200D}'
            | '\u{2060}'
            | '\u{FEFF}'
    )
}

/// Why `value` (already trimmed) may not be shown as a name, if it may not.
pub fn check_text(value: &str) -> Result<(), String> {
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".to_string());
    }
    if let Some(c) = value.chars().find(|c| is_invisible_format(*c)) {
        return Err(format!(
            "must not contain invisible or direction-changing characters such as U+{:04X}",
            u32::from(c)
        ));
    }
    Ok(())
}

/// A human-readable name: trimmed, 1 to `max_chars` characters, no control characters,
/// no bidi controls and no zero-width characters.
pub fn parse_name(value: &str, max_chars: usize) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("must not be empty".to_string());
    }
    if value.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    check_text(value)?;
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

/// Shows text from outside (a relay's reply, a header, a name) with its control and
/// invisible formatting characters spelled out (`\x1b`, `\r`, `\u{202e}`), so that it
/// cannot forge log lines, drive a terminal or hide itself where it is written. Backslashes
/// stay as they are, so escaping twice changes nothing.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(|c: char| c.is_control() || is_invisible_format(c)) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\r' => f.write_str("\\r")?,
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                '\0' => f.write_str("\\0")?,
                c if u32::from(c) < 0x100 => write!(f, "\\x{:02x}", u32::from(c))?,
                c => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// `Escaped`, as an owned string (to store, or to hand on).
pub fn escape_controls(value: &str) -> String {
    Escaped(value).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(parse_name("  Acme  ", 10).unwrap(), "Acme");
        assert!(parse_name("   ", 10).is_err());
        assert!(parse_name("ééééééééééé", 10).is_err());
        assert!(parse_name("éééééééééé", 10).is_ok());
        assert!(parse_name("a\u{0}b", 10).is_err());
        assert!(parse_name("a\nb", 10).is_err());
    }

    #[test]
    fn names_refuse_bidi_controls_and_zero_width_characters() {
        for c in [
            '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
            '\u{200B}', '\u{200D}', '\u{2060}', '\u{FEFF}',
        ] {
            let error = parse_name(&format!("ab{c}cd"), 10).unwrap_err();
            assert!(error.contains("U+"), "{c:?}: {error}");
        }
        assert!(parse_name("Zoë Łukasz 山田", 20).is_ok());
        assert!(parse_name("مرحبا", 20).is_ok());
    }

    #[test]
    fn escaping_spells_out_control_characters_once() {
        let raw = "554 no\u{1b}[31m\0x\r\ny\u{7f}\u{85}\u{202e}é\\";
        let escaped = escape_controls(raw);
        assert_eq!(escaped, "554 no\\x1b[31m\\0x\\r\\ny\\x7f\\x85\\u{202e}é\\");
        assert!(!escaped.chars().any(char::is_control));
        assert_eq!(escape_controls(&escaped), escaped);
    }
}
