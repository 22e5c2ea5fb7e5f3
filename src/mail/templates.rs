//! Emails are rendered from templates, one folder per kind under `templates/`, each with
//! `subject.txt`, `body.txt` and `body.html`. `{{name}}` is replaced by a value,
//! HTML-escaped in the HTML body.

use crate::types::text::escape_html;

/// The kinds of email mailroom sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Test,
    SenderVerification,
    Invitation,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Test => "test",
            Kind::SenderVerification => "sender_verification",
            Kind::Invitation => "invitation",
        }
    }

    fn sources(self) -> [&'static str; 3] {
        macro_rules! folder {
            ($name:literal) => {
                [
                    include_str!(concat!("../../templates/", $name, "/subject.txt")),
                    include_str!(concat!("../../templates/", $name, "/body.txt")),
                    include_str!(concat!("../../templates/", $name, "/body.html")),
                ]
            };
        }
        match self {
            Kind::Test => folder!("test"),
            Kind::SenderVerification => folder!("sender_verification"),
            Kind::Invitation => folder!("invitation"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rendered {
    pub kind: Kind,
    pub subject: String,
    pub text: String,
    pub html: String,
}

pub fn render(kind: Kind, values: &[(&str, &str)]) -> Rendered {
    let [subject, text, html] = kind.sources();
    Rendered {
        kind,
        subject: fill(subject, values, |v| v.replace(['\r', '\n'], " "))
            .trim()
            .to_string(),
        text: fill(text, values, str::to_string),
        html: fill(html, values, escape_html),
    }
}

fn fill(template: &str, values: &[(&str, &str)], encode: impl Fn(&str) -> String) -> String {
    values
        .iter()
        .fold(template.to_string(), |out, (name, value)| {
            out.replace(&format!("{{{{{name}}}}}"), &encode(value))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_fill_every_part_and_are_escaped_in_html() {
        let rendered = render(
            Kind::Test,
            &[("from", "a@b.com"), ("to", "<x@y.com>"), ("sent_at", "now")],
        );
        assert_eq!(rendered.subject, "mailroom test message");
        assert!(rendered.text.contains("reaches <x@y.com>"));
        assert!(rendered.html.contains("&lt;x@y.com&gt;"));
        assert!(!rendered.html.contains("{{"));
    }
}
