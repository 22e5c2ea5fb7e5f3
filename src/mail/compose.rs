//! Turning a queued email into the bytes that travel: MIME (text + HTML), Message-ID,
//! Date, and a DKIM signature when the From domain is an active managed domain.

use lettre::Message;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use rsa::pkcs8::DecodePrivateKey;

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
        bytes = super::dkim::sign(&bytes, &domain, &selector, &key, now);
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
) -> anyhow::Result<Option<(String, rsa::RsaPrivateKey)>> {
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
    let der = crate::domains::dkim::open_private_key(master_key, &token, &sealed)?;
    Ok(Some((token, rsa::RsaPrivateKey::from_pkcs8_der(&der)?)))
}
