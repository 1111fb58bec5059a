//! Live tails: a session's stored events from a position, then new ones as they are
//! accepted, in seq order, ending with the session's close.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use super::ServiceError;
use crate::domain::{Event, Order, Session, SessionId, Timestamp};
use crate::feed::{stopped, Changes, SessionFeed, Subscription};
use crate::store::{
    EventFilter, EventPageQuery, EventRepository, PageStart, SessionRepository, StoreError,
};

/// Events read from the store per query while catching up.
const CATCH_UP_BATCH: usize = 200;
/// Beyond this age (by the wall clock, allowing for skew between instances) a gap is old
/// news and is passed at once.
const SETTLED_AGE: Duration = Duration::from_secs(3);
/// How soon a stream whose store query failed tries again.
const RETRY: Duration = Duration::from_secs(1);
/// Messages buffered per stream; a slow reader fills its own buffer and stalls only itself.
const BUFFER: usize = 64;
/// A stream whose reader has taken no message for this long while its buffer was full is
/// ended: it would hold its buffer (up to 64 events of up to 64 KiB) and its slot until the
/// client went away. A client that is only slow reconnects with `Last-Event-ID`.
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// Sightings a stream keeps (see `Tail::sighted`); past that, the latest is moved on.
const MAX_SIGHTINGS: usize = 32;

/// What a live stream sends.
#[derive(Debug, Clone, PartialEq)]
pub enum TailMessage {
    Event(Event),
    /// The session completed or failed; the stream ends after this.
    Closed(Session),
}

/// What a stream's reader takes its messages from.
///
/// The stream's task holds only a weak reference to it, so a reader that goes away still
/// drops the messages, and the task learns of it from its sender. A task whose reader
/// stalled (see [`STALL_LIMIT`]) takes the messages away: the response holds no more
/// memory, and ends the next time it is polled.
pub struct Outbox(Arc<OutboxSlot>);

type OutboxSlot = Mutex<Option<mpsc::Receiver<TailMessage>>>;

impl Outbox {
    fn new() -> (mpsc::Sender<TailMessage>, Self) {
        let (sender, receiver) = mpsc::channel(BUFFER);
        (sender, Self(Arc::new(Mutex::new(Some(receiver)))))
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<TailMessage>> {
        match lock_slot(&self.0).as_mut() {
            Some(receiver) => receiver.poll_recv(cx),
            None => Poll::Ready(None),
        }
    }

    pub async fn recv(&mut self) -> Option<TailMessage> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    #[cfg(test)]
    fn try_recv(&mut self) -> Option<TailMessage> {
        lock_slot(&self.0).as_mut()?.try_recv().ok()
    }
}

fn lock_slot(slot: &OutboxSlot) -> MutexGuard<'_, Option<mpsc::Receiver<TailMessage>>> {
    // Taking or polling the receiver leaves nothing half-done.
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Opens live tails, at most `max_streams` at a time on this instance.
#[derive(Clone)]
pub struct LiveService {
    sessions: Arc<dyn SessionRepository>,
    reads: Arc<SharedReads>,
    feed: Arc<SessionFeed>,
    permits: Arc<Semaphore>,
    max_streams: usize,
    gap_wait: Duration,
    stop: watch::Receiver<bool>,
}

impl LiveService {
    /// `stop` turning true ends every stream, so that a graceful shutdown is not held up.
    pub fn new(
        sessions: Arc<dyn SessionRepository>,
        events: Arc<dyn EventRepository>,
        feed: Arc<SessionFeed>,
        max_streams: usize,
        gap_wait: Duration,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            sessions,
            reads: Arc::new(SharedReads::new(events)),
            feed,
            permits: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            gap_wait,
            stop,
        }
    }

    /// Streams currently open on this instance.
    pub fn open_streams(&self) -> usize {
        self.max_streams - self.permits.available_permits()
    }

    /// Whether changes made through other instances arrive by database change stream.
    pub fn change_streams(&self) -> bool {
        self.feed.change_streams()
    }

