//! Sender addresses as the API shows them, their statuses, and whose they are.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domains::model::DomainStatus;
use crate::store::Timestamp;

/// Whose sender address: the account's, or one organization's (entity's).
#[derive(Debug, Clone)]
pub enum Scope {
    Account,
    Organization(String),
}

impl Scope {
    pub fn entity_id(&self) -> Option<&str> {
        match self {
            Scope::Account => None,
            Scope::Organization(id) => Some(id),
        }
    }

    /// The value of `COALESCE(entity_id, '')` for this scope.
    pub fn key(&self) -> &str {
        self.entity_id().unwrap_or("")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EmailVerification {
    Pending,
    Verified,
    /// The link and code ran out; resend them.
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DomainVerification {
    Pending,
    /// The domain is active.
    Verified,
    /// The domain failed its proof, or is suspended.
    Failed,
}

impl From<DomainStatus> for DomainVerification {
    fn from(status: DomainStatus) -> DomainVerification {
        match status {
            DomainStatus::Active => DomainVerification::Verified,
            DomainStatus::Failed | DomainStatus::Suspended => DomainVerification::Failed,
            DomainStatus::Pending => DomainVerification::Pending,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CnameRecord {
    #[serde(rename = "type")]
    pub record_type: &'static str,
    pub name: String,
    pub value: String,
}

/// A sender address.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SenderAddress {
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub id: String,
    pub email: String,
    pub email_verification_status: EmailVerification,
    pub domain_verification_status: DomainVerification,
    /// The DKIM tokens of the address's domain.
    pub tokens: Vec<String>,
    /// The CNAME records the tokens stand for.
    pub dns_records: Vec<CnameRecord>,
    pub account_id: String,
    /// `null` for the account's own sender address.
    pub organization_id: Option<String>,
    /// On an organization's address: whether its mail is sent from it now (both statuses
    /// verified). Otherwise its account's address is used when verified, else the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective: Option<bool>,
    /// On an organization's address: the address its mail is sent from now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_sender: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SenderStatus {
    pub email_verification_status: EmailVerification,
    pub domain_verification_status: DomainVerification,
}

#[derive(Serialize, ToSchema)]
pub struct Count {
    pub count: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Success {
    pub success: bool,
}

#[derive(Deserialize, ToSchema)]
pub struct CreateSender {
    pub email: String,
}

#[derive(Deserialize, ToSchema)]
pub struct VerifyCode {
    /// The 6-digit code from the verification email.
    pub code: String,
}
