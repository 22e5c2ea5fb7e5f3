//! Turning a queued email into the bytes that travel: MIME (text, HTML, inline parts,
//! attachments), Message-ID, Date, and a DKIM signature when a key is given. An email is
//! composed once, however many recipients it has.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use lettre::Message;
use lettre::message::header::{
    ContentId, ContentTransferEncoding, ContentType, Header, HeaderName, HeaderValue, Headers,
};
use lettre::message::{Body, Mailbox, MultiPart, MultiPartBuilder, SinglePart};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::dkim::Signer;
use super::port::SigningKey;

/// An address with its optional display name, as it appears in From, To, Cc or Reply-To.
#[derive(Debug, Clone, Copy)]
pub struct Address<'a> {
    pub name: Option<&'a str>,
    pub email: &'a str,
}

/// A file carried by an email. With a `content_id` it is shown inline (an HTML part
/// refers to it as `cid:<content_id>`); without one it is a download.
#[derive(Debug, Clone, Copy)]
pub struct Attachment<'a> {
    pub filename: &'a str,
    pub content_type: &'a str,
    pub content_id: Option<&'a str>,
    pub bytes: &'a [u8],
}

/// Everything that goes into the headers and body of one email. Bcc recipients are not
/// here: they travel only in the envelope.
#[derive(Debug, Clone, Copy)]
pub struct Email<'a> {
    pub from: Address<'a>,
    pub to: &'a [Address<'a>],
    pub cc: &'a [Address<'a>],
    pub reply_to: &'a [Address<'a>],
    pub subject: &'a str,
    /// At least one of `text` and `html`.
    pub text: Option<&'a str>,
    pub html: Option<&'a str>,
    pub attachments: &'a [Attachment<'a>],
    /// Extra header fields, emitted in this order after the ones mailroom writes.
    pub headers: &'a [(&'a str, &'a str)],
    /// With its angle brackets: `<id@domain>`.
    pub message_id: &'a str,
    /// Milliseconds since the epoch: when the email was accepted.
    pub date: i64,
}

/// Header fields mailroom writes itself or must never write; a custom header may not
/// take their place.
const RESERVED: [&str; 14] = [
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "content-id",
    "dkim-signature",
];

/// The message of `email`, DKIM-signed for the From domain with each of `keys`.
///
/// The tree has only the levels it needs: `multipart/mixed` (body + attachments) →
/// `multipart/related` (body + inline parts) → `multipart/alternative` (text + HTML).
pub fn compose_email(email: &Email<'_>, keys: &[SigningKey]) -> anyhow::Result<Vec<u8>> {
    let from = mailbox(&email.from)?;
    let domain = from.email.domain().to_ascii_lowercase();
    refuse_controls("the subject", email.subject)?;
    let message_id = email.message_id;
    anyhow::ensure!(
        message_id.len() > 2
            && message_id.starts_with('<')
            && message_id.ends_with('>')
            && message_id.bytes().all(|b| b.is_ascii_graphic()),
        "the Message-ID {message_id:?} is not <id@domain>"
    );
    let date = std::time::UNIX_EPOCH + std::time::Duration::from_millis(email.date.max(0) as u64);
    // The envelope is the caller's to build (Bcc lives only there); lettre wants one, so
    // it gets a stand-in and never derives one from the headers.
    let stand_in =
        lettre::address::Envelope::new(Some(from.email.clone()), vec![from.email.clone()])?;
    let mut builder = Message::builder()
        .envelope(stand_in)
        .from(from)
        .raw_header(subject(email.subject))
        .date(date)
        .message_id(Some(message_id.to_string()));
    for address in email.to {
        builder = builder.to(mailbox(address)?);
    }
    for address in email.cc {
        builder = builder.cc(mailbox(address)?);
    }
    for address in email.reply_to {
        builder = builder.reply_to(mailbox(address)?);
    }
    let message = match tree(email)? {
        Node::Single(part) => builder.singlepart(part)?,
        Node::Multi(part) => builder.multipart(part)?,
    };
    let mut bytes = message.formatted();
    if !email.headers.is_empty() {
        bytes = with_custom_headers(bytes, email.headers)?;
    }
    // Receivers may refuse or cut a longer line; the bodies are encoded short by lettre,
    // the header is checked here.
    let head = &bytes[..bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(bytes.len())];
    anyhow::ensure!(
        head.split(|&b| b == b'\n').all(|line| line.len() <= 999),
        "a header line of the email would be longer than 998 octets"
    );
    if !keys.is_empty() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let signers = keys
            .iter()
            .map(opened)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let signers: Vec<(&str, &Signer)> = keys
            .iter()
            .zip(&signers)
            .map(|(key, signer)| (key.selector.as_str(), signer.as_ref()))
            .collect();
        bytes = super::dkim::sign(&bytes, &domain, &signers, now)?;
    }
    Ok(bytes)
}

