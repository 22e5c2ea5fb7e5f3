//! The composition root: builds the shared state, wires the ports the lower floors
//! declare (what delivery and the DNS server need to know about tenants) to the stores
//! that answer them, and runs the server and its workers.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::dns::DnsResolver;
use crate::dns::server::{DnsServer, Published, Records};
use crate::http::server::Limits;
use crate::mail::destination::Policy;
use crate::mail::port::{Directory, SigningKey};
use crate::mail::transport::{self, SmtpTarget};
use crate::mail::worker::Delivery;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::store::crypto::MasterKey;
use crate::store::{Db, Timestamp};
use crate::types::DomainName;
use crate::{domains, mailboxes, relays};

/// The server, built and bound but not yet running: tests and `main` start it the same way.
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    dns: Option<DnsServer>,
    /// Where `GET /metrics` is served, apart from the API, when asked for.
    metrics_listener: Option<TcpListener>,
    state: AppState,
    delivery: Delivery,
}

impl Application {
    /// Opens and migrates the database and binds the listening socket.
    pub async fn build(settings: &Settings) -> anyhow::Result<Application> {
        let db = Db::connect(&settings.database_url()).await?;
        db.migrate().await.context("cannot migrate the database")?;
        Self::with_db(settings, db).await
    }

    pub async fn with_db(settings: &Settings, db: Db) -> anyhow::Result<Application> {
        mailboxes::store::write_directory_settings(&db, settings).await?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let address = listener.local_addr()?;
        let master_key = MasterKey::load(settings)?;
        // A mistake in the relay policy stops the start, rather than every delivery.
        let destination_policy = Arc::new(Policy::from_settings(settings)?);
        // So does a mistake in the system relay's settings.
        SmtpTarget::system(settings)?;
        // Likewise an SPF record that would break every tenant's SPF.
        let spf = crate::dns::spf::published(settings).map_err(anyhow::Error::msg)?;
        if let Some(address) = &settings.dmarc_rua {
            let zone = settings
                .dkim_zone
                .trim_end_matches('.')
                .to_ascii_lowercase();
            let domain = address.domain().to_string();
            if domain == zone || domain.ends_with(&format!(".{zone}")) {
                anyhow::bail!(
                    "MAILROOM_DMARC_RUA ({address}) is in mailroom's zone, which receives no mail"
                );
            }
        }
        if settings.dkim_switch_after_seconds < u64::from(crate::dns::server::TTL) {
            anyhow::bail!(
                "MAILROOM_DKIM_SWITCH_AFTER_SECONDS ({}) must be at least the DKIM records' TTL ({} s): \
                 a resolver may hold a rotated selector's old key that long",
                settings.dkim_switch_after_seconds,
                crate::dns::server::TTL
            );
        }
        let metrics_listener = match settings.metrics_listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("cannot listen for metrics on {address}"))?,
            ),
            None => None,
        };
        let metrics = Metrics::new();
        let settings = Arc::new(settings.clone());
        let delivery = delivery(&settings, &db, &master_key, &destination_policy, &metrics);
        let state = AppState {
            db: db.clone(),
            public_url: Arc::from(settings.public_url(address)),
            resolver: DnsResolver::new(&settings.dns_nameservers)?,
            master_key,
            outbox_wakeup: delivery.wakeup.clone(),
            webhooks_wakeup: delivery.events_written.clone(),
            api_keys: Arc::default(),
            settings,
            destination_policy,
            metrics,
            large_bodies: Arc::new(tokio::sync::Semaphore::new(
                crate::emails::LARGE_BODIES_AT_ONCE,
            )),
        };
        let dns = match state.settings.dns_listen {
            Some(address) => {
                let records = Box::new(PublishedKeys { db });
                let zone = &state.settings.dkim_zone;
                let rate_limit = state.settings.dns_rate_limit;
                let ns_addresses = state.settings.dns_ns_addresses.clone();
                if ns_addresses.is_empty() {
                    tracing::warn!(
                        "MAILROOM_DNS_NS_ADDRESSES is unset: ns.{zone}, the zone's name server, has no address"
                    );
                }
                let published = Published { spf, ns_addresses };
                let metrics = state.metrics.clone();
                let server =
                    DnsServer::start(address, zone, records, rate_limit, published, metrics);
                Some(server.await?)
            }
            None => None,
        };
        Ok(Application {
            listener,
            address,
            dns,
            metrics_listener,
            state,
            delivery,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Where mailroom's DNS server answers, when it runs.
    pub fn dns_address(&self) -> Option<SocketAddr> {
        self.dns.as_ref().map(|dns| dns.address)
    }

    /// Where `GET /metrics` answers, when it is served.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        let listener = self.metrics_listener.as_ref()?;
        listener.local_addr().ok()
    }

    pub fn db(&self) -> &Db {
        &self.state.db
    }

    /// Serves until `shutdown` resolves, then stops accepting, finishes the requests
    /// already in flight and lets the workers finish their current job.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let verifier = tokio::spawn(domains::checker(&self.state).run(stopped.clone()));
        let delivery = tokio::spawn(self.delivery.run(stopped.clone()));
        let webhooks = tokio::spawn(
            crate::webhooks::delivery::Worker {
                db: self.state.db.clone(),
                master_key: self.state.master_key.clone(),
                policy: self.state.destination_policy.clone(),
                settings: self.state.settings.clone(),
                wakeup: self.state.webhooks_wakeup.clone(),
            }
            .run(stopped.clone()),
        );
        let rotation = tokio::spawn(domains::rotation::run(
            self.state.db.clone(),
            self.state.master_key.clone(),
            self.state.settings.clone(),
            stopped.clone(),
        ));
        let expiries = tokio::spawn(announce_expiries(
            self.state.db.clone(),
            self.state.settings.clone(),
            stopped.clone(),
        ));
        let metrics = self.metrics_listener.map(|listener| {
            let router =
                crate::http::metrics::router(self.state.db.clone(), self.state.metrics.clone());
            tokio::spawn(serve_metrics(listener, router, stopped))
        });

        let settings = &self.state.settings;
        let limits = Limits {
            max_connections: connection_cap(settings.max_connections),
            // At most a day: a deadline must stay a time the clock can hold.
            header_timeout: Duration::from_secs(settings.http_header_timeout.clamp(1, 86_400)),
            idle_timeout: Duration::from_secs(settings.http_idle_timeout.clamp(1, 86_400)),
        };
        tracing::info!(address = %self.address, max_connections = limits.max_connections, "listening");
        let router = crate::router::router(self.state);
        crate::http::server::serve(self.listener, router, limits, shutdown).await;
        let _ = stop.send(true);
        let _ = verifier.await;
        let _ = delivery.await;
        let _ = webhooks.await;
        let _ = expiries.await;
        let _ = rotation.await;
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        if let Some(dns) = self.dns {
            dns.shutdown().await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Announces the invitations and sender addresses whose expiry passed (their status is
/// read from the clock, so no change of theirs announces it): at start, then every minute
/// of mailroom's clock (looked at every second, so that a clock moved forward is seen).
async fn announce_expiries(
    db: Db,
    settings: Arc<Settings>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut rounds = db.rounds(stop);
    while rounds.due().await {
        rounds.next_at(Timestamp(db.now().0 + 60_000));
        if let Err(error) = crate::invitations::store::announce_expired(&db).await {
            tracing::error!(%error, "cannot announce expired invitations");
        }
        if let Err(error) = crate::senders::announce_expired(&db, &settings).await {
            tracing::error!(%error, "cannot announce expired sender addresses");
        }
    }
}

/// Serves the metrics listener until `stop` changes. A scrape is small and quick: few
/// connections, and short timeouts for those that send nothing.
async fn serve_metrics(
    listener: TcpListener,
    router: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "serving metrics");
    }
    let limits = Limits {
        // Prometheus and a person with curl: each scrape reads the database.
        max_connections: 4,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
    };
    let stopped = async move {
        let _ = stop.changed().await;
    };
    crate::http::server::serve(listener, router, limits, stopped).await;
}

/// File descriptors kept free of connections, for the database, DNS, SMTP and logs.
const RESERVED_FILES: u64 = 128;

/// Raises the soft limit on open files to the hard one: each connection holds a file
/// descriptor, and the usual soft limit (1024) is far below what the system allows.
pub fn raise_open_file_limit() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current == limit.maximum {
            return;
        }
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::debug!(files = ?limit.maximum, "raised the open file limit"),
            Err(error) => tracing::warn!(%error, "cannot raise the open file limit"),
        }
    }
}

