//! Turning a queued email into the bytes that travel: MIME (text + HTML), Message-ID,
//! Date, and a DKIM signature when the From domain is an active managed domain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use lettre::Message;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use ring::signature::RsaKeyPair;

use crate::store::Db;
use crate::store::crypto::MasterKey;

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

pub async fn compose(
    db: &Db,
    master_key: &MasterKey,
    parts: Parts<'_>,
) -> anyhow::Result<Composed> {
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
    let domain = from.email.domain().to_ascii_lowercase();
    let mut bytes = message.formatted();
    if let Some((selector, key)) = signing_key(db, master_key, &domain).await? {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        bytes = super::dkim::sign(&bytes, &domain, &selector, &key, now)?;
    }
    Ok(Composed {
        envelope: message.envelope().clone(),
        bytes,
    })
}

/// The current DKIM key of an active managed domain, with its selector (its token).
async fn signing_key(
    db: &Db,
    master_key: &MasterKey,
    domain: &str,
) -> anyhow::Result<Option<(String, Arc<RsaKeyPair>)>> {
    let key: Option<(String, String)> = sqlx::query_as(
        "SELECT k.token, k.private_key FROM dkim_keys k JOIN domains d ON d.id = k.domain_id \
         WHERE d.name = $1 AND d.status = 'active' ORDER BY k.position LIMIT 1",
    )
    .bind(domain)
    .fetch_optional(&db.pool)
    .await?;
    let Some((token, sealed)) = key else {
        return Ok(None);
    };
    if let Some(key) = opened_keys()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&token)
    {
        return Ok(Some((token, key.clone())));
    }
    let der = crate::domains::dkim::open_private_key(master_key, &token, &sealed)?;
    let key = RsaKeyPair::from_pkcs8(&der)
        .map_err(|e| anyhow::anyhow!("the DKIM key of {domain} cannot be used: {e}"))?;
    let key = Arc::new(key);
    let mut opened = opened_keys().lock().unwrap_or_else(|e| e.into_inner());
    if opened.len() >= 1000 {
        opened.clear();
    }
    opened.insert(token.clone(), key.clone());
    Ok(Some((token, key)))
}

/// Private keys already opened, by token: a token names one key for good, and opening
/// (unsealing, parsing) costs more than signing.
fn opened_keys() -> &'static Mutex<HashMap<String, Arc<RsaKeyPair>>> {
    static OPENED: OnceLock<Mutex<HashMap<String, Arc<RsaKeyPair>>>> = OnceLock::new();
    OPENED.get_or_init(Mutex::default)
}
