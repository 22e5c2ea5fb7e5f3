use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mailroom::config::{Loaded, Settings};
use mailroom::domains::model::DomainStatus;
use mailroom::domains::store::set_status_by_operator;
use mailroom::store::Db;
use mailroom::store::crypto::MasterKey;
use mailroom::types::{DomainName, EmailAddress};
use mailroom::{Application, shutdown_signal, tenancy};

/// mailroom: a self-hosted email control plane.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The settings file (default: ./mailroom.toml when present).
    #[arg(long, global = true, env = "MAILROOM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API (applies migrations first).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Send one test message through the system transport and report the outcome.
    SendTestEmail {
        #[arg(long)]
        to: String,
    },
    /// Operator commands that act on the database directly.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an account with its first entity and an admin API key.
    CreateAccount {
        #[arg(long)]
        name: String,
        /// Print `{"account_id", "entity_id", "api_key"}` as the last line.
        #[arg(long)]
        json: bool,
    },
    /// Create an admin API key for the whole account (when its last one was deleted).
    CreateApiKey {
        #[arg(long)]
        account: String,
        #[arg(long, default_value = "admin (from the command line)")]
        name: String,
    },
    /// Mark a domain active without DNS proof (for the operator's own domains).
    ActivateDomain {
        domain: String,
        /// The account, when several have added the domain.
        #[arg(long)]
        account: Option<String>,
    },
    /// Suspend a domain: no checks, and it can no longer be used.
    SuspendDomain {
        domain: String,
        /// The account, when several have added the domain.
        #[arg(long)]
        account: Option<String>,
    },
    /// On the mail host: remove the Maildirs of deleted mailboxes under the mail root.
    PurgeMaildirs {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Leave mailboxes deleted more recently than this: a mail client still connected
        /// when its mailbox went may write to it a little longer.
        #[arg(long, default_value_t = 24)]
        min_age_hours: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Loaded {
        settings,
        unknown_keys,
    } = Settings::load(cli.config.as_deref(), std::env::vars())?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&settings.log)?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    for key in unknown_keys {
        tracing::warn!(key, "unknown setting ignored");
    }
    match cli.command {
        Command::Serve => serve(&settings).await,
        Command::SendTestEmail { to } => send_test_email(&settings, &to).await,
        Command::Migrate => {
            open_db(&settings).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::CreateAccount { name, json },
        } => {
            let name = mailroom::types::text::parse_name(&name, 200)
                .map_err(|e| anyhow::anyhow!("--name {e}"))?;
            let db = open_db(&settings).await?;
            let account = tenancy::accounts::create_account(&db, &name).await?;
            if json {
                // The documented line, spaced as shown in the README.
                println!(
                    "{{\"account_id\": {}, \"entity_id\": {}, \"api_key\": {}}}",
                    serde_json::to_string(&account.account_id)?,
                    serde_json::to_string(&account.entity_id)?,
                    serde_json::to_string(&account.api_key)?,
                );
            } else {
                println!("account: {}", account.account_id);
                println!("entity:  {}", account.entity_id);
                println!(
                    "admin API key (shown once, keep it safe): {}",
                    account.api_key
                );
            }
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::CreateApiKey { account, name },
        } => {
            let name = mailroom::types::text::parse_name(&name, 100)
                .map_err(|e| anyhow::anyhow!("--name {e}"))?;
            let db = open_db(&settings).await?;
            let key = tenancy::accounts::create_admin_key(&db, &account, &name).await?;
            println!("key: {}", key.key.id);
            println!("admin API key (shown once, keep it safe): {}", key.api_key);
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::ActivateDomain { domain, account },
        } => set_domain_status(&settings, &domain, account, DomainStatus::Active).await,
        Command::Admin {
            command: AdminCommand::SuspendDomain { domain, account },
        } => set_domain_status(&settings, &domain, account, DomainStatus::Suspended).await,
        Command::Admin {
            command:
                AdminCommand::PurgeMaildirs {
                    dry_run,
                    min_age_hours,
                },
        } => purge_maildirs(&settings, dry_run, min_age_hours).await,
    }
}

