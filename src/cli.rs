//! The command line: every setting as a flag that falls back to its environment variable.

use std::collections::HashMap;

use clap::Parser;

use crate::config::{Config, ConfigError};

/// Conversation Session Service: sessions and their immutable events over REST, stored in
/// MongoDB (DB_URI) or, without it, in memory.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Address to bind.
    #[arg(long, env = "HOST", value_name = "ADDR", default_value = "127.0.0.1")]
    host: String,
    /// Port to bind; 0 picks a free one.
    #[arg(long, env = "PORT", default_value = "3000")]
    port: String,
    /// MongoDB connection string; without it the in-memory store is used.
    #[arg(long, env = "DB_URI", value_name = "URI", hide_env_values = true)]
    db_uri: Option<String>,
    /// Database name; overrides the one in the URI (default: conversation).
    #[arg(long, env = "DB_NAME", value_name = "NAME")]
    db_name: Option<String>,
    /// Server selection, connect and per-operation time limit in milliseconds.
    #[arg(long, env = "DB_TIMEOUT_MS", value_name = "MS", default_value = "3000")]
    db_timeout_ms: String,
    /// Connections per MongoDB server (default: the driver's, 10).
    #[arg(long, env = "DB_MAX_POOL_SIZE", value_name = "N")]
    db_max_pool_size: Option<String>,
    /// Write concern: `majority` (default) or a number of members.
    #[arg(long, env = "DB_WRITE_CONCERN", value_name = "W")]
    db_write_concern: Option<String>,
    /// Whether acknowledged writes are journaled (default true).
    #[arg(long, env = "DB_JOURNAL", value_name = "BOOL")]
    db_journal: Option<String>,
    /// Whether the driver retries a failed write once (default true).
    #[arg(long, env = "DB_RETRY_WRITES", value_name = "BOOL")]
    db_retry_writes: Option<String>,
    /// Whether every command sent to the database is counted in `/metrics` (default false).
    #[arg(long, env = "DB_COMMAND_METRICS", value_name = "BOOL")]
    db_command_metrics: Option<String>,
    /// Largest request body in bytes.
    #[arg(
        long,
        env = "BODY_LIMIT_BYTES",
        value_name = "BYTES",
        default_value = "262144"
    )]
    body_limit_bytes: String,
    /// pretty or json.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "pretty"
    )]
    log_format: String,
    /// Bearer keys, separated by commas or newlines, or the path of a file holding them;
    /// unset leaves the API open.
    #[arg(
        long,
        env = "API_KEYS",
        value_name = "KEYS|FILE",
        hide_env_values = true
    )]
    api_keys: Option<String>,
    /// Erase closed sessions and their events this many days after they ended.
    #[arg(long, env = "RETENTION_DAYS", value_name = "DAYS")]
    retention_days: Option<String>,
    /// Seconds in-flight requests, and erasures whose client hung up, get to finish after
    /// SIGTERM or ctrl-c.
    #[arg(
        long,
        env = "SHUTDOWN_GRACE_SECS",
        value_name = "SECS",
        default_value = "10"
    )]
    shutdown_grace_secs: String,
    /// Seconds a connection has to deliver a request's headers.
    #[arg(
        long,
        env = "HEADER_READ_TIMEOUT_SECS",
        value_name = "SECS",
        default_value = "10"
    )]
    header_read_timeout_secs: String,
    /// Seconds a request body may pause between two pieces before 408.
    #[arg(
        long,
        env = "BODY_READ_TIMEOUT_SECS",
        value_name = "SECS",
        default_value = "10"
    )]
    body_read_timeout_secs: String,
    /// Open connections one instance accepts; more are closed at once.
    #[arg(
        long,
        env = "MAX_CONNECTIONS",
        value_name = "N",
        default_value = "10000"
    )]
    max_connections: String,
    /// Seconds between heartbeat comments on an idle live stream.
    #[arg(
        long,
        env = "SSE_HEARTBEAT_SECS",
        value_name = "SECS",
        default_value = "15"
    )]
    sse_heartbeat_secs: String,
    /// Live streams one instance serves at once.
    #[arg(
        long,
        env = "SSE_MAX_STREAMS",
        value_name = "N",
        default_value = "1000"
    )]
    sse_max_streams: String,
    /// Milliseconds a live stream waits at a gap in seq, and after a close, for an append
    /// still in flight.
    #[arg(
        long,
        env = "SSE_GAP_WAIT_MS",
        value_name = "MS",
        default_value = "500"
    )]
    sse_gap_wait_ms: String,
}

impl Cli {
    /// Validates the settings into a [`Config`], by the same rules as the environment.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let settings: HashMap<&str, Option<String>> = HashMap::from([
            ("HOST", Some(self.host)),
            ("PORT", Some(self.port)),
            ("DB_URI", self.db_uri),
            ("DB_NAME", self.db_name),
            ("DB_TIMEOUT_MS", Some(self.db_timeout_ms)),
            ("DB_MAX_POOL_SIZE", self.db_max_pool_size),
            ("DB_WRITE_CONCERN", self.db_write_concern),
            ("DB_JOURNAL", self.db_journal),
            ("DB_RETRY_WRITES", self.db_retry_writes),
            ("DB_COMMAND_METRICS", self.db_command_metrics),
            ("BODY_LIMIT_BYTES", Some(self.body_limit_bytes)),
            ("LOG_FORMAT", Some(self.log_format)),
            ("API_KEYS", self.api_keys),
            ("RETENTION_DAYS", self.retention_days),
            ("SHUTDOWN_GRACE_SECS", Some(self.shutdown_grace_secs)),
            (
                "HEADER_READ_TIMEOUT_SECS",
                Some(self.header_read_timeout_secs),
            ),
            ("BODY_READ_TIMEOUT_SECS", Some(self.body_read_timeout_secs)),
            ("MAX_CONNECTIONS", Some(self.max_connections)),
            ("SSE_HEARTBEAT_SECS", Some(self.sse_heartbeat_secs)),
            ("SSE_MAX_STREAMS", Some(self.sse_max_streams)),
            ("SSE_GAP_WAIT_MS", Some(self.sse_gap_wait_ms)),
        ]);
        Config::from_lookup(|name| settings.get(name).cloned().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_settings() {
        let cli = Cli::try_parse_from([
            "svc",
            "--port",
            "4000",
            "--db-uri",
            "mongodb://db",
            "--log-format",
            "json",
        ])
        .unwrap();
        let config = cli.into_config().unwrap();
        assert_eq!(config.port, 4000);
        assert_eq!(config.mongo.unwrap().uri, "mongodb://db");
        assert_eq!(config.log_format, crate::config::LogFormat::Json);
    }

    #[test]
    fn bad_flag_values_are_reported_by_setting() {
        let cli = Cli::try_parse_from(["svc", "--port", "web"]).unwrap();
        assert!(cli
            .into_config()
            .unwrap_err()
            .to_string()
            .starts_with("PORT"));
    }
}
