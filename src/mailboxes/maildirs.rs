//! The Maildirs of deleted mailboxes, removed on the mail host by
//! `mailroom admin purge-maildirs`.

use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use sqlx::Row;

use crate::store::{Db, Timestamp};

/// What became of one deleted mailbox's Maildir.
#[derive(Debug)]
pub struct Purged {
    pub address: String,
    pub path: PathBuf,
    pub outcome: Outcome,
}

#[derive(Debug)]
pub enum Outcome {
    Removed,
    /// Nothing on disk: the mailbox never received mail.
    Absent,
    /// Left alone, and still listed for a later run.
    Kept(String),
}

/// Removes the folders of mailboxes deleted before `deleted_before` and forgets them; with
/// `dry_run`, only says what it would do. The root is the one the mail servers are told
/// (`mail_directory`), and it must be there and belong to the mail user: on a machine
/// that does not hold the mail, nothing is forgotten. A folder that is not a plain folder
/// inside the root (a symbolic link on the way, say), or that holds or lies inside a live
/// mailbox's folder, is kept and reported; the others are purged all the same.
pub async fn purge(
    db: &Db,
    deleted_before: Timestamp,
    dry_run: bool,
) -> anyhow::Result<Vec<Purged>> {
    let (root, uid): (String, i64) =
        sqlx::query_as("SELECT vmail_root, uid FROM mail_directory WHERE id = 1")
            .fetch_one(&db.pool)
            .await
            .context(
                "cannot read the mail directory: has `mailroom serve` migrated this database?",
            )?;
    let root = checked_root(Path::new(&root), uid)?;
    // A live mailbox at, inside or around a deleted one's folder (`LIKE` may match more,
    // never less, as `_` and `%` may be in local parts): that folder is not the deleted
    // mailbox's alone.
    let rows = sqlx::query(
        "SELECT g.mailbox_id, g.address, g.maildir, \
         (SELECT COUNT(*) FROM mailboxes m WHERE m.maildir = g.maildir \
            OR m.maildir LIKE g.maildir || '/%' OR g.maildir LIKE m.maildir || '/%') AS shared \
         FROM deleted_maildirs g WHERE g.deleted_at < $1 ORDER BY g.deleted_at, g.mailbox_id",
    )
    .bind(deleted_before.0)
    .fetch_all(&db.pool)
    .await?;
    let mut purged = Vec::new();
    for row in rows {
        let mailbox_id: i64 = row.try_get("mailbox_id")?;
        let maildir: String = row.try_get("maildir")?;
        let shared = row.try_get::<i64, _>("shared")? > 0;
        let path = root.join(&maildir);
        let outcome = match removal(&root, &maildir, shared) {
            Err(why) => Outcome::Kept(why),
            Ok(None) => Outcome::Absent,
            Ok(Some(_)) if dry_run => Outcome::Removed,
            Ok(Some(found)) => match std::fs::remove_dir_all(&found) {
                Ok(()) => Outcome::Removed,
                Err(error) => Outcome::Kept(format!("cannot remove it: {error}")),
            },
        };
        if !dry_run && !matches!(outcome, Outcome::Kept(_)) {
            db.write_alone(
                sqlx::query("DELETE FROM deleted_maildirs WHERE mailbox_id = $1").bind(mailbox_id),
            )
            .await?;
        }
        purged.push(Purged {
            address: row.try_get("address")?,
            path,
            outcome,
        });
    }
    Ok(purged)
}

fn checked_root(root: &Path, uid: i64) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let shown = root.display();
    let found = std::fs::metadata(root)
        .with_context(|| format!("the mail root {shown} is not here: run this on the mail host"))?;
    anyhow::ensure!(found.is_dir(), "the mail root {shown} is not a folder");
    anyhow::ensure!(
        i64::from(found.uid()) == uid,
        "the mail root {shown} does not belong to the mail user ({uid}): run this on the mail host"
    );
    Ok(std::fs::canonicalize(root)?)
}

/// The folder to remove (`None` when there is nothing on disk), or why it must stay.
fn removal(root: &Path, maildir: &str, shared: bool) -> Result<Option<PathBuf>, String> {
    if shared {
        return Err("a live mailbox's folder is at, inside or around it".to_string());
    }
    let relative = Path::new(maildir);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err("it is not a plain path inside the mail root".to_string());
    }
    let path = root.join(relative);
    match std::fs::symlink_metadata(&path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read it: {error}")),
        Ok(found) if found.is_symlink() => return Err("it is a symbolic link".to_string()),
        Ok(found) if !found.is_dir() => return Err("it is not a folder".to_string()),
        Ok(_) => {}
    }
    // A symbolic link on the way (the domain's folder, say) would lead elsewhere.
    match std::fs::canonicalize(&path) {
        Ok(real) if real == path => Ok(Some(path)),
        Ok(real) => Err(format!("it leads to {}", real.display())),
        Err(error) => Err(format!("cannot read it: {error}")),
    }
}
