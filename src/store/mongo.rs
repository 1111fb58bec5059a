//! The MongoDB store over the official driver.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::raw::RawBsonRef;
use mongodb::bson::{doc, Bson, DateTime as BsonDateTime, Document, RawDocument, RawDocumentBuf};
use mongodb::error::{Error as MongoError, ErrorKind, InsertManyError, WriteFailure};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, ReadConcern, ReadConcernLevel,
    ReadPreference, ReturnDocument, SelectionCriteria, WriteConcern,
};
use mongodb::{Client, Collection, Cursor, IndexModel};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::bson_json::{object_to_raw, raw_to_object};
use super::{
    CreateOutcome, DurableEvents, EraseHold, EraseStart, EventFilter, EventPageQuery,
    EventRepository, Inserted, LastWrite, PageStart, Reservation, SessionPageQuery,
    SessionRepository, StoreError, ERASE_LEASE,
};
use crate::domain::{
    Event, EventId, EventType, FinalStatus, JsonObject, Language, NewSession, Order, Session,
    SessionId, SessionStatus, Timestamp,
};
use crate::feed::{stopped, SessionFeed};
use crate::metrics::Metrics;

const DEFAULT_DB_NAME: &str = "conversation";
/// How often live streams are woken when no change stream tells them of changes.
const POLL_TICK: Duration = Duration::from_millis(500);
/// How long to poll before trying to open change streams again.
const CHANGE_STREAM_RETRY: Duration = Duration::from_secs(30);
/// How long change streams stay open after the last live stream on this instance ended,
/// so that a client reconnecting right away finds them open.
const IDLE_LINGER: Duration = Duration::from_secs(30);
const DUPLICATE_KEY: i32 = 11000;
const INDEX_NOT_FOUND: i32 = 27;
const INDEX_OPTIONS_CONFLICT: i32 = 85;
const SEQ_INDEX: &str = "session_seq";
const EVENT_ID_INDEX: &str = "session_event_id";

/// Server error codes that mean "not now" rather than "never": elections, shutdowns,
/// network trouble and operations that ran out of time. 64 is a write concern that timed
/// out (`wtimeoutMS`); 133 and 202 are what mongos answers while a shard cannot be reached
/// or is slow; 134 is a `majority` read before the member has a majority-committed
/// snapshot; 43 and 237 are a page's cursor lost between its `find` and a `getMore` (the
/// member or mongos restarted, or an operator killed the cursor or its session), which a
/// new request opens afresh.
const TRANSIENT_CODES: &[i32] = &[
    6, 7, 43, 50, 64, 89, 91, 133, 134, 189, 202, 237, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

/// How to reach MongoDB.
#[derive(Debug, Clone)]
pub struct MongoConfig {
    pub uri: String,
    /// Overrides the database named in the URI.
    pub db_name: Option<String>,
    /// Bounds server selection, connecting and each operation, so an unreachable database
    /// turns into a fast `unavailable` rather than a hung request.
    pub timeout: Duration,
    pub max_pool_size: Option<u32>,
    /// How many members must have a write before it is acknowledged.
    pub write_acknowledgment: WriteAcknowledgment,
    /// Whether an acknowledged write is in the on-disk journal.
    pub journal: bool,
    /// Whether the driver retries a write once after a network error or an election.
    pub retry_writes: bool,
    /// Whether the driver's command monitoring counts every command in the metrics. It
    /// turns each command and reply into a document once more: 15% to 30% of the
    /// service's CPU per request (see BENCHMARKS.md), so it is off unless asked for.
    pub command_metrics: bool,
}

/// The `w` of the write concern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteAcknowledgment {
    /// A majority of the replica set: survives the loss of the primary.
    Majority,
    /// This many members (1: the primary alone).
    Nodes(u32),
}

impl MongoConfig {
    /// A connection with the defaults: majority and journaled writes, retried once, no
    /// command monitoring.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            db_name: None,
            timeout: Duration::from_secs(3),
            max_pool_size: None,
            write_acknowledgment: WriteAcknowledgment::Majority,
            journal: true,
            retry_writes: true,
            command_metrics: false,
        }
    }
}

/// Sessions and events in MongoDB.
pub struct MongoStore {
    client: Client,
    sessions: Collection<SessionDoc>,
    /// Events are written and read as raw BSON (`event_to_raw`, `event_from_raw`): the
    /// hottest paths, where serde's way through `Document`s cost a fifth of a page's CPU.
    events: Collection<RawDocumentBuf>,
    /// The events as a replay reads them ([`EventRepository::get_durable`]): with read
    /// concern `majority` when writes wait for a majority, else `local`.
    durable_events: Collection<RawDocumentBuf>,
    /// The events with read concern `local`, to tell a write still replicating from none,
    /// whatever read concern `DB_URI` names. Only when durable reads are `majority`: else
    /// they see every write already.
    latest_events: Option<Collection<RawDocumentBuf>>,
    timeout: Duration,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionDoc {
    #[serde(rename = "_id")]
    id: String,
    status: SessionStatus,
    language: Option<String>,
    metadata: RawDocumentBuf,
    started_at: BsonDateTime,
    /// The session's clock: advanced by every append and by the close, never moved back.
    /// A closed session ended at this instant.
    updated_at: BsonDateTime,
    last_seq: i64,
    /// Written once by the create that inserted the document; tells that create apart from
    /// every retry that found it.
    #[serde(default)]
    create_token: Option<String>,
    /// Set while the session is being erased (`begin_erase`): it reads as missing, and its
    /// id cannot be created again until its events are gone.
    #[serde(default)]
    erasing: bool,
    /// Set only on the stand-in that an erasure of an id with no session inserts.
    #[serde(default)]
    stand_in: bool,
    /// The hold of the erasure that marked the document, and when it took it.
    #[serde(default)]
    erase_lease: Option<String>,
    #[serde(default)]
    erase_since: Option<BsonDateTime>,
}

/// What an append needs back from the session: its new seq and clock.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReservationDoc {
    updated_at: BsonDateTime,
    last_seq: i64,
}

impl MongoStore {
    /// Builds the client and creates the indexes. Fails when the database cannot be reached
    /// within the configured timeout.
    pub async fn connect(config: &MongoConfig) -> Result<Self, StoreError> {
        Self::connect_observed(config, None).await
    }

    /// As [`Self::connect`], counting every command sent to the database (the driver's
    /// command monitoring) into `metrics`.
    pub async fn connect_observed(
        config: &MongoConfig,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(&config.uri)
            .await
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        if let Some(metrics) = metrics {
            options.command_event_handler = Some(EventHandler::callback(move |event| {
                if let CommandEvent::Started(started) = event {
                    metrics.store_command(&started.command_name);
                }
            }));
        }
        apply_settings(&mut options, config);
        let db_name = config
            .db_name
            .clone()
            .or_else(|| options.default_database.clone())
            .unwrap_or_else(|| DEFAULT_DB_NAME.to_owned());
        let client = Client::with_options(options).map_err(classify)?;
        let store = Self::with_client(client, &db_name, config);
        store.ensure_indexes().await?;
        Ok(store)
    }

