//! Typed configuration from the environment (and `.env`, loaded by `main`).

use std::time::Duration;

use crate::store::mongo::{MongoConfig, WriteAcknowledgment};

const DEFAULT_PORT: u16 = 3000;
const DEFAULT_BODY_LIMIT: u64 = 256 * 1024;
const DEFAULT_DB_TIMEOUT_MS: u64 = 3000;
const DEFAULT_SSE_HEARTBEAT_SECS: u64 = 15;
const DEFAULT_SSE_MAX_STREAMS: u64 = 1000;
const DEFAULT_SSE_GAP_WAIT_MS: u64 = 500;
const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
const DEFAULT_BODY_READ_TIMEOUT_SECS: u64 = 10;
const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
/// The longest time setting taken, in seconds: a day. Far larger ones overflow the clock
/// arithmetic of the HTTP server and the timers.
const MAX_SECS: u64 = 86_400;
/// MongoDB keeps a TTL index's `expireAfterSeconds` in 32 bits: 2,147,483,647 s is 24,855
/// days and a few hours.
const MAX_RETENTION_DAYS: u64 = i32::MAX as u64 / 86_400;
/// MongoDB's limit on a database name's length, in bytes, and the characters it refuses in
/// one (on Linux; Windows refuses more).
const MAX_DB_NAME_BYTES: usize = 63;
const DB_NAME_REFUSED: [char; 7] = ['/', '\\', '.', ' ', '"', '$', '\0'];

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable, for development.
    #[default]
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Everything the service reads at startup.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    /// 0 picks a free port (tests do).
    pub port: u16,
    /// `None` runs the in-memory store.
    pub mongo: Option<MongoConfig>,
    pub body_limit_bytes: usize,
    pub log_format: LogFormat,
    /// How often an idle live stream sends a comment so that proxies keep it open.
    pub sse_heartbeat: Duration,
    /// Live streams one instance serves at once; more get 503.
    pub sse_max_streams: usize,
    /// How long a live stream waits at a gap in seq that an append in flight may still
    /// fill, and after a close, before it moves on.
    pub sse_gap_wait: Duration,
    /// Bearer keys that open the API; `None` leaves it open to anyone who can reach it.
    pub api_keys: Option<Vec<String>>,
    /// Closed sessions, with their events, are erased this long after they ended
    /// (`RETENTION_DAYS`); `None` keeps everything.
    pub retention: Option<Duration>,
    /// How long in-flight requests may take to finish after a stop signal.
    pub shutdown_grace: Duration,
    /// A connection must deliver a request's headers within this; else it is closed.
    pub header_read_timeout: Duration,
    /// A request body may pause this long between two pieces; else 408.
    pub body_read_timeout: Duration,
    /// Open connections one instance accepts; more are closed at once.
    pub max_connections: usize,
    /// How long after a session's last write an erasure deletes its events once more, for
    /// appends that reserved a seq before the erasure and may still be inserting: the time
    /// one store call may take (`DB_TIMEOUT_MS` plus one second), plus a second for clocks.
    /// Zero for the in-memory store, where no append outlives an erasure.
    pub erase_settle: Duration,
}

/// A setting that is present but unusable.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {message}")]
pub struct ConfigError {
    name: &'static str,
    message: String,
}