/// The Subject field as lettre writes it, unless lettre would leave ASCII as it is where
/// that goes wrong: readers would decode an `=?` as an encoded word, and a word too long
/// for a line cannot be folded. Then the whole text is written as encoded words, short
/// enough for a line each.
fn subject(text: &str) -> HeaderValue {
    let name = HeaderName::new_from_ascii_str("Subject");
    if !text.contains("=?") && text.split([' ', '\t']).all(|word| word.len() <= 900) {
        return HeaderValue::new(name, text.to_string());
    }
    let mut words = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(39);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (word, tail) = rest.split_at(end);
        words.push(format!("=?utf-8?b?{}?=", STANDARD.encode(word)));
        rest = tail;
    }
    HeaderValue::dangerous_new_pre_encoded(name, text.to_string(), words.join("\r\n "))
}

fn mailbox(address: &Address<'_>) -> anyhow::Result<Mailbox> {
    let email: lettre::Address = address
        .email
        .parse()
        .map_err(|e| anyhow::anyhow!("{:?} is not an email address: {e}", address.email))?;
    let name = match address.name {
        Some(name) => {
            refuse_controls("a display name", name)?;
            Some(name.to_string())
        }
        None => None,
    };
    Ok(Mailbox::new(name, email))
}

/// The caller checked these already; a control character reaching a header would let a
/// value write header fields of its own, so it is refused here too.
fn refuse_controls(what: &str, value: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !value.chars().any(char::is_control),
        "{what} contains a control character"
    );
    Ok(())
}

enum Node {
    Single(SinglePart),
    Multi(MultiPart),
}

impl Node {
    /// The first part of a new multipart.
    fn first_in(self, builder: MultiPartBuilder) -> MultiPart {
        match self {
            Node::Single(part) => builder.singlepart(part),
            Node::Multi(part) => builder.multipart(part),
        }
    }
}

fn tree(email: &Email<'_>) -> anyhow::Result<Node> {
    let text = email.text.map(|text| {
        SinglePart::builder()
            .header(ContentType::TEXT_PLAIN)
            .body(text.to_string())
    });
    let html = email.html.map(|html| {
        SinglePart::builder()
            .header(ContentType::TEXT_HTML)
            .body(html.to_string())
    });
    let mut node = match (text, html) {
        (Some(text), Some(html)) => {
            Node::Multi(MultiPart::alternative().singlepart(text).singlepart(html))
        }
        (Some(part), None) | (None, Some(part)) => Node::Single(part),
        (None, None) => anyhow::bail!("an email needs a text or an HTML body"),
    };
    let (inline, attached): (Vec<_>, Vec<_>) = email
        .attachments
        .iter()
        .partition(|a| a.content_id.is_some());
    if !inline.is_empty() {
        let mut related = node.first_in(MultiPart::related());
        for attachment in inline {
            related = related.singlepart(file(attachment)?);
        }
        node = Node::Multi(related);
    }
    if !attached.is_empty() {
        let mut mixed = node.first_in(MultiPart::mixed());
        for attachment in attached {
            mixed = mixed.singlepart(file(attachment)?);
        }
        node = Node::Multi(mixed);
    }
    Ok(node)
}