    /// Starts a tail of the events after `after_seq`. The stream's resources (its task, its
    /// buffer, its feed subscription and its slot) are freed when the outbox is dropped.
    #[tracing::instrument(skip_all, fields(session_id = %session, after_seq))]
    pub async fn tail(&self, session: &SessionId, after_seq: i64) -> Result<Outbox, ServiceError> {
        let permit = Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| ServiceError::Overloaded("too many live streams are open"))?;
        // Subscribe, and note the counts, before reading the session: a close that lands
        // after the read then shows as a change.
        let mut subscription = self.feed.subscribe(session);
        let seen = subscription.current();
        let current = self
            .sessions
            .get(session)
            .await?
            .ok_or_else(|| ServiceError::SessionNotFound(session.clone()))?;
        let (sender, outbox) = Outbox::new();
        let tail = Tail {
            outbox: Arc::downgrade(&outbox.0),
            sessions: Arc::clone(&self.sessions),
            reads: Arc::clone(&self.reads),
            feed: Arc::clone(&self.feed),
            session: session.clone(),
            last_seq: after_seq,
            gap: None,
            sighted: VecDeque::new(),
            gap_wait: self.gap_wait,
            sender,
            stop: self.stop.clone(),
        };
        let span = tracing::info_span!("live_stream", session_id = %session);
        tokio::spawn(
            tail.run(subscription, seen, permit, current)
                .instrument(span),
        );
        Ok(outbox)
    }
}

/// The stream is over: its reader left, or the service is stopping.
struct Gone;

/// How far a delivery got.
enum Delivered {
    /// Every stored event after the position was sent.
    All,
    /// Stopped at a gap that may still fill; look again at this instant.
    UpToGap(Instant),
    /// The store did not answer; try again at this instant.
    StoreFailed(Instant),
}

/// One running stream.
struct Tail {
    sessions: Arc<dyn SessionRepository>,
    reads: Arc<SharedReads>,
    feed: Arc<SessionFeed>,
    session: SessionId,
    last_seq: i64,
    /// The seq just past the gap this stream stopped at, if it did.
    gap: Option<i64>,
    /// When this stream first read events up to each of these seqs, in rising order. A gap
    /// came into view with the first event past it, so its wait counts from then, also
    /// while the stream still waited at an earlier gap: gaps that came into view together
    /// are waited out together, not one after another.
    sighted: VecDeque<(i64, Instant)>,
    /// How long a gap in seq may stay open before the stream moves past it, and how long
    /// the stream keeps delivering after a close. Gaps come from replays and conflicts
    /// (which use up a seq) and from appends still in flight; the wait covers the latter.
    gap_wait: Duration,
    sender: mpsc::Sender<TailMessage>,
    outbox: Weak<OutboxSlot>,
    stop: watch::Receiver<bool>,
}

