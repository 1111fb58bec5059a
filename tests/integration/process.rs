//! The built binary as an operator runs it: flags, JSON logs, signals.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_conversation-sessions");

/// The binary, run away from the checkout: a developer's `.env` there (or in a parent)
/// would otherwise set the tests' services up too.
fn service_command() -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(std::env::temp_dir());
    command
}

fn run(args: &[&str]) -> String {
    let output = service_command().args(args).env_clear().output().unwrap();
    assert!(output.status.success(), "{args:?} failed");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn help_lists_every_setting_with_its_environment_variable() {
    let help = run(&["--help"]);
    for (flag, env) in [
        ("--host", "HOST"),
        ("--port", "PORT"),
        ("--db-uri", "DB_URI"),
        ("--db-name", "DB_NAME"),
        ("--db-timeout-ms", "DB_TIMEOUT_MS"),
        ("--db-max-pool-size", "DB_MAX_POOL_SIZE"),
        ("--body-limit-bytes", "BODY_LIMIT_BYTES"),
        ("--log-format", "LOG_FORMAT"),
        ("--api-keys", "API_KEYS"),
        ("--retention-days", "RETENTION_DAYS"),
        ("--shutdown-grace-secs", "SHUTDOWN_GRACE_SECS"),
        ("--sse-heartbeat-secs", "SSE_HEARTBEAT_SECS"),
        ("--sse-max-streams", "SSE_MAX_STREAMS"),
        ("--sse-gap-wait-ms", "SSE_GAP_WAIT_MS"),
        ("--db-write-concern", "DB_WRITE_CONCERN"),
        ("--db-journal", "DB_JOURNAL"),
        ("--db-retry-writes", "DB_RETRY_WRITES"),
        ("--header-read-timeout-secs", "HEADER_READ_TIMEOUT_SECS"),
        ("--body-read-timeout-secs", "BODY_READ_TIMEOUT_SECS"),
        ("--max-connections", "MAX_CONNECTIONS"),
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
        assert!(
            help.contains(&format!("env: {env}")),
            "--help lacks {env}:\n{help}"
        );
    }
    assert_eq!(
        run(&["--version"]).trim(),
        format!("conversation-sessions {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_bad_setting_stops_startup_with_its_name() {
    let output = service_command()
        .args(["--port", "web"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("PORT"));
}

#[test]
fn help_shows_neither_the_keys_nor_the_connection_string() {
    let output = service_command()
        .arg("--help")
        .env_clear()
        .env("DB_URI", "mongodb://admin:Sup3rS3cret@db.example:27017/x")
        .env("API_KEYS", "a-secret-key-0123456789")
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("env: DB_URI"), "{help}");
    for secret in ["Sup3rS3cret", "a-secret-key-0123456789"] {
        assert!(!help.contains(secret), "--help shows {secret}:\n{help}");
    }
}

/// A line `.env` cannot read would otherwise drop every setting after it, unseen; it is
/// named, not shown.
#[test]
fn a_malformed_env_file_stops_startup() {
    let dir = std::env::temp_dir().join(format!("dotenv-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join(".env"),
        "PORT=0\nAPI_KEYS=a-secret-key-0123456789 another-key-0123456789\nLOG_FORMAT=json\n",
    )
    .unwrap();
    // Were the line skipped, the service would start and serve: give it 10 s to exit.
    let mut child = service_command()
        .current_dir(&dir)
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(".env: line 2 (API_KEYS) cannot be read"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("secret-key"),
        "the value is shown: {stderr}"
    );
}

/// An empty `RUST_LOG` is unset, and one that does not parse falls back to `info`, with a
/// warning: neither silences the logs (`Service::start` waits for the `listening` line).
#[test]
fn an_empty_or_unreadable_log_filter_logs_at_info() {
    let warned = |service: &Service| {
        service
            .startup
            .iter()
            .any(|l| l["fields"]["message"] == "RUST_LOG is unreadable; logging at info")
    };
    let empty = Service::start(&[("RUST_LOG", "")]);
    assert!(!warned(&empty), "{:?}", empty.startup);
    let unreadable = Service::start(&[("RUST_LOG", "conversation_sessions=loud")]);
    assert!(warned(&unreadable), "{:?}", unreadable.startup);
}

/// A service process writing JSON logs, with its stdout read line by line.
pub(crate) struct Service {
    pub(crate) child: Child,
    lines: mpsc::Receiver<Value>,
    pub(crate) address: String,
    /// The lines logged before `listening`.
    startup: Vec<Value>,
}

impl Service {
    /// Started and listening.
    pub(crate) fn start(extra_env: &[(&str, &str)]) -> Self {
        let mut service = Self::spawn(extra_env);
        let mut startup = Vec::new();
        let listening = service.wait_for(|l| {
            let listening = l["fields"]["message"] == "listening";
            if !listening {
                startup.push(l.clone());
            }
            listening
        });
        service.address = format!("http://{}", listening["fields"]["addr"].as_str().unwrap());
        service.startup = startup;
        service
    }

    /// Started, and maybe still starting up.
    fn spawn(extra_env: &[(&str, &str)]) -> Self {
        let mut command = service_command();
        command
            .env_clear()
            .envs([
                ("PORT", "0"),
                ("LOG_FORMAT", "json"),
                ("RUST_LOG", "info"),
                ("SHUTDOWN_GRACE_SECS", "5"),
            ])
            .envs(extra_env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let parsed = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
                if send.send(parsed).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            address: String::new(),
            startup: Vec::new(),
        }
    }

    fn wait_for(&self, mut wanted: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).expect("the log line came");
            if wanted(&line) {
                return line;
            }
        }
    }

    /// The exit status, once the process has exited within `limit`.
    fn exited_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the process did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A database that takes its time to answer holds up startup, and a SIGTERM meanwhile stops
/// the service at once and cleanly, as it does once it listens.
#[test]
fn sigterm_while_startup_waits_for_the_database_stops_it_cleanly() {
    // Connections are taken into the backlog and never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!(
        "mongodb://{}/?directConnection=true",
        silent.local_addr().unwrap()
    );
    let mut service = Service::spawn(&[("DB_URI", uri.as_str()), ("DB_TIMEOUT_MS", "30000")]);
    service.wait_for(|l| l["fields"]["message"] == "connecting to MongoDB");
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    service.signal("TERM");
    let status = service.exited_within(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "exited {:?} after the signal",
        signalled.elapsed()
    );
    service.wait_for(|l| l["fields"]["message"] == "stopped before startup finished");
}

#[tokio::test]
async fn json_logs_hold_one_line_per_request_with_its_context_and_no_payload() {
    let service = Service::start(&[]);
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{}/sessions", service.address))
        .json(&json!({"sessionId": "log-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let appended = client
        .post(format!("{}/sessions/log-1/events", service.address))
        .header("x-request-id", "req-abc-123")
        .json(&json!({"eventId": "e1", "type": "user_speech", "payload": {"text": "my card number is 4111"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(appended.status(), 201);
    let line = service.wait_for(|l| l["span"]["request_id"] == "req-abc-123");
    assert_eq!(line["fields"]["message"], "served");
    assert_eq!(line["fields"]["status"], 201);
    assert!(line["fields"]["latency_ms"].as_f64().is_some());
    assert_eq!(line["span"]["method"], "POST");
    assert_eq!(line["span"]["route"], "/sessions/{session_id}/events");
    assert_eq!(line["span"]["session_id"], "log-1");
    assert!(!line.to_string().contains("4111"));
    service.signal("TERM");
}

#[tokio::test]
async fn sigterm_ends_live_streams_and_exits_cleanly() {
    let mut service = Service::start(&[("SSE_HEARTBEAT_SECS", "1")]);
    let client = reqwest::Client::new();
    client
        .post(format!("{}/sessions", service.address))
        .json(&json!({"sessionId": "sig"}))
        .send()
        .await
        .unwrap();
    let mut stream = client
        .get(format!("{}/sessions/sig/events/stream", service.address))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    service.signal("TERM");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream did not end on SIGTERM");
    let status = service.exited_within(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    service.wait_for(|l| l["fields"]["message"] == "stopped");
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_and_refuses_new_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut service = Service::start(&[]);
    let address = service.address.trim_start_matches("http://").to_owned();
    let body = r#"{"sessionId":"in-flight"}"#;
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // Half the body now: the request is in flight when the signal comes.
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    service.signal("TERM");
    // The listener closes soon after the signal; a loaded machine may take a moment.
    let signalled = Instant::now();
    while tokio::net::TcpStream::connect(&address).await.is_ok() {
        assert!(
            signalled.elapsed() < Duration::from_secs(3),
            "new connections were still accepted 3 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stream.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("HTTP/1.1 201"),
        "the in-flight request did not finish: {reply}"
    );
    service.exited_within(Duration::from_secs(10));
}

/// A server fault answers an opaque 500 and logs its whole cause chain, once.
#[tokio::test]
async fn a_server_error_logs_its_cause_chain_once_and_tells_the_client_nothing() {
    let db_name = format!("corrupt_{}", uuid::Uuid::new_v4().simple());
    let uri = crate::helpers::mongo_uri();
    let service = Service::start(&[("DB_URI", uri.as_str()), ("DB_NAME", db_name.as_str())]);
    // A session document no version of the service writes: its status is unknown.
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    client
        .database(&db_name)
        .collection::<mongodb::bson::Document>("sessions")
        .insert_one(mongodb::bson::doc! {"_id": "broken", "status": "exploded"})
        .await
        .unwrap();
    let response = reqwest::get(format!("{}/sessions/broken", service.address))
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "internal");
    assert_eq!(body["error"]["message"], "internal error");
    assert!(
        !body.to_string().contains("exploded"),
        "driver text reached the client: {body}"
    );
    let failure = service.wait_for(|l| l["fields"]["message"] == "request failed");
    assert_eq!(failure["level"], "ERROR");
    assert_eq!(failure["span"]["request_id"], request_id.as_str());
    let chain = failure["fields"]["error"].as_str().unwrap();
    assert!(chain.contains(": "), "the cause chain is logged: {chain}");
    // Then the request's own line, and no second error line for it.
    let served = service.wait_for(|l| l["span"]["request_id"] == request_id.as_str());
    assert_eq!(served["fields"]["message"], "served");
    assert_eq!(served["fields"]["status"], 500);
    service.signal("TERM");
}

/// Tests of the binary that need MongoDB: there an erasure can take seconds.
mod mongo {
    use super::*;
    use crate::outage::OwnServer;

    /// The write concern, retryable writes, timeouts and read preference come from the
    /// service; a URI that asks for others is told so at startup, and options they leave
    /// alone are not named.
    #[test]
    fn uri_options_that_the_settings_replace_are_named_at_startup() {
        let uri = format!(
            "{}&retryWrites=false&w=1&journal=true&appName=x",
            crate::helpers::mongo_uri()
        );
        let secondary = format!("{uri}&readPreference=secondaryPreferred");
        let db_name = format!("uri_{}", uuid::Uuid::new_v4().simple());
        let service = Service::start(&[
            ("DB_URI", secondary.as_str()),
            ("DB_NAME", db_name.as_str()),
        ]);
        let warnings: Vec<&str> = service
            .startup
            .iter()
            .filter(|l| l["level"] == "WARN")
            .filter_map(|l| l["fields"]["message"].as_str())
            .filter(|m| m.starts_with("DB_URI sets"))
            .collect();
        assert_eq!(
            warnings,
            [
                "DB_URI sets w, which DB_WRITE_CONCERN replaces; set DB_WRITE_CONCERN instead",
                "DB_URI sets retryWrites, which DB_RETRY_WRITES replaces; set DB_RETRY_WRITES instead",
                "DB_URI sets readPreference, which the service replaces: it reads from the primary",
            ],
            "{:?}",
            service.startup
        );
        let primary = format!("{uri}&readPreference=primary");
        let matching = Service::start(&[
            ("DB_URI", primary.as_str()),
            ("DB_NAME", db_name.as_str()),
            ("DB_RETRY_WRITES", "false"),
            ("DB_WRITE_CONCERN", "1"),
        ]);
        let named = matching.startup.iter().any(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("DB_URI sets"))
        });
        assert!(!named, "{:?}", matching.startup);
    }

    /// A database that stops answering holds up neither the end of the grace nor the exit:
    /// requests still in progress are dropped when the grace runs out, and closing the
    /// client is not waited for long.
    #[tokio::test]
    async fn sigterm_exits_soon_after_the_grace_when_the_database_stops_answering() {
        let db = OwnServer::start();
        let mut service = Service::start(&[
            ("DB_URI", db.uri.as_str()),
            ("DB_TIMEOUT_MS", "5000"),
            ("SHUTDOWN_GRACE_SECS", "2"),
        ]);
        let client = reqwest::Client::new();
        let create = |id: &str| {
            client
                .post(format!("{}/sessions", service.address))
                .json(&json!({"sessionId": id}))
                .send()
        };
        assert_eq!(create("before").await.unwrap().status(), 201);
        db.signal("STOP");
        let in_flight = tokio::spawn(create("during"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let signalled = Instant::now();
        service.signal("TERM");
        // Without the database the request would end in a 503 after 6 s.
        let answer = in_flight.await.unwrap();
        let dropped_after = signalled.elapsed();
        assert!(answer.is_err(), "the request was not dropped: {answer:?}");
        // Not before the grace: the request was in progress, not an idle connection.
        assert!(
            dropped_after >= Duration::from_millis(1900),
            "the request was dropped {dropped_after:?} after the signal, before the 2 s grace"
        );
        // Well before the database timeout would have answered it (about 4.7 s), with room
        // for a loaded machine.
        assert!(
            dropped_after < Duration::from_millis(3500),
            "the request was dropped {dropped_after:?} after the signal, not at the end of \
             the 2 s grace"
        );
        let status = service.exited_within(Duration::from_secs(15));
        let exited_after = signalled.elapsed();
        assert!(status.success(), "{status}");
        assert!(
            exited_after < Duration::from_millis(4000),
            "exited {exited_after:?} after the signal, for a grace of 2 s"
        );
        db.signal("CONT");
    }

    /// A `DELETE` whose client hung up is no request in progress, yet a SIGTERM lets its
    /// erasure end within the grace instead of cutting it off with the id held.
    #[tokio::test]
    async fn sigterm_lets_an_erasure_whose_client_hung_up_finish() {
        let db_name = format!("shutdown_{}", uuid::Uuid::new_v4().simple());
        let uri = crate::helpers::mongo_uri();
        // A settle of 3 s: the erasure below waits that long for appends in flight.
        let mut service = Service::start(&[
            ("DB_URI", uri.as_str()),
            ("DB_NAME", db_name.as_str()),
            ("DB_TIMEOUT_MS", "1000"),
            ("SHUTDOWN_GRACE_SECS", "10"),
        ]);
        let client = reqwest::Client::new();
        let url = |path: &str| format!("{}{path}", service.address);
        let created = client
            .post(url("/sessions"))
            .json(&json!({"sessionId": "leaving"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let event = json!({"eventId": "e1", "type": "system"});
        for expected in [201, 200] {
            // The replay takes a seq and stores nothing: the erasure then waits.
            let appended = client
                .post(url("/sessions/leaving/events"))
                .json(&event)
                .send()
                .await
                .unwrap();
            assert_eq!(appended.status(), expected);
        }
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let hung_up = impatient.delete(url("/sessions/leaving")).send().await;
        assert!(
            hung_up.as_ref().is_err_and(reqwest::Error::is_timeout),
            "the client did not hang up during the erasure: {hung_up:?}"
        );
        // Time for the server to see the hang-up and drop the request: after the signal, a
        // connection being shut down is no longer read, and its request would run on.
        tokio::time::sleep(Duration::from_secs(1)).await;
        service.signal("TERM");
        let waiting = service
            .wait_for(|l| l["fields"]["message"] == "waiting for erasures whose clients hung up");
        assert_eq!(waiting["fields"]["erasures"], 1);
        let status = service.exited_within(Duration::from_secs(15));
        assert!(status.success(), "{status}");
        let db = mongodb::Client::with_uri_str(&uri)
            .await
            .unwrap()
            .database(&db_name);
        for collection in ["sessions", "events"] {
            let left = db
                .collection::<mongodb::bson::Document>(collection)
                .count_documents(mongodb::bson::doc! {})
                .await
                .unwrap();
            assert_eq!(left, 0, "{collection} left behind by the erasure");
        }
    }
}
