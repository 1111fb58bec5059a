//! A MongoDB that goes away turns requests into fast 503 `unavailable`, never hangs; when
//! it comes back the service recovers by itself, and clients' retries store each event once.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use conversation_sessions::store::mongo::MongoConfig;
use serde_json::json;

use crate::helpers::{assert_error, spawn_app_with, Backend};

/// A test server of this test's own, so that stopping it harms no other test.
pub(crate) struct OwnServer {
    child: Child,
    dir: std::path::PathBuf,
    port: u16,
    pub(crate) uri: String,
    extra: Vec<&'static str>,
}

impl OwnServer {
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    /// With extra server flags, e.g. `--standalone`.
    pub(crate) fn start_with(extra: &[&'static str]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("outage-{}", uuid::Uuid::new_v4().simple()));
        let child = Self::spawn(port, &dir, extra);
        Self {
            child,
            dir,
            port,
            uri: format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
            extra: extra.to_vec(),
        }
    }

    /// Starts the server again on the same port and data, as after a crash.
    pub(crate) fn restart(&mut self) {
        self.child = Self::spawn(self.port, &self.dir, &self.extra);
    }

    fn spawn(port: u16, dir: &std::path::Path, extra: &[&str]) -> Child {
        let child = Command::new("secantusd-rs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(extra)
            .arg("--storage-path")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("secantusd-rs runs (./scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the test server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// Stops the server: SIGKILL, or SIGTERM for a clean stop.
    pub(crate) fn stop(&mut self, signal: &str) {
        self.signal(signal);
        let _ = self.child.wait();
    }

    fn kill(&mut self) {
        self.stop("KILL");
    }

    /// Sends `signal`; after `STOP`, returns once the server is stopped, so that no request
    /// sent after this is served before `CONT`.
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.child.id();
        let sent = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status();
        // A server that has exited already cannot take a signal; anything else is a failure.
        let exited = || std::fs::metadata(format!("/proc/{pid}")).is_err();
        assert!(
            sent.as_ref().is_ok_and(|s| s.success()) || exited(),
            "kill -{signal} {pid}: {sent:?}"
        );
        if signal == "STOP" {
            let stopped = || {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                    stat.rsplit(')')
                        .next()
                        .is_some_and(|s| s.trim_start().starts_with('T'))
                })
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            while !stopped() {
                assert!(Instant::now() < deadline, "the test server did not stop");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

mod mongo {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_fail_fast_with_503_when_the_database_is_gone() {
        super::requests_fail_fast_with_503_when_the_database_is_gone().await
    }
}

async fn requests_fail_fast_with_503_when_the_database_is_gone() {
    let mut server = OwnServer::start();
    let uri = server.uri.clone();
    let app = spawn_app_with(Backend::Mongo, |config| {
        config.mongo = Some(MongoConfig {
            db_name: Some("outage".to_owned()),
            timeout: Duration::from_millis(500),
            ..MongoConfig::new(uri)
        });
    })
    .await;
    app.create_session("before").await;
    for i in 0..10 {
        app.append(
            "before",
            json!({"eventId": format!("acked-{i}"), "type": "system"}),
        )
        .await;
    }
    // The test database loses its last acknowledged writes, journaled with w: majority,
    // when it is killed with SIGKILL (MongoDB keeps them); it keeps them on a clean stop.
    // The service's side, fast refusals, recovery and exactly-once retries, is the same
    // either way, so the default is a clean stop. OUTAGE_SIGNAL=KILL shows the difference.
    server.stop(&std::env::var("OUTAGE_SIGNAL").unwrap_or_else(|_| "TERM".to_owned()));

    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) = app
            .post(
                "/sessions/before/events",
                &json!({"eventId": "e1", "type": "system"}),
            )
            .await;
        let elapsed = started.elapsed();
        assert_error(status, &body, 503, "unavailable");
        assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
        let (status, body) = app.post("/sessions", &json!({"sessionId": "during"})).await;
        assert_error(status, &body, 503, "unavailable");
        let (status, body) = app.get("/sessions/before/events").await;
        assert_error(status, &body, 503, "unavailable");
        let (status, body) = app.get("/readyz").await;
        assert_error(status, &body, 503, "unavailable");
        let (status, _) = app.get("/healthz").await;
        assert_eq!(
            status,
            reqwest::StatusCode::OK,
            "the process itself still serves"
        );
    }

    // Writes refused during the outage, to be retried by their clients.
    let mut refused = Vec::new();
    for i in 0..10 {
        let (status, _) = app
            .post(
                "/sessions/before/events",
                &json!({"eventId": format!("retried-{i}"), "type": "system"}),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE);
        refused.push(format!("retried-{i}"));
    }

    // The database comes back; the application recovers by itself, without a restart.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.get("/readyz").await.0 != reqwest::StatusCode::OK {
        assert!(Instant::now() < deadline, "the application never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Clients retry with the same ids: refused writes are stored once, acknowledged ones
    // are recognised as replays.
    for id in &refused {
        let (status, body) = app
            .post(
                "/sessions/before/events",
                &json!({"eventId": id, "type": "system"}),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    }
    for i in 0..10 {
        let (status, _) = app
            .post(
                "/sessions/before/events",
                &json!({"eventId": format!("acked-{i}"), "type": "system"}),
            )
            .await;
        assert_eq!(
            status,
            reqwest::StatusCode::OK,
            "acked-{i} was lost or duplicated"
        );
    }
    let stored = app.walk("before", "limit=1000").await;
    let ids: std::collections::HashSet<&str> = stored
        .iter()
        .map(|e| e["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(
        (stored.len(), ids.len()),
        (20, 20),
        "every event exactly once"
    );
}

mod paused {
    use super::*;

    mod mongo {
        use super::*;

        /// A database that stops answering (SIGSTOP) gives 503 within the configured bound;
        /// when it resumes (SIGCONT), service resumes.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_paused_database_gives_503_within_the_bound_and_service_resumes() {
            let server = OwnServer::start();
            let uri = server.uri.clone();
            let app = spawn_app_with(Backend::Mongo, |config| {
                config.mongo = Some(MongoConfig {
                    db_name: Some("paused".to_owned()),
                    timeout: Duration::from_millis(500),
                    ..MongoConfig::new(uri)
                });
            })
            .await;
            app.create_session("p").await;
            server.signal("STOP");
            for i in 0..3 {
                let started = Instant::now();
                let (status, body) = app
                    .post(
                        "/sessions/p/events",
                        &json!({"eventId": format!("e{i}"), "type": "system"}),
                    )
                    .await;
                let elapsed = started.elapsed();
                assert_error(status, &body, 503, "unavailable");
                assert!(elapsed < Duration::from_millis(2500), "took {elapsed:?}");
            }
            server.signal("CONT");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (status, _) = app
                    .post(
                        "/sessions/p/events",
                        &json!({"eventId": "e0", "type": "system"}),
                    )
                    .await;
                if status.is_success() {
                    break;
                }
                assert!(Instant::now() < deadline, "service did not resume");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // e0 is stored once; e1 and e2, whose writes may have reached the paused
            // database before their 503, at most once each.
            let stored = app.walk("p", "limit=100").await;
            let ids: Vec<&str> = stored
                .iter()
                .filter_map(|e| e["eventId"].as_str())
                .collect();
            let unique: std::collections::HashSet<&str> = ids.iter().copied().collect();
            assert_eq!(unique.len(), ids.len(), "an event stored twice: {ids:?}");
            assert!(unique.contains("e0"), "{ids:?}");
            assert!(unique.is_subset(&["e0", "e1", "e2"].into()), "{ids:?}");
        }
    }
}
