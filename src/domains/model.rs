//! Domains as the API shows them, and their statuses.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::records::{DnsRecord, Found, Wanted};
use crate::store::Timestamp;

pub const HOUR: i64 = 3_600_000;
/// How long a pending domain may go without proof before it is `failed`.
pub const PENDING_LIMIT: i64 = 72 * HOUR;
/// How long an active domain's proof may be missing before it is `pending` again.
pub const PROOF_GRACE: i64 = 24 * HOUR;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DomainStatus {
    /// Waiting for its DNS records.
    Pending,
    /// Proven; mailboxes and senders may use it.
    Active,
    /// No proof within 72 hours; `verify` can still activate it.
    Failed,
    /// Stopped by the operator.
    Suspended,
}

impl DomainStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DomainStatus::Pending => "pending",
            DomainStatus::Active => "active",
            DomainStatus::Failed => "failed",
            DomainStatus::Suspended => "suspended",
        }
    }

    pub fn parse(value: &str) -> anyhow::Result<DomainStatus> {
        Ok(match value {
            "pending" => DomainStatus::Pending,
            "active" => DomainStatus::Active,
            "failed" => DomainStatus::Failed,
            "suspended" => DomainStatus::Suspended,
            other => anyhow::bail!("unknown domain status {other}"),
        })
    }

    /// The event that tells an account its domain came to this status.
    pub fn event_type(self) -> &'static str {
        match self {
            DomainStatus::Pending => "domain.pending",
            DomainStatus::Active => "domain.verified",
            DomainStatus::Failed => "domain.failed",
            DomainStatus::Suspended => "domain.suspended",
        }
    }
}

/// A domain in API answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Domain {
    /// The name in ASCII (IDNA A-labels), lowercase.
    pub domain: String,
    pub status: DomainStatus,
    /// The records to publish: the DKIM CNAMEs are required, the rest advised.
    pub records: Vec<DnsRecord>,
    /// The keys behind the DKIM selectors, which rotate without the CNAMEs changing.
    pub dkim: Dkim,
    pub created_at: Timestamp,
    pub verified_at: Option<Timestamp>,
    pub last_checked_at: Option<Timestamp>,
}

/// A domain row, before its records are attached.
pub struct DomainRow {
    pub id: String,
    pub name: String,
    pub status: DomainStatus,
    pub created_at: i64,
    pub verified_at: Option<i64>,
    pub last_checked_at: Option<i64>,
}

impl sqlx::FromRow<'_, AnyRow> for DomainRow {
    fn from_row(row: &AnyRow) -> sqlx::Result<DomainRow> {
        let status: String = row.try_get("status")?;
        Ok(DomainRow {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            status: DomainStatus::parse(&status).map_err(|e| sqlx::Error::Decode(e.into()))?,
            created_at: row.try_get("created_at")?,
            verified_at: row.try_get("verified_at")?,
            last_checked_at: row.try_get("last_checked_at")?,
        })
    }
}

/// The fields of a domain the status rules read and write.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub status: DomainStatus,
    pub verified_by: Option<String>,
    pub status_changed_at: i64,
    pub verified_at: Option<i64>,
    pub proof_missing_since: Option<i64>,
    pub next_check_at: Option<i64>,
    pub failed_checks: i64,
}

/// A leased domain as its check starts.
pub struct Due {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub created_at: i64,
    pub before: Standing,
    pub tokens: Vec<String>,
    /// Active in another account: proof here does not make it active.
    pub active_elsewhere: bool,
}

/// What one check of a domain found and decided, to be saved.
pub struct Checked {
    pub due: Due,
    pub after: Standing,
    pub reason: Option<&'static str>,
    pub lookups: Vec<(Wanted, Found)>,
    pub at: i64,
    /// The domain as the API shows it after the check, when its status changed: what the
    /// event announcing the change carries.
    pub view: Option<Domain>,
}

/// The state of a key, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Signs mail now.
    Signing,
    /// Signs nothing; a rotation puts the next key here.
    Standby,
    /// A rotation's new key: published, and signing from `signing_since`.
    Published,
    /// Replaced, still published until `retire_at` so that mail it signed verifies.
    Retiring,
}

/// A key as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DkimKey {
    /// The selector: `{selector}._domainkey.{domain}` is the CNAME that publishes it.
    pub selector: String,
    #[schema(value_type = String, example = "rsa")]
    pub algorithm: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits: Option<u32>,
    pub state: KeyState,
    pub created_at: Timestamp,
    /// When it started signing, or (published) when it will.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_since: Option<Timestamp>,
    /// When it stops being published (a replaced key's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<Timestamp>,
}

/// A domain's DKIM keys and when the next automatic rotation is due.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Dkim {
    pub keys: Vec<DkimKey>,
    /// `null` when automatic rotation is off (`MAILROOM_DKIM_ROTATE_DAYS=0`) or the
    /// domain is not active (only active domains' keys sign, and rotate).
    pub next_rotation_at: Option<Timestamp>,
}

impl Dkim {
    /// As shown for a domain of `status`.
    pub fn of(mut self, status: DomainStatus) -> Dkim {
        if status != DomainStatus::Active {
            self.next_rotation_at = None;
        }
        self
    }
}
