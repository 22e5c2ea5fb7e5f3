//! Migrations per engine, embedded in the binary and applied by sqlx's migrator
//! (which takes an advisory lock on PostgreSQL, so several instances may start at once).

use std::borrow::Cow;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

use super::{Db, Engine};

macro_rules! embedded {
    ($engine:literal: $($version:literal $name:literal),* $(,)?) => {
        &[$(($version, $name, include_str!(concat!(
            "../../migrations/", $engine, "/", $version, "_", $name, ".sql"
        )))),*]
    };
}

type Embedded = &'static [(&'static str, &'static str, &'static str)];

const SQLITE: Embedded = embedded!("sqlite": "0001" "tenancy", "0002" "domains", "0003" "mail", "0004" "mailboxes", "0005" "senders", "0006" "invitations", "0007" "identity", "0008" "senders_limit", "0009" "maildirs", "0010" "emails", "0011" "idempotency", "0012" "held_bodies", "0013" "webhooks", "0014" "dkim_rotation", "0015" "outbox_claim", "0016" "domain_lookups", "0017" "webhook_success");
const POSTGRES: Embedded = embedded!("postgres": "0001" "tenancy", "0002" "domains", "0003" "mail", "0004" "mailboxes", "0005" "senders", "0006" "invitations", "0007" "identity", "0008" "senders_limit", "0009" "maildirs", "0010" "emails", "0011" "idempotency", "0012" "held_bodies", "0013" "webhooks", "0014" "dkim_rotation", "0015" "outbox_claim", "0016" "domain_lookups", "0017" "webhook_success");

#[derive(Debug)]
struct Source(Embedded);

impl<'s> MigrationSource<'s> for Source {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 's>> {
        Box::pin(async move {
            self.0
                .iter()
                .map(|(version, name, sql)| {
                    Ok(Migration::new(
                        version.parse()?,
                        Cow::Borrowed(*name),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    ))
                })
                .collect()
        })
    }
}

pub async fn run(db: &Db) -> anyhow::Result<()> {
    let source = match db.engine {
        Engine::Sqlite => Source(SQLITE),
        Engine::Postgres => Source(POSTGRES),
    };
    Migrator::new(source).await?.run(&db.pool).await?;
    Ok(())
}