    /// The store's collection handles over `client`. Sends no command.
    fn with_client(client: Client, db_name: &str, config: &MongoConfig) -> Self {
        let db = client.database(db_name);
        let events_with = |concern: ReadConcern| {
            let options = CollectionOptions::builder().read_concern(concern).build();
            db.collection_with_options("events", options)
        };
        let majority = config.write_acknowledgment == WriteAcknowledgment::Majority;
        Self {
            sessions: db.collection("sessions"),
            events: db.collection("events"),
            durable_events: events_with(match majority {
                true => ReadConcern::majority(),
                false => ReadConcern::local(),
            }),
            latest_events: majority.then(|| events_with(ReadConcern::local())),
            client,
            timeout: config.timeout,
        }
    }

    /// The stored events of `session` among `ids`, read through `events`: one `find`.
    async fn find_ids(
        &self,
        events: &Collection<RawDocumentBuf>,
        session: &SessionId,
        ids: &[EventId],
    ) -> Result<Vec<Event>, StoreError> {
        let ids: Vec<&str> = ids.iter().map(EventId::as_str).collect();
        let most = ids.len().max(1);
        let cursor = events
            .find(doc! {"sessionId": session.as_str(), "eventId": {"$in": &ids}})
            .projection(doc! {"_id": 0})
            // All in the first reply, and the cursor closed with it: one round trip,
            // whatever the number of ids, unless the events outgrow a reply (16 MiB).
            // Without the limit, a reply of `batchSize` events leaves the cursor open, and
            // reading to its end costs a `getMore`.
            // The unique (sessionId, eventId) index holds at most one event per id.
            .limit(i64::try_from(most).unwrap_or(i64::MAX))
            .batch_size(u32::try_from(most).unwrap_or(u32::MAX))
            .max_time(self.timeout)
            .await
            .map_err(classify)?;
        collect_events(cursor).await
    }

    /// Creates the indexes the guarantees rest on. Creating an existing index with the same
    /// definition is a no-op, so every instance does this at startup.
    async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let index = |keys: Document, name: &str, unique: bool| {
            IndexModel::builder()
                .keys(keys)
                .options(
                    IndexOptions::builder()
                        .name(name.to_owned())
                        .unique(unique)
                        .build(),
                )
                .build()
        };
        self.events
            .create_indexes([
                index(doc! {"sessionId": 1, "eventId": 1}, EVENT_ID_INDEX, true),
                index(doc! {"sessionId": 1, "seq": 1}, SEQ_INDEX, true),
                index(
                    doc! {"sessionId": 1, "timestamp": 1, "seq": 1},
                    "session_timeline",
                    false,
                ),
            ])
            .await
            .map_err(classify)?;
        self.sessions
            .create_indexes([
                index(
                    doc! {"startedAt": -1, "_id": -1},
                    "sessions_by_start",
                    false,
                ),
                index(
                    doc! {"status": 1, "startedAt": -1, "_id": -1},
                    "sessions_by_status",
                    false,
                ),
                index(
                    doc! {"language": 1, "startedAt": -1, "_id": -1},
                    "sessions_by_language",
                    false,
                ),
                index(doc! {"metadata.$**": 1}, "sessions_by_metadata", false),
            ])
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// One upsert of the session document `id`, and the document it leaves: the one the
    /// server returns, else the one read back. `None` when that read finds no document (an
    /// erasure took it meanwhile): the caller tries again.
    async fn upsert_session(
        &self,
        id: &SessionId,
        filter: Document,
        update: Document,
    ) -> Result<Option<SessionDoc>, StoreError> {
        let upserted = self
            .sessions
            .find_one_and_update(filter, update)
            .upsert(true)
            .return_document(ReturnDocument::After)
            .max_time(self.timeout)
            .await;
        match upserted {
            Ok(Some(doc)) => Ok(Some(doc)),
            // MongoDB always returns the document of an upsert asked for "after"; a server
            // that answers nothing under a race is read back instead. A duplicate key means
            // the filter did not match the document that holds the id (a racing create
            // inserted it, or an erasure holds it): that document is read too.
            Ok(None) => self.find_session(id).await,
            Err(e) if is_duplicate_key(&e) => self.find_session(id).await,
            Err(e) => Err(classify(e)),
        }
    }

    /// The session document, also one being erased.
    async fn find_session(&self, id: &SessionId) -> Result<Option<SessionDoc>, StoreError> {
        self.sessions
            .find_one(doc! {"_id": id.as_str()})
            .max_time(self.timeout)
            .await
            .map_err(classify)
    }

