//! Mailboxes on managed domains (spec 003), served by Dovecot and Postfix through the
//! directory views of the schema.

pub mod local_part;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use local_part::LocalPart;

use crate::config::Settings;
use crate::domains::{DomainName, DomainStatus};
use crate::http::{ApiError, AppState, Caller, ErrorBody, Json, Page, Query};
use crate::store::{Db, Timestamp, passwords};
use crate::tenancy::Role;

const NOTE: &str = "Save this password now. It will not be shown again.";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_domain_mailboxes))
        .routes(routes!(create_mailbox))
        .routes(routes!(list_mailboxes))
        .routes(routes!(get_mailbox, update_mailbox))
        .routes(routes!(delete_mailbox))
        .routes(routes!(reset_password))
}

/// Keeps the `mail_directory` row, which the `dovecot_users` view reads, in step with
/// the settings.
pub async fn write_directory_settings(db: &Db, settings: &Settings) -> sqlx::Result<()> {
    sqlx::query("UPDATE mail_directory SET vmail_root = $1, uid = $2, gid = $3 WHERE id = 1")
        .bind(settings.vmail_root.trim_end_matches('/'))
        .bind(settings.vmail_uid as i64)
        .bind(settings.vmail_gid as i64)
        .execute(&db.pool)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MailboxStatus {
    /// Dovecot and Postfix serve it.
    Active,
    /// Kept, but nobody can log in and no mail is accepted.
    Disabled,
}

impl MailboxStatus {
    fn as_str(self) -> &'static str {
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

const COLUMNS: &str = "m.id, m.user_id, d.name AS domain, m.local_part, m.address, m.display_name, \
                       m.status, m.is_default, m.quota_mb, m.created_at, m.updated_at";
const FROM: &str = "FROM mailboxes m JOIN domains d ON d.id = m.domain_id";

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
    fn parse(&self) -> Result<Option<i64>, ApiError> {
        match self.after {
            Some(id) if id < 0 => Err(ApiError::invalid("after", "after must be 0 or more")),
            after => Ok(after),
        }
    }
}

/// The `next_after` of a page: its last id, unless the page is the last.
fn next_after(items: &[Mailbox], limit: i64) -> Option<i64> {
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

fn parse_user_id(value: Option<&str>) -> Result<Option<String>, ApiError> {
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

fn parse_display_name(value: Option<&str>) -> Result<String, ApiError> {
    let value = value.unwrap_or("").trim();
    if value.chars().count() > 128 || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "display_name",
            "display_name must be at most 128 characters, without control characters",
        ));
    }
    Ok(value.to_string())
}

fn parse_quota(value: Option<i64>) -> Result<Option<i64>, ApiError> {
    match value {
        Some(mb) if !(1..=16_777_216).contains(&mb) => Err(ApiError::invalid(
            "quota_mb",
            "quota_mb must be between 1 and 16777216 (16 TiB)",
        )),
        other => Ok(other),
    }
}

/// The password to set: the one given, checked, or a generated one.
fn choose_password(given: Option<&str>, local_part: &str) -> Result<String, ApiError> {
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

/// A page of the account's mailboxes by id, of one user, on one domain and past an id
/// when given. The page's ids come from an index alone (no table rows, no join), so a
/// deep offset skips index entries only; the rows are read for the page's ids.
async fn page_of(
    db: &Db,
    account_id: &str,
    user_id: Option<&str>,
    domain_id: Option<&str>,
    after: Option<i64>,
    (limit, offset): (i64, i64),
) -> sqlx::Result<Vec<Mailbox>> {
    let mut filter = String::from("account_id = $1");
    let mut next = 2;
    for (column, given) in [
        ("user_id =", user_id.is_some()),
        ("domain_id =", domain_id.is_some()),
        ("id >", after.is_some()),
    ] {
        if given {
            filter.push_str(&format!(" AND {column} ${next}"));
            next += 1;
        }
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM (SELECT id FROM mailboxes WHERE {filter} ORDER BY id \
         LIMIT ${next} OFFSET ${}) page \
         JOIN mailboxes m ON m.id = page.id JOIN domains d ON d.id = m.domain_id ORDER BY m.id",
        next + 1
    );
    let mut query = sqlx::query_as(&sql).bind(account_id);
    for value in [user_id, domain_id].into_iter().flatten() {
        query = query.bind(value);
    }
    if let Some(after) = after {
        query = query.bind(after);
    }
    query.bind(limit).bind(offset).fetch_all(&db.pool).await
}

/// The caller's mailbox `id`; 404 when it is not theirs, or not `user_id`'s when given.
async fn find(
    state: &AppState,
    caller: &Caller,
    id: &str,
    user_id: Option<&str>,
) -> Result<Mailbox, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::not_found("mailbox"))?;
    let mailbox: Mailbox = sqlx::query_as(&format!(
        "SELECT {COLUMNS} {FROM} WHERE m.id = $1 AND m.account_id = $2"
    ))
    .bind(id)
    .bind(&caller.account_id)
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("mailbox"))?;
    match parse_user_id(user_id)? {
        Some(user) if mailbox.user_id.as_deref() != Some(user.as_str()) => {
            Err(ApiError::not_found("mailbox"))
        }
        _ => Ok(mailbox),
    }
}

