//! Emails as the sending API takes and shows them, and the rules of every field: a
//! request is parsed once into a `Draft`, which holds only checked values.

use std::collections::{BTreeMap, HashSet};

use base64::Engine as _;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::http::ApiError;
use crate::mail::outbox::Queued;
pub use crate::mail::outbox::RecipientType;
use crate::store::Timestamp;
use crate::types::EmailAddress;
use crate::types::text::{check_text, is_invisible_format};

/// Recipients of one email, to, cc and bcc together.
pub const MAX_RECIPIENTS: usize = 50;
/// Decoded attachments of one email, in all.
pub const MAX_ATTACHMENT_BYTES: usize = 10 * 1024 * 1024;
pub const MAX_ATTACHMENTS: usize = 100;
pub const MAX_TAGS: usize = 10;
pub const MAX_HEADERS: usize = 50;
pub const MAX_REPLY_TO: usize = 10;
/// How far ahead an email may be scheduled.
pub const MAX_SCHEDULE_MS: i64 = 30 * 24 * 3_600_000;
/// Emails in one batch.
pub const MAX_BATCH: usize = 100;

/// Attachment file name extensions that are refused: programs and scripts a reader could
/// run by opening them (the list SES refuses, and a few more).
const EXECUTABLE_EXTENSIONS: &[&str] = &[
    "ade", "adp", "app", "appx", "asp", "bas", "bat", "cer", "chm", "cmd", "com", "cpl", "crt",
    "csh", "der", "dll", "exe", "fxp", "gadget", "hlp", "hta", "inf", "ins", "isp", "its", "jar",
    "js", "jse", "ksh", "lib", "lnk", "mad", "maf", "mag", "mam", "maq", "mar", "mas", "mat",
    "mau", "mav", "maw", "mda", "mdb", "mde", "mdt", "mdw", "mdz", "msc", "msh", "msh1", "msh2",
    "mshxml", "msh1xml", "msh2xml", "msi", "msix", "msp", "mst", "ops", "pcd", "pif", "plg", "prf",
    "prg", "ps1", "ps1xml", "ps2", "ps2xml", "psc1", "psc2", "reg", "scf", "scr", "sct", "shb",
    "shs", "sys", "tmp", "url", "vb", "vbe", "vbs", "vps", "vsmacros", "vss", "vst", "vsw", "vxd",
    "ws", "wsc", "wsf", "wsh", "xnk",
];

/// Content types of programs, refused whatever the file is called.
const EXECUTABLE_TYPES: &[&str] = &[
    "application/x-msdownload",
    "application/x-msdos-program",
    "application/x-dosexec",
    "application/x-ms-installer",
    "application/x-msi",
    "application/vnd.microsoft.portable-executable",
    "application/java-archive",
    "application/hta",
];

/// Header fields mailroom writes itself, or that speak for the receiving side: a custom
/// header may not set or repeat them.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "dkim-signature",
    "reply-to",
    "sender",
    "return-path",
    "mime-version",
    "received",
    "received-spf",
    "authentication-results",
    "delivered-to",
];
const RESERVED_HEADER_PREFIXES: &[&str] = &["content-", "resent-", "arc-"];

/// One address or several.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(one) => vec![one.as_str()],
            OneOrMany::Many(many) => many.iter().map(String::as_str).collect(),
        }
    }

    fn len(&self) -> usize {
        match self {
            OneOrMany::One(_) => 1,
            OneOrMany::Many(many) => many.len(),
        }
    }
}

// Written by hand rather than `untagged`: serde buffers a whole untagged value before
// trying its variants, so a 15 MB array of addresses would be held twice before being
// refused. This stops reading past `MAX_RECIPIENTS`.
impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Addresses;
        impl<'de> Visitor<'de> for Addresses {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an address or an array of addresses")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(value.to_string()))
            }
            fn visit_string<E: de::Error>(self, value: String) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(value))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<OneOrMany, A::Error> {
                Ok(OneOrMany::Many(
                    BoundedSeq::<String, MAX_RECIPIENTS>::visit(seq)?,
                ))
            }
        }
        deserializer.deserialize_any(Addresses)
    }
}

