//! What delivery needs to know about the tenants, and nothing more: which relay carries
//! an account's mail from a domain, and which key signs it. The composition root answers
//! these from the relays' and the domains' stores.
//!
//! Both belong to the account where the domain is **active**, and to no other: an account
//! that merely added a name (pending), or set SMTP settings for it, neither receives nor
//! signs mail From it.

use super::dkim::Algorithm;
use super::transport::SmtpTarget;
use crate::types::DomainName;

/// A DKIM private key and the selector that publishes its public half.
#[derive(Clone)]
pub struct SigningKey {
    pub selector: String,
    pub algorithm: Algorithm,
    /// PKCS#8 DER.
    pub private_der: Vec<u8>,
}

#[async_trait::async_trait]
pub trait Directory: Send + Sync + 'static {
    /// The relay of `domain` for mail of `account_id`: the account's SMTP settings for the
    /// domain, when the domain is active in that account. An error says why the relay
    /// cannot be used (it becomes the message's `last_error`).
    async fn relay(
        &self,
        account_id: &str,
        domain: &DomainName,
    ) -> anyhow::Result<Option<SmtpTarget>>;

    /// The keys that sign mail of `account_id` From `domain` now (RSA first, then Ed25519
    /// when that is on), when the domain is active in that account; none otherwise.
    /// `None` is the operator's own mail (From the system sender): it is signed with the
    /// keys of the account where the domain is active, if one is.
    async fn signing_keys(
        &self,
        account_id: Option<&str>,
        domain: &DomainName,
    ) -> anyhow::Result<Vec<SigningKey>>;
}