/// List the mailboxes of one domain.
#[utoipa::path(get, path = "/v2/domains/{domain}/email-accounts", tag = "mailboxes",
    params(("domain" = String, Path, description = "The domain name"), Owner, Page, After),
    responses((status = 200, description = "The domain and a page of its mailboxes", body = DomainMailboxList),
              (status = 422, description = "Invalid paging", body = ErrorBody)))]
pub async fn list_domain_mailboxes(
    State(state): State<AppState>,
    caller: Caller,
    Path(domain): Path<String>,
    Query(owner): Query<Owner>,
    Query(page): Query<Page>,
    Query(after): Query<After>,
) -> Result<Json<DomainMailboxList>, ApiError> {
    caller.require(Role::Viewer)?;
    let (limit, offset) = page.parse()?;
    let after = after.parse()?;
    let name = DomainName::parse(&domain).map_err(|_| ApiError::not_found("domain"))?;
    let domain = crate::domains::find(&state.db, &caller.account_id, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("domain"))?;
    let user = parse_user_id(owner.user_id.as_deref())?;
    let items = page_of(
        &state.db,
        &caller.account_id,
        user.as_deref(),
        Some(&domain.id),
        after,
        (limit, offset),
    )
    .await?;
    Ok(Json(DomainMailboxList {
        domain: DomainSummary {
            domain: domain.name,
            status: domain.status,
        },
        next_after: next_after(&items, limit),
        items,
        limit,
        offset,
    }))
}

/// Create a mailbox on an active domain; its password is shown once.
#[utoipa::path(post, path = "/v2/email-accounts/create", tag = "mailboxes",
    request_body = CreateMailbox,
    responses((status = 201, description = "The mailbox and its password", body = WithPassword<CreatedMailbox>),
              (status = 409, description = "The address exists, or the domain is not active", body = ErrorBody)))]