    /// Tells `feed` about appends and closes made by any instance, until `stop` turns true.
    ///
    /// Uses change streams where the deployment has them (replica sets, sharded clusters,
    /// Atlas). Where it has not (a standalone mongod), or while a change stream cannot be
    /// opened, it wakes every stream on a short tick instead, so that they read the store.
    ///
    /// A change stream costs the database a message for every insert, so this follows only
    /// while a live stream listens on this instance, and for `IDLE_LINGER` after the last.
    pub async fn follow_changes(
        self: Arc<Self>,
        feed: Arc<SessionFeed>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                () = feed.until_watched() => {}
                () = stopped(&mut stop) => return,
            }
            let followed = tokio::select! {
                followed = self.follow_change_streams(&feed) => Some(followed),
                // Dropping the change streams closes their cursors.
                () = feed.until_unwatched_for(IDLE_LINGER) => None,
                () = stopped(&mut stop) => return,
            };
            feed.set_change_streams(false);
            // Nobody listens any more: wait for the next stream, not for a retry.
            let Some(followed) = followed else { continue };
            if let Err(e) = followed {
                tracing::warn!(
                    error = %e,
                    "change streams unavailable; live streams poll every {} ms",
                    POLL_TICK.as_millis()
                );
            }
            let polling = async {
                let mut tick = tokio::time::interval(POLL_TICK);
                loop {
                    tick.tick().await;
                    feed.everything_changed();
                }
            };
            tokio::select! {
                () = polling => {}
                () = tokio::time::sleep(CHANGE_STREAM_RETRY) => {}
                () = stopped(&mut stop) => return,
            }
        }
    }

    /// Forwards inserted events and closed sessions to `feed` until a change stream fails.
    async fn follow_change_streams(&self, feed: &SessionFeed) -> Result<(), MongoError> {
        let mut inserts = self
            .events
            .clone_with_type::<Document>()
            .watch()
            .pipeline([
                doc! {"$match": {"operationType": "insert"}},
                // Only what the feed needs: the payload stays on the server.
                doc! {"$project": {"operationType": 1, "ns": 1, "documentKey": 1, "fullDocument.sessionId": 1}},
            ])
            .await?;
        let mut closes = self
            .sessions
            .clone_with_type::<Document>()
            .watch()
            .pipeline([doc! {"$match": {"$or": [
                {
                    "operationType": "update",
                    "updateDescription.updatedFields.status": {"$in": ["completed", "failed"]},
                },
                // An erased session ends its streams on every instance too.
                {"operationType": "delete"},
            ]}}])
            .await?;
        // Whatever happened while no stream was open is read by the woken streams.
        feed.set_change_streams(true);
        feed.everything_changed();
        loop {
            let changed = tokio::select! {
                change = inserts.next() => change.map(|c| c.map(|c| {
                    let id = c.full_document.as_ref().and_then(|d| d.get_str("sessionId").ok().map(str::to_owned));
                    (id, false)
                })),
                change = closes.next() => change.map(|c| c.map(|c| {
                    let id = c.document_key.as_ref().and_then(|d| d.get_str("_id").ok().map(str::to_owned));
                    (id, true)
                })),
            };
            let (id, closed) = match changed {
                Some(Ok(change)) => change,
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            };
            match (id.map(SessionId::parse), closed) {
                (Some(Ok(id)), false) => feed.appended(&id),
                (Some(Ok(id)), true) => feed.closed(&id),
                _ => feed.everything_changed(),
            }
        }
    }

    /// Makes MongoDB's TTL monitor erase closed sessions `retention` after they closed, and
    /// events `retention` after they were received, which, as every event is received
    /// before its session ends, is no later than its session. `None` removes the TTL indexes,
    /// and answers whether there were any: retention then stopped for every instance.
    pub async fn apply_retention(&self, retention: Option<Duration>) -> Result<bool, StoreError> {
        let mut dropped = false;
        let targets = [
            (
                self.sessions.name().to_owned(),
                "closedAt",
                "sessions_retention",
            ),
            (
                self.events.name().to_owned(),
                "receivedAt",
                "events_retention",
            ),
        ];
        let db = self.sessions.clone_with_type::<Document>();
        let db = db.namespace().db;
        let db = self.client.database(&db);
        for (collection, field, name) in targets {
            let coll = db.collection::<Document>(&collection);
            let Some(retention) = retention else {
                match coll.drop_index(name).await {
                    Ok(()) => dropped = true,
                    Err(e) if !is_code(&e, INDEX_NOT_FOUND) => return Err(classify(e)),
                    Err(_) => {}
                }
                continue;
            };
            let ttl = IndexModel::builder()
                .keys(doc! {field: 1})
                .options(
                    IndexOptions::builder()
                        .name(name.to_owned())
                        .expire_after(retention)
                        .build(),
                )
                .build();
            match coll.create_index(ttl).await {
                Ok(_) => {}
                // The index exists with another expiry: change it in place.
                Err(e) if is_code(&e, INDEX_OPTIONS_CONFLICT) => {
                    db.run_command(doc! {
                        "collMod": &collection,
                        "index": {"name": name, "expireAfterSeconds": i64::try_from(retention.as_secs()).unwrap_or(i64::MAX)},
                    })
                    .await
                    .map_err(classify)?;
                }
                Err(e) => return Err(classify(e)),
            }
        }
        Ok(dropped)
    }

    /// MongoDB's `explain` (executionStats) of exactly the query a page of events runs:
    /// which index it uses, with which bounds, and how many keys it examined.
    pub async fn explain_page(
        &self,
        session: &SessionId,
        query: &EventPageQuery,
    ) -> Result<Document, StoreError> {
        let mut find = doc! {
            "find": self.events.name(),
            "filter": page_filter(session, query),
            "sort": page_sort(query),
            "projection": {"_id": 0},
            "limit": i64::try_from(query.limit).unwrap_or(i64::MAX),
        };
        if let PageStart::Offset(skip) = query.start {
            find.insert("skip", i64::try_from(skip).unwrap_or(i64::MAX));
        }
        self.client
            .database(&self.events.namespace().db)
            .run_command(doc! {"explain": find, "verbosity": "executionStats"})
            .await
            .map_err(classify)
    }

    /// Closes the client's connections.
    pub async fn shutdown(&self) {
        // Immediate: the grace period for in-flight requests is already over.
        self.client.clone().shutdown().immediate(true).await;
    }
}

fn bson_time(t: Timestamp) -> BsonDateTime {
    BsonDateTime::from_millis(t.millis())
}

fn time_of(t: BsonDateTime) -> Timestamp {
    Timestamp::from_millis(t.timestamp_millis())
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("stored document does not parse: {what}").into())
}

fn is_code(err: &MongoError, code: i32) -> bool {
    matches!(err.kind.as_ref(), ErrorKind::Command(e) if e.code == code)
}

/// The code and message of a failed write or command.
fn write_error(err: &MongoError) -> Option<(i32, &str)> {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => Some((e.code, &e.message)),
        ErrorKind::Command(e) => Some((e.code, &e.message)),
        _ => None,
    }
}

/// A duplicate key on anything but the seq index, which must not pass for a replay (event
/// inserts tell theirs apart in [`taken_keys`]).
fn is_duplicate_key(err: &MongoError) -> bool {
    write_error(err)
        .is_some_and(|(code, message)| code == DUPLICATE_KEY && !names_index(message, SEQ_INDEX))
}

/// Whether a duplicate-key message names `index` as the one that refused the write:
/// "E11000 duplicate key error collection: NS index: NAME [collation: {..} ]dup key: {..}".
/// The name is the word after the first " index: ", which no namespace contains (database
/// names have no spaces); the key's values, further on, could contain any index's name.
fn names_index(message: &str, index: &str) -> bool {
    message
        .split_once(" index: ")
        .is_some_and(|(_, rest)| rest.split(' ').next() == Some(index))
}

/// What a write error of an event insert means, if it is a taken key the service can act
/// on. A duplicate on the (sessionId, eventId) index: the eventId is taken, nothing was
/// stored, and the event's seq stays empty. One on (sessionId, seq): an event left behind
/// by an erased session holds the seq. One on `_id` means this very document is stored
/// already (a write retried unseen), so it must not pass for either.
fn taken_key(code: i32, message: &str) -> Option<Inserted> {
    match code == DUPLICATE_KEY {
        true if names_index(message, EVENT_ID_INDEX) => Some(Inserted::EventIdTaken),
        true if names_index(message, SEQ_INDEX) => Some(Inserted::SeqTaken),
        _ => None,
    }
}