/// Reads an array of at most `N` items, and stops at the first item past it: a request
/// cannot make the server hold more than the rules allow.
struct BoundedSeq<T, const N: usize>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>, const N: usize> BoundedSeq<T, N> {
    fn visit<A: SeqAccess<'de>>(mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(N));
        while let Some(item) = seq.next_element()? {
            if items.len() == N {
                return Err(de::Error::custom(format!("at most {N} items")));
            }
            items.push(item);
        }
        Ok(items)
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for BoundedSeq<T, N> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "an array of at most {N} items")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<T>, A::Error> {
        Self::visit(seq)
    }
}

/// An optional array of at most `N` items (see `BoundedSeq`).
fn at_most<'de, D: Deserializer<'de>, T: Deserialize<'de>, const N: usize>(
    deserializer: D,
) -> Result<Option<Vec<T>>, D::Error> {
    struct Seq<T, const N: usize>(Vec<T>);
    impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Seq<T, N> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer
                .deserialize_seq(BoundedSeq::<T, N>(std::marker::PhantomData))
                .map(Seq)
        }
    }
    Ok(Option::<Seq<T, N>>::deserialize(deserializer)?.map(|seq| seq.0))
}

/// An optional object of at most `N` fields, read no further than that.
fn at_most_fields<'de, D: Deserializer<'de>, const N: usize>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Fields<const N: usize>(BTreeMap<String, String>);
    impl<'de, const N: usize> Deserialize<'de> for Fields<N> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Read<const N: usize>;
            impl<'de, const N: usize> Visitor<'de> for Read<N> {
                type Value = BTreeMap<String, String>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    write!(f, "an object of at most {N} string fields")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut fields = BTreeMap::new();
                    while let Some((key, value)) = map.next_entry::<String, String>()? {
                        if fields.len() == N && !fields.contains_key(&key) {
                            return Err(de::Error::custom(format!("at most {N} fields")));
                        }
                        fields.insert(key, value);
                    }
                    Ok(fields)
                }
            }
            deserializer.deserialize_map(Read::<N>).map(Fields)
        }
    }
    Ok(Option::<Fields<N>>::deserialize(deserializer)?.map(|fields| fields.0))
}

/// An email to send.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendEmail {
    /// `"Name <address>"` or `address`: a verified sender address of the account or of
    /// the entity, or any address on a domain active in the account. Default: the
    /// entity's effective sender (its verified sender, else the account's).
    #[serde(default)]
    pub from: Option<String>,
    /// One address or an array; with `cc` and `bcc`, 1 to 50 recipients in all. Each may
    /// be `"Name <address>"`.
    #[serde(default)]
    pub to: Option<OneOrMany>,
    #[serde(default)]
    pub cc: Option<OneOrMany>,
    /// Never shown in the message's headers.
    #[serde(default)]
    pub bcc: Option<OneOrMany>,
    /// One address or an array of up to 10.
    #[serde(default)]
    pub reply_to: Option<OneOrMany>,
    /// 1 to 998 characters, without control characters.
    pub subject: String,
    /// The plain-text part; `text`, `html` or both.
    #[serde(default)]
    pub text: Option<String>,
    /// The HTML part.
    #[serde(default)]
    pub html: Option<String>,
    /// Files, up to 10 MB decoded in all; programs and scripts are refused.
    #[serde(default, deserialize_with = "at_most::<_, _, MAX_ATTACHMENTS>")]
    pub attachments: Option<Vec<AttachmentInput>>,
    /// Custom header fields (name → value); the ones mailroom writes itself (From, To,
    /// Subject, Message-ID, DKIM-Signature, Content-*, …) are refused.
    #[serde(default, deserialize_with = "at_most_fields::<_, MAX_HEADERS>")]
    pub headers: Option<BTreeMap<String, String>>,
    /// Up to 10 labels (key → value) shown wherever the email is, and filterable.
    #[serde(default, deserialize_with = "at_most_fields::<_, MAX_TAGS>")]
    pub tags: Option<BTreeMap<String, String>>,
    /// RFC 3339 time to send at, at most 30 days ahead; a time past means now.
    #[serde(default)]
    pub scheduled_at: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentInput {
    /// The file's name: no path separators or control characters.
    pub filename: String,
    /// The file's bytes, base64.
    pub content: String,
    /// Such as `application/pdf`; default: `application/octet-stream`.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Makes the part inline, referenced from the HTML as `cid:<content_id>`.
    #[serde(default)]
    pub content_id: Option<String>,
}