pub async fn create_mailbox(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateMailbox>,
) -> Result<(StatusCode, Json<WithPassword<CreatedMailbox>>), ApiError> {
    caller.require(Role::Editor)?;
    let name = DomainName::parse(&body.domain).map_err(|e| ApiError::invalid("domain", e))?;
    let local_part =
        LocalPart::parse(&body.local_part).map_err(|e| ApiError::invalid("local_part", e))?;
    let display_name = parse_display_name(body.display_name.as_deref())?;
    let user_id = parse_user_id(body.user_id.as_deref())?;
    let quota_mb = parse_quota(body.quota_mb)?;
    let password = choose_password(body.password.as_deref(), local_part.as_str())?;

    let domain = crate::domains::find(&state.db, &caller.account_id, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("domain").with_param("domain"))?;
    if domain.status != DomainStatus::Active {
        return Err(ApiError::conflict(
            "domain_not_active",
            format!(
                "{name} is {}: mailboxes need an active domain; publish its DNS records \
                 (GET /v2/domains/{name}) and call POST /v2/domains/{name}/verify",
                domain.status.as_str()
            ),
        )
        .with_param("domain"));
    }
    let address = format!("{local_part}@{name}");
    let taken = |address: &str| {
        ApiError::conflict("mailbox_exists", format!("{address} already exists"))
            .with_param("local_part")
    };
    let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM mailboxes WHERE address = $1")
        .bind(&address)
        .fetch_optional(&state.db.pool)
        .await?;
    if exists.is_some() {
        return Err(taken(&address));
    }
    let password_hash = passwords::hash(&password).await?;

    let now = Timestamp::now().0;
    let mut tx = state.db.begin().await?;
    let is_default = match &user_id {
        Some(user) => {
            let existing: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM mailboxes WHERE account_id = $1 AND user_id = $2 LIMIT 1",
            )
            .bind(&caller.account_id)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
            existing.is_none()
        }
        None => false,
    };
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO mailboxes (account_id, domain_id, local_part, address, user_id, display_name, password_hash, \
         status, is_default, quota_mb, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $9, $10, $10) RETURNING id",
    )
    .bind(&caller.account_id)
    .bind(&domain.id)
    .bind(local_part.as_str())
    .bind(&address)
    .bind(&user_id)
    .bind(&display_name)
    .bind(&password_hash)
    .bind(i64::from(is_default))
    .bind(quota_mb)
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .map_err(|error| match error {
        e if crate::store::is_unique_violation(&e) => taken(&address),
        e => e.into(),
    })?;
    tx.commit().await?;

    let mailbox = find(&state, &caller, &id.to_string(), None).await?;
    Ok((
        StatusCode::CREATED,
        Json(WithPassword {
            account: CreatedMailbox {
                user_id_camel: mailbox.user_id.clone(),
                is_default_camel: mailbox.is_default,
                mailbox,
            },
            password,
            note: NOTE,
        }),
    ))
}

/// List the account's mailboxes.
#[utoipa::path(get, path = "/v2/email-accounts", tag = "mailboxes",
    params(ListFilter, Page, After),
    responses((status = 200, description = "A page of mailboxes", body = MailboxList),
              (status = 422, description = "Invalid paging or filter", body = ErrorBody)))]
pub async fn list_mailboxes(
    State(state): State<AppState>,
    caller: Caller,
    Query(filter): Query<ListFilter>,
    Query(page): Query<Page>,
    Query(after): Query<After>,
) -> Result<Json<MailboxList>, ApiError> {
    caller.require(Role::Viewer)?;
    let (limit, offset) = page.parse()?;
    let after = after.parse()?;
    let user = parse_user_id(filter.user_id.as_deref())?;
    let domain = match filter
        .domain
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        Some(domain) => {
            let name = DomainName::parse(domain).map_err(|e| ApiError::invalid("domain", e))?;
            match crate::domains::find(&state.db, &caller.account_id, &name).await? {
                Some(domain) => Some(domain.id),
                // Not the caller's domain: nothing of theirs is on it.
                None => {
                    return Ok(Json(MailboxList {
                        items: Vec::new(),
                        limit,
                        offset,
                        next_after: None,
                    }));
                }
            }
        }
        None => None,
    };
    let items = page_of(
        &state.db,
        &caller.account_id,
        user.as_deref(),
        domain.as_deref(),
        after,
        (limit, offset),
    )
    .await?;
    Ok(Json(MailboxList {
        next_after: next_after(&items, limit),
        items,
        limit,
        offset,
    }))
}

/// Get one mailbox.
#[utoipa::path(get, path = "/v2/email-accounts/{id}", tag = "mailboxes",
    params(("id" = i64, Path, description = "The mailbox's id"), Owner),
    responses((status = 200, description = "The mailbox", body = MailboxEnvelope)))]
pub async fn get_mailbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(owner): Query<Owner>,
) -> Result<Json<MailboxEnvelope>, ApiError> {
    caller.require(Role::Viewer)?;
    let account = find(&state, &caller, &id, owner.user_id.as_deref()).await?;
    Ok(Json(MailboxEnvelope { account }))
}