/// `inserted` (every event stored) with the events a bulk insert's error says were refused
/// for a taken eventId or seq marked so, when those are all it says. Any other write error,
/// and a write concern failure, which leaves even the stored events unconfirmed, fail the
/// whole insert.
fn taken_keys(err: MongoError, mut inserted: Vec<Inserted>) -> Result<Vec<Inserted>, StoreError> {
    let ErrorKind::InsertMany(InsertManyError {
        write_errors: Some(errors),
        write_concern_error: None,
        ..
    }) = err.kind.as_ref()
    else {
        return Err(classify(err));
    };
    for error in errors {
        match (
            taken_key(error.code, &error.message),
            inserted.get_mut(error.index),
        ) {
            (Some(taken), Some(slot)) => *slot = taken,
            _ => return Err(classify(err)),
        }
    }
    Ok(inserted)
}

/// The service sets the write concern, retryable writes and the timeouts from its own
/// settings, whatever `DB_URI` says; a URI option that these replace with another value
/// is named in a warning, so that it is not taken to be in force.
fn warn_of_replaced_uri_options(
    uri: &ClientOptions,
    write_concern: &WriteConcern,
    config: &MongoConfig,
) {
    let uri_concern = uri.write_concern.as_ref();
    let replaced = [
        (
            "w",
            "DB_WRITE_CONCERN",
            uri_concern
                .and_then(|c| c.w.as_ref())
                .is_some_and(|w| Some(w) != write_concern.w.as_ref()),
        ),
        (
            "journal",
            "DB_JOURNAL",
            uri_concern
                .and_then(|c| c.journal)
                .is_some_and(|j| Some(j) != write_concern.journal),
        ),
        (
            "retryWrites",
            "DB_RETRY_WRITES",
            uri.retry_writes.is_some_and(|r| r != config.retry_writes),
        ),
        (
            "serverSelectionTimeoutMS",
            "DB_TIMEOUT_MS",
            uri.server_selection_timeout
                .is_some_and(|t| t != config.timeout),
        ),
        (
            "connectTimeoutMS",
            "DB_TIMEOUT_MS",
            uri.connect_timeout.is_some_and(|t| t != config.timeout),
        ),
    ];
    for (option, setting, _) in replaced.into_iter().filter(|(_, _, replaced)| *replaced) {
        tracing::warn!("DB_URI sets {option}, which {setting} replaces; set {setting} instead");
    }
    if uri.selection_criteria.as_ref().is_some_and(|c| {
        !matches!(
            c,
            SelectionCriteria::ReadPreference(ReadPreference::Primary)
        )
    }) {
        tracing::warn!(
            "DB_URI sets readPreference, which the service replaces: it reads from the primary"
        );
    }
}

/// The service's settings over the URI's options: the write concern, retryable writes, the
/// timeouts and the pool from `config`, reads from the primary, and the read concern of
/// [`reads_with`]. Warns of the URI options this replaces with other values.
fn apply_settings(options: &mut ClientOptions, config: &MongoConfig) {
    if options.app_name.is_none() {
        options.app_name = Some(env!("CARGO_PKG_NAME").to_owned());
    }
    let write_concern = WriteConcern::builder()
        .w(match config.write_acknowledgment {
            WriteAcknowledgment::Majority => Acknowledgment::Majority,
            WriteAcknowledgment::Nodes(n) => Acknowledgment::Nodes(n),
        })
        .journal(config.journal)
        .w_timeout(options.write_concern.as_ref().and_then(|c| c.w_timeout))
        .build();
    warn_of_replaced_uri_options(options, &write_concern, config);
    options.read_concern = reads_with(options.read_concern.take());
    // Every read goes to the primary: a read from a secondary could miss the write just
    // acknowledged, and a retry would then be taken for something new (see DESIGN.md).
    options.selection_criteria = Some(SelectionCriteria::ReadPreference(ReadPreference::Primary));
    options.server_selection_timeout = Some(config.timeout);
    options.write_concern = Some(write_concern);
    options.retry_writes = Some(config.retry_writes);
    options.connect_timeout = Some(config.timeout);
    if config.max_pool_size.is_some() {
        options.max_pool_size = config.max_pool_size;
    }
}

/// The read concern of the store's reads, the replay's excepted (`with_client`): the URI's,
/// unless it is `available`, which on a sharded cluster may return the orphaned copies of
/// events a migration left behind, so that a page would list an event twice. `local`, the
/// server's default, is read instead.
fn reads_with(uri: Option<ReadConcern>) -> Option<ReadConcern> {
    match uri {
        Some(concern) if concern.level == ReadConcernLevel::Available => {
            tracing::warn!(
                "DB_URI sets readConcernLevel=available, which may return a sharded \
                 cluster's orphaned documents; the service reads with local instead"
            );
            Some(ReadConcern::local())
        }
        other => other,
    }
}

/// Sorts a driver error into what the service layer can act on.
fn classify(err: MongoError) -> StoreError {
    if is_duplicate_key(&err) {
        return StoreError::Duplicate;
    }
    let transient = match err.kind.as_ref() {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. } => true,
        ErrorKind::Command(e) => TRANSIENT_CODES.contains(&e.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => {
            TRANSIENT_CODES.contains(&e.code) || err.contains_label("RetryableWriteError")
        }
        ErrorKind::Write(WriteFailure::WriteError(e)) => TRANSIENT_CODES.contains(&e.code),
        // A bulk insert reports its failures in its own kind: a write concern failure, and
        // per event the errors of the shard or member that refused it.
        ErrorKind::InsertMany(InsertManyError {
            write_errors,
            write_concern_error,
            ..
        }) => {
            write_concern_error
                .iter()
                .map(|e| e.code)
                .chain(write_errors.iter().flatten().map(|e| e.code))
                .any(|code| TRANSIENT_CODES.contains(&code))
                || err.contains_label("RetryableWriteError")
        }
        _ => err.contains_label("RetryableWriteError"),
    };
    if transient {
        StoreError::Unavailable(Box::new(err))
    } else {
        StoreError::Backend(Box::new(err))
    }
}

impl SessionDoc {
    fn into_session(self) -> Result<Session, StoreError> {
        let closed = !self.status.is_open();
        Ok(Session {
            session_id: SessionId::parse(self.id).map_err(corrupt)?,
            status: self.status,
            language: self
                .language
                .map(Language::parse)
                .transpose()
                .map_err(corrupt)?,
            metadata: JsonObject::from_stored(raw_to_object(&self.metadata).map_err(corrupt)?),
            started_at: time_of(self.started_at),
            ended_at: closed.then(|| time_of(self.updated_at)),
            updated_at: time_of(self.updated_at),
        })
    }
}

