//! The helpers behind `bench/run`: the baseline server, the limits (raw Argon2id, a plain
//! resolver loop) and the seeding, each a subcommand. `bench/run` builds this as the
//! `bench` example and drives it; nothing here is part of mailroom itself.

mod baseline;
mod limits;
mod load;
mod seed;
mod webhooks;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the mailbox SELECTs of the read path, and the rows of an accepted email,
    /// with bare axum + sqlx and no auth.
    Baseline {
        #[arg(long)]
        database_url: String,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// The account the baseline's emails are written to.
        #[arg(long)]
        account: String,
    },
    /// Raw Argon2id hashes per second on every core, with mailroom's parameters.
    HashRate {
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Raw RSA-2048 DKIM signatures per second on every core.
    SignRate {
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Creates mailboxes through the API for a while, timing GETs beside the burst.
    CreateBurst {
        #[arg(long)]
        url: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        domain: String,
        /// A mailbox to GET while the burst runs.
        #[arg(long)]
        probe_id: i64,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Sends `count` emails through `POST /v2/emails`, `concurrency` at once, each with its
    /// own `Idempotency-Key`; prints the rate at which they were accepted.
    SendBurst {
        #[arg(long)]
        url: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// The same DNS queries as the last verifier sweep, through a plain hickory resolver.
    ResolveLoop {
        #[arg(long)]
        nameserver: std::net::SocketAddr,
        /// Only domains whose name ends with this.
        #[arg(long)]
        suffix: String,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Pending domains with DKIM tokens, left for the verifier, and the zone that proves them.
    SeedPending {
        #[arg(long)]
        account: String,
        #[arg(long)]
        count: i64,
        #[arg(long)]
        suffix: String,
        /// Where to write the zone file for `suffix`.
        #[arg(long)]
        zone_file: std::path::PathBuf,
    },
    /// Marks the seeded domains pending and due now; prints the time in ms.
    MakeDue {
        #[arg(long)]
        suffix: String,
    },
    /// Seconds from `since` (ms) until the last of the suffix's domains was checked;
    /// waits until all are.
    SweepDone {
        #[arg(long)]
        suffix: String,
        #[arg(long)]
        since: i64,
    },
    /// Active domains full of mailboxes, for the scale figures.
    SeedMailboxes {
        #[arg(long)]
        account: String,
        #[arg(long)]
        domains: i64,
        #[arg(long)]
        mailboxes: i64,
    },
    /// Queues emails in the outbox, as mailroom does; prints the size of one as sent.
    Enqueue {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        count: usize,
    },
    /// Emails delivered long ago, with their recipients and events: a history to deliver
    /// beside.
    SeedHistory {
        /// The account of the API emails among them.
        #[arg(long)]
        account: String,
        #[arg(long)]
        count: i64,
    },
    /// Waits until what was queued since `since` (ms) is delivered; prints the rate
    /// between the first and the last delivery and the latency from accept to the 250.
    DeliveryDone {
        #[arg(long)]
        since: i64,
    },
    /// Answers every POST with 200 at once; `GET /count` says how many came.
    Receiver {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// `email.sent` events of the account, each with a job for the (disabled) webhook.
    SeedEvents {
        #[arg(long)]
        account: String,
        #[arg(long)]
        webhook: String,
        #[arg(long)]
        count: usize,
    },
    /// Waits until every job of the webhook succeeded; prints the rate from `since` (ms).
    WebhooksDone {
        #[arg(long)]
        webhook: String,
        #[arg(long)]
        since: i64,
    },
    /// POSTs the payloads of the webhook's events to `url` raw, `concurrency` at once.
    PostBurst {
        #[arg(long)]
        webhook: String,
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Baseline {
            database_url,
            listen,
            account,
        } => baseline::serve(&database_url, listen, account).await,
        Command::HashRate { seconds } => limits::hash_rate(seconds),
        Command::SignRate { seconds } => limits::sign_rate(seconds),
        Command::CreateBurst {
            url,
            key,
            domain,
            probe_id,
            seconds,
            concurrency,
        } => load::create_burst(&url, &key, &domain, probe_id, seconds, concurrency).await,
        Command::SendBurst {
            url,
            key,
            from,
            to,
            count,
            concurrency,
        } => load::send_burst(&url, &key, &from, &to, count, concurrency).await,
        Command::ResolveLoop {
            nameserver,
            suffix,
            concurrency,
        } => limits::resolve_loop(nameserver, &suffix, concurrency).await,
        Command::SeedPending {
            account,
            count,
            suffix,
            zone_file,
        } => seed::pending_domains(&account, count, &suffix, &zone_file).await,
        Command::MakeDue { suffix } => seed::make_due(&suffix).await,
        Command::SweepDone { suffix, since } => seed::sweep_done(&suffix, since).await,
        Command::SeedMailboxes {
            account,
            domains,
            mailboxes,
        } => seed::mailboxes(&account, domains, mailboxes).await,
        Command::Enqueue { from, to, count } => seed::enqueue(&from, &to, count).await,
        Command::SeedHistory { account, count } => seed::history(&account, count).await,
        Command::DeliveryDone { since } => seed::delivery_done(since).await,
        Command::Receiver { listen } => webhooks::receiver(listen).await,
        Command::SeedEvents {
            account,
            webhook,
            count,
        } => webhooks::seed_events(&account, &webhook, count).await,
        Command::WebhooksDone { webhook, since } => webhooks::webhooks_done(&webhook, since).await,
        Command::PostBurst {
            webhook,
            url,
            concurrency,
        } => webhooks::post_burst(&webhook, &url, concurrency).await,
    }
}
