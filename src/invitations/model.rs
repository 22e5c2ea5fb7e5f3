//! Invitations as the API takes and shows them.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::identity::Role;
use crate::store::Timestamp;

pub const DAY: i64 = 24 * 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InvitationStatus {
    Pending,
    Accepted,
    Cancelled,
    /// Pending past its expiry.
    Expired,
}

impl InvitationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvitationStatus::Pending => "pending",
            InvitationStatus::Accepted => "accepted",
            InvitationStatus::Cancelled => "cancelled",
            InvitationStatus::Expired => "expired",
        }
    }
}

/// An invitation.
#[derive(Debug, Serialize, ToSchema)]
pub struct Invitation {
    /// `einv_` and 24 hex digits.
    pub id: String,
    pub entity_id: String,
    pub email: String,
    pub name: Option<String>,
    pub role: Role,
    pub status: InvitationStatus,
    /// Who invited: a user's id, or the API key's id.
    pub invited_by: String,
    /// The inviting user, when a user invited.
    pub invited_by_user_id: Option<String>,
    pub expires_at: Timestamp,
    pub accepted_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Deserialize, ToSchema)]
pub struct CreateInvitation {
    pub email: String,
    pub role: Role,
    /// The invitee's name, for the email.
    #[serde(default)]
    pub name: Option<String>,
    /// 1 to 30 (default 7).
    #[serde(default)]
    pub expires_in_days: Option<i64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusFilter {
    /// `pending`, `accepted`, `cancelled` or `expired`.
    #[param(inline)]
    pub status: Option<InvitationStatus>,
}

#[derive(Serialize, ToSchema)]
pub struct Cancelled {
    pub message: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Resent {
    pub message: &'static str,
    pub expires_at: Timestamp,
}

/// What a new user sends to accept. A user who exists already sends nothing but their
/// access token (`Authorization: Bearer mrt_…`).
#[derive(Deserialize, ToSchema)]
pub struct Acceptance {
    /// Your name (a new user).
    #[serde(default)]
    pub name: Option<String>,
    /// A password of 12 to 128 characters (a new user).
    #[serde(default)]
    pub password: Option<String>,
    /// The token, when not in `?token=`.
    #[serde(default)]
    pub token: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Accepted {
    pub message: &'static str,
    pub user_id: String,
    pub entity_id: String,
    pub access_token: String,
}
