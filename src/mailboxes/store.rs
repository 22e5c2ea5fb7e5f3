//! The `mailboxes` and `mail_directory` tables (the directory views read them).

use super::model::{Mailbox, MailboxStatus};
use crate::config::Settings;
use crate::store::{Db, Timestamp};

const COLUMNS: &str = "m.id, m.user_id, d.name AS domain, m.local_part, m.address, m.display_name, \
                       m.status, m.is_default, m.quota_mb, m.created_at, m.updated_at";
const FROM: &str = "FROM mailboxes m JOIN domains d ON d.id = m.domain_id";

/// Keeps the `mail_directory` row, which the `dovecot_users` view reads, in step with
/// the settings.
pub async fn write_directory_settings(db: &Db, settings: &Settings) -> sqlx::Result<()> {
    db.write_alone(
        sqlx::query("UPDATE mail_directory SET vmail_root = $1, uid = $2, gid = $3 WHERE id = 1")
            .bind(settings.vmail_root.trim_end_matches('/'))
            .bind(settings.vmail_uid as i64)
            .bind(settings.vmail_gid as i64),
    )
    .await?;
    Ok(())
}

/// A page of the account's mailboxes by id, of one user, on one domain and past an id
/// when given. The page's ids come from an index alone (no table rows, no join), so a
/// deep offset skips index entries only; the rows are read for the page's ids.
pub async fn page_of(
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

/// The account's mailbox `id`.
pub async fn get(db: &Db, id: i64, account_id: &str) -> sqlx::Result<Option<Mailbox>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} {FROM} WHERE m.id = $1 AND m.account_id = $2"
    ))
    .bind(id)
    .bind(account_id)
    .fetch_optional(&db.pool)
    .await
}

/// Whether any mailbox has `address`, in any account.
pub async fn address_taken(db: &Db, address: &str) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar("SELECT id FROM mailboxes WHERE address = $1")
        .bind(address)
        .fetch_optional(&db.pool)
        .await?;
    Ok(found.is_some())
}

/// A mailbox to insert; its password already hashed.
pub struct NewMailbox<'a> {
    pub account_id: &'a str,
    pub domain_id: &'a str,
    pub local_part: &'a str,
    pub address: &'a str,
    pub user_id: Option<&'a str>,
    pub display_name: &'a str,
    pub password_hash: &'a str,
    pub quota_mb: Option<i64>,
}