/// The connection cap: the setting, lowered when the open file limit leaves less room.
fn connection_cap(wanted: u64) -> usize {
    let mut cap = wanted.max(1);
    #[cfg(target_os = "linux")]
    if let Some(files) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        let room = files.saturating_sub(RESERVED_FILES).max(1);
        if cap > room {
            tracing::warn!(
                max_connections = cap,
                open_file_limit = files,
                "the open file limit leaves room for {room} connections only"
            );
            cap = room;
        }
    }
    usize::try_from(cap).unwrap_or(usize::MAX)
}

/// Delivery wired to the relays' and the domains' stores; also what `send-test-email` uses.
pub fn delivery(
    settings: &Arc<Settings>,
    db: &Db,
    master_key: &MasterKey,
    destination_policy: &Arc<Policy>,
    metrics: &Metrics,
) -> Delivery {
    Delivery {
        db: db.clone(),
        master_key: master_key.clone(),
        settings: settings.clone(),
        directory: Arc::new(Tenants {
            db: db.clone(),
            master_key: master_key.clone(),
            relay_limits: transport::Limits::tenant(settings, destination_policy),
            ed25519: settings.dkim_ed25519,
            signing: Mutex::default(),
        }),
        wakeup: Arc::default(),
        events_written: Arc::default(),
        metrics: metrics.clone(),
    }
}