/// Change a mailbox's display name, status or quota.
#[utoipa::path(put, path = "/v2/email-accounts/{id}", tag = "mailboxes",
    params(("id" = i64, Path, description = "The mailbox's id")),
    request_body = UpdateMailbox,
    responses((status = 200, description = "The mailbox", body = MailboxEnvelope)))]
pub async fn update_mailbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<UpdateMailbox>,
) -> Result<Json<MailboxEnvelope>, ApiError> {
    caller.require(Role::Editor)?;
    let mailbox = find(&state, &caller, &id, body.user_id.as_deref()).await?;
    let display_name = match body.display_name.as_deref() {
        Some(name) => parse_display_name(Some(name))?,
        None => mailbox.display_name.clone(),
    };
    let status = body.status.unwrap_or(mailbox.status);
    let quota_mb = match body.quota_mb {
        Some(quota) => parse_quota(quota)?,
        None => mailbox.quota_mb,
    };
    sqlx::query(
        "UPDATE mailboxes SET display_name = $2, status = $3, quota_mb = $4, updated_at = $5 \
         WHERE id = $1 AND account_id = $6",
    )
    .bind(mailbox.id)
    .bind(&display_name)
    .bind(status.as_str())
    .bind(quota_mb)
    .bind(Timestamp::now().0)
    .bind(&caller.account_id)
    .execute(&state.db.pool)
    .await?;
    let account = find(&state, &caller, &id, None).await?;
    Ok(Json(MailboxEnvelope { account }))
}

/// Delete a mailbox. When it was its user's default, their oldest other one becomes default.
#[utoipa::path(post, path = "/v2/email-accounts/delete", tag = "mailboxes",
    request_body = DeleteMailbox,
    responses((status = 200, description = "Deleted", body = DeletedMailbox)))]
pub async fn delete_mailbox(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<DeleteMailbox>,
) -> Result<Json<DeletedMailbox>, ApiError> {
    caller.require(Role::Editor)?;
    let mailbox = find(
        &state,
        &caller,
        &body.id.to_string(),
        body.user_id.as_deref(),
    )
    .await?;
    let mut tx = state.db.begin().await?;
    let deleted = sqlx::query("DELETE FROM mailboxes WHERE id = $1 AND account_id = $2")
        .bind(mailbox.id)
        .bind(&caller.account_id)
        .execute(&mut *tx)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(ApiError::not_found("mailbox"));
    }
    if let (true, Some(user)) = (mailbox.is_default, &mailbox.user_id) {
        sqlx::query(
            "UPDATE mailboxes SET is_default = 1, updated_at = $3 WHERE id = \
             (SELECT id FROM mailboxes WHERE account_id = $1 AND user_id = $2 ORDER BY created_at, id LIMIT 1)",
        )
        .bind(&caller.account_id)
        .bind(user)
        .bind(Timestamp::now().0)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Json(DeletedMailbox {
        ok: true,
        deleted: DeletedRef {
            id: mailbox.id,
            address: mailbox.address,
        },
    }))
}

/// Set a new password (given or generated) and show it once.
#[utoipa::path(post, path = "/v2/email-accounts/{id}/password/reset", tag = "mailboxes",
    params(("id" = i64, Path, description = "The mailbox's id")),
    request_body = ResetPassword,
    responses((status = 200, description = "The new password", body = WithPassword<MailboxRef>)))]
pub async fn reset_password(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<ResetPassword>,
) -> Result<Json<WithPassword<MailboxRef>>, ApiError> {
    caller.require(Role::Editor)?;
    let mailbox = find(&state, &caller, &id, body.user_id.as_deref()).await?;
    let password = choose_password(body.password.as_deref(), &mailbox.local_part)?;
    let password_hash = passwords::hash(&password).await?;
    sqlx::query("UPDATE mailboxes SET password_hash = $2, updated_at = $3 WHERE id = $1 AND account_id = $4")
        .bind(mailbox.id)
        .bind(&password_hash)
        .bind(Timestamp::now().0)
        .bind(&caller.account_id)
        .execute(&state.db.pool)
        .await?;
    Ok(Json(WithPassword {
        account: MailboxRef {
            id: mailbox.id,
            domain: mailbox.domain,
            address: mailbox.address,
        },
        password,
        note: NOTE,
    }))
}