/// A mailbox: an address and, optionally, its display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub name: Option<String>,
    pub address: EmailAddress,
}

#[derive(Debug, Clone)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub content_id: Option<String>,
    pub bytes: Vec<u8>,
}

/// A request, checked: every value here obeys its field's rules.
#[derive(Debug, Clone)]
pub struct Draft {
    pub from: Option<Named>,
    /// In order: to, then cc, then bcc; an address given twice is kept once.
    pub recipients: Vec<(Named, RecipientType)>,
    pub reply_to: Vec<Named>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
    pub headers: Vec<(String, String)>,
    pub tags: BTreeMap<String, String>,
    /// When to send, if later than now.
    pub scheduled_at: Option<Timestamp>,
}

impl SendEmail {
    /// Checks every field; `now` decides what "later" is. Errors name the field, with
    /// `prefix` before it (a batch item's place).
    pub fn parse(&self, now: Timestamp, prefix: &str) -> Result<Draft, ApiError> {
        let field = |name: &str| format!("{prefix}{name}");
        let invalid = |name: &str, message: String| ApiError::invalid(&field(name), message);

        let from = match &self.from {
            Some(from) => {
                Some(parse_named(from).map_err(|e| invalid("from", format!("from: {e}")))?)
            }
            None => None,
        };
        // Counted before anything is parsed: a long list costs nothing to refuse.
        let given = [&self.to, &self.cc, &self.bcc]
            .iter()
            .map(|l| l.as_ref().map_or(0, OneOrMany::len))
            .sum::<usize>();
        if given > MAX_RECIPIENTS {
            return Err(invalid(
                "to",
                format!(
                    "an email has at most {MAX_RECIPIENTS} recipients in to, cc and bcc together; this one has {given}"
                ),
            ));
        }
        let mut recipients: Vec<(Named, RecipientType)> = Vec::with_capacity(given);
        let mut seen = HashSet::with_capacity(given);
        for (name, list, kind) in [
            ("to", &self.to, RecipientType::To),
            ("cc", &self.cc, RecipientType::Cc),
            ("bcc", &self.bcc, RecipientType::Bcc),
        ] {
            for (i, item) in list.iter().flat_map(OneOrMany::items).enumerate() {
                let named =
                    parse_named(item).map_err(|e| invalid(name, format!("{name}[{i}]: {e}")))?;
                if seen.insert(mailbox_key(&named.address)) {
                    recipients.push((named, kind));
                }
            }
        }
        if recipients.is_empty() {
            return Err(invalid(
                "to",
                "give at least one recipient in to, cc or bcc".to_string(),
            ));
        }
        let reply_to = self
            .reply_to
            .as_ref()
            .map(OneOrMany::items)
            .unwrap_or_default();
        if reply_to.len() > MAX_REPLY_TO {
            return Err(invalid(
                "reply_to",
                format!("reply_to has at most {MAX_REPLY_TO} addresses"),
            ));
        }
        let reply_to = reply_to
            .iter()
            .enumerate()
            .map(|(i, item)| {
                parse_named(item).map_err(|e| invalid("reply_to", format!("reply_to[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let subject = parse_subject(&self.subject).map_err(|e| invalid("subject", e))?;
        let text =
            parse_body(self.text.as_deref()).map_err(|e| invalid("text", format!("text {e}")))?;
        let html =
            parse_body(self.html.as_deref()).map_err(|e| invalid("html", format!("html {e}")))?;
        if text.is_none() && html.is_none() {
            return Err(invalid(
                "text",
                "give the body as text, html or both".to_string(),
            ));
        }
        let attachments =
            parse_attachments(self.attachments.as_deref().unwrap_or_default(), &field)?;
        let headers = parse_headers(self.headers.as_ref(), &field)?;
        let tags = parse_tags(self.tags.as_ref()).map_err(|e| invalid("tags", e))?;
        let scheduled_at = match &self.scheduled_at {
            Some(at) => parse_schedule(at, now).map_err(|e| invalid("scheduled_at", e))?,
            None => None,
        };
        Ok(Draft {
            from,
            recipients,
            reply_to,
            subject,
            text,
            html,
            attachments,
            headers,
            tags,
            scheduled_at,
        })
    }
}

/// What two addresses share when they reach the same mailbox as far as mailroom can
/// tell: the domain is normalised already; local parts are compared ignoring case, as
/// nearly every server does.
fn mailbox_key(address: &EmailAddress) -> (String, String) {
    (
        address.local().to_ascii_lowercase(),
        address.domain().to_string(),
    )
}

/// `address` or `Name <address>` (the name optionally in double quotes).
pub fn parse_named(input: &str) -> Result<Named, String> {
    let input = input.trim();
    let Some(open) = input.rfind('<').filter(|_| input.ends_with('>')) else {
        return Ok(Named {
            name: None,
            address: EmailAddress::parse(input)?,
        });
    };
    let address = EmailAddress::parse(&input[open + 1..input.len() - 1])?;
    let mut name = input[..open].trim();
    if name.len() >= 2 && name.starts_with('"') && name.ends_with('"') {
        name = name[1..name.len() - 1].trim();
    }
    if name.is_empty() {
        return Ok(Named {
            name: None,
            address,
        });
    }
    if name.chars().count() > 128 {
        return Err("the display name is longer than 128 characters".to_string());
    }
    if name.contains(['"', '\\', '<', '>']) {
        return Err("the display name cannot contain \", \\, < or >".to_string());
    }
    check_text(name).map_err(|e| format!("the display name {e}"))?;
    Ok(Named {
        name: Some(name.to_string()),
        address,
    })
}

fn parse_subject(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("subject must not be empty".to_string());
    }
    if value.chars().count() > 998 {
        return Err("subject must be at most 998 characters".to_string());
    }
    check_text(value).map_err(|e| format!("subject {e}"))?;
    Ok(value.to_string())
}

/// A body part: absent or empty is none; NUL cannot travel in SMTP.
fn parse_body(value: Option<&str>) -> Result<Option<String>, String> {
    match value {
        None => Ok(None),
        Some(body) if body.trim().is_empty() => Ok(None),
        Some(body) if body.contains('\0') => Err("must not contain NUL characters".to_string()),
        Some(body) => Ok(Some(body.to_string())),
    }
}

fn parse_attachments(
    inputs: &[AttachmentInput],
    field: &dyn Fn(&str) -> String,
) -> Result<Vec<Attachment>, ApiError> {
    if inputs.len() > MAX_ATTACHMENTS {
        return Err(ApiError::invalid(
            &field("attachments"),
            format!("an email has at most {MAX_ATTACHMENTS} attachments"),
        ));
    }
    let mut total = 0usize;
    let mut attachments = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let invalid = |name: &str, message: String| {
            ApiError::invalid(&field(&format!("attachments[{i}].{name}")), message)
        };
        let filename = parse_filename(&input.filename).map_err(|e| invalid("filename", e))?;
        let content_type = match input.content_type.as_deref().map(str::trim) {
            None | Some("") => "application/octet-stream".to_string(),
            Some(given) => parse_content_type(given).map_err(|e| invalid("content_type", e))?,
        };
        let content_id = match input.content_id.as_deref() {
            None => None,
            Some(id) => Some(parse_content_id(id).map_err(|e| invalid("content_id", e))?),
        };
        let encoded: String = input
            .content
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        // Refused before decoding: the decoded size is known from the encoded one.
        if total + encoded.len() / 4 * 3 > MAX_ATTACHMENT_BYTES + 2 {
            return Err(too_large(field));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map_err(|e| invalid("content", format!("the content is not valid base64: {e}")))?;
        total += bytes.len();
        if total > MAX_ATTACHMENT_BYTES {
            return Err(too_large(field));
        }
        attachments.push(Attachment {
            filename,
            content_type,
            content_id,
            bytes,
        });
    }
    Ok(attachments)
}

fn too_large(field: &dyn Fn(&str) -> String) -> ApiError {
    ApiError::invalid(
        &field("attachments"),
        format!(
            "attachments are at most {} MB decoded, in all",
            MAX_ATTACHMENT_BYTES / 1024 / 1024
        ),
    )
}

pub fn parse_filename(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > 255 {
        return Err("the file name must be 1 to 255 characters".to_string());
    }
    if value
        .chars()
        .any(|c| c.is_control() || is_invisible_format(c))
    {
        return Err(
            "the file name must not contain control, invisible or direction-changing characters"
                .to_string(),
        );
    }
    if value.contains(['/', '\\']) || value == "." || value == ".." {
        return Err("the file name must not be a path (no / or \\)".to_string());
    }
    // Windows drops trailing dots and spaces: `run.exe. ` opens as `run.exe`.
    let shown = value.trim_end_matches(['.', ' ']);
    if let Some((_, extension)) = shown.rsplit_once('.') {
        let extension = extension.to_ascii_lowercase();
        if EXECUTABLE_EXTENSIONS.contains(&extension.as_str()) {
            return Err(format!(
                "files of type .{extension} are refused: programs and scripts cannot be attached"
            ));
        }
    }
    Ok(value.to_string())
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c)
}

/// `type/subtype`, both RFC 6838 names, lowercased.
pub fn parse_content_type(value: &str) -> Result<String, String> {
    let value = value.to_ascii_lowercase();
    let valid = value.len() <= 255
        && value.split_once('/').is_some_and(|(kind, sub)| {
            !kind.is_empty()
                && !sub.is_empty()
                && (kind.chars().chain(sub.chars())).all(is_token_char)
        });
    if !valid {
        return Err(format!(
            "`{}` is not a MIME type such as application/pdf",
            crate::types::text::Escaped(&value)
        ));
    }
    if EXECUTABLE_TYPES.contains(&value.as_str()) {
        return Err(format!("{value} is a program: programs cannot be attached"));
    }
    Ok(value)
}

/// A Content-ID without its angle brackets: `id-left@id-right` style, dot-atom text.
pub fn parse_content_id(value: &str) -> Result<String, String> {
    let value = value.trim();
    let value = value
        .strip_prefix('<')
        .and_then(|v| v.strip_suffix('>'))
        .unwrap_or(value);
    let valid = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.@".contains(c));
    if !valid {
        return Err(
            "the content_id must be 1 to 128 letters, digits, dots, @ and the like, without spaces"
                .to_string(),
        );
    }
    Ok(value.to_string())
}

fn parse_headers(
    headers: Option<&BTreeMap<String, String>>,
    field: &dyn Fn(&str) -> String,
) -> Result<Vec<(String, String)>, ApiError> {
    let Some(headers) = headers else {
        return Ok(Vec::new());
    };
    let invalid = |message: String| ApiError::invalid(&field("headers"), message);
    if headers.len() > MAX_HEADERS {
        return Err(invalid(format!("at most {MAX_HEADERS} custom headers")));
    }
    let mut seen: Vec<String> = Vec::new();
    let mut parsed = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let shown = crate::types::text::Escaped(name);
        // RFC 5322 field names: printable ASCII but the colon.
        if name.is_empty()
            || name.len() > 76
            || !name.chars().all(|c| c.is_ascii_graphic() && c != ':')
        {
            return Err(invalid(format!(
                "`{shown}` is not a header name: 1 to 76 printable ASCII characters without a colon or space"
            )));
        }
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str())
            || RESERVED_HEADER_PREFIXES
                .iter()
                .any(|p| lower.starts_with(p))
        {
            return Err(invalid(format!(
                "{name} is written by mailroom (or by the receiving side) and cannot be set; use the \
                 email's own fields (from, to, subject, reply_to, attachments)"
            )));
        }
        if seen.contains(&lower) {
            return Err(invalid(format!("{name} is given twice")));
        }
        seen.push(lower);
        let value = value.trim();
        if value.chars().any(|c| c.is_control() && c != '\t') || !value.is_ascii() {
            return Err(invalid(format!(
                "the value of {name} must be printable ASCII on one line (no CR, LF or other control characters)"
            )));
        }
        if name.len() + 2 + value.len() > 998 {
            return Err(invalid(format!(
                "the header {name} is longer than 998 characters"
            )));
        }
        parsed.push((name.clone(), value.to_string()));
    }
    Ok(parsed)
}

/// A tag's key: 1 to 64 of letters, digits, `_` and `-`.
pub fn check_tag_key(key: &str) -> Result<(), String> {
    let valid = !key.is_empty()
        && key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "the tag key `{}` must be 1 to 64 letters, digits, _ or -",
            crate::types::text::Escaped(key)
        ))
    }
}

