//! mailroom: a self-hosted email control plane.
#![forbid(unsafe_code)]

pub mod config;
pub mod http;
pub mod store;
pub mod tenancy;
pub mod text;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::http::AppState;
use crate::store::Db;

/// The server, built and bound but not yet running: tests and `main` start it the same way.
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
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
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let address = listener.local_addr()?;
        let state = AppState {
            db,
            public_url: Arc::from(settings.public_url(address)),
        };
        Ok(Application {
            listener,
            address,
            state,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn db(&self) -> &Db {
        &self.state.db
    }

    /// Serves until `shutdown` resolves, then stops accepting and finishes the requests
    /// already in flight.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(address = %self.address, "listening");
        axum::serve(self.listener, http::router(self.state))
            .with_graceful_shutdown(shutdown)
            .await?;
        tracing::info!("stopped");
        Ok(())
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
