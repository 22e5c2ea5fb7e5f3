//! SMTP settings over HTTP (spec 002).

use std::time::Duration;

use axum::extract::State;
use rand::RngCore;

use super::model::{
    DomainParam, Password, Removed, SettingsInput, SmtpSettings, TestReport, Valid, validate,
};
use super::store::{self, seal_context};
use crate::domains::{self, store::AddError};
use crate::http::{ApiError, Caller, ErrorBody, Json, Query, on_unique};
use crate::identity::Role;
use crate::mail::transport::{Limits, probe};
use crate::state::AppState;
use crate::types::DomainName;

fn no_settings(domain: &DomainName) -> ApiError {
    ApiError::not_found(&format!("SMTP settings for {domain}"))
}

/// The domain of the request, for an admin.
fn domain_of(caller: &Caller, param: &DomainParam) -> Result<DomainName, ApiError> {
    caller.require_account(Role::Admin)?;
    param.parse()
}

/// Settings for a name active in another account would never carry mail (a relay serves
/// only the account where its domain is active), and the name is that account's: refused
/// as adding the domain is, with nothing said of the other account.
async fn refuse_if_active_elsewhere(
    state: &AppState,
    caller: &Caller,
    domain: &DomainName,
) -> Result<(), ApiError> {
    if domains::store::active_elsewhere(&state.db, &caller.account_id, domain).await? {
        return Err(AddError::ActiveElsewhere(domain.clone()).into());
    }
    Ok(())
}

/// Writes the settings and answers them as stored. `stored` is the password kept when
/// the request keeps it.
async fn save(
    state: &AppState,
    caller: &Caller,
    (domain, domain_id, id): (&DomainName, &str, &str),
    valid: &Valid,
    stored: Option<String>,
) -> Result<Json<SmtpSettings>, ApiError> {
    let sealed = match &valid.password {
        Password::Keep => stored,
        Password::Remove => None,
        Password::Set(pass) => Some(state.master_key.seal(pass.as_bytes(), &seal_context(id))),
    };
    store::save(&state.db, &caller.account_id, domain_id, id, valid, sealed)
        .await
        .map_err(on_unique(|| {
            ApiError::conflict(
                "settings_exist",
                format!("{domain} has SMTP settings already"),
            )
        }))?;
    Ok(Json(load(state, caller, domain).await?.into_settings()))
}

async fn load(
    state: &AppState,
    caller: &Caller,
    domain: &DomainName,
) -> Result<store::Stored, ApiError> {
    store::load(&state.db, &caller.account_id, domain)
        .await?
        .ok_or_else(|| no_settings(domain))
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
    let domain = domain_of(&caller, &param)?;
    let row = load(&state, &caller, &domain).await?;
    Ok(Json(row.into_settings()))
}

/// Create the SMTP settings of a domain; a domain new to the account is added as pending.
#[utoipa::path(post, path = "/api/v2/email/settings", tag = "smtp-settings",
    params(DomainParam),
    request_body = SettingsInput,
    responses((status = 503, description = "Busy making DKIM keys; see Retry-After", body = ErrorBody),
              (status = 200, description = "The created settings", body = SmtpSettings),
              (status = 400, description = "No domain parameter", body = ErrorBody),
              (status = 409, description = "The domain has settings already, or is verified by another account", body = ErrorBody)))]
pub async fn create_settings(
    State(state): State<AppState>,
    caller: Caller,
    Query(param): Query<DomainParam>,
    Json(input): Json<SettingsInput>,
) -> Result<Json<SmtpSettings>, ApiError> {
    let domain = domain_of(&caller, &param)?;
    let valid = validate(input, &domain, &state.destination_policy)?;
    refuse_if_active_elsewhere(&state, &caller, &domain).await?;
    if store::load(&state.db, &caller.account_id, &domain)
        .await?
        .is_some()
    {
        return Err(ApiError::conflict(
            "settings_exist",
            format!("{domain} has SMTP settings already; change them with PUT"),
        ));
    }
    let domain_row = domains::store::find_or_add(
        &state.db,
        &state.master_key,
        &state.settings,
        &caller.account_id,
        &domain,
    )
    .await?;
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    let id = hex::encode(bytes);
    save(
        &state,
        &caller,
        (&domain, &domain_row.id, &id),
        &valid,
        None,
    )
    .await
}

/// Replace the SMTP settings of a domain. A `pass` of `********` keeps the stored one,
/// as long as the host, port and user stay the same.
#[utoipa::path(put, path = "/api/v2/email/settings", tag = "smtp-settings",
    params(DomainParam),
    request_body = SettingsInput,
    responses((status = 503, description = "Busy making DKIM keys; see Retry-After", body = ErrorBody),
              (status = 200, description = "The updated settings", body = SmtpSettings),
              (status = 400, description = "No domain parameter", body = ErrorBody),
              (status = 404, description = "No settings for this domain", body = ErrorBody),
              (status = 409, description = "The domain is verified by another account", body = ErrorBody),
              (status = 422, description = "A field is invalid, or the host, port or user changed without the password", body = ErrorBody)))]
pub async fn update_settings(
    State(state): State<AppState>,
    caller: Caller,
    Query(param): Query<DomainParam>,
    Json(input): Json<SettingsInput>,
) -> Result<Json<SmtpSettings>, ApiError> {
    let domain = domain_of(&caller, &param)?;
    let valid = validate(input, &domain, &state.destination_policy)?;
    let row = load(&state, &caller, &domain).await?;
    refuse_if_active_elsewhere(&state, &caller, &domain).await?;
    // The stored password is never shown, so it goes nowhere it was not meant for.
    if matches!(valid.password, Password::Keep)
        && row.sealed_pass.is_some()
        && !row.same_destination(&valid)
    {
        return Err(ApiError::invalid(
            "options.auth.pass",
            "the host, port or user changed: give the password again (the stored one is kept only for the same server and user)",
        ));
    }
    let stored = row.sealed_pass.clone();
    save(
        &state,
        &caller,
        (&domain, &row.domain_id, &row.id),
        &valid,
        stored,
    )
    .await
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
    let domain = domain_of(&caller, &param)?;
    let row = load(&state, &caller, &domain).await?;
    store::delete(&state.db, &row.id, &caller.account_id).await?;
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
    let domain = domain_of(&caller, &param)?;
    let row = load(&state, &caller, &domain).await?;
    let mut limits = Limits::tenant(&state.settings, &state.destination_policy);
    limits.timeout = limits.timeout.min(Duration::from_secs(10));
    let target = row.target(&state.master_key, limits)?;
    let steps = probe(&target).await;
    Ok(Json(TestReport {
        ok: steps.iter().all(|s| s.ok),
        steps,
    }))
}
