//! Startup shared by `main` and the tests: pick the store, bind, serve until told to stop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::feed::SessionFeed;
use crate::http::ApiKeys;
use crate::metrics::Metrics;
use crate::service::{EventService, LiveService, SessionService};
use crate::store::{
    EventRepository, MemoryStore, Metered, MongoStore, SessionRepository, StoreError,
};

/// What every handler can reach. axum clones it for every request, so it is one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The services and settings behind [`AppState`].
pub struct Shared {
    pub sessions: SessionService,
    pub events: EventService,
    pub live: LiveService,
    pub metrics: Arc<Metrics>,
    /// `None`: the API is open.
    pub api_keys: Option<ApiKeys>,
    /// How often an idle live stream sends a heartbeat comment.
    pub heartbeat: Duration,
}

impl AppState {
    fn new<S>(
        config: &Config,
        store: Arc<S>,
        metrics: Arc<Metrics>,
        feed: Arc<SessionFeed>,
        stop: watch::Receiver<bool>,
    ) -> Self
    where
        S: SessionRepository + EventRepository + 'static,
    {
        // The database's own time limit plus a second for the reply to travel; none in memory.
        let bound = config
            .mongo
            .as_ref()
            .map(|m| m.timeout + Duration::from_secs(1));
        let metered = Arc::new(Metered::new(store, Arc::clone(&metrics), bound));
        let sessions: Arc<dyn SessionRepository> = metered.clone();
        let events: Arc<dyn EventRepository> = metered;
        Self(Arc::new(Shared {
            metrics,
            api_keys: config.api_keys.as_deref().map(ApiKeys::new),
            sessions: SessionService::new(
                Arc::clone(&sessions),
                Arc::clone(&events),
                Arc::clone(&feed),
                config.erase_settle,
            ),
            events: EventService::new(
                Arc::clone(&sessions),
                Arc::clone(&events),
                Arc::clone(&feed),
            ),
            live: LiveService::new(
                sessions,
                events,
                feed,
                config.sse_max_streams,
                config.sse_gap_wait,
                stop,
            ),
            heartbeat: config.sse_heartbeat,
        }))
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("could not connect to MongoDB or create its indexes")]
    Database(#[from] StoreError),
    #[error("could not listen on {addr} (HOST, PORT)")]
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
    /// See [`SessionService::erasures`].
    erasures: TaskTracker,
    grace: Duration,
    header_read_timeout: Duration,
    max_connections: usize,
}

impl Application {
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
        let feed = Arc::new(SessionFeed::default());
        let metrics = Arc::new(Metrics::default());
        let (stop, stopping) = watch::channel(false);
        let (state, mongo) = match &config.mongo {
            Some(mongo_config) => {
                let observed = mongo_config.command_metrics.then(|| Arc::clone(&metrics));
                tracing::info!(
                    timeout_ms = mongo_config.timeout.as_millis() as u64,
                    "connecting to MongoDB"
                );
                let store = Arc::new(MongoStore::connect_observed(mongo_config, observed).await?);
                if store.apply_retention(config.retention).await? {
                    tracing::warn!(
                        "RETENTION_DAYS is not set: dropped the TTL indexes, so closed sessions \
                         and events no longer expire, for every instance on this database"
                    );
                }
                tracing::info!("using MongoDB");
                tokio::spawn(
                    Arc::clone(&store).follow_changes(Arc::clone(&feed), stop.subscribe()),
                );
                let state = AppState::new(config, Arc::clone(&store), metrics, feed, stopping);
                (state, Some(store))
            }
            None => {
                tracing::warn!(
                    "DB_URI is not set: using the IN-MEMORY store. Nothing survives a restart; \
                     set DB_URI to a MongoDB deployment to keep data"
                );
                let store = Arc::new(MemoryStore::default());
                if let Some(retention) = config.retention {
                    tokio::spawn(sweep_expired(
                        Arc::clone(&store),
                        retention,
                        stop.subscribe(),
                    ));
                }
                (AppState::new(config, store, metrics, feed, stopping), None)
            }
        };
        if config.api_keys.is_none() {
            tracing::warn!("API_KEYS is not set: the API is open to anyone who can reach it");
        }
        let addr = format!("{}:{}", config.host, config.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        Ok(Self {
            listener,
            erasures: state.sessions.erasures(),
            router: crate::http::router(state, config.body_limit_bytes, config.body_read_timeout),
            mongo,
            stop,
            grace: config.shutdown_grace,
            header_read_timeout: config.header_read_timeout,
            max_connections: config.max_connections,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bound port (useful when the config asked for port 0).
    pub fn port(&self) -> u16 {
        self.local_addr().map_or(0, |a| a.port())
    }

    /// Serves until `shutdown` resolves; then stops accepting, gives in-flight requests the
    /// grace period to finish, and closes the database client.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        tracing::info!(addr = %self.local_addr()?, "listening");
        let stop = self.stop;
        let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
        let stopping = async move {
            shutdown.await;
            // Live streams never end by themselves: end them, so in-flight requests can.
            let _ = stop.send(true);
            let _ = signalled.send(());
        };
        let grace = self.grace;
        let grace_over = async move {
            match on_signal.await {
                Ok(()) => tokio::time::sleep(grace).await,
                Err(_) => std::future::pending().await,
            }
        };
        let limits = ConnectionLimits {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
        };
        let served = serve(self.listener, self.router, limits, stopping);
        let mut grace_over = std::pin::pin!(grace_over);
        let in_grace = tokio::select! {
            () = served => true,
            () = &mut grace_over => {
                tracing::warn!(
                    grace_secs = grace.as_secs(),
                    "grace period over; unfinished requests are dropped"
                );
                false
            }
        };
        // Erasures whose client hung up run on, and finish within the same grace.
        self.erasures.close();
        if in_grace && !self.erasures.is_empty() {
            tracing::info!(
                erasures = self.erasures.len(),
                "waiting for erasures whose clients hung up"
            );
            tokio::select! {
                () = self.erasures.wait() => {}
                () = &mut grace_over => tracing::warn!(
                    grace_secs = grace.as_secs(),
                    "grace period over; unfinished erasures are dropped, and a repeated \
                     DELETE finishes them once their lease has run out"
                ),
            }
        }
        if let Some(mongo) = self.mongo {
            if tokio::time::timeout(CLIENT_CLOSE_LIMIT, mongo.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(
                    limit_ms = CLIENT_CLOSE_LIMIT.as_millis(),
                    "the database client did not close in time; exiting without it"
                );
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// How long closing the database client may take at exit. The driver waits for its
/// background tasks, which a database that stopped answering held for about 10 s plus
/// `DB_TIMEOUT_MS`, after the grace had already run out.
const CLIENT_CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// What keeps slow or numerous clients from exhausting the service.
struct ConnectionLimits {
    header_read_timeout: Duration,
    max_connections: usize,
}

/// Accepts connections until `shutdown`, then waits for the open ones to finish. Dropping
/// the future drops every connection, with the requests still in progress on it.
///
/// Like `axum::serve`, with two guards it lacks: a connection must deliver each request's
/// headers within `header_read_timeout` (slowloris clients, and clients that send nothing
/// at all, are cut off; an HTTP/2 peer must answer a ping within it), and at most
/// `max_connections` are open at once (one more is closed as soon as it is accepted).
async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let closing = watch::Sender::new(false);
    let detect_within = limits.header_read_timeout;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut builder = ConnectionBuilder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // An HTTP/2 connection may idle, but its peer must answer pings: one that vanished
    // without closing would otherwise hold its slot for good.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(
                limit = limits.max_connections,
                "connection refused: at the limit"
            );
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (builder, router, watcher) = (builder.clone(), router.clone(), graceful.watcher());
        let mut closing = closing.subscribe();
        connections.spawn(async move {
            tokio::select! {
                known = tokio::time::timeout(detect_within, protocol_known(&stream)) => {
                    if known != Ok(true) {
                        return;
                    }
                }
                _ = closing.changed() => return,
            }
            let service = TowerToHyperService::new(router);
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let _ = watcher.watch(connection).await;
            drop(slot);
        });
    }
    drop(listener);
    // Connections still waiting for their first byte are dropped, not waited for.
    let _ = closing.send(true);
    graceful.shutdown().await;
}

/// Waits until the connection's first bytes tell its protocol: a byte off the HTTP/2
/// preface, or the whole preface. hyper-util reads them with no timer, and hyper times the
/// headers only after, so a client that sends nothing, or a piece of the preface, would
/// hold its slot for good. False when the connection ends first.
async fn protocol_known(stream: &tokio::net::TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut head = [0u8; PREFACE.len()];
    let mut pause = Duration::from_millis(10);
    loop {
        match stream.peek(&mut head).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if n == PREFACE.len() || head[..n] != PREFACE[..n] => return true,
            // A piece of the preface. `peek` returns at once while bytes wait unread, so
            // look again later, less often each time: a client that sent only "P" of
            // "POST" waits 10 ms, and one that stalls costs a few wake-ups, not hundreds.
            Ok(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// The in-memory store's stand-in for MongoDB's TTL monitor.
async fn sweep_expired(
    store: Arc<MemoryStore>,
    retention: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let every = (retention / 10).clamp(Duration::from_millis(50), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let erased = store.erase_expired(retention);
                if erased > 0 {
                    tracing::info!(erased, "erased sessions past retention");
                }
            }
            () = crate::feed::stopped(&mut stop) => return,
        }
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
    tracing::info!("shutdown signal received");
}
