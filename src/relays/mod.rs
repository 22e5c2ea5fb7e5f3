//! SMTP relay settings of a domain (spec 002): the nodemailer-shaped object through which
//! the domain's outgoing mail leaves.

use std::time::Duration;

use axum::extract::State;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domains::DomainName;
use crate::http::{ApiError, AppState, Caller, ErrorBody, Json, Query};
use crate::mail::EmailAddress;
use crate::mail::transport::{Security, SmtpTarget, Step, probe};
use crate::store::Timestamp;
use crate::tenancy::Role;

/// What answers show in place of a stored password.
pub const MASK: &str = "********";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(
            get_settings,
            create_settings,
            update_settings,
            delete_settings
        ))
        .routes(routes!(test_settings))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DomainParam {
    /// The domain the settings are for (required).
    pub domain: Option<String>,
}

impl DomainParam {
    fn parse(&self) -> Result<DomainName, ApiError> {
        let given = self.domain.as_deref().unwrap_or("").trim();
        if given.is_empty() {
            return Err(ApiError::bad_request(
                "missing_parameter",
                "the domain parameter is required: ?domain=customer.com",
            )
            .with_param("domain"));
        }
        DomainName::parse(given).map_err(|e| ApiError::invalid("domain", e))
    }
}

#[derive(Deserialize, ToSchema)]
pub struct SettingsInput {
    /// Only `smtp`.
    pub provider: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The default From, an address on the domain; empty for none.
    #[serde(default)]
    pub from: Option<String>,
    pub options: OptionsInput,
}

#[derive(Deserialize, ToSchema)]
pub struct OptionsInput {
    /// The relay's host name or IP address.
    pub host: String,
    /// 1 to 65535.
    pub port: i64,
    /// `true`: TLS from the first byte (port 465); `false`: STARTTLS when offered.
    #[serde(default)]
    pub secure: bool,
    /// Log the SMTP dialogue (never the password).
    #[serde(default)]
    pub debug: bool,
    #[serde(default)]
    pub tls: Option<TlsInput>,
    #[serde(default)]
    pub auth: Option<AuthInput>,
}

