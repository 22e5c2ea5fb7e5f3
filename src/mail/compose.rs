//! Turning a queued email into the bytes that travel: MIME (text + HTML), Message-ID,
//! Date, and a DKIM signature when a key is given.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use lettre::Message;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use ring::signature::RsaKeyPair;

use super::port::SigningKey;

pub struct Composed {
    pub envelope: lettre::address::Envelope,
    pub bytes: Vec<u8>,
}

pub struct Parts<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub subject: &'a str,
    pub text: &'a str,
    pub html: &'a str,
    pub message_id: &'a str,
    /// Milliseconds since the epoch: when the email was queued.
    pub date: i64,
}

pub fn compose(parts: Parts<'_>, key: Option<&SigningKey>) -> anyhow::Result<Composed> {
    let from: Mailbox = parts.from.parse()?;
    let to: Mailbox = parts.to.parse()?;
    let date = std::time::UNIX_EPOCH + std::time::Duration::from_millis(parts.date.max(0) as u64);
    let message = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(parts.subject)
        .date(date)
        .message_id(Some(parts.message_id.to_string()))
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(parts.text.to_string()),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(parts.html.to_string()),
                ),
        )?;
    let mut bytes = message.formatted();
    if let Some(key) = key {
        let domain = from.email.domain().to_ascii_lowercase();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let pair = opened(key)?;
        bytes = super::dkim::sign(&bytes, &domain, &key.selector, &pair, now)?;
    }
    Ok(Composed {
        envelope: message.envelope().clone(),
        bytes,
    })
}

/// The key ready to sign. Keys already opened are kept by selector: a selector names one
/// key for good, and parsing a key costs more than signing with it.
fn opened(key: &SigningKey) -> anyhow::Result<Arc<RsaKeyPair>> {
    static OPENED: OnceLock<Mutex<HashMap<String, Arc<RsaKeyPair>>>> = OnceLock::new();
    let opened = OPENED.get_or_init(Mutex::default);
    if let Some(pair) = opened
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key.selector)
    {
        return Ok(pair.clone());
    }
    let pair = RsaKeyPair::from_pkcs8(&key.private_der)
        .map_err(|e| anyhow::anyhow!("the DKIM key {} cannot be used: {e}", key.selector))?;
    let pair = Arc::new(pair);
    let mut opened = opened.lock().unwrap_or_else(|e| e.into_inner());
    if opened.len() >= 1000 {
        opened.clear();
    }
    opened.insert(key.selector.clone(), pair.clone());
    Ok(pair)
}