/// An event as stored: `sessionId`, `eventId`, `type`, `payload`, `timestamp`, `seq`,
/// `receivedAt`, and the `_id` the driver adds.
fn event_to_raw(event: &Event) -> RawDocumentBuf {
    let mut doc = RawDocumentBuf::new();
    doc.append("sessionId", event.session_id.as_str());
    doc.append("eventId", event.event_id.as_str());
    doc.append("type", event.event_type.as_str());
    doc.append("payload", object_to_raw(event.payload.as_map()));
    doc.append("timestamp", bson_time(event.timestamp));
    doc.append("seq", event.seq);
    doc.append("receivedAt", bson_time(event.received_at));
    doc
}

fn event_from_raw(doc: &RawDocument) -> Result<Event, StoreError> {
    // One pass: each `RawDocument::get_*` walks the document from its start again.
    let (mut session_id, mut event_id, mut event_type, mut payload) = (None, None, None, None);
    let (mut timestamp, mut seq, mut received_at) = (None, None, None);
    for element in doc {
        match element.map_err(corrupt)? {
            ("sessionId", RawBsonRef::String(s)) => session_id = Some(s),
            ("eventId", RawBsonRef::String(s)) => event_id = Some(s),
            ("type", RawBsonRef::String(s)) => event_type = Some(s),
            ("payload", RawBsonRef::Document(d)) => payload = Some(d),
            ("timestamp", RawBsonRef::DateTime(t)) => timestamp = Some(t),
            ("seq", RawBsonRef::Int64(n)) => seq = Some(n),
            // Only written by hand (a shell writes small numbers as Int32).
            ("seq", RawBsonRef::Int32(n)) => seq = Some(i64::from(n)),
            ("receivedAt", RawBsonRef::DateTime(t)) => received_at = Some(t),
            _ => {}
        }
    }
    let missing = |field: &str| corrupt(format!("no {field} of its type"));
    let text = |value: Option<&str>, field| value.map(str::to_owned).ok_or_else(|| missing(field));
    let payload = payload.ok_or_else(|| missing("payload"))?;
    Ok(Event {
        session_id: SessionId::parse(text(session_id, "sessionId")?).map_err(corrupt)?,
        event_id: EventId::parse(text(event_id, "eventId")?).map_err(corrupt)?,
        event_type: EventType::from_stored(text(event_type, "type")?),
        payload: JsonObject::from_stored(raw_to_object(payload).map_err(corrupt)?),
        timestamp: time_of(timestamp.ok_or_else(|| missing("timestamp"))?),
        seq: seq.ok_or_else(|| missing("seq"))?,
        received_at: time_of(received_at.ok_or_else(|| missing("receivedAt"))?),
    })
}

/// Reads every event of a cursor, each straight from the batch it came in.
async fn collect_events(mut cursor: Cursor<RawDocumentBuf>) -> Result<Vec<Event>, StoreError> {
    let mut events = Vec::new();
    while cursor.advance().await.map_err(classify)? {
        events.push(event_from_raw(cursor.current())?);
    }
    Ok(events)
}

fn open_statuses() -> Bson {
    Bson::Array(
        SessionStatus::OPEN
            .iter()
            .map(|s| Bson::from(s.as_str()))
            .collect(),
    )
}

/// The session `id` if it is open and not being erased: what takes appends and a close.
fn open_session_filter(id: &SessionId) -> Document {
    doc! {"_id": id.as_str(), "status": {"$in": open_statuses()}, "erasing": {"$ne": true}}
}

/// Tries of an upsert on a session id (a create, an erase mark) that racing creates and
/// erasures of the id can cut short.
const UPSERT_ATTEMPTS: u32 = 3;

#[async_trait]
impl SessionRepository for MongoStore {
    async fn create(&self, new: NewSession, now: Timestamp) -> Result<CreateOutcome, StoreError> {
        let session = new.into_session(now);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let on_insert = doc! {
            "status": session.status.as_str(),
            "language": session.language.as_ref().map(|l| l.as_str()),
            // The update's document model needs a Document; a create converts just one.
            "metadata": object_to_raw(session.metadata.as_map()).to_document().map_err(corrupt)?,
            "startedAt": bson_time(session.started_at),
            "updatedAt": bson_time(session.updated_at),
            "lastSeq": 0_i64,
            "createToken": &token,
        };
        // An upsert whose filter is the unique key inserts or matches in one atomic step.
        // The stored document carries the token of the create that inserted it, so whether
        // this call created it is read from the document itself. Two racing upserts can
        // surface a duplicate-key error; the winner's document is then read back.
        for _attempt in 0..UPSERT_ATTEMPTS {
            let filter = doc! {"_id": session.session_id.as_str()};
            let update = doc! {"$setOnInsert": on_insert.clone()};
            let upserted = self.upsert_session(&session.session_id, filter, update);
            let Some(stored) = upserted.await? else {
                continue;
            };
            if stored.erasing {
                return Err(StoreError::Busy(
                    "the session id is being erased: retry the create once that is done",
                ));
            }
            let created = stored.create_token.as_deref() == Some(token.as_str());
            let stored = stored.into_session()?;
            return Ok(if created {
                CreateOutcome::Created(stored)
            } else {
                CreateOutcome::Existing(stored)
            });
        }
        // Each try lost a race with another create or an erasure of the id.
        Err(StoreError::Unavailable(
            "the session id kept changing under the create (racing creates or an erasure): \
             retry the create"
                .into(),
        ))
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        let found = self.find_session(id).await?;
        found
            .filter(|doc| !doc.erasing)
            .map(SessionDoc::into_session)
            .transpose()
    }

    async fn begin_erase(&self, id: &SessionId) -> Result<EraseStart, StoreError> {
        // An id with no session is held too, by a marked stand-in, so that no create of it
        // lands between this erasure's steps and loses its events to them. The stand-in has
        // a session's shape, closed, so that any reader can parse it; `standIn` tells it from
        // a session when a repeated erasure finds it.
        //
        // The mark is exclusive: it is taken only from a document that no erasure holds, or
        // whose holder's lease ran out (or that an older version marked without one). So a
        // second erasure never runs its `deleteMany` after the first has freed the id.
        let now = Timestamp::now();
        let lease = uuid::Uuid::new_v4().simple().to_string();
        let expired = bson_time(now.minus(ERASE_LEASE));
        let takeable = doc! {
            "_id": id.as_str(),
            "$or": [
                {"erasing": {"$ne": true}},
                {"eraseSince": {"$exists": false}},
                {"eraseSince": {"$lt": expired}},
            ],
        };
        // The mark restarts the retention clock (`closedAt`, the TTL index's field): the
        // index must not delete a session an erasure holds, which would free its id to a
        // create whose events the erasure's `deleteMany` would then take with the old ones.
        // A retention is at least a day, an erasure's lease a minute; a session whose
        // erasure failed still expires, a retention after the mark.
        let mark = doc! {
            "$set": {
                "erasing": true,
                "eraseLease": &lease,
                "eraseSince": bson_time(now),
                "closedAt": bson_time(now),
            },
            "$setOnInsert": {
                "status": SessionStatus::Failed.as_str(),
                "language": Bson::Null,
                "metadata": {},
                "startedAt": bson_time(now),
                "updatedAt": bson_time(now),
                "lastSeq": 0_i64,
                "standIn": true,
            },
        };
        let ours = |doc: &SessionDoc| doc.erasing && doc.erase_lease.as_deref() == Some(&*lease);
        // Whether there was a session is read from the marked document, not from an empty
        // "before" (see `create`). When the upsert cannot take the document, it tries to
        // insert one and hits the unique `_id`: then the document is read to tell a holding
        // erasure (busy) from a create that raced this upsert (tried again).
        for _attempt in 0..UPSERT_ATTEMPTS {
            let upserted = self.upsert_session(id, takeable.clone(), mark.clone());
            let Some(found) = upserted.await? else {
                continue;
            };
            if ours(&found) {
                let last_write = (!found.stand_in).then(|| LastWrite {
                    seq: found.last_seq,
                    at: time_of(found.updated_at),
                });
                return Ok(EraseStart::Holding(EraseHold {
                    existed: !found.stand_in,
                    lease,
                    last_write,
                }));
            }
            if found.erasing && found.erase_since.is_some_and(|t| t >= expired) {
                return Ok(EraseStart::Busy);
            }
        }
        // Each try lost a race: creates of the id and other erasures kept changing it.
        Ok(EraseStart::Busy)
    }

