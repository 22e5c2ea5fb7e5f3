//! Emails are rendered from templates, one folder per kind under `templates/`, each with
//! `subject.txt`, `body.txt` and `body.html`, in Jinja syntax (`{{ name }}`).
//!
//! Each part is rendered in one pass by a template engine: a value is output as text and
//! never read as a template itself, so a name such as `{{ link }}` stays those characters.
//! In `body.html` values are HTML-escaped.
//!
//! Values come in two kinds. `clear` values may be seen by anyone who can read the
//! account's delivery log: the subject is rendered from them alone, because it is stored
//! and listed in clear. `secret` values (links holding tokens, codes) reach only the two
//! bodies, which are sealed at rest. A template that uses a value it was not given fails
//! to render (the unit tests render every one), so a secret cannot slip into a subject.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

/// The kinds of email mailroom sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Test,
    SenderVerification,
    Invitation,
    PasswordReset,
}

const ALL: [Kind; 4] = [
    Kind::Test,
    Kind::SenderVerification,
    Kind::Invitation,
    Kind::PasswordReset,
];

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Test => "test",
            Kind::SenderVerification => "sender_verification",
            Kind::Invitation => "invitation",
            Kind::PasswordReset => "password_reset",
        }
    }

    /// Each part's name (its file under `templates/`) and source.
    fn sources(self) -> [(&'static str, &'static str); 3] {
        macro_rules! folder {
            ($name:literal) => {
                [
                    (
                        concat!($name, "/subject.txt"),
                        include_str!(concat!("../../templates/", $name, "/subject.txt")),
                    ),
                    (
                        concat!($name, "/body.txt"),
                        include_str!(concat!("../../templates/", $name, "/body.txt")),
                    ),
                    (
                        concat!($name, "/body.html"),
                        include_str!(concat!("../../templates/", $name, "/body.html")),
                    ),
                ]
            };
        }
        match self {
            Kind::Test => folder!("test"),
            Kind::SenderVerification => folder!("sender_verification"),
            Kind::Invitation => folder!("invitation"),
            Kind::PasswordReset => folder!("password_reset"),
        }
    }
}

/// Every template, parsed once. An empty environment: the templates need no filters, and
/// none can be reached from a value.
static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::empty();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    let mut syntax = SyntaxConfig::builder();
    syntax.keep_trailing_newline(true);
    env.set_syntax(syntax.build().expect("the default delimiters"));
    for kind in ALL {
        for (name, source) in kind.sources() {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("templates/{name}: {e}"));
        }
    }
    env
});

#[derive(Debug, Clone)]
pub struct Rendered {
    pub kind: Kind,
    /// Made of clear values only: it is stored and listed in clear.
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Renders `kind`: the subject from `clear` values alone, the bodies from `clear` and
/// `secret` ones.
pub fn render(
    kind: Kind,
    clear: &[(&str, &str)],
    secret: &[(&str, &str)],
) -> anyhow::Result<Rendered> {
    let context = |values: &[&[(&str, &str)]]| {
        let map: BTreeMap<String, String> = values
            .iter()
            .flat_map(|values| values.iter())
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        minijinja::Value::from(map)
    };
    let clear_only = context(&[clear]);
    let all = context(&[clear, secret]);
    let part = |name: &str, values: &minijinja::Value| -> anyhow::Result<String> {
        let template = TEMPLATES.get_template(name)?;
        template
            .render(values)
            .map_err(|e| anyhow::anyhow!("templates/{name}: {e}"))
    };
    let [(subject, _), (text, _), (html, _)] = kind.sources();
    // One line, whatever a value holds: a line break would end the header.
    let subject = part(subject, &clear_only)?
        .replace(['\r', '\n'], " ")
        .trim()
        .to_string();
    Ok(Rendered {
        kind,
        subject,
        text: part(text, &all)?,
        html: part(html, &all)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INJECTED: &str = "{{ link }}{{code}}{% raw %}x{% endraw %}<script>alert(1)</script>";

    #[test]
    fn values_fill_every_part_and_are_escaped_in_html() {
        let rendered = render(
            Kind::Test,
            &[("from", "a@b.com"), ("to", "<x@y.com>"), ("sent_at", "now")],
            &[],
        )
        .unwrap();
        assert_eq!(rendered.subject, "mailroom test message");
        assert!(rendered.text.contains("reaches <x@y.com>"));
        assert!(rendered.text.ends_with(".\n"));
        assert!(rendered.html.contains("&lt;x@y.com&gt;"));
        assert!(!rendered.html.contains("{{"));
    }

    #[test]
    fn every_template_renders_and_no_subject_needs_a_secret() {
        let secrets = [("link", "https://x/?token=SECRET"), ("code", "123456")];
        let clear = [
            ("inviter", "Acme"),
            ("entity", "Acme"),
            ("role", "viewer"),
            ("greeting", " Jo"),
            ("expires_at", "tomorrow"),
            ("email", "a@b.com"),
            ("scope", "your account"),
            ("from", "a@b.com"),
            ("to", "c@d.com"),
            ("sent_at", "now"),
            ("expires_in", "1 hour"),
        ];
        for kind in ALL {
            let rendered = render(kind, &clear, &secrets).unwrap();
            assert!(!rendered.subject.contains("SECRET"), "{kind:?}");
            assert!(!rendered.subject.contains("123456"), "{kind:?}");
        }
        // A template asking for a value it was not given fails instead of leaving a gap.
        assert!(render(Kind::Invitation, &clear, &[]).is_err());
    }

    #[test]
    fn values_are_never_read_as_templates() {
        let rendered = render(
            Kind::Invitation,
            &[
                ("inviter", INJECTED),
                ("entity", INJECTED),
                ("role", "viewer"),
                ("greeting", ""),
                ("expires_at", "tomorrow"),
            ],
            &[("link", "https://x/?token=SECRET")],
        )
        .unwrap();
        assert_eq!(
            rendered.subject,
            format!("{INJECTED} invites you to {INJECTED}")
        );
        assert!(
            rendered
                .text
                .contains(&format!("join {INJECTED} as viewer"))
        );
        assert_eq!(rendered.text.matches("SECRET").count(), 1);
        assert!(!rendered.html.contains("<script>"));
        assert!(rendered.html.contains("&lt;script&gt;"));
        assert_eq!(rendered.html.matches("SECRET").count(), 1);
    }
}