impl Tail {
    async fn run(
        mut self,
        mut subscription: Subscription,
        mut seen: Changes,
        _permit: OwnedSemaphorePermit,
        mut session: Session,
    ) {
        let mut closed_since = (!session.status.is_open()).then(Instant::now);
        // A close was signalled and the session not yet read since: a failed read is tried
        // again, since no other signal will come for that close.
        let mut close_unread = false;
        loop {
            let mut wake = match self.deliver(false, &subscription).await {
                Err(Gone) => return,
                Ok(Delivered::All) => None,
                Ok(Delivered::UpToGap(at) | Delivered::StoreFailed(at)) => Some(at),
            };
            if let Some(since) = closed_since {
                if since.elapsed() >= self.gap_wait || is_old(session.updated_at) {
                    match self.finish(&session, &subscription).await {
                        Ok(true) | Err(Gone) => return,
                        Ok(false) => wake = Some(Instant::now() + RETRY),
                    }
                } else {
                    wake = earliest(wake, Some(since + self.gap_wait));
                }
            }
            if close_unread {
                wake = earliest(wake, Some(Instant::now() + RETRY));
            }
            let mut stop = self.stop.clone();
            tokio::select! {
                changes = subscription.changed() => {
                    close_unread |= changes.closes != seen.closes;
                    seen = changes;
                }
                () = sleep_until(wake) => {}
                () = self.sender.closed() => return,
                () = stopped(&mut stop) => return,
            }
            if close_unread {
                match self.sessions.get(&self.session).await {
                    // Erased, or erased and created again: a session neither reopens nor
                    // changes its start. What this stream followed is gone, and it ends
                    // without the close, also during the close wait.
                    Ok(None) => return,
                    Ok(Some(now)) if now.started_at != session.started_at => return,
                    Ok(Some(now)) if now.status.is_open() && closed_since.is_some() => return,
                    Ok(Some(now)) if !now.status.is_open() => {
                        closed_since.get_or_insert_with(Instant::now);
                        session = now;
                    }
                    Ok(Some(_)) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "live stream could not read its session; retrying");
                        continue;
                    }
                }
            }
            close_unread = false;
        }
    }

    /// Sends what is left, past any gap, then the close. `Ok(false)` when the store did not
    /// answer: the close must not go out before every event has.
    async fn finish(
        &mut self,
        session: &Session,
        subscription: &Subscription,
    ) -> Result<bool, Gone> {
        match self.deliver(true, subscription).await? {
            Delivered::StoreFailed(_) => Ok(false),
            Delivered::All | Delivered::UpToGap(_) => {
                self.send(TailMessage::Closed(session.clone())).await?;
                Ok(true)
            }
        }
    }

    /// Sends the stored events after `last_seq` in seq order, stopping at a gap that may
    /// still fill unless `past_gaps`. Each read sees every append `subscription` has been
    /// told of. A stream waiting at a gap that may still fill, or going past gaps before
    /// the close, reads for itself: a shared read may have started before the wait was over.
    async fn deliver(
        &mut self,
        past_gaps: bool,
        subscription: &Subscription,
    ) -> Result<Delivered, Gone> {
        loop {
            let read = self.reads.after(
                &self.session,
                self.last_seq,
                !past_gaps && self.gap.is_none_or(|next| self.gap_void(next)),
                subscription.peek().appends,
            );
            let (read_at, page) = match read.await {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(error = %e, "live stream could not read events; retrying");
                    return Ok(Delivered::StoreFailed(Instant::now() + RETRY));
                }
            };
            let full = page.len() == CATCH_UP_BATCH;
            if let Some(last) = page.last() {
                self.sight(last.seq);
            }
            for event in page.iter() {
                if !past_gaps && event.seq != self.last_seq + 1 && !self.gap_settled(event, read_at)
                {
                    self.gap = Some(event.seq);
                    return Ok(Delivered::UpToGap(
                        self.sighted_at(event.seq) + self.gap_wait,
                    ));
                }
                self.last_seq = event.seq;
                self.gap = None;
                while self.sighted.front().is_some_and(|&(s, _)| s <= event.seq) {
                    self.sighted.pop_front();
                }
                self.send(TailMessage::Event(event.clone())).await?;
            }
            if !full {
                return Ok(Delivered::All);
            }
        }
    }

    /// Notes that a read returned events up to `seq`. A sighting earlier than the last one
    /// kept stays as it is; past [`MAX_SIGHTINGS`], the latest moves on to `seq` and now,
    /// which can only make a wait longer.
    fn sight(&mut self, seq: i64) {
        let full = self.sighted.len() >= MAX_SIGHTINGS;
        match self.sighted.back_mut() {
            Some(&mut (latest, _)) if latest >= seq => {}
            Some(latest) if full => *latest = (seq, Instant::now()),
            _ => self.sighted.push_back((seq, Instant::now())),
        }
    }

    /// When this stream first read the event at `seq`, which it has read.
    fn sighted_at(&self, seq: i64) -> Instant {
        self.sighted
            .iter()
            .find(|&&(s, _)| s >= seq)
            .map_or_else(Instant::now, |&(_, at)| at)
    }

    /// Whether the stream may move past the gap before `event`, which a read that started
    /// at `read_at` returned. The read shows the gap as it was when it started, which can be
    /// well before now: the read may be slow, or the events before `event` slow to send.
    /// So the gap's wait must have been over, or the event old, by then.
    fn gap_settled(&self, event: &Event, read_at: Instant) -> bool {
        let read_at_wall = Timestamp::now().minus(read_at.elapsed());
        event.received_at <= read_at_wall.minus(SETTLED_AGE)
            || self.gap_void(event.seq)
            || read_at.saturating_duration_since(self.sighted_at(event.seq)) >= self.gap_wait
    }

    /// Whether every seq between the last one sent and `next` is known to be void.
    fn gap_void(&self, next: i64) -> bool {
        self.feed.all_void(&self.session, self.last_seq + 1..next)
    }

    /// Waits for room in the reader's buffer, but not past the service's stop, nor past
    /// [`STALL_LIMIT`].
    async fn send(&mut self, message: TailMessage) -> Result<(), Gone> {
        let message = match self.sender.try_send(message) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Gone),
            Err(mpsc::error::TrySendError::Full(message)) => message,
        };
        let mut stop = self.stop.clone();
        tokio::select! {
            sent = self.sender.send(message) => sent.map_err(|_| Gone),
            () = stopped(&mut stop) => Err(Gone),
            () = tokio::time::sleep(STALL_LIMIT) => {
                tracing::info!(
                    stall_secs = STALL_LIMIT.as_secs(),
                    "live stream ended: its reader took nothing while its buffer was full"
                );
                if let Some(slot) = self.outbox.upgrade() {
                    lock_slot(&slot).take();
                }
                Err(Gone)
            }
        }
    }
}