#[derive(Deserialize, ToSchema)]
pub struct TlsInput {
    /// `false` accepts a certificate no trusted authority signed (default `true`).
    #[serde(rename = "rejectUnauthorized", default)]
    pub reject_unauthorized: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
pub struct AuthInput {
    #[serde(default)]
    pub user: Option<String>,
    /// The password; `********` (as answers show it) keeps the stored one, `""` removes it.
    #[serde(default)]
    pub pass: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SmtpSettings {
    /// 24 hex digits.
    #[serde(rename = "_id")]
    pub id: String,
    pub provider: String,
    pub description: String,
    pub from: String,
    pub options: OptionsOutput,
    pub domain: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OptionsOutput {
    pub host: String,
    pub port: i64,
    pub secure: bool,
    pub debug: bool,
    pub tls: TlsOutput,
    pub auth: AuthOutput,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TlsOutput {
    #[serde(rename = "rejectUnauthorized")]
    pub reject_unauthorized: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuthOutput {
    pub user: String,
    /// `********` when a password is stored, else empty: it is never shown.
    pub pass: String,
}

#[derive(Serialize, ToSchema)]
pub struct Removed {
    /// `OK`
    pub status: &'static str,
    #[serde(rename = "Info")]
    pub info: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct TestReport {
    /// Whether every step passed.
    pub ok: bool,
    pub steps: Vec<Step>,
}

/// A stored settings row.
struct Stored {
    id: String,
    domain_id: String,
    domain: String,
    description: String,
    from: String,
    host: String,
    port: i64,
    secure: bool,
    debug: bool,
    reject_unauthorized: bool,
    user: String,
    sealed_pass: Option<String>,
}

const COLUMNS: &str = "s.id, s.domain_id, d.name, s.description, s.from_address, s.host, s.port, s.secure, \
                       s.debug, s.reject_unauthorized, s.auth_user, s.auth_pass";

impl sqlx::FromRow<'_, AnyRow> for Stored {
    fn from_row(row: &AnyRow) -> sqlx::Result<Stored> {
        let flag = |name: &str| row.try_get::<i64, _>(name).map(|v| v != 0);
        Ok(Stored {
            id: row.try_get("id")?,
            domain_id: row.try_get("domain_id")?,
            domain: row.try_get("name")?,
            description: row.try_get("description")?,
            from: row.try_get("from_address")?,
            host: row.try_get("host")?,
            port: row.try_get("port")?,
            secure: flag("secure")?,
            debug: flag("debug")?,
            reject_unauthorized: flag("reject_unauthorized")?,
            user: row.try_get("auth_user")?,
            sealed_pass: row.try_get("auth_pass")?,
        })
    }
}

impl Stored {
    fn into_settings(self) -> SmtpSettings {
        SmtpSettings {
            id: self.id,
            provider: "smtp".to_string(),
            description: self.description,
            from: self.from,
            options: OptionsOutput {
                host: self.host,
                port: self.port,
                secure: self.secure,
                debug: self.debug,
                tls: TlsOutput {
                    reject_unauthorized: self.reject_unauthorized,
                },
                auth: AuthOutput {
                    user: self.user,
                    pass: if self.sealed_pass.is_some() {
                        MASK.to_string()
                    } else {
                        String::new()
                    },
                },
            },
            domain: self.domain,
        }
    }
}

fn seal_context(settings_id: &str) -> String {
    format!("smtp:{settings_id}")
}

async fn load(
    state: &AppState,
    account_id: &str,
    domain: &DomainName,
) -> Result<Option<Stored>, ApiError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM smtp_settings s JOIN domains d ON d.id = s.domain_id \
         WHERE s.account_id = $1 AND d.name = $2"
    ))
    .bind(account_id)
    .bind(domain.as_str())
    .fetch_optional(&state.db.pool)
    .await?)
}

fn no_settings(domain: &DomainName) -> ApiError {
    ApiError::not_found(&format!("SMTP settings for {domain}"))
}

enum Password {
    Keep,
    Remove,
    Set(String),
}

/// The input, checked field by field.
struct Valid {
    description: String,
    from: String,
    host: String,
    port: i64,
    secure: bool,
    debug: bool,
    reject_unauthorized: bool,
    user: String,
    password: Password,
}

fn validate(input: SettingsInput, domain: &DomainName) -> Result<Valid, ApiError> {
    if input.provider != "smtp" {
        return Err(ApiError::invalid(
            "provider",
            format!("provider must be smtp, not `{}`", input.provider),
        ));
    }
    let description = input.description.unwrap_or_default().trim().to_string();
    if description.chars().count() > 255 || description.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "description",
            "description must be at most 255 characters, without control characters",
        ));
    }
    let from = match input.from.as_deref().map(str::trim) {
        None | Some("") => String::new(),
        Some(given) => {
            let address = EmailAddress::parse(given).map_err(|e| ApiError::invalid("from", e))?;
            if address.domain() != domain {
                return Err(ApiError::invalid(
                    "from",
                    format!("from must be an address on {domain}"),
                ));
            }
            address.to_string()
        }
    };
    let options = input.options;
    let host = parse_host(&options.host).map_err(|e| ApiError::invalid("options.host", e))?;
    if !(1..=65535).contains(&options.port) {
        return Err(ApiError::invalid(
            "options.port",
            "port must be between 1 and 65535",
        ));
    }
    let (user, password) = match options.auth {
        None => (String::new(), Password::Keep),
        Some(auth) => {
            let user = auth.user.unwrap_or_default().trim().to_string();
            if user.len() > 255 || user.chars().any(char::is_control) {
                return Err(ApiError::invalid(
                    "options.auth.user",
                    "user must be at most 255 characters, without control characters",
                ));
            }
            let password = match auth.pass {
                None => Password::Keep,
                Some(pass) if pass == MASK => Password::Keep,
                Some(pass) if pass.is_empty() => Password::Remove,
                Some(pass) if pass.len() > 1024 || pass.contains(['\r', '\n', '\0']) => {
                    return Err(ApiError::invalid(
                        "options.auth.pass",
                        "pass must be at most 1024 characters, on one line",
                    ));
                }
                Some(pass) => Password::Set(pass),
            };
            (user, password)
        }
    };
    Ok(Valid {
        description,
        from,
        host,
        port: options.port,
        secure: options.secure,
        debug: options.debug,
        reject_unauthorized: options
            .tls
            .and_then(|t| t.reject_unauthorized)
            .unwrap_or(true),
        user,
        password,
    })
}

/// A host name (one label or more) or an IP address.
fn parse_host(input: &str) -> Result<String, String> {
    let host = input.trim().trim_end_matches('.').to_ascii_lowercase();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Ok(bare.to_string());
    }
    if host.is_empty() || host.len() > 253 {
        return Err("host must be a host name or an IP address".to_string());
    }
    for label in host.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!(
                "`{}` is not a host name or an IP address",
                input.trim()
            ));
        }
    }
    Ok(host)
}

fn flag(value: bool) -> i64 {
    i64::from(value)
}

