use std::time::Duration;

use conversation_sessions::config::{Config, LogFormat};
use conversation_sessions::store::mongo::MongoConfig;
use conversation_sessions::Application;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

/// Which store an application under test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Mongo,
}

/// The MongoDB test server's URI. Missing it is a failure, never a skip.
pub fn mongo_uri() -> String {
    std::env::var("TEST_MONGO_URI").unwrap_or_else(|_| {
        panic!(
            "TEST_MONGO_URI is not set, so the MongoDB tests cannot run. \
             Run ./scripts/test.sh: it installs and starts a MongoDB-wire server for them."
        )
    })
}

/// Connection settings for a fresh, randomly named database.
pub fn fresh_mongo_config() -> MongoConfig {
    MongoConfig {
        db_name: Some(format!("test_{}", uuid::Uuid::new_v4().simple())),
        timeout: Duration::from_secs(10),
        ..MongoConfig::new(mongo_uri())
    }
}

/// A running application on a free port with its own store.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = Config {
        host: "127.0.0.1".to_owned(),
        port: 0,
        mongo: (backend == Backend::Mongo).then(fresh_mongo_config),
        body_limit_bytes: 256 * 1024,
        log_format: LogFormat::Pretty,
        sse_heartbeat: Duration::from_secs(15),
        sse_max_streams: 1000,
        sse_gap_wait: Duration::from_millis(500),
        api_keys: None,
        retention: None,
        shutdown_grace: Duration::from_secs(10),
        header_read_timeout: Duration::from_secs(10),
        body_read_timeout: Duration::from_secs(10),
        max_connections: 10_000,
        // Test inserts finish in milliseconds; a short wait keeps erasures quick.
        erase_settle: Duration::from_secs(1),
    };
    adjust(&mut config);
    if std::env::var_os("TEST_LOG").is_some() {
        conversation_sessions::telemetry::init(LogFormat::Pretty);
    }
    let app = Application::build(&config)
        .await
        .expect("the application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    TestApp {
        address,
        client: reqwest::Client::new(),
    }
}

/// A response's status and JSON body (`Null` when the body is empty).
pub async fn parts(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.expect("the body arrives");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, body)
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        parts(self.post_raw(path, body).await).await
    }

    pub async fn post_raw(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("the request is sent")
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        parts(self.get_raw(path).await).await
    }

    pub async fn get_raw(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("the request is sent")
    }

    /// Creates a session that must not exist yet.
    pub async fn create_session(&self, id: &str) -> Value {
        let (status, body) = self.post("/sessions", &json!({ "sessionId": id })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Appends an event that must be new.
    pub async fn append(&self, session: &str, event: Value) -> Value {
        let (status, body) = self
            .post(&format!("/sessions/{session}/events"), &event)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    pub async fn complete(&self, session: &str) -> (StatusCode, Value) {
        parts(
            self.client
                .post(self.url(&format!("/sessions/{session}/complete")))
                .send()
                .await
                .expect("the request is sent"),
        )
        .await
    }

    /// Follows `nextCursor` over any listing from its first page until it is null;
    /// `path` already holds its query string.
    pub async fn walk_listing(&self, path: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                None => path.to_owned(),
                Some(c) => format!("{path}&cursor={c}"),
            };
            let (status, body) = self.get(&url).await;
            assert_eq!(status, StatusCode::OK, "{url}: {body}");
            items.extend(
                body["data"]
                    .as_array()
                    .expect("data is an array")
                    .iter()
                    .cloned(),
            );
            assert_eq!(
                body["hasMore"].as_bool(),
                Some(!body["nextCursor"].is_null())
            );
            match body["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
    }

    /// Every event of a session by (timestamp, seq), through the cursors.
    pub async fn walk(&self, session: &str, query: &str) -> Vec<Value> {
        self.walk_listing(&format!("/sessions/{session}/events?{query}"))
            .await
    }
}

/// Every event of a session in seq order, through `afterSeq` and its cursors.
pub async fn walk_seq(app: &TestApp, session: &str) -> Vec<Value> {
    app.walk_listing(&format!("/sessions/{session}/events?afterSeq=0&limit=1000"))
        .await
}

/// Asserts the error envelope and returns its `details`.
pub fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: &str) -> Value {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        body["error"]["requestId"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body["error"]["details"].clone()
}

/// RFC 3339 UTC with exactly millisecond precision, as every time leaves the service.
pub fn is_millis_utc(value: &Value) -> bool {
    let Some(s) = value.as_str() else {
        return false;
    };
    s.len() == 24
        && s.ends_with('Z')
        && s.as_bytes()[19] == b'.'
        && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// Generates one `#[tokio::test]` per store for each listed `async fn(TestApp)`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = crate::helpers::spawn_app(crate::helpers::Backend::Memory).await;
                    super::$name(app).await
                }
            )*
        }
        mod mongo {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = crate::helpers::spawn_app(crate::helpers::Backend::Mongo).await;
                    super::$name(app).await
                }
            )*
        }
    };
}
pub(crate) use on_both_stores;
