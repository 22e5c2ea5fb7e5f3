//! What delivery needs to know about the tenants, and nothing more: which relay carries
//! an account's mail from a domain, and which key signs a domain's mail. The composition
//! root answers these from the relays' and the domains' stores.

use super::transport::SmtpTarget;
use crate::types::DomainName;

/// A DKIM private key and the selector that publishes its public half.
pub struct SigningKey {
    pub selector: String,
    /// PKCS#8 DER.
    pub private_der: Vec<u8>,
}

#[async_trait::async_trait]
pub trait Directory: Send + Sync + 'static {
    /// The relay of `domain` for mail of `account_id`, when the account has set one.
    /// An error says why the relay cannot be used (it becomes the message's `last_error`).
    async fn relay(
        &self,
        account_id: &str,
        domain: &DomainName,
    ) -> anyhow::Result<Option<SmtpTarget>>;

    /// The key that signs mail From `domain`, when it is an active managed domain.
    async fn signing_key(&self, domain: &DomainName) -> anyhow::Result<Option<SigningKey>>;
}