/// What delivery asks about tenants, answered from their stores: a domain's relay and
/// key serve only the account where the domain is active.
struct Tenants {
    db: Db,
    master_key: MasterKey,
    /// A tenant's relay reaches only where the destination policy lets it.
    relay_limits: transport::Limits,
    /// Whether mail gets an Ed25519 signature beside the RSA one.
    ed25519: bool,
    /// The signing keys of each sender and domain as read lately (when, by the database's
    /// clock): a domain's mail goes out in runs, and its keys are read and unsealed once per
    /// `KEYS_FRESH_MS`, not per message. A switch of keys or a suspended domain shows
    /// within that time; older entries go whenever keys are read again.
    signing: Mutex<KeysRead>,
}

/// Signing keys per sender (`None`: the operator) and domain, with when they were read.
type KeysRead = HashMap<(Option<String>, DomainName), (i64, Vec<SigningKey>)>;

/// How long signing keys read for mail are used before they are read again.
const KEYS_FRESH_MS: i64 = 1_000;

#[async_trait::async_trait]
impl Directory for Tenants {
    async fn relay(
        &self,
        account_id: &str,
        domain: &DomainName,
    ) -> anyhow::Result<Option<SmtpTarget>> {
        let limits = self.relay_limits.clone();
        relays::store::relay_for(&self.db, &self.master_key, account_id, domain, limits).await
    }

    async fn signing_keys(
        &self,
        account_id: Option<&str>,
        domain: &DomainName,
    ) -> anyhow::Result<Vec<SigningKey>> {
        let now = self.db.now().0;
        let fresh = |read_at: i64| (0..KEYS_FRESH_MS).contains(&(now - read_at));
        let whose = (account_id.map(str::to_string), domain.clone());
        if let Some((read_at, keys)) = self.lock_signing().get(&whose)
            && fresh(*read_at)
        {
            return Ok(keys.clone());
        }
        let keys = domains::dkim::signing_keys(
            &self.db,
            &self.master_key,
            account_id,
            domain,
            self.ed25519,
        )
        .await?;
        let keys: Vec<SigningKey> = keys
            .into_iter()
            .map(|key| SigningKey {
                selector: key.selector,
                algorithm: key.algorithm,
                private_der: key.private_der,
            })
            .collect();
        let mut signing = self.lock_signing();
        signing.retain(|_, (read_at, _)| fresh(*read_at));
        signing.insert(whose, (now, keys.clone()));
        Ok(keys)
    }
}

impl Tenants {
    fn lock_signing(&self) -> std::sync::MutexGuard<'_, KeysRead> {
        self.signing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What mailroom's DNS server publishes: the domains' DKIM keys.
struct PublishedKeys {
    db: Db,
}

#[async_trait::async_trait]
impl Records for PublishedKeys {
    async fn txt(&self, label: &str) -> anyhow::Result<Option<String>> {
        Ok(domains::dkim::published(&self.db, label).await?)
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}
