//! The database: one `sqlx::Any` pool for both engines, migrations, ids and time.

mod clock;
pub mod crypto;
pub mod groups;
mod migrations;
pub mod passwords;
pub mod secrets;

pub use clock::{Clock, Timestamp};

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::RngCore;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A connection pool plus the engine behind it, for the few places where SQL differs.
#[derive(Clone)]
pub struct Db {
    /// For reads. Writes go through `begin` or `lone_write`: on SQLite a write made here
    /// would meet the writing connection's lock in SQLite's busy handler, which polls
    /// with sleeps and can lose every poll to a steady stream of transactions.
    pub pool: AnyPool,
    pub engine: Engine,
    /// Where write transactions run. On SQLite, one connection of its own: the only one
    /// that writes through `begin`, its page cache stays valid from one transaction to the
    /// next (a connection that sees another's commit drops its whole cache).
    writes: AnyPool,
    /// SQLite has one writer at a time: this process's writers queue here, in order and
    /// for as long as it takes, where waiting for `writes` would give up after the pool's
    /// acquire timeout.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// What every rule that depends on time reads "now" from.
    pub clock: Clock,
}

/// A write transaction (see `Db::begin`); it rolls back when dropped uncommitted.
pub struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub async fn commit(self) -> sqlx::Result<()> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }
}

/// Where one statement that writes runs on its own (see `Db::lone_write`); `done` ends it.
pub enum LoneWrite {
    /// SQLite: a write transaction in this process's turn.
    Turn(WriteTx),
    /// PostgreSQL: any connection, where a statement is a transaction of its own.
    Pooled(sqlx::pool::PoolConnection<sqlx::Any>),
}

impl LoneWrite {
    pub async fn done(self) -> sqlx::Result<()> {
        match self {
            LoneWrite::Turn(tx) => tx.commit().await,
            LoneWrite::Pooled(_) => Ok(()),
        }
    }
}

impl std::ops::Deref for LoneWrite {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        match self {
            LoneWrite::Turn(tx) => tx,
            LoneWrite::Pooled(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for LoneWrite {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        match self {
            LoneWrite::Turn(tx) => tx,
            LoneWrite::Pooled(conn) => conn,
        }
    }
}

impl Db {
    /// Connects to `url` (`sqlite://…` or `postgres://…`); an SQLite file and its folder
    /// are created when missing.
    pub async fn connect(url: &str) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let (engine, url) = engine_url(url)?;
        let options = AnyConnectOptions::from_str(&url).context("invalid database URL")?;
        let open = |connections: u32| {
            AnyPoolOptions::new()
                .max_connections(connections)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // WAL lets readers run beside the one writer; the busy timeout
                        // makes a second process (the CLI beside `serve`) wait its turn.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; \
                             PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;",
                        )
                        .await?;
                        Ok(())
                    })
                })
                .connect_with(options.clone())
        };
        let (pool, writes) = match engine {
            Engine::Sqlite => async { Ok((open(8).await?, open(1).await?)) }.await,
            Engine::Postgres => AnyPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .map(|pool| (pool.clone(), pool)),
        }
        .with_context(|| format!("cannot open the database at {}", redact_url(&url)))?;
        Ok(Db {
            pool,
            writes,
            engine,
            writer: Arc::default(),
            clock: Clock::default(),
        })
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        migrations::run(self).await
    }

    /// A transaction that will write. On SQLite, this process's writers first wait their
    /// turn without a connection (a writer waiting inside SQLite's busy timeout would hold
    /// one, and enough of them starve the readers); then the transaction takes the write
    /// lock at once (`BEGIN IMMEDIATE`), so that a read inside it that turns into a write
    /// cannot fail, and another process (the CLI) is waited for under the busy timeout.
    pub async fn begin(&self) -> sqlx::Result<WriteTx> {
        match self.engine {
            Engine::Sqlite => {
                let turn = self.writer.clone().lock_owned().await;
                Ok(WriteTx {
                    tx: self.writes.begin_with("BEGIN IMMEDIATE").await?,
                    _turn: Some(turn),
                })
            }
            Engine::Postgres => Ok(WriteTx {
                tx: self.pool.begin().await?,
                _turn: None,
            }),
        }
    }

    /// Where one statement that writes runs on its own: on SQLite, in this process's turn
    /// among its writers, on the writing connection; on PostgreSQL, on any connection, with
    /// no `BEGIN` and `COMMIT` around it.
    pub async fn lone_write(&self) -> sqlx::Result<LoneWrite> {
        match self.engine {
            Engine::Sqlite => self.begin().await.map(LoneWrite::Turn),
            Engine::Postgres => self.pool.acquire().await.map(LoneWrite::Pooled),
        }
    }

    /// One statement that writes, on its own (see `lone_write`).
    pub async fn write_alone<'q>(
        &self,
        statement: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::Result<sqlx::any::AnyQueryResult> {
        let mut write = self.lone_write().await?;
        let done = statement.execute(&mut *write).await?;
        write.done().await?;
        Ok(done)
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The rounds of a background job that runs every so often, paced by this database's
    /// clock (which tests move).
    pub fn rounds(&self, stop: tokio::sync::watch::Receiver<bool>) -> Rounds {
        Rounds {
            db: self.clone(),
            stop,
            next: Timestamp(i64::MIN),
            started: false,
        }
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }
}