async fn send_test_email(settings: &Settings, to: &str) -> anyhow::Result<()> {
    let to = EmailAddress::parse(to).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    let db = open_db(settings).await?;
    let master_key = MasterKey::load(settings)?;
    let policy = std::sync::Arc::new(mailroom::mail::destination::Policy::from_settings(
        settings,
    )?);
    let delivery = mailroom::app::delivery(
        &std::sync::Arc::new(settings.clone()),
        &db,
        &master_key,
        &policy,
        &mailroom::metrics::Metrics::new(),
    );
    let (transport, outcome) = delivery.send_test_email(&to).await?;
    match outcome {
        Ok(reply) => {
            println!("sent to {to} through {transport}: {reply}");
            Ok(())
        }
        Err(failure) => anyhow::bail!("not sent through {transport}: {failure:?}"),
    }
}

async fn purge_maildirs(
    settings: &Settings,
    dry_run: bool,
    min_age_hours: u64,
) -> anyhow::Result<()> {
    use mailroom::mailboxes::maildirs::{Outcome, purge};
    // No migration: on the mail host, the database is the one `mailroom serve` keeps.
    let db = Db::connect(&settings.database_url()).await?;
    let age = std::time::Duration::from_secs(min_age_hours.saturating_mul(3600));
    let before = mailroom::store::Timestamp(
        mailroom::store::Timestamp::system_now().0 - i64::try_from(age.as_millis())?,
    );
    let purged = purge(&db, before, dry_run).await?;
    let mut kept = 0;
    for maildir in &purged {
        let (path, address) = (maildir.path.display(), &maildir.address);
        match &maildir.outcome {
            Outcome::Removed if dry_run => println!("would remove {path} of {address}"),
            Outcome::Removed => println!("removed {path} of {address}"),
            Outcome::Absent => println!("nothing on disk at {path} of {address}"),
            Outcome::Kept(why) => {
                kept += 1;
                eprintln!("kept {path} of {address}: {why}");
            }
        }
    }
    println!("{} deleted mailboxes' Maildirs, {kept} kept", purged.len());
    anyhow::ensure!(kept == 0, "{kept} Maildirs could not be purged");
    Ok(())
}

async fn set_domain_status(
    settings: &Settings,
    domain: &str,
    account: Option<String>,
    status: DomainStatus,
) -> anyhow::Result<()> {
    let name = DomainName::parse(domain).map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = open_db(settings).await?;
    let account = set_status_by_operator(&db, settings, &name, account.as_deref(), status).await?;
    println!("{name} is now {} (account {account})", status.as_str());
    Ok(())
}

async fn open_db(settings: &Settings) -> anyhow::Result<Db> {
    let db = Db::connect(&settings.database_url()).await?;
    if let Some(group) = &settings.database_group {
        mailroom::store::share_with_group(&settings.database_url(), group, &settings.data_dir)?;
    }
    db.migrate().await.context("cannot migrate the database")?;
    Ok(db)
}

async fn serve(settings: &Settings) -> anyhow::Result<()> {
    mailroom::app::raise_open_file_limit();
    let db = open_db(settings).await?;
    let app = Application::with_db(settings, db).await?;
    if let Some(account) = tenancy::accounts::bootstrap(app.db()).await? {
        let base = format!("http://{}", app.address());
        println!();
        println!(
            "First start: created account {} with entity {}.",
            account.account_id, account.entity_id
        );
        println!("Its admin API key, shown only this once:");
        println!();
        println!("    {}", account.api_key);
        println!();
        println!(
            "Try it:  curl -H 'Authorization: Bearer {}' {base}/entities",
            account.api_key
        );
        println!();
    }
    app.run(shutdown_signal()).await
}