/// One attachment as a base64 part: base64 carries any bytes, and its lines stay short.
fn file(attachment: &Attachment<'_>) -> anyhow::Result<SinglePart> {
    ContentType::parse(attachment.content_type)
        .map_err(|e| anyhow::anyhow!("{:?} is not a content type: {e}", attachment.content_type))?;
    let mut given = attachment.content_type.split(';');
    let essence = given.next().unwrap_or_default().trim().to_ascii_lowercase();
    // A multipart or message type on a file would make readers take its bytes for MIME
    // structure.
    anyhow::ensure!(
        !essence.starts_with("multipart/") && !essence.starts_with("message/"),
        "an attachment cannot be of type {essence}"
    );
    // Of the parameters only the charset says something about the bytes; the name is
    // mailroom's to write.
    let charset = given
        .filter_map(|param| param.split_once('='))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case("charset"))
        .map(|(_, value)| value.trim().trim_matches('"'))
        .filter(|value| {
            !value.is_empty()
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        });
    refuse_controls("a file name", attachment.filename)?;
    let fallback = ascii_fallback(attachment.filename);
    let content_type = match charset {
        Some(charset) => format!("{essence}; charset={charset};\r\n name=\"{fallback}\""),
        None => format!("{essence};\r\n name=\"{fallback}\""),
    };
    let body = Body::new_with_encoding(attachment.bytes.to_vec(), ContentTransferEncoding::Base64)
        .map_err(|_| anyhow::anyhow!("the attachment cannot be encoded"))?;
    let builder = SinglePart::builder().header(FileType(written("Content-Type", content_type)));
    let builder = match attachment.content_id {
        Some(id) => {
            anyhow::ensure!(
                !id.is_empty()
                    && id.len() <= 255
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"<>\"\\".contains(&b)),
                "the content id {id:?} is not usable: printable ASCII without <, >, \" or \\"
            );
            builder
                .header(ContentId::from(format!("<{id}>")))
                .header(disposition("inline", attachment.filename, &fallback))
        }
        None => builder.header(disposition("attachment", attachment.filename, &fallback)),
    };
    Ok(builder.body(body))
}

/// The file name the way mail clients write it: a plain ASCII `filename` when the name is
/// one, else the exact name in UTF-8 as RFC 2231 `filename*`. Both in one field would be
/// a duplicate parameter that readers settle differently, so the ASCII stand-in for
/// readers that do not know RFC 2231 goes in Content-Type's `name` instead.
fn disposition(kind: &str, filename: &str, fallback: &str) -> Disposition {
    let mut value = kind.to_string();
    if fallback == filename {
        value.push_str(&format!("; filename=\"{filename}\""));
    } else {
        let encoded = utf8_percent_encode(filename, NOT_ATTRIBUTE_CHAR).to_string();
        if encoded.len() <= NAME_PIECE {
            value.push_str(&format!(";\r\n filename*=utf-8''{encoded}"));
        } else {
            for (i, piece) in pieces(&encoded).enumerate() {
                let charset = if i == 0 { "utf-8''" } else { "" };
                value.push_str(&format!(";\r\n filename*{i}*={charset}{piece}"));
            }
        }
    }
    Disposition(written("Content-Disposition", value))
}

/// A field whose value mailroom wrote and folded itself, from parts already checked to
/// be printable ASCII.
fn written(name: &'static str, value: String) -> HeaderValue {
    HeaderValue::dangerous_new_pre_encoded(
        HeaderName::new_from_ascii_str(name),
        value.replace("\r\n", ""),
        value,
    )
}

#[derive(Clone)]
struct Disposition(HeaderValue);

