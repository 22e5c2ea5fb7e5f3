//! The `smtp_settings` table, and the relay a stored row stands for.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::model::{AuthOutput, MASK, OptionsOutput, SmtpSettings, TlsOutput, Valid};
use crate::mail::transport::{Limits, Security, SmtpTarget, Trust};
use crate::store::Db;
use crate::store::crypto::MasterKey;
use crate::types::DomainName;

/// A stored settings row.
pub struct Stored {
    pub id: String,
    pub domain_id: String,
    pub domain: String,
    description: String,
    from: String,
    host: String,
    port: i64,
    secure: bool,
    debug: bool,
    reject_unauthorized: bool,
    user: String,
    pub sealed_pass: Option<String>,
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
    pub fn into_settings(self) -> SmtpSettings {
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

pub fn seal_context(settings_id: &str) -> String {
    format!("smtp:{settings_id}")
}

pub async fn load(db: &Db, account_id: &str, domain: &DomainName) -> sqlx::Result<Option<Stored>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM smtp_settings s JOIN domains d ON d.id = s.domain_id \
         WHERE s.account_id = $1 AND d.name = $2"
    ))
    .bind(account_id)
    .bind(domain.as_str())
    .fetch_optional(&db.pool)
    .await
}

fn flag(value: bool) -> i64 {
    i64::from(value)
}

/// Writes settings `id`: a new row, or new values for an existing one.
pub async fn save(
    db: &Db,
    account_id: &str,
    domain_id: &str,
    id: &str,
    valid: &Valid,
    sealed_pass: Option<String>,
) -> sqlx::Result<()> {
    db.write_alone(sqlx::query(
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
    .bind(db.now().0)
    )
    .await?;
    Ok(())
}

pub async fn delete(db: &Db, id: &str, account_id: &str) -> sqlx::Result<()> {
    db.write_alone(
        sqlx::query("DELETE FROM smtp_settings WHERE id = $1 AND account_id = $2")
            .bind(id)
            .bind(account_id),
    )
    .await?;
    Ok(())
}

impl Stored {
    /// Whether `valid` sends mail to where these settings do, as the same user: a stored
    /// password may be kept only then, or whoever may change the settings (but was never
    /// shown it) could have it sent to a server of their own.
    pub fn same_destination(&self, valid: &Valid) -> bool {
        self.host == valid.host && self.port == valid.port && self.user == valid.user
    }

    /// The relay these settings describe, with the password opened.
    pub fn target(&self, master_key: &MasterKey, limits: Limits) -> anyhow::Result<SmtpTarget> {
        let credentials = match &self.sealed_pass {
            Some(sealed) => {
                let pass = master_key
                    .open(sealed, &seal_context(&self.id))
                    .and_then(|pass| Ok(String::from_utf8(pass)?))
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot open the stored SMTP password of {}: {e}",
                            self.domain
                        )
                    })?;
                Some((self.user.clone(), pass))
            }
            None if !self.user.is_empty() => Some((self.user.clone(), String::new())),
            None => None,
        };
        Ok(SmtpTarget {
            host: self.host.clone(),
            port: u16::try_from(self.port).unwrap_or(25),
            security: if self.secure {
                Security::Implicit
            } else {
                Security::Opportunistic
            },
            trust: if self.reject_unauthorized {
                Trust::system()
            } else {
                Trust::Any
            },
            credentials,
            debug: self.debug,
            limits,
        })
    }
}

/// The relay of `domain` for mail of `account_id`: the account's settings for it, when
/// the domain is active in that account (a name merely added, pending, carries nothing).
pub async fn relay_for(
    db: &Db,
    master_key: &MasterKey,
    account_id: &str,
    domain: &DomainName,
    limits: Limits,
) -> anyhow::Result<Option<SmtpTarget>> {
    let row: Option<Stored> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM smtp_settings s JOIN domains d ON d.id = s.domain_id \
         WHERE s.account_id = $1 AND d.account_id = $1 AND d.name = $2 AND d.status = 'active'"
    ))
    .bind(account_id)
    .bind(domain.as_str())
    .fetch_optional(&db.pool)
    .await?;
    match row {
        Some(row) => row.target(master_key, limits).map(Some),
        None => Ok(None),
    }
}
