//! SMTP settings over HTTP (spec 002).

use std::time::Duration;

use axum::extract::State;
use rand::RngCore;

use super::model::{
    DomainParam, Password, Removed, SettingsInput, SmtpSettings, TestReport, validate,
};
use super::store::{self, seal_context};
use crate::http::{ApiError, Caller, ErrorBody, Json, Query, on_unique};
use crate::identity::Role;
use crate::mail::transport::probe;
use crate::state::AppState;
use crate::types::DomainName;

fn no_settings(domain: &DomainName) -> ApiError {
    ApiError::not_found(&format!("SMTP settings for {domain}"))
}

async fn load(state: &AppState, caller: &Caller, domain: &DomainName) -> Result<store::Stored, ApiError> {
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
    caller.require(Role::Admin)?;
    let domain = param.parse()?;
    let row = load(&state, &caller, &domain).await?;
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
    if store::load(&state.db, &caller.account_id, &domain)
        .await?
        .is_some()
    {
        return Err(ApiError::conflict(
            "settings_exist",
            format!("{domain} has SMTP settings already; change them with PUT"),
        ));
    }
    let domain_row = crate::domains::store::find_or_add(
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
    let sealed = match &valid.password {
        Password::Set(pass) => Some(state.master_key.seal(pass.as_bytes(), &seal_context(&id))),
        Password::Keep | Password::Remove => None,
    };
    store::save(
        &state.db,
        &caller.account_id,
        &domain_row.id,
        &id,
        &valid,
        sealed,
    )
    .await
    .map_err(on_unique(|| {
        ApiError::conflict(
            "settings_exist",
            format!("{domain} has SMTP settings already"),
        )
    }))?;
    let row = load(&state, &caller, &domain).await?;
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
    let row = load(&state, &caller, &domain).await?;
    let sealed = match &valid.password {
        Password::Keep => row.sealed_pass.clone(),
        Password::Remove => None,
        Password::Set(pass) => Some(
            state
                .master_key
                .seal(pass.as_bytes(), &seal_context(&row.id)),
        ),
    };
    store::save(
        &state.db,
        &caller.account_id,
        &row.domain_id,
        &row.id,
        &valid,
        sealed,
    )
    .await?;
    let row = load(&state, &caller, &domain).await?;
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
    caller.require(Role::Admin)?;
    let domain = param.parse()?;
    let row = load(&state, &caller, &domain).await?;
    let target = row.target(&state.master_key, Duration::from_secs(10))?;
    let steps = probe(&target).await;
    Ok(Json(TestReport {
        ok: steps.iter().all(|s| s.ok),
        steps,
    }))
}

