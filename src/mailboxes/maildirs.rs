//! The Maildirs of deleted mailboxes, removed on the mail host by
//! `mailroom admin purge-maildirs`.

use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use sqlx::Row;

use crate::store::Db;

/// A deleted mailbox's Maildir, as the purge found it.
#[derive(Debug)]
pub struct Purged {
    pub address: String,
    pub path: PathBuf,
    /// Whether there was anything on disk (a mailbox that never received mail has none).
    pub existed: bool,
}

/// Removes the folders of deleted mailboxes under `vmail_root` and forgets them; with
/// `dry_run`, only says what it would remove. A path that is not a plain folder under the
/// root (a symbolic link, say), or that a mailbox uses again, is left alone.
pub async fn purge(db: &Db, vmail_root: &Path, dry_run: bool) -> anyhow::Result<Vec<Purged>> {
    let rows = sqlx::query(
        "SELECT g.mailbox_id, g.address, g.maildir, \
         (SELECT COUNT(*) FROM mailboxes m WHERE m.maildir = g.maildir) AS users \
         FROM deleted_maildirs g ORDER BY g.deleted_at, g.mailbox_id",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut purged = Vec::new();
    for row in rows {
        let mailbox_id: i64 = row.try_get("mailbox_id")?;
        let address: String = row.try_get("address")?;
        let maildir: String = row.try_get("maildir")?;
        let in_use = row.try_get::<i64, _>("users")? > 0;
        let relative = Path::new(&maildir);
        anyhow::ensure!(
            !in_use
                && relative
                    .components()
                    .all(|c| matches!(c, Component::Normal(_))),
            "refusing to purge {maildir} ({address}): it is not a deleted mailbox's own folder"
        );
        let path = vmail_root.join(relative);
        let existed = match std::fs::symlink_metadata(&path) {
            Ok(found) if found.is_dir() => true,
            Ok(_) => anyhow::bail!("refusing to purge {}: not a folder", path.display()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        if !dry_run {
            if existed {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
            sqlx::query("DELETE FROM deleted_maildirs WHERE mailbox_id = $1")
                .bind(mailbox_id)
                .execute(&db.pool)
                .await?;
        }
        purged.push(Purged {
            address,
            path,
            existed,
        });
    }
    Ok(purged)
}