impl Config {
    /// Reads settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        // Spaces around a value are not part of it.
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        // A number from `min` to `max`, the default when unset.
        let number = |name: &'static str, default: u64, min: u64, max: u64| {
            within(parse_or(name, get(name), default)?, min..=max, name)
        };
        let secs = |name, default| number(name, default, 1, MAX_SECS).map(Duration::from_secs);
        let millis =
            |name, default| number(name, default, 1, MAX_SECS * 1000).map(Duration::from_millis);
        // Counts past what a semaphore holds mean "no limit", which the semaphore caps.
        let count = |name, default| {
            number(name, default, 1, u64::MAX).map(|n| {
                usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(tokio::sync::Semaphore::MAX_PERMITS)
            })
        };
        // Driver settings held in 32 bits, where zero would mean "fail at once" to some and
        // "no limit" to others.
        let driver_count = |name| {
            number(name, 0, 1, u64::from(u32::MAX)).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
        };
        let mongo = match get("DB_URI") {
            None => None,
            Some(uri) => Some(MongoConfig {
                uri: connection_string(uri)?,
                db_name: get("DB_NAME")
                    .map(|name| db_name(name, "DB_NAME"))
                    .transpose()?,
                timeout: millis("DB_TIMEOUT_MS", DEFAULT_DB_TIMEOUT_MS)?,
                max_pool_size: get("DB_MAX_POOL_SIZE")
                    .map(|_| driver_count("DB_MAX_POOL_SIZE"))
                    .transpose()?,
                write_acknowledgment: match get("DB_WRITE_CONCERN").as_deref() {
                    None | Some("majority") => WriteAcknowledgment::Majority,
                    Some(_) => WriteAcknowledgment::Nodes(driver_count("DB_WRITE_CONCERN")?),
                },
                journal: flag("DB_JOURNAL", get("DB_JOURNAL"), true)?,
                retry_writes: flag("DB_RETRY_WRITES", get("DB_RETRY_WRITES"), true)?,
                command_metrics: flag("DB_COMMAND_METRICS", get("DB_COMMAND_METRICS"), false)?,
            }),
        };
        let settle = erase_settle(mongo.as_ref());
        let log_format = match get("LOG_FORMAT").as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError {
                    name: "LOG_FORMAT",
                    message: format!("{other:?} is neither \"pretty\" nor \"json\""),
                })
            }
        };
        Ok(Self {
            host: get("HOST").unwrap_or_else(|| "127.0.0.1".to_owned()),
            port: number("PORT", DEFAULT_PORT.into(), 0, u16::MAX.into())
                .map(|n| u16::try_from(n).unwrap_or(u16::MAX))?,
            mongo,
            body_limit_bytes: number("BODY_LIMIT_BYTES", DEFAULT_BODY_LIMIT, 1, u64::MAX)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))?,
            log_format,
            sse_heartbeat: secs("SSE_HEARTBEAT_SECS", DEFAULT_SSE_HEARTBEAT_SECS)?,
            sse_max_streams: count("SSE_MAX_STREAMS", DEFAULT_SSE_MAX_STREAMS)?,
            sse_gap_wait: millis("SSE_GAP_WAIT_MS", DEFAULT_SSE_GAP_WAIT_MS)?,
            api_keys: get("API_KEYS").map(|raw| api_keys(&raw)).transpose()?,
            retention: get("RETENTION_DAYS")
                .map(|_| number("RETENTION_DAYS", 0, 1, MAX_RETENTION_DAYS))
                .transpose()?
                .map(|days| Duration::from_secs(days * 86_400)),
            shutdown_grace: number(
                "SHUTDOWN_GRACE_SECS",
                DEFAULT_SHUTDOWN_GRACE_SECS,
                0,
                MAX_SECS,
            )
            .map(Duration::from_secs)?,
            header_read_timeout: secs(
                "HEADER_READ_TIMEOUT_SECS",
                DEFAULT_HEADER_READ_TIMEOUT_SECS,
            )?,
            body_read_timeout: secs("BODY_READ_TIMEOUT_SECS", DEFAULT_BODY_READ_TIMEOUT_SECS)?,
            max_connections: count("MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS)?,
            erase_settle: settle,
        })
    }
}

fn flag(name: &'static str, raw: Option<String>, default: bool) -> Result<bool, ConfigError> {
    match raw.as_deref().map(str::trim) {
        None => Ok(default),
        Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(other) => Err(ConfigError {
            name,
            message: format!("{other:?} is neither true nor false"),
        }),
    }
}

/// Keys separated by commas (or newlines), or the path of an existing file that holds them.
fn api_keys(raw: &str) -> Result<Vec<String>, ConfigError> {
    let path = std::path::Path::new(raw.trim());
    let text = if path.is_dir() {
        return Err(ConfigError {
            name: "API_KEYS",
            message: format!("names {}, a directory, not a key file", path.display()),
        });
    } else if path.is_file() {
        std::fs::read_to_string(path).map_err(|e| ConfigError {
            name: "API_KEYS",
            message: format!("cannot read the key file {}: {e}", path.display()),
        })?
    } else if names_a_missing_file(path) {
        // Taken as a key, a mistyped path would guard the API with a guessable key.
        return Err(ConfigError {
            name: "API_KEYS",
            message: format!(
                "names the key file {}, which is not there{}",
                path.display(),
                if raw.trim().starts_with("~/") {
                    " (a leading ~ is not expanded: give the whole path)"
                } else {
                    ""
                }
            ),
        });
    } else {
        raw.to_owned()
    };
    let keys: Vec<String> = text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    let usable =
        |k: &String| (16..=256).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic());
    match keys.iter().find(|k| !usable(k)) {
        _ if keys.is_empty() => Err(ConfigError {
            name: "API_KEYS",
            message: "holds no key".to_owned(),
        }),
        Some(_) => Err(ConfigError {
            name: "API_KEYS",
            message: "every key must be 16 to 256 visible ASCII characters".to_owned(),
        }),
        None => Ok(keys),
    }
}