/// Inserts a mailbox and announces it (`mailbox.created`); the user's first becomes their
/// default. Answers its id.
pub async fn insert(db: &Db, new: NewMailbox<'_>) -> sqlx::Result<i64> {
    let now = db.now().0;
    let mut tx = db.begin().await?;
    let is_default = match new.user_id {
        Some(user) => {
            let existing: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM mailboxes WHERE account_id = $1 AND user_id = $2 LIMIT 1",
            )
            .bind(new.account_id)
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
    .bind(new.account_id)
    .bind(new.domain_id)
    .bind(new.local_part)
    .bind(new.address)
    .bind(new.user_id)
    .bind(new.display_name)
    .bind(new.password_hash)
    .bind(i64::from(is_default))
    .bind(new.quota_mb)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    // The id is in the path, so that a mailbox made again at this address starts empty.
    sqlx::query(
        "UPDATE mailboxes SET maildir = (SELECT name FROM domains WHERE id = domain_id) \
         || '/' || local_part || '@' || id WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let created = get_on(&mut tx, id, new.account_id).await?;
    record_event(&mut tx, "mailbox.created", new.account_id, &created, now).await?;
    tx.commit().await?;
    Ok(id)
}

pub async fn update(
    db: &Db,
    mailbox: &Mailbox,
    account_id: &str,
    display_name: &str,
    status: MailboxStatus,
    quota_mb: Option<i64>,
) -> sqlx::Result<()> {
    db.write_alone(
        sqlx::query(
            "UPDATE mailboxes SET display_name = $2, status = $3, quota_mb = $4, updated_at = $5 \
             WHERE id = $1 AND account_id = $6",
        )
        .bind(mailbox.id)
        .bind(display_name)
        .bind(status.as_str())
        .bind(quota_mb)
        .bind(db.now().0)
        .bind(account_id),
    )
    .await?;
    Ok(())
}

/// Deletes a mailbox, lists its Maildir for purging and announces it (`mailbox.deleted`,
/// with the mailbox as it was); when it was its user's default, their oldest other one
/// becomes default. Answers whether it existed.
pub async fn delete(db: &Db, mailbox: &Mailbox, account_id: &str) -> sqlx::Result<bool> {
    let now = db.now().0;
    let mut tx = db.begin().await?;
    let Some(deleting) = find_on(&mut tx, mailbox.id, account_id).await? else {
        return Ok(false);
    };
    sqlx::query(
        "INSERT INTO deleted_maildirs (mailbox_id, address, maildir, deleted_at) \
         SELECT id, address, maildir, $3 FROM mailboxes WHERE id = $1 AND account_id = $2",
    )
    .bind(mailbox.id)
    .bind(account_id)
    .bind(db.now().0)
    .execute(&mut *tx)
    .await?;
    let deleted = sqlx::query("DELETE FROM mailboxes WHERE id = $1 AND account_id = $2")
        .bind(mailbox.id)
        .bind(account_id)
        .execute(&mut *tx)
        .await?;
    if deleted.rows_affected() == 0 {
        return Ok(false);
    }
    record_event(&mut tx, "mailbox.deleted", account_id, &deleting, now).await?;
    if let (true, Some(user)) = (mailbox.is_default, &mailbox.user_id) {
        sqlx::query(
            "UPDATE mailboxes SET is_default = 1, updated_at = $3 WHERE id = \
             (SELECT id FROM mailboxes WHERE account_id = $1 AND user_id = $2 ORDER BY created_at, id LIMIT 1)",
        )
        .bind(account_id)
        .bind(user)
        .bind(db.now().0)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Sets a mailbox's password (its hash) and announces it (`mailbox.password_reset`).
pub async fn set_password(
    db: &Db,
    id: i64,
    account_id: &str,
    password_hash: &str,
) -> sqlx::Result<()> {
    let now = db.now().0;
    let mut tx = db.begin().await?;
    let updated = sqlx::query(
        "UPDATE mailboxes SET password_hash = $2, updated_at = $3 WHERE id = $1 AND account_id = $4",
    )
    .bind(id)
    .bind(password_hash)
    .bind(now)
    .bind(account_id)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 1 {
        let mailbox = get_on(&mut tx, id, account_id).await?;
        record_event(&mut tx, "mailbox.password_reset", account_id, &mailbox, now).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The account's mailbox `id`, read on `conn` (inside a transaction, with its writes).
async fn find_on(
    conn: &mut sqlx::AnyConnection,
    id: i64,
    account_id: &str,
) -> sqlx::Result<Option<Mailbox>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} {FROM} WHERE m.id = $1 AND m.account_id = $2"
    ))
    .bind(id)
    .bind(account_id)
    .fetch_optional(conn)
    .await
}

async fn get_on(
    conn: &mut sqlx::AnyConnection,
    id: i64,
    account_id: &str,
) -> sqlx::Result<Mailbox> {
    find_on(conn, id, account_id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)
}

/// Writes the event of the account's log about a mailbox, in the transaction of the
/// change; `mailbox` as the API shows it (never its password).
async fn record_event(
    conn: &mut sqlx::AnyConnection,
    kind: &str,
    account_id: &str,
    mailbox: &Mailbox,
    at: i64,
) -> sqlx::Result<()> {
    let id = mailbox.id.to_string();
    let event = crate::events::NewEvent::about(account_id, None, kind, &id, mailbox)
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    crate::events::record(conn, event, Timestamp(at)).await?;
    Ok(())
}
