//! What users send and get back, and the password rule.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::identity::Role;
use crate::store::Timestamp;

#[derive(Deserialize, ToSchema)]
pub struct Login {
    pub email: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct Session {
    pub user_id: String,
    /// Send it as `Authorization: Bearer <token>` (or any API key header); valid 30 days.
    pub access_token: String,
    pub expires_at: Timestamp,
}

#[derive(Deserialize, ToSchema)]
pub struct ChangePassword {
    pub current_password: String,
    /// 12 to 128 characters.
    pub new_password: String,
}

#[derive(Deserialize, ToSchema)]
pub struct ResetRequest {
    pub email: String,
}

#[derive(Deserialize, ToSchema)]
pub struct ResetConfirm {
    /// The token from the reset link.
    pub token: String,
    /// The new password, 12 to 128 characters.
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
pub struct ChangeRole {
    pub role: Role,
}

#[derive(Serialize, ToSchema)]
pub struct Message {
    pub message: &'static str,
}

/// A user password: 12 to 128 characters, no control characters.
pub fn check_password(password: &str) -> Result<(), &'static str> {
    let length = password.chars().count();
    if !(12..=128).contains(&length) {
        return Err("password must be 12 to 128 characters");
    }
    if password.chars().any(char::is_control) {
        return Err("password must not contain control characters");
    }
    Ok(())
}