/// See [`Config::erase_settle`]. At most a sixth of the erase lease (10 s): an erasure may
/// wait for another for 5 s more than this, and then for its own appends in flight, and must
/// still send its last `deleteMany` within half the lease.
fn erase_settle(mongo: Option<&MongoConfig>) -> Duration {
    mongo.map_or(Duration::ZERO, |m| {
        (m.timeout + Duration::from_secs(2)).min(crate::store::ERASE_LEASE / 6)
    })
}

/// A value that reads as a key file's path: one starting `./`, `../` or `~/` (no hex or
/// base64 key does), or an absolute path of two or more parts whose top directory exists
/// (`/run/secrets/keys` where `/run` does), though the file, or a directory on the way
/// to it, is missing. Taken as a key, a mistyped or unmounted path would guard the API
/// with a guessable key.
fn names_a_missing_file(path: &std::path::Path) -> bool {
    use std::path::Component;
    let text = path.to_string_lossy();
    if text.contains(',') {
        return false;
    }
    if ["./", "../", "~/"].iter().any(|p| text.starts_with(p)) {
        return true;
    }
    match path.components().collect::<Vec<_>>().as_slice() {
        [Component::RootDir, Component::Normal(top), _, ..] => {
            std::path::Path::new("/").join(top).is_dir()
        }
        _ => false,
    }
}

fn within(
    value: u64,
    range: std::ops::RangeInclusive<u64>,
    name: &'static str,
) -> Result<u64, ConfigError> {
    let message = if value < *range.start() {
        format!("must be at least {}", range.start())
    } else if value > *range.end() {
        format!("must be at most {}", range.end())
    } else {
        return Ok(value);
    };
    Err(ConfigError { name, message })
}

/// Checked for its form here, with the database it names, so that a malformed one stops
/// startup as a setting; whether its hosts answer is learnt when connecting.
fn connection_string(uri: String) -> Result<String, ConfigError> {
    let message = match mongodb::options::ConnectionString::parse(&uri) {
        Ok(parsed) => match parsed.default_database {
            Some(name) => return db_name(name, "DB_URI").map(|_| uri),
            None => return Ok(uri),
        },
        Err(e) => match *e.kind {
            mongodb::error::ErrorKind::InvalidArgument { message, .. } => message,
            other => other.to_string(),
        },
    };
    // The driver's message may quote a part of the URI, and a password holding `?` or `/`
    // is read as a host or a path: a message showing any piece of the user name or
    // password is not passed on.
    let credentials = uri
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .map(|(credentials, _)| credentials);
    let shows_credentials = credentials.is_some_and(|credentials| {
        credentials
            .split([':', '?', '/', '#', '&', '=', ','])
            .any(|piece| !piece.is_empty() && message.contains(piece))
    });
    Err(ConfigError {
        name: "DB_URI",
        message: if shows_credentials {
            "is malformed; percent-encode the characters : / ? # [ ] @ in the user name and \
             password"
                .to_owned()
        } else {
            message
        },
    })
}

/// `setting`: where the name came from.
fn db_name(name: String, setting: &'static str) -> Result<String, ConfigError> {
    let refused = name.chars().find(|c| DB_NAME_REFUSED.contains(c));
    let message = if let Some(c) = refused {
        format!("a database name cannot hold {c:?}")
    } else if name.len() > MAX_DB_NAME_BYTES {
        format!("a database name is at most {MAX_DB_NAME_BYTES} bytes long")
    } else {
        return Ok(name);
    };
    Err(ConfigError {
        name: setting,
        message,
    })
}

