//! The composition root: builds the shared state, wires the ports the lower floors
//! declare (what delivery and the DNS server need to know about tenants) to the stores
//! that answer them, and runs the server and its workers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::dns::DnsResolver;
use crate::dns::server::{DnsServer, Records};
use crate::mail::port::{Directory, SigningKey};
use crate::mail::transport::SmtpTarget;
use crate::mail::worker::Delivery;
use crate::state::AppState;
use crate::store::Db;
use crate::store::crypto::MasterKey;
use crate::types::DomainName;
use crate::{domains, mailboxes, relays};

/// The server, built and bound but not yet running: tests and `main` start it the same way.
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    dns: Option<DnsServer>,
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
        let settings = Arc::new(settings.clone());
        let delivery = delivery(&settings, &db, &master_key);
        let state = AppState {
            db: db.clone(),
            public_url: Arc::from(settings.public_url(address)),
            resolver: DnsResolver::new(&settings.dns_nameservers)?,
            master_key,
            outbox_wakeup: delivery.wakeup.clone(),
            api_keys: Arc::default(),
            settings,
        };
        let dns = match state.settings.dns_listen {
            Some(address) => {
                let records = Box::new(PublishedKeys { db });
                Some(DnsServer::start(address, &state.settings.dkim_zone, records).await?)
            }
            None => None,
        };
        Ok(Application {
            listener,
            address,
            dns,
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
        let delivery = tokio::spawn(self.delivery.run(stopped));

        tracing::info!(address = %self.address, "listening");
        let router = crate::router::router(self.state);
        let served = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        let _ = stop.send(true);
        let _ = verifier.await;
        let _ = delivery.await;
        if let Some(dns) = self.dns {
            dns.shutdown().await;
        }
        tracing::info!("stopped");
        Ok(served?)
    }
}

/// Delivery wired to the relays' and the domains' stores; also what `send-test-email` uses.
pub fn delivery(settings: &Arc<Settings>, db: &Db, master_key: &MasterKey) -> Delivery {
    Delivery {
        db: db.clone(),
        master_key: master_key.clone(),
        settings: settings.clone(),
        directory: Arc::new(Tenants {
            db: db.clone(),
            master_key: master_key.clone(),
            smtp_timeout: Duration::from_secs(settings.smtp_timeout.max(1)),
        }),
        wakeup: Arc::default(),
    }
}

/// What delivery asks about tenants, answered from their stores.
struct Tenants {
    db: Db,
    master_key: MasterKey,
    smtp_timeout: Duration,
}

#[async_trait::async_trait]
impl Directory for Tenants {
    async fn relay(
        &self,
        account_id: &str,
        domain: &DomainName,
    ) -> anyhow::Result<Option<SmtpTarget>> {
        relays::store::relay_for(
            &self.db,
            &self.master_key,
            account_id,
            domain,
            self.smtp_timeout,
        )
        .await
    }

    async fn signing_key(&self, domain: &DomainName) -> anyhow::Result<Option<SigningKey>> {
        let key = domains::dkim::signing_key(&self.db, &self.master_key, domain).await?;
        Ok(key.map(|(selector, private_der)| SigningKey {
            selector,
            private_der,
        }))
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
