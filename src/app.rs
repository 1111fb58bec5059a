//! Startup shared by `main` and the tests: pick the store, bind, serve until told to stop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::feed::SessionFeed;
use crate::service::{EventService, LiveService, SessionService};
use crate::store::{EventRepository, MemoryStore, MongoStore, SessionRepository, StoreError};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub sessions: SessionService,
    pub events: EventService,
    pub live: LiveService,
    /// How often an idle live stream sends a heartbeat comment.
    pub heartbeat: Duration,
}

impl AppState {
    fn new(
        config: &Config,
        sessions: Arc<dyn SessionRepository>,
        events: Arc<dyn EventRepository>,
        feed: Arc<SessionFeed>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            sessions: SessionService::new(Arc::clone(&sessions), Arc::clone(&feed)),
            events: EventService::new(
                Arc::clone(&sessions),
                Arc::clone(&events),
                Arc::clone(&feed),
            ),
            live: LiveService::new(sessions, events, feed, config.sse_max_streams, stop),
            heartbeat: config.sse_heartbeat,
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
    stop: watch::Sender<bool>,
}

impl Application {
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
        let feed = Arc::new(SessionFeed::default());
        let (stop, stopping) = watch::channel(false);
        let (state, mongo) = match &config.mongo {
            Some(mongo_config) => {
                let store = Arc::new(MongoStore::connect(mongo_config).await?);
                tracing::info!("using MongoDB");
                tokio::spawn(
                    Arc::clone(&store).follow_changes(Arc::clone(&feed), stop.subscribe()),
                );
                let state = AppState::new(config, store.clone(), store.clone(), feed, stopping);
                (state, Some(store))
            }
            None => {
                tracing::warn!(
                    "DB_URI is not set: using the IN-MEMORY store. Nothing survives a restart; \
                     set DB_URI to a MongoDB deployment to keep data"
                );
                let store = Arc::new(MemoryStore::default());
                (
                    AppState::new(config, store.clone(), store, feed, stopping),
                    None,
                )
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
            stop,
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
        let stop = self.stop;
        let stopping = async move {
            shutdown.await;
            // Live streams never end by themselves: end them, so in-flight requests can.
            let _ = stop.send(true);
        };
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(stopping)
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