fn parse_or<T: std::str::FromStr>(
    name: &'static str,
    raw: Option<String>,
    default: T,
) -> Result<T, ConfigError> {
    match raw {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|_| ConfigError {
            name,
            message: format!("{raw:?} is not a valid number"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_to_the_in_memory_store_on_port_3000() {
        let c = config(&[]).unwrap();
        assert!(c.mongo.is_none());
        assert_eq!((c.port, c.body_limit_bytes), (3000, 256 * 1024));
        assert_eq!(c.log_format, LogFormat::Pretty);
    }

    #[test]
    fn reads_the_database_settings() {
        let c = config(&[("DB_URI", "mongodb://db:27017/x"), ("DB_TIMEOUT_MS", "500")]).unwrap();
        let mongo = c.mongo.unwrap();
        assert_eq!(mongo.uri, "mongodb://db:27017/x");
        assert_eq!(mongo.timeout, Duration::from_millis(500));
        assert_eq!(mongo.db_name, None);
        assert_eq!(mongo.write_acknowledgment, WriteAcknowledgment::Majority);
        assert!(mongo.journal && mongo.retry_writes && !mongo.command_metrics);
        let relaxed = config(&[
            ("DB_URI", "mongodb://db"),
            ("DB_WRITE_CONCERN", "1"),
            ("DB_MAX_POOL_SIZE", "32"),
            ("DB_JOURNAL", "false"),
            ("DB_RETRY_WRITES", "no"),
            ("DB_COMMAND_METRICS", "true"),
        ])
        .unwrap()
        .mongo
        .unwrap();
        assert_eq!(relaxed.write_acknowledgment, WriteAcknowledgment::Nodes(1));
        assert_eq!(relaxed.max_pool_size, Some(32));
        assert!(!relaxed.journal && !relaxed.retry_writes && relaxed.command_metrics);
        assert!(config(&[("DB_URI", "mongodb://db"), ("DB_JOURNAL", "maybe")]).is_err());
        assert!(config(&[("DB_URI", "mongodb://db"), ("DB_WRITE_CONCERN", "0")]).is_err());
        assert!(config(&[("DB_URI", "mongodb://db"), ("DB_MAX_POOL_SIZE", "0")]).is_err());
    }

    #[test]
    fn reads_api_keys_from_the_value_or_a_file() {
        let c = config(&[("API_KEYS", "key-one-0123456789, key-two-0123456789")]).unwrap();
        assert_eq!(
            c.api_keys.unwrap(),
            ["key-one-0123456789", "key-two-0123456789"]
        );
        let file = std::env::temp_dir().join(format!("keys-{}", std::process::id()));
        std::fs::write(&file, "file-key-0123456789\n\nsecond-key-0123456789\n").unwrap();
        let c = config(&[("API_KEYS", file.to_str().unwrap())]).unwrap();
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            c.api_keys.unwrap(),
            ["file-key-0123456789", "second-key-0123456789"]
        );
        assert!(config(&[]).unwrap().api_keys.is_none());
        for bad in ["short", ",", "has space in the key 0123"] {
            assert!(config(&[("API_KEYS", bad)]).is_err(), "{bad:?}");
        }
        let missing = std::env::temp_dir().join(format!("no-keys-{}", std::process::id()));
        let err = config(&[("API_KEYS", missing.to_str().unwrap())]).unwrap_err();
        assert!(err.to_string().contains("which is not there"), "{err}");
        // A path whose directory is missing too (a secret not mounted), or a relative one.
        let unmounted = std::env::temp_dir().join(format!("no-dir-{}/keys", std::process::id()));
        for path in [
            unmounted.to_str().unwrap(),
            "./api-keys.txt",
            "../keys/api-keys",
        ] {
            let err = config(&[("API_KEYS", path)]).unwrap_err();
            assert!(
                err.to_string().contains("which is not there"),
                "{path}: {err}"
            );
        }
        // A key may start with a slash (base64 does): only a path into a directory is one.
        let key = "/q9Xy+Zk/2mWc0B7vLp4R";
        assert_eq!(
            config(&[("API_KEYS", key)]).unwrap().api_keys.unwrap(),
            [key]
        );
    }

    /// An erasure waits for appends in flight as long as one store call may take, plus a
    /// second for clocks; never in memory, and never more than 10 s.
    #[test]
    fn the_erase_settle_follows_the_database_timeout() {
        let settle = |pairs: &[(&str, &str)]| config(pairs).unwrap().erase_settle;
        assert_eq!(settle(&[]), Duration::ZERO);
        let uri = ("DB_URI", "mongodb://db:27017/x");
        assert_eq!(settle(&[uri]), Duration::from_secs(5));
        assert_eq!(
            settle(&[uri, ("DB_TIMEOUT_MS", "500")]),
            Duration::from_millis(2500)
        );
        assert_eq!(
            settle(&[uri, ("DB_TIMEOUT_MS", "60000")]),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn rejects_unusable_values_by_name() {
        for (name, value) in [
            ("PORT", "http"),
            ("BODY_LIMIT_BYTES", "-1"),
            ("BODY_LIMIT_BYTES", "0"),
            ("LOG_FORMAT", "xml"),
            // Past a day, times overflowed the server's clock arithmetic: a panic per
            // connection or stream instead of an error at startup.
            ("HEADER_READ_TIMEOUT_SECS", "9300000000000000000"),
            ("BODY_READ_TIMEOUT_SECS", "86401"),
            ("SSE_HEARTBEAT_SECS", "18446744073709551615"),
            ("SSE_GAP_WAIT_MS", "86400001"),
            ("SHUTDOWN_GRACE_SECS", "86401"),
            ("RETENTION_DAYS", "24856"),
            ("API_KEYS", "/tmp"),
        ] {
            let err = config(&[(name, value)]).unwrap_err();
            assert!(err.to_string().starts_with(name), "{err}");
        }
        let err = config(&[("PORT", "70000")]).unwrap_err();
        assert!(err.to_string().ends_with("must be at most 65535"), "{err}");
        // Spaces around a value are not part of it, for words as for numbers.
        let spaced = config(&[
            ("HOST", " 0.0.0.0 "),
            ("LOG_FORMAT", " json"),
            ("PORT", "80 "),
        ]);
        let spaced = spaced.unwrap();
        assert_eq!(
            (spaced.host.as_str(), spaced.log_format, spaced.port),
            ("0.0.0.0", LogFormat::Json, 80)
        );
        let uri = ("DB_URI", "mongodb://db");
        for (name, value) in [
            ("DB_URI", "not-a-uri"),
            ("DB_URI", "http://db:27017"),
            ("DB_URI", "mongodb://db:99999"),
            ("DB_URI", "mongodb://db/?w=majority&w"),
            ("DB_NAME", "a.b"),
            ("DB_NAME", "has space"),
            ("DB_NAME", &"n".repeat(64)),
            ("DB_TIMEOUT_MS", "86400001"),
        ] {
            let setting = if name == "DB_URI" {
                [(name, value), ("PORT", "1")]
            } else {
                [uri, (name, value)]
            };
            let err = config(&setting).unwrap_err();
            assert!(err.to_string().starts_with(name), "{err}");
        }
        let longest = config(&[
            uri,
            ("DB_NAME", &"n".repeat(63)),
            ("RETENTION_DAYS", "24855"),
            ("HEADER_READ_TIMEOUT_SECS", "86400"),
            ("SHUTDOWN_GRACE_SECS", "0"),
        ])
        .unwrap();
        assert_eq!(
            longest.retention,
            Some(Duration::from_secs(24_855 * 86_400))
        );
        assert_eq!(longest.header_read_timeout, Duration::from_secs(86_400));
    }

    #[test]
    fn a_malformed_connection_string_is_reported_without_its_password() {
        // A `?` ends the hosts for the driver, so it reads `admin:Sup3r` as a host and port.
        for uri in [
            "mongodb://admin:Sup3r?S3cret@db:27017/x",
            "mongodb://admin:Sup3r/S3cret@db:27017/x",
            "mongodb://admin:Sup3rS3cret@db:99999/x",
        ] {
            let err = config(&[("DB_URI", uri)]).unwrap_err().to_string();
            assert!(err.starts_with("DB_URI"), "{err}");
            for piece in ["admin", "Sup3r", "S3cret"] {
                assert!(!err.contains(piece), "{err}");
            }
        }
        // Without credentials the driver's message is passed on.
        let err = config(&[("DB_URI", "mongodb://db:99999/x")]).unwrap_err();
        assert!(err.to_string().contains("99999"), "{err}");
        // The database in the URI's path is checked as DB_NAME is.
        let err = config(&[("DB_URI", "mongodb://db/a.b")]).unwrap_err();
        assert!(err.to_string().starts_with("DB_URI"), "{err}");
    }
}
