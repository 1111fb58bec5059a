//! Startup shared by `main` and the tests: pick the store, bind, serve until told to stop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::service::{EventService, SessionService};
use crate::store::{EventRepository, MemoryStore, MongoStore, SessionRepository, StoreError};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub sessions: SessionService,
    pub events: EventService,
}

impl AppState {
    fn new(sessions: Arc<dyn SessionRepository>, events: Arc<dyn EventRepository>) -> Self {
        Self {
            sessions: SessionService::new(Arc::clone(&sessions)),
            events: EventService::new(sessions, events),
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("could not connect to MongoDB or create its indexes")]
    Database(#[from] StoreError),
    #[error("could not listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
}

/// A built service: the listener is bound, the store is connected.
pub struct Application {
    listener: TcpListener,
    router: Router,
    mongo: Option<Arc<MongoStore>>,
}

impl Application {
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
        let (state, mongo) = match &config.mongo {
            Some(mongo_config) => {
                let store = Arc::new(MongoStore::connect(mongo_config).await?);
                tracing::info!("using MongoDB");
                let state = AppState::new(store.clone(), store.clone());
                (state, Some(store))
            }
            None => {
                tracing::warn!(
                    "DB_URI is not set: using the IN-MEMORY store. Nothing survives a restart; \
                     set DB_URI to a MongoDB deployment to keep data"
                );
                let store = Arc::new(MemoryStore::default());
                (AppState::new(store.clone(), store), None)
            }
        };
        let addr = format!("{}:{}", config.host, config.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        Ok(Self {
            listener,
            router: crate::http::router(state, config.body_limit_bytes),
            mongo,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bound port (useful when the config asked for port 0).
    pub fn port(&self) -> u16 {
        self.local_addr().map_or(0, |a| a.port())
    }

    /// Serves until `shutdown` resolves, lets in-flight requests finish, then closes the
    /// database client.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        tracing::info!(addr = %self.local_addr()?, "listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await?;
        if let Some(mongo) = self.mongo {
            mongo.shutdown().await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