/// Writes settings `id`: a new row, or new values for an existing one.
async fn save(
    state: &AppState,
    account_id: &str,
    domain_id: &str,
    id: &str,
    valid: &Valid,
    sealed_pass: Option<String>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO smtp_settings (id, account_id, domain_id, provider, description, from_address, host, port, \
         secure, debug, reject_unauthorized, auth_user, auth_pass, created_at, updated_at) \
         VALUES ($1, $2, $3, 'smtp', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13) \
         ON CONFLICT (id) DO UPDATE SET description = excluded.description, \
         from_address = excluded.from_address, host = excluded.host, port = excluded.port, \
         secure = excluded.secure, debug = excluded.debug, \
         reject_unauthorized = excluded.reject_unauthorized, auth_user = excluded.auth_user, \
         auth_pass = excluded.auth_pass, updated_at = excluded.updated_at",
    )
    .bind(id)
    .bind(account_id)
    .bind(domain_id)
    .bind(&valid.description)
    .bind(&valid.from)
    .bind(&valid.host)
    .bind(valid.port)
    .bind(flag(valid.secure))
    .bind(flag(valid.debug))
    .bind(flag(valid.reject_unauthorized))
    .bind(&valid.user)
    .bind(sealed_pass)
    .bind(Timestamp::now().0)
    .execute(&state.db.pool)
    .await?;
    Ok(())
}

/// Get the SMTP settings of a domain.
#[utoipa::path(get, path = "/api/v2/email/settings", tag = "smtp-settings",
    params(DomainParam),
    responses((status = 200, description = "The settings (the password masked)", body = SmtpSettings),
              (status = 400, description = "No domain parameter", body = ErrorBody),
              (status = 404, description = "No settings for this domain", body = ErrorBody),
              (status = 422, description = "Not a domain name", body = ErrorBody)))]
pub async fn get_settings(
    State(state): State<AppState>,
    caller: Caller,
    Query(param): Query<DomainParam>,
) -> Result<Json<SmtpSettings>, ApiError> {
    caller.require(Role::Admin)?;
    let domain = param.parse()?;
    let row = load(&state, &caller.account_id, &domain)
        .await?
        .ok_or_else(|| no_settings(&domain))?;
    Ok(Json(row.into_settings()))
}

/// Create the SMTP settings of a domain; a domain new to the account is added as pending.
#[utoipa::path(post, path = "/api/v2/email/settings", tag = "smtp-settings",
    params(DomainParam),
    request_body = SettingsInput,
    responses((status = 200, description = "The created settings", body = SmtpSettings),
              (status = 400, description = "No domain parameter", body = ErrorBody),
              (status = 409, description = "The domain has settings already", body = ErrorBody)))]
pub async fn create_settings(
    State(state): State<AppState>,
    caller: Caller,
    Query(param): Query<DomainParam>,
    Json(input): Json<SettingsInput>,
) -> Result<Json<SmtpSettings>, ApiError> {
    caller.require(Role::Admin)?;
    let domain = param.parse()?;
    let valid = validate(input, &domain)?;
    if load(&state, &caller.account_id, &domain).await?.is_some() {
        return Err(ApiError::conflict(
            "settings_exist",
            format!("{domain} has SMTP settings already; change them with PUT"),
        ));
    }
    let domain_row = crate::domains::find_or_add(&state, &caller.account_id, &domain).await?;
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    let id = hex::encode(bytes);
    let sealed = match &valid.password {
        Password::Set(pass) => Some(state.master_key.seal(pass.as_bytes(), &seal_context(&id))),
        Password::Keep | Password::Remove => None,
    };
    save(
        &state,
        &caller.account_id,
        &domain_row.id,
        &id,
        &valid,
        sealed,
    )
    .await
    .map_err(|error| match error {
        e if crate::store::is_unique_violation(&e) => ApiError::conflict(
            "settings_exist",
            format!("{domain} has SMTP settings already"),
        ),
        e => e.into(),
    })?;
    let row = load(&state, &caller.account_id, &domain)
        .await?
        .ok_or_else(|| no_settings(&domain))?;
    Ok(Json(row.into_settings()))
}

/// Replace the SMTP settings of a domain. A `pass` of `********` keeps the stored one.
#[utoipa::path(put, path = "/api/v2/email/settings", tag = "smtp-settings",
    params(DomainParam),
    request_body = SettingsInput,
    responses((status = 200, description = "The updated settings", body = SmtpSettings),
              (status = 400, description = "No domain parameter", body = ErrorBody),
              (status = 404, description = "No settings for this domain", body = ErrorBody)))]
pub async fn update_settings(
    State(state): State<AppState>,
    caller: Caller,
    Query(param): Query<DomainParam>,
    Json(input): Json<SettingsInput>,
) -> Result<Json<SmtpSettings>, ApiError> {
    caller.require(Role::Admin)?;
    let domain = param.parse()?;
    let valid = validate(input, &domain)?;
    let row = load(&state, &caller.account_id, &domain)
        .await?
        .ok_or_else(|| no_settings(&domain))?;
    let sealed = match &valid.password {
        Password::Keep => row.sealed_pass.clone(),
        Password::Remove => None,
        Password::Set(pass) => Some(
            state
                .master_key
                .seal(pass.as_bytes(), &seal_context(&row.id)),
        ),
    };
    save(
        &state,
        &caller.account_id,
        &row.domain_id,
        &row.id,
        &valid,
        sealed,
    )
    .await?;
    let row = load(&state, &caller.account_id, &domain)
        .await?
        .ok_or_else(|| no_settings(&domain))?;
    Ok(Json(row.into_settings()))
}