    async fn delete(&self, id: &SessionId, lease: &str) -> Result<(), StoreError> {
        self.sessions
            .delete_one(doc! {"_id": id.as_str(), "erasing": true, "eraseLease": lease})
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn list(&self, query: &SessionPageQuery) -> Result<Vec<Session>, StoreError> {
        let direction = match query.order {
            Order::Asc => 1,
            Order::Desc => -1,
        };
        let docs: Vec<SessionDoc> = self
            .sessions
            .find(session_filter(query))
            .sort(doc! {"startedAt": direction, "_id": direction})
            .limit(i64::try_from(query.limit).unwrap_or(i64::MAX))
            .batch_size(u32::try_from(query.limit).unwrap_or(u32::MAX))
            .max_time(self.timeout)
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        docs.into_iter().map(SessionDoc::into_session).collect()
    }

    async fn reserve_seqs(
        &self,
        id: &SessionId,
        count: u32,
        now: Timestamp,
    ) -> Result<Option<Reservation>, StoreError> {
        let reserved = self
            .sessions
            .clone_with_type::<ReservationDoc>()
            .find_one_and_update(
                open_session_filter(id),
                doc! {
                    "$inc": {"lastSeq": i64::from(count)},
                    "$set": {"status": SessionStatus::Active.as_str()},
                    "$max": {"updatedAt": bson_time(now)},
                },
            )
            .return_document(ReturnDocument::After)
            .projection(doc! {"_id": 0, "lastSeq": 1, "updatedAt": 1})
            .max_time(self.timeout)
            .await
            .map_err(classify)?;
        Ok(reserved.map(|r| Reservation {
            first_seq: r.last_seq - i64::from(count) + 1,
            received_at: time_of(r.updated_at),
        }))
    }

    async fn close(
        &self,
        id: &SessionId,
        status: FinalStatus,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        let closed = self
            .sessions
            .find_one_and_update(
                open_session_filter(id),
                doc! {
                    // closedAt is for the retention TTL index only; the API's endedAt is the
                    // session clock, updatedAt.
                    "$set": {"status": SessionStatus::from(status).as_str(), "closedAt": bson_time(now)},
                    "$max": {"updatedAt": bson_time(now)},
                },
            )
            .return_document(ReturnDocument::After)
            .max_time(self.timeout)
            .await
            .map_err(classify)?;
        closed.map(SessionDoc::into_session).transpose()
    }

    async fn raise_seq(&self, id: &SessionId, seq: i64) -> Result<(), StoreError> {
        self.sessions
            .update_one(doc! {"_id": id.as_str()}, doc! {"$max": {"lastSeq": seq}})
            .await
            .map_err(classify)?;
        Ok(())
    }
}

#[async_trait]
impl EventRepository for MongoStore {
    async fn last_seq(&self, session: &SessionId) -> Result<Option<i64>, StoreError> {
        let last = self
            .events
            .find_one(doc! {"sessionId": session.as_str()})
            .sort(doc! {"seq": -1})
            .projection(doc! {"_id": 0, "seq": 1})
            .max_time(self.timeout)
            .await
            .map_err(classify)?;
        Ok(last.and_then(|d| d.get_i64("seq").ok()))
    }

    async fn insert_many(&self, events: &[Event]) -> Result<Vec<Inserted>, StoreError> {
        let inserted = vec![Inserted::Stored; events.len()];
        if events.is_empty() {
            return Ok(inserted);
        }
        let docs = events.iter().map(event_to_raw);
        // Unordered: every event is tried, and each taken key comes back with its index.
        match self.events.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(inserted),
            Err(err) => taken_keys(err, inserted),
        }
    }

    async fn delete_session_events(&self, session: &SessionId) -> Result<u64, StoreError> {
        let deleted = self
            .events
            .delete_many(doc! {"sessionId": session.as_str()})
            .await
            .map_err(classify)?;
        Ok(deleted.deleted_count)
    }

    /// One `find` with read concern `majority` (under `w: majority`). When it misses some
    /// ids, a second, `local`, looks for those: one found there is stored by a write that
    /// has not reached a majority yet.
    async fn get_durable(
        &self,
        session: &SessionId,
        ids: &[EventId],
    ) -> Result<DurableEvents, StoreError> {
        let events = self.find_ids(&self.durable_events, session, ids).await?;
        let Some(latest) = &self.latest_events else {
            return Ok(DurableEvents {
                events,
                pending: false,
            });
        };
        let found: HashSet<&EventId> = events.iter().map(|e| &e.event_id).collect();
        let unseen: Vec<EventId> = ids
            .iter()
            .filter(|id| !found.contains(id))
            .cloned()
            .collect();
        let pending =
            !unseen.is_empty() && !self.find_ids(latest, session, &unseen).await?.is_empty();
        Ok(DurableEvents { events, pending })
    }

    async fn get(&self, session: &SessionId, event: &EventId) -> Result<Option<Event>, StoreError> {
        let found = self
            .events
            .find_one(doc! {"sessionId": session.as_str(), "eventId": event.as_str()})
            .projection(doc! {"_id": 0})
            .max_time(self.timeout)
            .await
            .map_err(classify)?;
        found.as_deref().map(event_from_raw).transpose()
    }