#[derive(Clone)]
struct FileType(HeaderValue);

/// RFC 2231's `attribute-char`s stay as they are; everything else is percent-encoded.
const NOT_ATTRIBUTE_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// Room for one piece of a percent-encoded name, well under the 998 octets of a line.
const NAME_PIECE: usize = 900;

/// Enough of the ASCII fallback to recognise the file by.
const FALLBACK_CHARS: usize = 200;

impl Header for Disposition {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Content-Disposition")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Err("mailroom writes this field, it does not read it".into())
    }

    fn display(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl Header for FileType {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Content-Type")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Err("mailroom writes this field, it does not read it".into())
    }

    fn display(&self) -> HeaderValue {
        self.0.clone()
    }
}

/// The name with what would need escaping or encoding made `_`, shortened when long but
/// keeping its extension, so that a download still opens with the right program.
fn ascii_fallback(filename: &str) -> String {
    let safe: Vec<char> = filename
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '/')) || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.len() <= FALLBACK_CHARS {
        return safe.into_iter().collect();
    }
    let extension = match safe.iter().rposition(|&c| c == '.') {
        Some(dot) if safe.len() - dot <= 16 => &safe[dot..],
        _ => &[],
    };
    safe[..FALLBACK_CHARS - extension.len()]
        .iter()
        .chain(extension)
        .collect()
}

/// The percent-encoded name cut into pieces of at most `NAME_PIECE` octets, never
/// inside a `%XX`.
fn pieces(encoded: &str) -> impl Iterator<Item = &str> {
    let mut rest = encoded;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len().min(NAME_PIECE);
        if let Some(percent) = rest[..end].rfind('%').filter(|&p| p + 3 > end) {
            end = percent;
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

/// `bytes` with the custom header fields added at the end of its header. lettre keeps one
/// field per name, and a caller may give several (two `X-Tag`s, say), so they are written
/// here, each encoded and folded by lettre.
fn with_custom_headers(bytes: Vec<u8>, headers: &[(&str, &str)]) -> anyhow::Result<Vec<u8>> {
    let mut fields = String::new();
    for (name, value) in headers {
        anyhow::ensure!(
            !name.is_empty()
                && name.len() <= 76
                && name.bytes().all(|b| b.is_ascii_graphic() && b != b':'),
            "{name:?} is not a header name"
        );
        anyhow::ensure!(
            !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name)),
            "the header {name} is written by mailroom"
        );
        anyhow::ensure!(
            !value.contains(['\r', '\n', '\0']),
            "the value of the header {name} contains a line break"
        );
        let mut one = Headers::new();
        let name = HeaderName::new_from_ascii(name.to_string())
            .map_err(|_| anyhow::anyhow!("{name:?} is not a header name"))?;
        one.insert_raw(HeaderValue::new(name, value.to_string()));
        let field = one.to_string();
        anyhow::ensure!(
            field.split("\r\n").all(|line| line.len() <= 998),
            "the header {} has a word too long for a line",
            field.split(':').next().unwrap_or_default()
        );
        fields.push_str(&field);
    }
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(bytes.len(), |end| end + 2);
    let mut out = Vec::with_capacity(bytes.len() + fields.len());
    out.extend_from_slice(&bytes[..end]);
    out.extend_from_slice(fields.as_bytes());
    out.extend_from_slice(&bytes[end..]);
    Ok(out)
}