/// Delete the SMTP settings of a domain; its mail then leaves through the system relay.
#[utoipa::path(delete, path = "/api/v2/email/settings", tag = "smtp-settings",
    params(DomainParam),
    responses((status = 200, description = "Removed", body = Removed),
              (status = 400, description = "No domain parameter", body = ErrorBody),
              (status = 404, description = "No settings for this domain", body = ErrorBody),
              (status = 422, description = "Not a domain name", body = ErrorBody)))]
pub async fn delete_settings(
    State(state): State<AppState>,
    caller: Caller,
    Query(param): Query<DomainParam>,
) -> Result<Json<Removed>, ApiError> {
    caller.require(Role::Admin)?;
    let domain = param.parse()?;
    let row = load(&state, &caller.account_id, &domain)
        .await?
        .ok_or_else(|| no_settings(&domain))?;
    sqlx::query("DELETE FROM smtp_settings WHERE id = $1 AND account_id = $2")
        .bind(&row.id)
        .bind(&caller.account_id)
        .execute(&state.db.pool)
        .await?;
    Ok(Json(Removed {
        status: "OK",
        info: "Removed 1 record.",
    }))
}

/// Connect with the stored settings and report each step: connect, tls, ehlo, auth.
#[utoipa::path(post, path = "/api/v2/email/settings/test", tag = "smtp-settings",
    params(DomainParam),
    responses((status = 200, description = "What happened at each step", body = TestReport),
              (status = 400, description = "No domain parameter", body = ErrorBody),
              (status = 404, description = "No settings for this domain", body = ErrorBody),
              (status = 422, description = "Not a domain name", body = ErrorBody)))]
pub async fn test_settings(
    State(state): State<AppState>,
    caller: Caller,
    Query(param): Query<DomainParam>,
) -> Result<Json<TestReport>, ApiError> {
    caller.require(Role::Admin)?;
    let domain = param.parse()?;
    let row = load(&state, &caller.account_id, &domain)
        .await?
        .ok_or_else(|| no_settings(&domain))?;
    let target = row_target(&state, &row, Duration::from_secs(10))?;
    let steps = probe(&target).await;
    Ok(Json(TestReport {
        ok: steps.iter().all(|s| s.ok),
        steps,
    }))
}

fn row_target(state: &AppState, row: &Stored, timeout: Duration) -> Result<SmtpTarget, ApiError> {
    let credentials = match &row.sealed_pass {
        Some(sealed) => {
            let pass = state.master_key.open(sealed, &seal_context(&row.id))?;
            Some((
                row.user.clone(),
                String::from_utf8(pass).map_err(anyhow::Error::from)?,
            ))
        }
        None if !row.user.is_empty() => Some((row.user.clone(), String::new())),
        None => None,
    };
    Ok(SmtpTarget {
        host: row.host.clone(),
        port: u16::try_from(row.port).unwrap_or(25),
        security: if row.secure {
            Security::Implicit
        } else {
            Security::Opportunistic
        },
        accept_invalid_certs: !row.reject_unauthorized,
        credentials,
        debug: row.debug,
        timeout,
    })
}

/// The relay of `domain` for mail of `account_id`, when the account has set one.
pub async fn target_for(
    state: &AppState,
    account_id: &str,
    domain: &str,
) -> anyhow::Result<Option<SmtpTarget>> {
    let Ok(domain) = DomainName::parse(domain) else {
        return Ok(None);
    };
    let Some(row) = load(state, account_id, &domain)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?
    else {
        return Ok(None);
    };
    let timeout = Duration::from_secs(state.settings.smtp_timeout.max(1));
    row_target(state, &row, timeout)
        .map(Some)
        .map_err(|e| anyhow::anyhow!(e.message))
}

#[cfg(test)]
mod tests {
    use super::parse_host;

    #[test]
    fn hosts_are_names_or_addresses() {
        assert_eq!(parse_host("SMTP.Example.com.").unwrap(), "smtp.example.com");
        assert_eq!(parse_host("mailhog").unwrap(), "mailhog");
        assert_eq!(parse_host("127.0.0.1").unwrap(), "127.0.0.1");
        assert_eq!(parse_host("[::1]").unwrap(), "::1");
        for bad in ["", "a b", "-x.com", "x..com", "smtp://x.com", "x_y.com"] {
            assert!(parse_host(bad).is_err(), "{bad}");
        }
    }
}