/// A page of events read for live streams, shared by every stream that asked for it, with
/// when its read started: it shows the store as it was then, or later.
type SharedPage = Result<(Instant, Arc<[Event]>), Arc<StoreError>>;

/// The live streams' store reads. When an append wakes the streams of a session that
/// stand at the same position, they share one read instead of making one each: 200
/// streams on a session cost the database one query per append, not 200.
struct SharedReads {
    events: Arc<dyn EventRepository>,
    /// Reads under way, by session and the seq they read after.
    reading: Mutex<HashMap<(SessionId, i64), Reading>>,
}

/// A read under way.
struct Reading {
    /// The session's append count when the read started. The read sees every event whose
    /// wake-up was sent by then: a wake-up is sent only once its event is stored.
    appends: u64,
    page: watch::Receiver<Option<SharedPage>>,
}

impl SharedReads {
    fn new(events: Arc<dyn EventRepository>) -> Self {
        Self {
            events,
            reading: Mutex::default(),
        }
    }

    /// The events of `session` after `after_seq`, up to a catch-up batch. `appends` is the
    /// session's append count as the caller knows it: the read sees every append it stands
    /// for. With `shared`, the read may be one already under way that noted at least that
    /// count; without, it is a read of its own.
    async fn after(
        self: &Arc<Self>,
        session: &SessionId,
        after_seq: i64,
        shared: bool,
        appends: u64,
    ) -> SharedPage {
        let key = (session.clone(), after_seq);
        let mut page = self.join_or_start(&key, shared, appends);
        let answer = page
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|read| read.clone());
        answer.unwrap_or_else(|| {
            // The reading task ended without an answer (it panicked, or the runtime is
            // shutting down): forget it, so that the next try reads afresh.
            self.forget(&key, &page);
            Err(Arc::new(StoreError::Unavailable(
                "the read was abandoned".into(),
            )))
        })
    }

    /// The answer channel of a read of `key` that noted at least `appends`, under way or
    /// started here.
    fn join_or_start(
        self: &Arc<Self>,
        key: &(SessionId, i64),
        shared: bool,
        appends: u64,
    ) -> watch::Receiver<Option<SharedPage>> {
        let mut reading = self.lock();
        match reading.get(key) {
            Some(read) if shared && read.appends >= appends => read.page.clone(),
            _ => {
                let (sender, page) = watch::channel(None);
                let read = Reading {
                    appends,
                    page: page.clone(),
                };
                reading.insert(key.clone(), read);
                // A task of its own, so that the read finishes, and leaves the map, even
                // when every stream waiting for it has gone.
                let task = Arc::clone(self).read(key.clone(), sender);
                tokio::spawn(task.in_current_span());
                page
            }
        }
    }

    async fn read(
        self: Arc<Self>,
        key: (SessionId, i64),
        sender: watch::Sender<Option<SharedPage>>,
    ) {
        let query = EventPageQuery {
            order: Order::Asc,
            start: PageStart::AfterSeq(key.1),
            filter: EventFilter::default(),
            limit: CATCH_UP_BATCH,
        };
        let started = Instant::now();
        let page = self.events.page(&key.0, &query).await;
        self.forget(&key, &sender.subscribe());
        let page = page.map(|events| (started, Arc::from(events)));
        sender.send_replace(Some(page.map_err(Arc::new)));
    }

    /// Removes the read of `key` if it is the one behind `page`.
    fn forget(&self, key: &(SessionId, i64), page: &watch::Receiver<Option<SharedPage>>) {
        let mut reading = self.lock();
        if reading
            .get(key)
            .is_some_and(|read| read.page.same_channel(page))
        {
            reading.remove(key);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(SessionId, i64), Reading>> {
        // Each entry stands alone; a panic leaves nothing half-done: keep using the map.
        self.reading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn is_old(t: Timestamp) -> bool {
    t <= Timestamp::now().minus(SETTLED_AGE)
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::domain::{EventId, EventType, FinalStatus, JsonObject, NewSession, SessionStatus};
    use crate::service::testing::{open_session, Sessions};
    use crate::service::SessionService;
    use crate::store::{DurableEvents, Inserted, MemoryStore};

    const GAP_WAIT: Duration = Duration::from_millis(500);

    /// The in-memory store, counting page reads and holding each read's answer, taken
    /// before the hold, while the gate is shut.
    struct Gated {
        inner: Arc<MemoryStore>,
        reads: AtomicUsize,
        open: watch::Sender<bool>,
        panic_next: AtomicBool,
    }

    #[async_trait]
    impl EventRepository for Gated {
        async fn insert(&self, event: &Event) -> Result<(), StoreError> {
            self.inner.insert(event).await
        }
        async fn insert_many(&self, events: &[Event]) -> Result<Vec<Inserted>, StoreError> {
            self.inner.insert_many(events).await
        }
        async fn last_seq(&self, s: &SessionId) -> Result<Option<i64>, StoreError> {
            self.inner.last_seq(s).await
        }
        async fn get(&self, s: &SessionId, e: &EventId) -> Result<Option<Event>, StoreError> {
            EventRepository::get(&*self.inner, s, e).await
        }
        async fn delete_session_events(&self, s: &SessionId) -> Result<u64, StoreError> {
            self.inner.delete_session_events(s).await
        }
        async fn get_durable(
            &self,
            s: &SessionId,
            ids: &[EventId],
        ) -> Result<DurableEvents, StoreError> {
            self.inner.get_durable(s, ids).await
        }
        async fn page(&self, s: &SessionId, q: &EventPageQuery) -> Result<Vec<Event>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            assert!(
                !self.panic_next.swap(false, Ordering::SeqCst),
                "a read panicked"
            );
            let page = self.inner.page(s, q).await;
            let _ = self.open.subscribe().wait_for(|open| *open).await;
            page
        }
    }

    struct Harness {
        memory: Arc<MemoryStore>,
        store: Arc<Gated>,
        feed: Arc<SessionFeed>,
        live: LiveService,
        session: SessionId,
        stop: watch::Sender<bool>,
    }

    impl Harness {
        async fn new() -> Self {
            let memory = Arc::new(MemoryStore::default());
            let session = open_session(&memory).await;
            let store = Arc::new(Gated {
                inner: Arc::clone(&memory),
                reads: AtomicUsize::new(0),
                open: watch::Sender::new(true),
                panic_next: AtomicBool::new(false),
            });
            let feed = Arc::new(SessionFeed::default());
            let (stop, stopping) = watch::channel(false);
            let events: Arc<dyn EventRepository> = Arc::clone(&store) as _;
            let live = LiveService::new(
                Arc::clone(&memory) as _,
                events,
                Arc::clone(&feed),
                100,
                GAP_WAIT,
                stopping,
            );
            Self {
                memory,
                store,
                feed,
                live,
                session,
                stop,
            }
        }

        /// The session service on this store, telling `feed` of closes and erasures.
        fn sessions(&self, feed: Arc<SessionFeed>) -> SessionService {
            SessionService::new(
                Arc::clone(&self.memory) as _,
                Arc::clone(&self.memory) as _,
                feed,
                Duration::ZERO,
            )
        }

        fn reads(&self) -> usize {
            self.store.reads.load(Ordering::SeqCst)
        }

        /// A stream's task, standing after `last_seq`, outside any running loop.
        fn tail_after(&self, last_seq: i64) -> (Tail, Outbox) {
            let (sender, outbox) = Outbox::new();
            let tail = Tail {
                outbox: Arc::downgrade(&outbox.0),
                sessions: Arc::clone(&self.memory) as _,
                reads: Arc::clone(&self.live.reads),
                feed: Arc::clone(&self.feed),
                session: self.session.clone(),
                last_seq,
                gap: None,
                sighted: VecDeque::new(),
                sender,
                gap_wait: GAP_WAIT,
                stop: self.stop.subscribe(),
            };
            (tail, outbox)
        }

        /// Starts a shared read after `after_seq`, noting `appends`, that the gate will hold.
        fn held_read(&self, after_seq: i64, appends: u64) -> tokio::task::JoinHandle<SharedPage> {
            let (reads, session) = (Arc::clone(&self.live.reads), self.session.clone());
            tokio::spawn(async move { reads.after(&session, after_seq, true, appends).await })
        }

        async fn store_event(&self, seq: i64) {
            let event = Event {
                session_id: self.session.clone(),
                event_id: EventId::parse(format!("e{seq}")).unwrap(),
                event_type: EventType::parse("user_speech").unwrap(),
                payload: JsonObject::default(),
                timestamp: Timestamp::now(),
                seq,
                received_at: Timestamp::now(),
            };
            self.store.insert(&event).await.unwrap();
        }
    }

    /// Lets every task run until all of them wait (the clock is paused).
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    async fn next_seq(stream: &mut Outbox) -> Option<i64> {
        match tokio::time::timeout(Duration::from_secs(5), stream.recv()).await {
            Ok(Some(TailMessage::Event(event))) => Some(event.seq),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn streams_at_the_same_position_share_one_read_per_append() {
        let h = Harness::new().await;
        let mut streams = Vec::new();
        for _ in 0..20 {
            streams.push(h.live.tail(&h.session, 0).await.unwrap());
        }
        settle().await;
        let before = h.reads();
        h.store.open.send_replace(false);
        h.store_event(1).await;
        h.feed.appended(&h.session);
        settle().await;
        h.store.open.send_replace(true);
        for stream in &mut streams {
            assert_eq!(next_seq(stream).await, Some(1));
        }
        assert_eq!(h.reads() - before, 1, "20 streams woken by one append");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_never_shares_a_read_that_started_before_the_append_it_was_told_of() {
        let h = Harness::new().await;
        let mut first = h.live.tail(&h.session, 0).await.unwrap();
        settle().await;
        // `first` starts a read that finds nothing, and is held.
        h.store.open.send_replace(false);
        h.feed.appended(&h.session);
        settle().await;
        let before = h.reads();
        h.store_event(1).await;
        h.feed.appended(&h.session);
        // `second` opens after that append: the held read is too old for it.
        let mut second = h.live.tail(&h.session, 0).await.unwrap();
        settle().await;
        assert_eq!(h.reads() - before, 1, "second made a read of its own");
        h.store.open.send_replace(true);
        assert_eq!(next_seq(&mut second).await, Some(1));
        assert_eq!(next_seq(&mut first).await, Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn reads_after_different_positions_are_not_shared() {
        let h = Harness::new().await;
        h.store_event(1).await;
        h.store_event(2).await;
        h.store.open.send_replace(false);
        let (from_start, after_first) = (h.held_read(0, 0), h.held_read(1, 0));
        settle().await;
        assert_eq!(h.reads(), 2);
        h.store.open.send_replace(true);
        assert_eq!(from_start.await.unwrap().unwrap().1.len(), 2);
        assert_eq!(after_first.await.unwrap().unwrap().1.len(), 1);
        assert!(
            h.live.reads.lock().is_empty(),
            "finished reads are forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_delivery_before_the_close_reads_for_itself() {
        let h = Harness::new().await;
        h.store.open.send_replace(false);
        // Under way, and blind to the event stored next.
        let held = h.held_read(0, 0);
        settle().await;
        h.store_event(1).await;
        let session = SessionRepository::get(&*h.memory, &h.session)
            .await
            .unwrap()
            .unwrap();
        let subscription = h.feed.subscribe(&h.session);
        let (mut tail, mut messages) = h.tail_after(0);
        let finish = tokio::spawn(async move { tail.finish(&session, &subscription).await });
        settle().await;
        h.store.open.send_replace(true);
        assert!(matches!(finish.await.unwrap(), Ok(true)));
        assert_eq!(next_seq(&mut messages).await, Some(1));
        assert!(held.await.unwrap().unwrap().1.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_waiting_at_a_gap_reads_for_itself() {
        let h = Harness::new().await;
        h.store_event(2).await;
        h.store.open.send_replace(false);
        // Under way, and blind to the event that fills the gap.
        let held = h.held_read(0, 0);
        settle().await;
        h.store_event(1).await;
        let subscription = h.feed.subscribe(&h.session);
        let (mut tail, mut messages) = h.tail_after(0);
        tail.gap = Some(2);
        tail.sight(2);
        tokio::time::advance(GAP_WAIT).await;
        let deliver = tokio::spawn(async move { tail.deliver(false, &subscription).await });
        settle().await;
        h.store.open.send_replace(true);
        assert!(matches!(deliver.await.unwrap(), Ok(Delivered::All)));
        assert_eq!(next_seq(&mut messages).await, Some(1));
        assert_eq!(next_seq(&mut messages).await, Some(2));
        assert_eq!(held.await.unwrap().unwrap().1.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_that_ended_without_an_answer_is_not_shared_again() {
        let h = Harness::new().await;
        let reads = &h.live.reads;
        h.store.panic_next.store(true, Ordering::SeqCst);
        assert!(reads.after(&h.session, 0, true, 0).await.is_err());
        h.store_event(1).await;
        let page = reads.after(&h.session, 0, true, 0).await.unwrap();
        assert_eq!(page.1.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gap_of_void_seqs_is_passed_at_once_and_others_are_waited_out() {
        let h = Harness::new().await;
        let subscription = h.feed.subscribe(&h.session);
        h.store_event(3).await;
        h.store_event(5).await;
        h.feed.voided(&h.session, &[1, 2]);
        let (mut tail, mut messages) = h.tail_after(0);
        let delivered = tail.deliver(false, &subscription).await;
        assert!(
            matches!(delivered, Ok(Delivered::UpToGap(_))),
            "4 may still fill"
        );
        assert_eq!(next_seq(&mut messages).await, Some(3));
        assert!(messages.try_recv().is_none(), "5 waits");
    }

    /// A gap is passed only on a read that started after its wait was over. A read that
    /// started before and answered after shows the store from before: an event that filled
    /// the gap in between would be skipped for good.
    #[tokio::test(start_paused = true)]
    async fn a_gap_is_passed_only_on_a_read_that_started_after_its_wait() {
        let h = Harness::new().await;
        let subscription = h.feed.subscribe(&h.session);
        h.store_event(2).await;
        let (mut tail, mut messages) = h.tail_after(0);
        let delivered = tail.deliver(false, &subscription).await;
        assert!(
            matches!(delivered, Ok(Delivered::UpToGap(_))),
            "1 may still fill"
        );
        tokio::time::advance(GAP_WAIT - Duration::from_millis(50)).await;
        // A read starts just before the wait is over, and is held until after it.
        h.store.open.send_replace(false);
        let held = tokio::spawn(async move {
            let delivered = tail.deliver(false, &subscription).await;
            (tail, subscription, delivered)
        });
        settle().await;
        h.store_event(1).await;
        tokio::time::advance(Duration::from_millis(100)).await;
        h.store.open.send_replace(true);
        let (mut tail, subscription, delivered) = held.await.unwrap();
        assert!(
            matches!(delivered, Ok(Delivered::UpToGap(at)) if at <= Instant::now()),
            "read again at once"
        );
        let delivered = tail.deliver(false, &subscription).await;
        assert!(matches!(delivered, Ok(Delivered::All)));
        assert_eq!(next_seq(&mut messages).await, Some(1));
        assert_eq!(next_seq(&mut messages).await, Some(2));
    }

    /// Gaps read at once are waited out together: each for at most the gap wait after it
    /// came into view, not one wait after another.
    #[tokio::test(start_paused = true)]
    async fn gaps_that_came_into_view_together_are_waited_out_together() {
        let h = Harness::new().await;
        let subscription = h.feed.subscribe(&h.session);
        for seq in [2, 4, 6] {
            h.store_event(seq).await;
        }
        let (mut tail, mut messages) = h.tail_after(0);
        let first_read = Instant::now();
        let delivered = tail.deliver(false, &subscription).await;
        assert!(
            matches!(delivered, Ok(Delivered::UpToGap(at)) if at == first_read + GAP_WAIT),
            "1 may still fill"
        );
        assert!(messages.try_recv().is_none());
        tokio::time::advance(GAP_WAIT / 2).await;
        h.store_event(8).await;
        let delivered = tail.deliver(false, &subscription).await;
        assert!(
            matches!(delivered, Ok(Delivered::UpToGap(at)) if at == first_read + GAP_WAIT),
            "1 may still fill"
        );
        tokio::time::advance(GAP_WAIT / 2).await;
        let delivered = tail.deliver(false, &subscription).await;
        // 3 and 5 came into view with 1, and 7 half a wait later.
        assert!(
            matches!(delivered, Ok(Delivered::UpToGap(at)) if at == first_read + GAP_WAIT * 3 / 2),
            "7 may still fill"
        );
        for seq in [2, 4, 6] {
            assert_eq!(next_seq(&mut messages).await, Some(seq));
        }
        assert!(messages.try_recv().is_none(), "8 waits");
        tokio::time::advance(GAP_WAIT / 2).await;
        assert!(matches!(
            tail.deliver(false, &subscription).await,
            Ok(Delivered::All)
        ));
        assert_eq!(next_seq(&mut messages).await, Some(8));
    }

    /// A reader that takes nothing while its buffer is full is let go after the stall
    /// limit; one that takes a message in time is not.
    #[tokio::test(start_paused = true)]
    async fn a_stream_whose_reader_stalls_is_ended() {
        let h = Harness::new().await;
        let subscription = h.feed.subscribe(&h.session);
        let total = BUFFER as i64 + 2;
        for seq in 1..=total {
            h.store_event(seq).await;
        }
        let (mut tail, mut messages) = h.tail_after(0);
        let deliver = tokio::spawn(async move { tail.deliver(false, &subscription).await });
        settle().await;
        tokio::time::advance(STALL_LIMIT - Duration::from_secs(1)).await;
        assert_eq!(next_seq(&mut messages).await, Some(1), "just in time");
        settle().await;
        tokio::time::advance(STALL_LIMIT - Duration::from_secs(1)).await;
        assert!(!deliver.is_finished());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(deliver.await.unwrap(), Err(Gone)));
        assert!(
            messages.try_recv().is_none(),
            "the messages waiting for the reader were dropped"
        );
        assert!(messages.recv().await.is_none(), "the stream is over");
    }

    /// The read of the session after a close fails: the stream reads it again and ends,
    /// though no further signal comes (with change streams, none would).
    #[tokio::test(start_paused = true)]
    async fn a_close_whose_session_read_failed_is_read_again() {
        let h = Harness::new().await;
        let sessions = Arc::new(Sessions::new(&h.memory));
        let live = LiveService::new(
            Arc::clone(&sessions) as _,
            Arc::clone(&h.store) as _,
            Arc::clone(&h.feed),
            100,
            GAP_WAIT,
            h.stop.subscribe(),
        );
        let mut messages = live.tail(&h.session, 0).await.unwrap();
        settle().await;
        sessions.fail_next_get.store(true, Ordering::SeqCst);
        let closed = h
            .memory
            .close(&h.session, FinalStatus::Completed, Timestamp::now());
        assert!(closed.await.unwrap().is_some());
        h.feed.closed(&h.session);
        let last = tokio::time::timeout(Duration::from_secs(30), messages.recv()).await;
        assert!(
            matches!(last, Ok(Some(TailMessage::Closed(_)))),
            "the stream did not end"
        );
        assert!(
            !sessions.fail_next_get.load(Ordering::SeqCst),
            "the read failed"
        );
    }

    /// A session closed and then erased within the close wait: its streams end without
    /// `session.closed`, as those of any erased session do.
    #[tokio::test(start_paused = true)]
    async fn a_session_erased_during_the_close_wait_ends_its_streams_without_the_close() {
        let h = Harness::new().await;
        let service = h.sessions(Arc::clone(&h.feed));
        let mut messages = h.live.tail(&h.session, 0).await.unwrap();
        settle().await;
        service
            .complete(&h.session, FinalStatus::Completed)
            .await
            .unwrap();
        settle().await;
        service.erase(&h.session).await.unwrap();
        let last = tokio::time::timeout(Duration::from_secs(30), messages.recv()).await;
        assert_eq!(last, Ok(None), "the stream went on, or sent the close");
    }

    /// An instance that polls, or whose change notice came late, may see a session erased
    /// and created again only as a session read: the stream of the old one ends, instead of
    /// going on from its old seq in the new one.
    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_when_its_session_was_erased_and_created_again() {
        let h = Harness::new().await;
        h.store_event(1).await;
        let mut messages = h.live.tail(&h.session, 0).await.unwrap();
        assert_eq!(next_seq(&mut messages).await, Some(1));
        // Another instance erases the session and creates it again: this one is not told.
        let elsewhere = h.sessions(Arc::new(SessionFeed::default()));
        elsewhere.erase(&h.session).await.unwrap();
        let again = NewSession {
            session_id: h.session.clone(),
            language: None,
            metadata: JsonObject::default(),
            status: SessionStatus::Active,
            started_at: Some(Timestamp::from_millis(1)),
        };
        h.memory.create(again, Timestamp::now()).await.unwrap();
        h.store_event(1).await;
        h.store_event(2).await;
        h.feed.everything_changed();
        let last = tokio::time::timeout(Duration::from_secs(30), messages.recv()).await;
        assert_eq!(last, Ok(None), "the stream went on into the new session");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_at_a_void_gap_shares_reads() {
        let h = Harness::new().await;
        let subscription = h.feed.subscribe(&h.session);
        h.store_event(2).await;
        h.feed.voided(&h.session, &[1]);
        h.store.open.send_replace(false);
        let held = h.held_read(0, subscription.peek().appends);
        settle().await;
        let (mut tail, mut messages) = h.tail_after(0);
        tail.gap = Some(2);
        let deliver = tokio::spawn(async move { tail.deliver(false, &subscription).await });
        settle().await;
        assert_eq!(h.reads(), 1, "the stream joined the read under way");
        h.store.open.send_replace(true);
        assert!(matches!(deliver.await.unwrap(), Ok(Delivered::All)));
        assert_eq!(next_seq(&mut messages).await, Some(2));
        assert_eq!(held.await.unwrap().unwrap().1.len(), 1);
    }
}
