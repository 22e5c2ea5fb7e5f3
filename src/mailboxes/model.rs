//! Mailboxes as the API takes and shows them, and the rules of their fields.

use serde::{Deserialize, Deserializer, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::{IntoParams, ToSchema};

use crate::domains::model::DomainStatus;
use crate::http::ApiError;
use crate::store::{Timestamp, passwords};
use crate::types::text::check_text;

pub const NOTE: &str = "Save this password now. It will not be shown again.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MailboxStatus {
    /// Dovecot and Postfix serve it.
    Active,
    /// Kept, but nobody can log in and no mail is accepted.
    Disabled,
}

impl MailboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MailboxStatus::Active => "active",
            MailboxStatus::Disabled => "disabled",
        }
    }
}

/// A mailbox ("email account").
#[derive(Debug, Serialize, ToSchema)]
pub struct Mailbox {
    pub id: i64,
    /// The owner in the tenant's own system.
    pub user_id: Option<String>,
    pub domain: String,
    pub local_part: String,
    pub address: String,
    pub display_name: String,
    pub status: MailboxStatus,
    /// Whether this is its user's default mailbox (their first).
    pub is_default: bool,
    /// The storage quota in MiB; `null` for none.
    pub quota_mb: Option<i64>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl sqlx::FromRow<'_, AnyRow> for Mailbox {
    fn from_row(row: &AnyRow) -> sqlx::Result<Mailbox> {
        let status: String = row.try_get("status")?;
        Ok(Mailbox {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            domain: row.try_get("domain")?,
            local_part: row.try_get("local_part")?,
            address: row.try_get("address")?,
            display_name: row.try_get("display_name")?,
            status: if status == "active" {
                MailboxStatus::Active
            } else {
                MailboxStatus::Disabled
            },
            is_default: row.try_get::<i64, _>("is_default")? != 0,
            quota_mb: row.try_get("quota_mb")?,
            created_at: Timestamp(row.try_get("created_at")?),
            updated_at: Timestamp(row.try_get("updated_at")?),
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct MailboxEnvelope {
    pub account: Mailbox,
}

/// The create answer: the mailbox with the document's `userId`/`isDefault` too.
#[derive(Serialize, ToSchema)]
pub struct CreatedMailbox {
    #[serde(flatten)]
    pub mailbox: Mailbox,
    #[serde(rename = "userId")]
    pub user_id_camel: Option<String>,
    #[serde(rename = "isDefault")]
    pub is_default_camel: bool,
}

#[derive(Serialize, ToSchema)]
pub struct WithPassword<T: ToSchema> {
    pub account: T,
    /// Shown this once; mailroom keeps only its hash.
    pub password: String,
    pub note: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct MailboxList {
    pub items: Vec<Mailbox>,
    pub limit: i64,
    pub offset: i64,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_after: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct DomainSummary {
    pub domain: String,
    pub status: DomainStatus,
}

#[derive(Serialize, ToSchema)]
pub struct DomainMailboxList {
    pub domain: DomainSummary,
    pub items: Vec<Mailbox>,
    pub limit: i64,
    pub offset: i64,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_after: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct MailboxRef {
    pub id: i64,
    pub domain: String,
    pub address: String,
}

#[derive(Serialize, ToSchema)]
pub struct DeletedMailbox {
    pub ok: bool,
    pub deleted: DeletedRef,
}

#[derive(Serialize, ToSchema)]
pub struct DeletedRef {
    pub id: i64,
    pub address: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Owner {
    /// Only the mailboxes of this user (for one mailbox: it must be theirs).
    pub user_id: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListFilter {
    /// Only the mailboxes of this user.
    pub user_id: Option<String>,
    /// Only the mailboxes on this domain.
    pub domain: Option<String>,
}

/// Paging by position: as fast on the millionth mailbox as on the first, where a deep
/// `offset` has to count its way there.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct After {
    /// Only mailboxes with a greater id: the `next_after` of the previous page.
    #[param(minimum = 0)]
    pub after: Option<i64>,
}

impl After {
    pub fn parse(&self) -> Result<Option<i64>, ApiError> {
        match self.after {
            Some(id) if id < 0 => Err(ApiError::invalid("after", "after must be 0 or more")),
            after => Ok(after),
        }
    }
}

/// The `next_after` of a page: its last id, unless the page is the last.
pub fn next_after(items: &[Mailbox], limit: i64) -> Option<i64> {
    let full = items.len() as i64 == limit;
    items.last().filter(|_| full).map(|m| m.id)
}

#[derive(Deserialize, ToSchema)]
pub struct CreateMailbox {
    pub domain: String,
    /// The part before the @: a dot-atom of at most 64 characters, stored lowercase.
    pub local_part: String,
    /// At most 128 characters.
    #[serde(default)]
    pub display_name: Option<String>,
    /// The owner in the tenant's own system, at most 128 characters.
    #[serde(default)]
    pub user_id: Option<String>,
    /// 12 to 128 characters, not containing the local part; generated when absent.
    #[serde(default)]
    pub password: Option<String>,
    /// A storage quota in MiB.
    #[serde(default)]
    pub quota_mb: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
pub struct UpdateMailbox {
    /// When given, the mailbox must be this user's.
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub status: Option<MailboxStatus>,
    /// A storage quota in MiB; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub quota_mb: Option<Option<i64>>,
}

#[derive(Deserialize, ToSchema)]
pub struct DeleteMailbox {
    pub id: i64,
    #[serde(default)]
    pub user_id: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct ResetPassword {
    #[serde(default)]
    pub user_id: Option<String>,
    /// 12 to 128 characters; generated when absent.
    #[serde(default)]
    pub password: Option<String>,
}

/// Tells a field sent as `null` (`Some(None)`) from one not sent (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

pub fn parse_user_id(value: Option<&str>) -> Result<Option<String>, ApiError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(user) if user.chars().count() > 128 || user.chars().any(char::is_control) => {
            Err(ApiError::invalid(
                "user_id",
                "user_id must be at most 128 characters, without control characters",
            ))
        }
        Some(user) => Ok(Some(user.to_string())),
    }
}

/// A display name: may be empty; otherwise a name as `parse_name` takes one.
pub fn parse_display_name(value: Option<&str>) -> Result<String, ApiError> {
    let value = value.unwrap_or("").trim();
    if value.chars().count() > 128 {
        return Err(ApiError::invalid(
            "display_name",
            "display_name must be at most 128 characters",
        ));
    }
    check_text(value)
        .map_err(|e| ApiError::invalid("display_name", format!("display_name {e}")))?;
    Ok(value.to_string())
}

pub fn parse_quota(value: Option<i64>) -> Result<Option<i64>, ApiError> {
    match value {
        Some(mb) if !(1..=16_777_216).contains(&mb) => Err(ApiError::invalid(
            "quota_mb",
            "quota_mb must be between 1 and 16777216 (16 TiB)",
        )),
        other => Ok(other),
    }
}

/// The password to set: the one given, checked, or a generated one.
pub fn choose_password(given: Option<&str>, local_part: &str) -> Result<String, ApiError> {
    let Some(password) = given else {
        return Ok(passwords::generate());
    };
    let length = password.chars().count();
    if !(12..=128).contains(&length) {
        return Err(ApiError::invalid(
            "password",
            "password must be 12 to 128 characters",
        ));
    }
    if password.to_ascii_lowercase().contains(local_part) {
        return Err(ApiError::invalid(
            "password",
            "password must not contain the mailbox's name",
        ));
    }
    if password.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "password",
            "password must not contain control characters",
        ));
    }
    Ok(password.to_string())
}