/// The key ready to sign. Keys already opened are kept by selector, with the key they were
/// opened from: parsing a key costs more than signing with it, and comparing the bytes
/// costs nothing, so a selector that ever names another key opens that key.
fn opened(key: &SigningKey) -> anyhow::Result<Arc<Signer>> {
    type Opened = HashMap<String, (Vec<u8>, Arc<Signer>)>;
    static OPENED: OnceLock<Mutex<Opened>> = OnceLock::new();
    let opened = OPENED.get_or_init(Mutex::default);
    if let Some((der, pair)) = opened
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key.selector)
        && *der == key.private_der
    {
        return Ok(pair.clone());
    }
    let pair = Signer::open(key.algorithm, &key.private_der)
        .map_err(|e| anyhow::anyhow!("the DKIM key {} cannot be used: {e}", key.selector))?;
    let pair = Arc::new(pair);
    let mut opened = opened.lock().unwrap_or_else(|e| e.into_inner());
    if opened.len() >= 1000 {
        opened.clear();
    }
    opened.insert(
        key.selector.clone(),
        (key.private_der.clone(), pair.clone()),
    );
    Ok(pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZOE: Address<'static> = Address {
        name: Some("Zoë Ångström"),
        email: "zoe@customer.com",
    };
    const BOB: Address<'static> = Address {
        name: None,
        email: "bob@example.org",
    };

    fn email<'a>() -> Email<'a> {
        Email {
            from: ZOE,
            to: &[BOB],
            cc: &[],
            reply_to: &[],
            subject: "Hello",
            text: Some("plain"),
            html: None,
            attachments: &[],
            headers: &[],
            message_id: "<abc@customer.com>",
            date: 0,
        }
    }

    const PDF: Attachment<'static> = Attachment {
        filename: "invoice.pdf",
        content_type: "application/pdf",
        content_id: None,
        bytes: b"%PDF-1.4 not really",
    };
    const LOGO: Attachment<'static> = Attachment {
        filename: "logo.png",
        content_type: "image/png",
        content_id: Some("logo@customer.com"),
        bytes: b"\x89PNG\r\n\x1a\n",
    };

    fn text(email: &Email<'_>) -> String {
        String::from_utf8(compose_email(email, &[]).unwrap()).unwrap()
    }

    /// The content types of the message, depth first: the shape of its tree.
    fn shape(message: &str) -> Vec<String> {
        message
            .split("\r\n")
            .filter_map(|line| line.strip_prefix("Content-Type: "))
            .map(|value| value.split(';').next().unwrap().trim().to_string())
            .collect()
    }

    #[test]
    fn a_text_only_email_is_one_part() {
        assert_eq!(shape(&text(&email())), ["text/plain"]);
        let html_only = Email {
            text: None,
            html: Some("<p>hi</p>"),
            ..email()
        };
        assert_eq!(shape(&text(&html_only)), ["text/html"]);
    }

    #[test]
    fn text_and_html_are_alternatives() {
        let both = Email {
            html: Some("<p>hi</p>"),
            ..email()
        };
        assert_eq!(
            shape(&text(&both)),
            ["multipart/alternative", "text/plain", "text/html"]
        );
    }

    #[test]
    fn inline_parts_are_related_to_the_body_and_files_are_mixed_in() {
        let inline = Email {
            html: Some("<img src=\"cid:logo@customer.com\">"),
            attachments: &[LOGO],
            ..email()
        };
        assert_eq!(
            shape(&text(&inline)),
            [
                "multipart/related",
                "multipart/alternative",
                "text/plain",
                "text/html",
                "image/png"
            ]
        );
        let attached = Email {
            attachments: &[PDF],
            ..email()
        };
        assert_eq!(
            shape(&text(&attached)),
            ["multipart/mixed", "text/plain", "application/pdf"]
        );
        let everything = Email {
            html: Some("<img src=\"cid:logo@customer.com\">"),
            attachments: &[PDF, LOGO],
            ..email()
        };
        let message = text(&everything);
        assert_eq!(
            shape(&message),
            [
                "multipart/mixed",
                "multipart/related",
                "multipart/alternative",
                "text/plain",
                "text/html",
                "image/png",
                "application/pdf"
            ]
        );
        assert!(message.contains("Content-Type: image/png;\r\n name=\"logo.png\"\r\n"));
        assert!(message.contains("Content-ID: <logo@customer.com>\r\n"));
        assert!(message.contains("Content-Disposition: inline; filename=\"logo.png\"\r\n"));
        assert!(message.contains("Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n"));
        assert_eq!(
            message.matches("Content-Transfer-Encoding: base64").count(),
            2
        );
    }

    #[test]
    fn a_subject_that_looks_encoded_is_encoded() {
        let looks_encoded = Email {
            subject: "=?utf-8?q?hi?= and more text, long enough for two words",
            ..email()
        };
        let message = text(&looks_encoded);
        assert!(message.contains(
            "Subject: =?utf-8?b?PT91dGYtOD9xP2hpPz0gYW5kIG1vcmUgdGV4dCwgbG9uZyBlbm91?=\r\n \
             =?utf-8?b?Z2ggZm9yIHR3byB3b3Jkcw==?=\r\n"
        ));
        assert!(text(&email()).contains("Subject: Hello\r\n"));
    }

    #[test]
    fn an_email_without_a_body_is_refused() {
        let empty = Email {
            text: None,
            ..email()
        };
        assert!(compose_email(&empty, &[]).is_err());
    }

    #[test]
    fn non_ascii_file_names_are_exact_with_an_ascii_stand_in() {
        let file = Attachment {
            filename: "Rechnung März \"final\".pdf",
            ..PDF
        };
        let message = text(&Email {
            attachments: &[file],
            ..email()
        });
        assert!(
            message.contains(
                "Content-Type: application/pdf;\r\n name=\"Rechnung M_rz _final_.pdf\"\r\n"
            )
        );
        assert!(message.contains(
            "Content-Disposition: attachment;\r\n \
             filename*=utf-8''Rechnung%20M%C3%A4rz%20%22final%22.pdf\r\n"
        ));
    }

    #[test]
    fn only_the_charset_of_a_given_content_type_is_kept() {
        let file = Attachment {
            filename: "notes.txt",
            content_type: "Text/Plain; name=\"other.exe\"; charset=\"utf-8\"; format=flowed",
            ..PDF
        };
        let message = text(&Email {
            attachments: &[file],
            ..email()
        });
        assert!(
            message.contains("Content-Type: text/plain; charset=utf-8;\r\n name=\"notes.txt\"\r\n")
        );
        assert!(!message.contains("other.exe"));
    }

    #[test]
    fn long_file_names_are_cut_into_short_lines() {
        let name = format!("{}.pdf", "ü".repeat(600));
        let file = Attachment {
            filename: &name,
            ..PDF
        };
        let message = text(&Email {
            attachments: &[file],
            ..email()
        });
        assert!(message.contains(" filename*0*=utf-8''%C3%BC"));
        assert!(message.contains(" filename*1*=%C3%BC"));
        assert!(message.split("\r\n").all(|line| line.len() <= 998));
        let fallback = ascii_fallback(&name);
        assert_eq!(fallback.len(), FALLBACK_CHARS);
        assert!(fallback.ends_with("_.pdf"));
    }

    #[test]
    fn long_lines_of_text_are_encoded_short() {
        let long = format!("{}\n{}", "a".repeat(5000), "é".repeat(3000));
        let message = text(&Email {
            text: Some(&long),
            html: Some(&long),
            ..email()
        });
        assert!(message.split("\r\n").all(|line| line.len() <= 998));
    }

    #[test]
    fn the_longest_values_accepted_still_fit_their_lines() {
        let word = "a".repeat(998);
        let words = "word ".repeat(200);
        let name = "Zoë".repeat(100);
        let value = "v".repeat(998 - "X-Long: ".len());
        let headers = [("X-Long", value.as_str()), ("X-Words", words.trim_end())];
        let to = [Address {
            name: Some(&name),
            email: "bob@example.org",
        }];
        for subject in [word.as_str(), words.trim_end(), &name] {
            let message = text(&Email {
                subject,
                to: &to,
                headers: &headers,
                ..email()
            });
            let longest = message.split("\r\n").map(str::len).max().unwrap();
            assert!(longest <= 998, "{longest}");
        }
    }

    #[test]
    fn custom_headers_are_written_as_given_even_twice() {
        let headers = [("X-Campaign", "spring"), ("X-Tag", "one"), ("X-Tag", "two")];
        let message = text(&Email {
            headers: &headers,
            ..email()
        });
        let (head, _) = message.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("\r\nX-Campaign: spring\r\nX-Tag: one\r\nX-Tag: two"));
    }

    #[test]
    fn headers_that_could_forge_others_are_refused() {
        for (name, value) in [
            ("X-Evil", "a\r\nBcc: victim@example.org"),
            ("X-Evil", "a\nFrom: ceo@bank.com"),
            ("X-Evil", "a\rb"),
            ("Bcc", "victim@example.org"),
            ("from", "ceo@bank.com"),
            ("DKIM-Signature", "v=1"),
            ("Content-Type", "text/plain"),
            ("X Evil", "a"),
            ("X:Evil", "a"),
            ("X-Évil", "a"),
            ("", "a"),
        ] {
            let headers = [(name, value)];
            let forged = Email {
                headers: &headers,
                ..email()
            };
            assert!(compose_email(&forged, &[]).is_err(), "{name}: {value:?}");
        }
    }

    #[test]
    fn control_characters_in_names_and_subjects_are_refused() {
        let subject = Email {
            subject: "Hi\r\nBcc: victim@example.org",
            ..email()
        };
        assert!(compose_email(&subject, &[]).is_err());
        let to = [Address {
            name: Some("Bob\r\nBcc: victim@example.org"),
            email: "bob@example.org",
        }];
        let name = Email { to: &to, ..email() };
        assert!(compose_email(&name, &[]).is_err());
        let file = [Attachment {
            filename: "a\r\nb.pdf",
            ..PDF
        }];
        let filename = Email {
            attachments: &file,
            ..email()
        };
        assert!(compose_email(&filename, &[]).is_err());
        let message_id = Email {
            message_id: "<a@b>\r\nBcc: victim@example.org",
            ..email()
        };
        assert!(compose_email(&message_id, &[]).is_err());
    }

    #[test]
    fn files_cannot_pose_as_mime_structure() {
        for (content_type, content_id) in [
            ("multipart/mixed; boundary=x", None),
            ("message/rfc822", None),
            ("text/plain\r\nBcc: victim@example.org", None),
            ("not a type", None),
            ("image/png", Some("logo>\r\nBcc: victim@example.org")),
            ("image/png", Some("a b")),
            ("image/png", Some("")),
        ] {
            let file = [Attachment {
                content_type,
                content_id,
                ..PDF
            }];
            let posing = Email {
                attachments: &file,
                ..email()
            };
            assert!(
                compose_email(&posing, &[]).is_err(),
                "{content_type} {content_id:?}"
            );
        }
    }

    #[test]
    fn a_selector_that_names_another_key_opens_that_key() {
        use rsa::pkcs8::EncodePrivateKey;
        let der = || {
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
            key.to_pkcs8_der().unwrap().as_bytes().to_vec()
        };
        let first = SigningKey {
            selector: "reused-selector".into(),
            algorithm: super::super::dkim::Algorithm::Rsa,
            private_der: der(),
        };
        let second = SigningKey {
            selector: "reused-selector".into(),
            algorithm: super::super::dkim::Algorithm::Rsa,
            private_der: der(),
        };
        use ring::signature::KeyPair;
        let public = |signer: &Signer| match signer {
            Signer::Rsa(pair) => pair.public_key().as_ref().to_vec(),
            Signer::Ed25519(pair) => pair.public_key().as_ref().to_vec(),
        };
        let a = opened(&first).unwrap();
        let b = opened(&second).unwrap();
        assert_ne!(public(&a), public(&b));
        assert!(Arc::ptr_eq(&b, &opened(&second).unwrap()));
    }
}