/// See `Db::rounds`: `due` waits for the next round, `next_at` says when that is.
pub struct Rounds {
    db: Db,
    stop: tokio::sync::watch::Receiver<bool>,
    next: Timestamp,
    started: bool,
}

impl Rounds {
    /// Waits until the next round is due, looking once a second: `false` once `stop`
    /// changes. The first round is due at once.
    pub async fn due(&mut self) -> bool {
        loop {
            if self.started {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = self.stop.changed() => {}
                }
            }
            self.started = true;
            if *self.stop.borrow() {
                return false;
            }
            if self.db.now() >= self.next {
                return true;
            }
        }
    }

    pub fn next_at(&mut self, at: Timestamp) {
        self.next = at;
    }
}

fn engine_url(url: &str) -> anyhow::Result<(Engine, String)> {
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let path = rest.split('?').next().unwrap_or_default();
        if let Some(parent) = Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        if !rest.contains("mode=") && !path.is_empty() && !path.starts_with(':') {
            create_private(Path::new(path))?;
        }
        let url = if rest.contains("mode=") {
            url.to_string()
        } else if rest.contains('?') {
            format!("{url}&mode=rwc")
        } else {
            format!("{url}?mode=rwc")
        };
        Ok((Engine::Sqlite, url))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok((Engine::Postgres, url.to_string()))
    } else {
        anyhow::bail!("the database URL must start with sqlite:// or postgres://")
    }
}

/// Creates the database file, when missing, readable by mailroom's user only, whatever
/// the umask: it holds password hashes, and SQLite gives its `-wal` and `-shm` files the
/// mode of the database file. (Where a mail server's group must read it, the operator
/// widens it to 0640 for that group; mailroom leaves an existing file's mode alone.)
fn create_private(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        match created {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(error) => Err(error).with_context(|| format!("cannot create {}", path.display())),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// Lets the members of `group` read a SQLite database (the mail servers' lookups, which
/// run as their own users): the file and its `-wal` and `-shm` become mode 0640 in that
/// group, and, when the file is in mailroom's data folder, that folder 2750, so that the
/// `-wal` and `-shm` files SQLite makes again later inherit the group (and take the
/// file's mode). A folder that is not mailroom's own (`/tmp`, `/var/lib`) is left alone.
/// PostgreSQL has roles instead.
pub fn share_with_group(url: &str, group: &str, data_dir: &Path) -> anyhow::Result<()> {
    let (Engine::Sqlite, url) = engine_url(url)? else {
        return Ok(());
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let gid = group_id(group)?;
        let path = url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:");
        let path = Path::new(path.split('?').next().unwrap_or_default());
        let share = |path: &Path, mode: u32| -> anyhow::Result<()> {
            std::os::unix::fs::chown(path, None, Some(gid))
                .and_then(|()| {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                })
                .with_context(|| format!("cannot give {} to group {group}", path.display()))
        };
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let same = |a: &Path, b: &Path| matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(a), Ok(b)) if a == b);
        if same(folder, data_dir) {
            share(folder, 0o2750)?;
        } else {
            tracing::warn!(
                folder = %folder.display(),
                "the database is outside MAILROOM_DATA_DIR: its folder is left as it is, so give \
                 it to the readers' group yourself, with the setgid bit"
            );
        }
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            if file.exists() {
                share(&file, 0o640)?;
            }
        }
    }
    Ok(())
}

/// A group's id, from its number or its name in /etc/group.
#[cfg(unix)]
fn group_id(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    groups
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next() == Some(group))
                .then(|| fields.nth(1)?.parse().ok())
                .flatten()
        })
        .with_context(|| format!("MAILROOM_DATABASE_GROUP: no group {group}"))
}

/// The URL with any password replaced, fit for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("********"));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) => "(unparsable URL)".to_string(),
    }
}

/// The FROM source `v` of rows read from the bound parameter `$1`, a JSON array of
/// objects: `columns` names the objects' fields and their SQL types. One parameter for a
/// whole group of rows, because SQLite's cost of binding grows with the square of a
/// statement's parameters.
pub fn json_rows(engine: Engine, columns: &[(&str, &str)]) -> String {
    match engine {
        Engine::Sqlite => {
            let fields: Vec<String> = columns
                .iter()
                .map(|(name, _)| format!("value ->> '{name}' AS {name}"))
                .collect();
            format!("(SELECT {} FROM json_each($1)) AS v", fields.join(", "))
        }
        Engine::Postgres => {
            let fields: Vec<String> = columns
                .iter()
                .map(|(name, kind)| format!("{name} {kind}"))
                .collect();
            format!(
                "jsonb_to_recordset(CAST($1 AS jsonb)) AS v({})",
                fields.join(", ")
            )
        }
    }
}

/// `$first, $first+1, …`: `count` numbered parameters, for an `IN (…)` or `VALUES` list.
pub fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `{prefix}_{24 hex}`: 96 random bits, enough that ids never collide.
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

/// Whether a database error is a unique-constraint violation (a duplicate).
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}
