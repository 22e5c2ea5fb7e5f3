//! Roles: what a credential may do in an entity.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a credential may do: `viewer` reads, `editor` also writes domains, mailboxes and
/// senders, `admin` also manages invitations, API keys, SMTP settings and members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    /// The `role` column of a row.
    pub fn from_row(row: &sqlx::any::AnyRow) -> sqlx::Result<Role> {
        use sqlx::Row;
        let role: String = row.try_get("role")?;
        Role::parse(&role).ok_or_else(|| sqlx::Error::Decode(format!("unknown role {role}").into()))
    }

    pub fn parse(value: &str) -> Option<Role> {
        match value {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}