    async fn page(
        &self,
        session: &SessionId,
        query: &EventPageQuery,
    ) -> Result<Vec<Event>, StoreError> {
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let mut find = self
            .events
            .find(page_filter(session, query))
            .sort(page_sort(query))
            .projection(doc! {"_id": 0})
            .limit(limit)
            // One batch holds the whole page, so a page costs one round trip.
            .batch_size(u32::try_from(query.limit).unwrap_or(u32::MAX))
            .max_time(self.timeout);
        if let PageStart::Offset(skip) = query.start {
            find = find.skip(skip);
        }
        collect_events(find.await.map_err(classify)?).await
    }
}

/// A page's order: by seq after `afterSeq`, else by (timestamp, seq) in its direction.
fn page_sort(query: &EventPageQuery) -> Document {
    let direction = match query.order {
        Order::Asc => 1,
        Order::Desc => -1,
    };
    match query.start {
        PageStart::AfterSeq(_) => doc! {"seq": 1},
        _ => doc! {"timestamp": direction, "seq": direction},
    }
}

/// The conditions of a filter on the events of one session.
fn event_conditions(session: &SessionId, filter: &EventFilter) -> Document {
    let mut conditions = doc! {"sessionId": session.as_str()};
    match filter.types.as_slice() {
        [] => {}
        [one] => {
            conditions.insert("type", one.as_str());
        }
        many => {
            let types: Vec<&str> = many.iter().map(EventType::as_str).collect();
            conditions.insert("type", doc! {"$in": types});
        }
    }
    let range = time_range("$gte", filter.from, "$lt", filter.to);
    if !range.is_empty() {
        conditions.insert("timestamp", range);
    }
    conditions
}

fn time_range(
    lower_op: &str,
    lower: Option<Timestamp>,
    upper_op: &str,
    upper: Option<Timestamp>,
) -> Document {
    let mut range = Document::new();
    if let Some(t) = lower {
        range.insert(lower_op, bson_time(t));
    }
    if let Some(t) = upper {
        range.insert(upper_op, bson_time(t));
    }
    range
}

/// The page's filter. "After this position" is a rooted `$or` whose branches each carry
/// every condition, so each gets exact bounds on the (sessionId, timestamp, seq) index and
/// the merged scan stops after `limit` keys.
fn page_filter(session: &SessionId, query: &EventPageQuery) -> Document {
    let mut base = event_conditions(session, &query.filter);
    let p = match query.start {
        PageStart::After(p) => p,
        PageStart::AfterSeq(seq) => {
            base.insert("seq", doc! {"$gt": seq});
            return base;
        }
        PageStart::First | PageStart::Offset(_) => return base,
    };
    let op = match query.order {
        Order::Asc => "$gt",
        Order::Desc => "$lt",
    };
    let range = base.get_document("timestamp").cloned().unwrap_or_default();
    let mut later = base.clone();
    later.insert("timestamp", narrowed(&range, op, p.timestamp));
    let mut tied = base;
    let mut tied_range = range;
    tied_range.insert("$eq", bson_time(p.timestamp));
    tied.insert("timestamp", tied_range);
    tied.insert("seq", doc! {op: p.seq});
    doc! {"$or": [later, tied]}
}

/// `range` with the keyset bound `op` (`$gt` or `$lt`) at `t` added, unless the range's own
/// bound of that kind is tighter. A cursor is not signed, so a hand-made one can name a
/// position past the listing's own `to`; the bound must not then replace it and widen
/// the listing.
fn narrowed(range: &Document, op: &str, t: Timestamp) -> Document {
    let bound = bson_time(t);
    let tighter = match range.get_datetime(op) {
        Ok(own) if op == "$lt" => bound < *own,
        Ok(own) => bound > *own,
        Err(_) => true,
    };
    let mut range = range.clone();
    if tighter {
        range.insert(op, bound);
    }
    range
}