/// A tag's value: 1 to 256 of letters, digits and `_ - . : @ + = /`.
pub fn check_tag_value(value: &str) -> Result<(), String> {
    let valid = !value.is_empty()
        && value.len() <= 256
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:@+=/".contains(c));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "the tag value `{}` must be 1 to 256 letters, digits or _ - . : @ + = /",
            crate::types::text::Escaped(value)
        ))
    }
}

fn parse_tags(tags: Option<&BTreeMap<String, String>>) -> Result<BTreeMap<String, String>, String> {
    let Some(tags) = tags else {
        return Ok(BTreeMap::new());
    };
    if tags.len() > MAX_TAGS {
        return Err(format!("an email has at most {MAX_TAGS} tags"));
    }
    for (key, value) in tags {
        check_tag_key(key)?;
        check_tag_value(value)?;
    }
    Ok(tags.clone())
}

/// RFC 3339, at most 30 days ahead; `None` when it is now or past.
fn parse_schedule(value: &str, now: Timestamp) -> Result<Option<Timestamp>, String> {
    let at =
        time::OffsetDateTime::parse(value.trim(), &time::format_description::well_known::Rfc3339)
            .map_err(|_| {
            format!(
                "`{}` is not an RFC 3339 time such as 2030-01-31T09:00:00Z",
                crate::types::text::Escaped(value)
            )
        })?;
    let at = (at.unix_timestamp_nanos() / 1_000_000) as i64;
    if at > now.0 + MAX_SCHEDULE_MS {
        return Err("scheduled_at is at most 30 days ahead".to_string());
    }
    Ok((at > now.0).then_some(Timestamp(at)))
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBatch {
    /// 1 to 100 emails, each checked on its own. Kept as sent until then: one item that
    /// is not an email refuses that item only.
    #[serde(deserialize_with = "batch_items")]
    #[schema(value_type = Vec<SendEmail>)]
    pub emails: Vec<Box<serde_json::value::RawValue>>,
}

fn batch_items<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Box<serde_json::value::RawValue>>, D::Error> {
    deserializer.deserialize_seq(BoundedSeq::<_, MAX_BATCH>(std::marker::PhantomData))
}

/// One item of a batch's answer: the email as queued, or why it was not.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchItem {
    Accepted(Queued),
    Refused {
        /// Nothing of this email was queued.
        error: ItemError,
    },
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ItemError {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

impl From<ApiError> for ItemError {
    fn from(error: ApiError) -> ItemError {
        ItemError {
            code: error.code.to_string(),
            message: error.message,
            param: error.param,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchAnswer {
    /// One item per email sent, in the same order.
    pub data: Vec<BatchItem>,
}

/// Filters of the email list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EmailFilter {
    /// Only emails with a recipient in this status (`queued`, `scheduled`, `sent`,
    /// `deferred`, `bounced`, `failed`, `suppressed`, `cancelled`).
    pub status: Option<String>,
    /// `key:value`: only emails with this tag.
    pub tag: Option<String>,
    /// Only emails to (or cc, bcc) this address.
    pub to: Option<String>,
    /// Only emails from this address.
    pub from: Option<String>,
    /// The `next_after` of the previous page: only emails older than it.
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// A page of emails, newest first.
#[derive(Serialize, ToSchema)]
pub struct EmailList {
    pub items: Vec<crate::emails::store::Email>,
    pub limit: i64,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_after: Option<i64>,
}

pub const STATUSES: &[&str] = &[
    "queued",
    "scheduled",
    "sent",
    "deferred",
    "bounced",
    "failed",
    "suppressed",
    "cancelled",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn email(body: serde_json::Value) -> Result<Draft, ApiError> {
        let request: SendEmail = serde_json::from_value(body).unwrap();
        request.parse(Timestamp(1_700_000_000_000), "")
    }

    #[test]
    fn names_and_addresses_are_parsed() {
        let named = parse_named(" \"Zoë Ångström\" <Zoe@Example.COM>").unwrap();
        assert_eq!(named.name.as_deref(), Some("Zoë Ångström"));
        assert_eq!(named.address.to_string(), "Zoe@example.com");
        assert_eq!(parse_named("a@example.com").unwrap().name, None);
        assert!(parse_named("Evil\r\nBcc: x@y.com <a@example.com>").is_err());
        assert!(parse_named("a@example.com>").is_err());
    }

    #[test]
    fn recipients_are_counted_and_deduplicated() {
        let draft = email(
            serde_json::json!({"to": ["a@example.com", "A@example.com"], "bcc": "b@example.com",
            "subject": "Hi", "text": "x"}),
        )
        .unwrap();
        assert_eq!(draft.recipients.len(), 2);
        let many: Vec<String> = (0..51).map(|i| format!("r{i}@example.com")).collect();
        let error = email(
            serde_json::json!({"to": many[..30], "cc": many[30..], "subject": "Hi", "text": "x"}),
        )
        .unwrap_err();
        assert_eq!(error.param.as_deref(), Some("to"));
        // One list past the limit is not even read to its end.
        let body = serde_json::json!({"to": many, "subject": "Hi", "text": "x"});
        let error = serde_json::from_value::<SendEmail>(body).unwrap_err();
        assert!(error.to_string().contains("at most 50"), "{error}");
    }

    #[test]
    fn executables_are_refused_by_name_and_type() {
        for name in ["setup.exe", "RUN.BAT", "x.js", "invoice.pdf.exe. ", "a.Ps1"] {
            assert!(parse_filename(name).is_err(), "{name}");
        }
        for name in ["invoice.pdf", "photo.jpeg", "README"] {
            assert!(parse_filename(name).is_ok(), "{name}");
        }
        for name in [
            "../etc/passwd",
            "a\\b.txt",
            "a\nb.txt",
            "..",
            "a\u{202e}fdp.exe",
        ] {
            assert!(parse_filename(name).is_err(), "{name:?}");
        }
        assert!(parse_content_type("application/x-msdownload").is_err());
        assert!(parse_content_type("text/plain; charset=utf-8").is_err());
        assert_eq!(
            parse_content_type("Application/PDF").unwrap(),
            "application/pdf"
        );
    }

    #[test]
    fn reserved_and_broken_headers_are_refused() {
        for (name, value) in [
            ("From", "x@y.com"),
            ("content-type", "text/html"),
            ("DKIM-Signature", "v=1"),
            ("X-Ok", "a\r\nBcc: x@y.com"),
            ("X Space", "v"),
            ("X:Colon", "v"),
            ("Resent-To", "x@y.com"),
        ] {
            let error = email(
                serde_json::json!({"to": "a@example.com", "subject": "Hi", "text": "x",
                "headers": {name: value}}),
            )
            .unwrap_err();
            assert_eq!(error.param.as_deref(), Some("headers"), "{name}");
        }
        let draft = email(
            serde_json::json!({"to": "a@example.com", "subject": "Hi", "text": "x",
            "headers": {"X-Campaign": "spring", "List-Unsubscribe": "<https://example.com/u>"}}),
        )
        .unwrap();
        assert_eq!(draft.headers.len(), 2);
    }

    #[test]
    fn schedules_are_bounded() {
        let now = Timestamp(1_700_000_000_000);
        assert_eq!(parse_schedule("2000-01-01T00:00:00Z", now).unwrap(), None);
        assert!(
            parse_schedule("2023-11-15T00:00:00Z", now)
                .unwrap()
                .is_some()
        );
        assert!(parse_schedule("2030-01-01T00:00:00Z", now).is_err());
        assert!(parse_schedule("tomorrow", now).is_err());
    }

    #[test]
    fn tags_are_bounded() {
        assert!(check_tag_key("campaign_2024-q1").is_ok());
        assert!(check_tag_key("a:b").is_err());
        assert!(check_tag_value("x y").is_err());
        assert!(check_tag_value(&"v".repeat(257)).is_err());
    }
}
