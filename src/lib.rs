//! mailroom: a self-hosted email control plane.
#![forbid(unsafe_code)]

pub mod config;
pub mod dns;
pub mod domains;
pub mod http;
pub mod invitations;
pub mod mail;
pub mod mailboxes;
pub mod relays;
pub mod senders;
pub mod store;
pub mod tenancy;
pub mod text;

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::dns::server::DnsServer;
use crate::http::AppState;
use crate::store::Db;

/// The server, built and bound but not yet running: tests and `main` start it the same way.
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    dns: Option<DnsServer>,
    state: AppState,
}

impl Application {
    /// Opens and migrates the database and binds the listening socket.
    pub async fn build(settings: &Settings) -> anyhow::Result<Application> {
        let db = Db::connect(&settings.database_url()).await?;
        db.migrate().await.context("cannot migrate the database")?;
        Self::with_db(settings, db).await
    }

    pub async fn with_db(settings: &Settings, db: Db) -> anyhow::Result<Application> {
        mailboxes::write_directory_settings(&db, settings).await?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let address = listener.local_addr()?;
        let state = AppState::new(settings, db, settings.public_url(address))?;
        let dns = match settings.dns_listen {
            Some(address) => {
                Some(DnsServer::start(address, &settings.dkim_zone, state.db.clone()).await?)
            }
            None => None,
        };
        Ok(Application {
            listener,
            address,
            dns,
            state,
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
        let verifier = tokio::spawn(domains::check::run_verifier(
            self.state.clone(),
            stopped.clone(),
        ));
        let delivery = tokio::spawn(mail::worker::run(self.state.clone(), stopped));

        tracing::info!(address = %self.address, "listening");
        let router = http::router(self.state);
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