/// The filter of a sessions listing, with the keyset condition as a rooted `$or`.
fn session_filter(query: &SessionPageQuery) -> Document {
    let f = &query.filter;
    // Sessions being erased are not listed.
    let mut base = doc! {"erasing": {"$ne": true}};
    match f.statuses.as_slice() {
        [] => {}
        [one] => {
            base.insert("status", one.as_str());
        }
        many => {
            let statuses: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
            base.insert("status", doc! {"$in": statuses});
        }
    }
    if let Some(language) = &f.language {
        base.insert("language", language.as_str());
    }
    let range = time_range("$gte", f.started_after, "$lt", f.started_before);
    if !range.is_empty() {
        base.insert("startedAt", range.clone());
    }
    // Keys were checked against the metadata key rules: no '$', no '.'.
    for (key, value) in &f.metadata {
        base.insert(format!("metadata.{key}"), value.as_str());
    }
    let Some((t, id)) = &query.after else {
        return base;
    };
    let op = match query.order {
        Order::Asc => "$gt",
        Order::Desc => "$lt",
    };
    let mut later = base.clone();
    later.insert("startedAt", narrowed(&range, op, *t));
    let mut tied = base;
    let mut tied_range = range;
    tied_range.insert("$eq", bson_time(*t));
    tied.insert("startedAt", tied_range);
    tied.insert("_id", doc! {op: id.as_str()});
    doc! {"$or": [later, tied]}
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::error::CommandError;

    /// Documents written by earlier versions (through serde) and by this one (raw) read
    /// alike, and this one writes the same bytes.
    #[test]
    fn events_read_and_write_as_the_documents_earlier_versions_stored() {
        let when = BsonDateTime::from_millis(1_795_680_000_123);
        let stored = doc! {
            "_id": mongodb::bson::oid::ObjectId::new(), "sessionId": "s-1", "eventId": "e-1",
            "type": "user_speech", "payload": {"text": "hi", "n": 5_i64, "f": 0.5, "l": [1_i64, {"k": null}]},
            "timestamp": when, "seq": 7_i64, "receivedAt": when,
        };
        let raw = RawDocumentBuf::from_document(&stored).unwrap();
        let event = event_from_raw(&raw).unwrap();
        assert_eq!(
            (event.seq, event.timestamp.millis()),
            (7, when.timestamp_millis())
        );
        assert_eq!(
            event.payload.as_map()["l"],
            serde_json::json!([1, {"k": null}])
        );
        let mut written = stored.clone();
        written.remove("_id");
        assert_eq!(
            event_to_raw(&event).as_bytes(),
            RawDocumentBuf::from_document(&written).unwrap().as_bytes()
        );
        let mut by_hand = stored;
        by_hand.insert("seq", 7_i32);
        let raw = RawDocumentBuf::from_document(&by_hand).unwrap();
        assert_eq!(event_from_raw(&raw).unwrap().seq, 7);
        by_hand.remove("payload");
        let raw = RawDocumentBuf::from_document(&by_hand).unwrap();
        assert!(event_from_raw(&raw).is_err());
    }

    /// Under `w: majority`, a replay reads what a majority holds, and looks for writes still
    /// replicating with `local`; under `w: <n>`, it reads `local` once.
    #[tokio::test]
    async fn durable_reads_see_what_a_majority_holds_when_writes_wait_for_a_majority() {
        // Nothing listens there: building the handles sends no command.
        let uri = "mongodb://127.0.0.1:9/?readConcernLevel=majority";
        let client = Client::with_uri_str(uri).await.unwrap();
        let majority = MongoStore::with_client(client.clone(), "t", &MongoConfig::new(uri));
        let concern = |events: &Collection<RawDocumentBuf>| events.read_concern().cloned();
        assert_eq!(
            concern(&majority.durable_events),
            Some(ReadConcern::majority())
        );
        let latest = majority.latest_events.as_ref().map(concern);
        assert_eq!(latest, Some(Some(ReadConcern::local())));
        let config = MongoConfig {
            write_acknowledgment: WriteAcknowledgment::Nodes(1),
            ..MongoConfig::new(uri)
        };
        let nodes = MongoStore::with_client(client, "t", &config);
        assert_eq!(concern(&nodes.durable_events), Some(ReadConcern::local()));
        assert!(nodes.latest_events.is_none());
    }

    #[test]
    fn a_uri_read_concern_applies_unless_it_may_return_orphaned_documents() {
        let level = |uri: Option<ReadConcern>| reads_with(uri).map(|c| c.level);
        assert_eq!(level(None), None);
        assert_eq!(
            level(Some(ReadConcern::majority())),
            Some(ReadConcernLevel::Majority)
        );
        assert_eq!(
            level(Some(ReadConcern::available())),
            Some(ReadConcernLevel::Local)
        );
    }

    /// Parsing a URI of one host resolves nothing.
    #[tokio::test]
    async fn the_service_settings_replace_the_uri_options_they_cover() {
        let uri = "mongodb://127.0.0.1:9/?readConcernLevel=available&readPreference=secondary\
                   &w=1&journal=false&retryWrites=false&wtimeoutMS=2500&maxPoolSize=7";
        let mut options = ClientOptions::parse(uri).await.unwrap();
        apply_settings(&mut options, &MongoConfig::new(uri));
        assert_eq!(options.read_concern, Some(ReadConcern::local()));
        assert!(matches!(
            options.selection_criteria,
            Some(SelectionCriteria::ReadPreference(ReadPreference::Primary))
        ));
        let concern = options.write_concern.unwrap();
        assert_eq!(concern.w, Some(Acknowledgment::Majority));
        assert_eq!(concern.journal, Some(true));
        assert_eq!(concern.w_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(options.retry_writes, Some(true));
        assert_eq!(options.max_pool_size, Some(7));
        assert_eq!(options.app_name.as_deref(), Some(env!("CARGO_PKG_NAME")));
    }

    /// A read that a retry of the request may get through is 503, not 500.
    #[test]
    fn lost_cursors_and_a_missing_majority_snapshot_are_transient() {
        let command = |code: i32| {
            let failure: CommandError = mongodb::bson::from_document(
                doc! {"code": code, "codeName": "X", "errmsg": "failed"},
            )
            .unwrap();
            classify(MongoError::from(ErrorKind::Command(failure)))
        };
        for code in [43, 134, 237] {
            assert!(
                matches!(command(code), StoreError::Unavailable(_)),
                "{code}"
            );
        }
        assert!(matches!(command(2), StoreError::Backend(_)));
    }

    /// A primary stepping down fails a write's write concern: an insert must then get 503,
    /// not 500, nor pass for a replay when the reply also names a taken eventId.
    #[test]
    fn a_failed_write_concern_is_transient_for_a_bulk_insert_as_for_one_insert() {
        let bulk = |code: i32| {
            let failure: InsertManyError = mongodb::bson::from_document(doc! {
                "writeConcernError": {"code": code, "codeName": "X", "errmsg": "failed"},
            })
            .unwrap();
            classify(MongoError::from(ErrorKind::InsertMany(failure)))
        };
        for code in [64, 91, 189, 11602] {
            assert!(matches!(bulk(code), StoreError::Unavailable(_)), "{code}");
        }
        assert!(matches!(bulk(100), StoreError::Backend(_)));
        // An event refused by a shard or member that is stepping down or out of reach: the
        // retry may succeed. A refusal for any other reason is not for a retry to mend.
        let refused = |code: i32| {
            let failure: InsertManyError = mongodb::bson::from_document(doc! {
                "writeErrors": [{"index": 0, "code": code, "errmsg": "refused"}],
            })
            .unwrap();
            classify(MongoError::from(ErrorKind::InsertMany(failure)))
        };
        for code in [10107, 133, 202] {
            assert!(
                matches!(refused(code), StoreError::Unavailable(_)),
                "{code}"
            );
        }
        assert!(matches!(refused(2), StoreError::Backend(_)));
        // A taken eventId is an answer, unless the reply also says the write concern failed:
        // then nothing in it is confirmed, and the retry must not pass for a replay.
        let reply = |concern: Option<i32>| {
            let mut reply = doc! {"writeErrors": [{
                "index": 0, "code": DUPLICATE_KEY,
                "errmsg": format!("E11000 duplicate key error collection: t.events index: {EVENT_ID_INDEX} dup key: {{}}"),
            }]};
            if let Some(code) = concern {
                reply.insert("writeConcernError", doc! {"code": code, "errmsg": "failed"});
            }
            let failure: InsertManyError = mongodb::bson::from_document(reply).unwrap();
            taken_keys(
                MongoError::from(ErrorKind::InsertMany(failure)),
                vec![Inserted::Stored],
            )
        };
        assert_eq!(reply(None).unwrap(), [Inserted::EventIdTaken]);
        assert!(matches!(reply(Some(189)), Err(StoreError::Unavailable(_))));
    }

    #[test]
    fn a_taken_key_is_read_from_the_index_name_not_from_the_key_values() {
        // MongoDB's duplicate-key message: the refusing index, then the key's values.
        let message = |index: &str| {
            format!(
                "E11000 duplicate key error collection: app.events index: {index} dup key: \
                 {{ sessionId: \"index: session_event_id\", eventId: \"session_seq\" }}"
            )
        };
        assert_eq!(
            taken_key(DUPLICATE_KEY, &message(EVENT_ID_INDEX)),
            Some(Inserted::EventIdTaken)
        );
        assert_eq!(
            taken_key(DUPLICATE_KEY, &message(SEQ_INDEX)),
            Some(Inserted::SeqTaken)
        );
        assert_eq!(taken_key(DUPLICATE_KEY, &message("_id_")), None);
        let collated = message(&format!("{SEQ_INDEX} collation: {{ locale: \"en\" }}"));
        assert_eq!(
            taken_key(DUPLICATE_KEY, &collated),
            Some(Inserted::SeqTaken)
        );
        assert_eq!(taken_key(2, &message(SEQ_INDEX)), None);
    }
}
