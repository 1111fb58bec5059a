//! Live tails: a session's stored events from a position, then new ones as they are
//! accepted, in seq order, ending with the session's close.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use super::ServiceError;
use crate::domain::{Event, Order, Session, SessionId, Timestamp};
use crate::feed::{stopped, Changes, SessionFeed, Subscription};
use crate::store::{EventFilter, EventPageQuery, EventRepository, PageStart, SessionRepository};

/// Events read from the store per query while catching up.
const CATCH_UP_BATCH: usize = 200;
/// How long a gap in seq may stay open before the stream moves past it. Gaps come from
/// replays and conflicts (which use up a seq) and from appends still in flight; the wait
/// covers the latter.
const SETTLE: Duration = Duration::from_millis(500);
/// Beyond this age (by the wall clock, allowing for skew between instances) a gap is old
/// news and is passed at once.
const SETTLED_AGE: Duration = Duration::from_secs(3);
/// How soon a stream whose store query failed tries again.
const RETRY: Duration = Duration::from_secs(1);
/// Messages buffered per stream; a slow reader fills its own buffer and stalls only itself.
const BUFFER: usize = 64;

/// What a live stream sends.
#[derive(Debug, Clone, PartialEq)]
pub enum TailMessage {
    Event(Event),
    /// The session completed or failed; the stream ends after this.
    Closed(Session),
}

/// Opens live tails, at most `max_streams` at a time on this instance.
#[derive(Clone)]
pub struct LiveService {
    sessions: Arc<dyn SessionRepository>,
    events: Arc<dyn EventRepository>,
    feed: Arc<SessionFeed>,
    permits: Arc<Semaphore>,
    max_streams: usize,
    stop: watch::Receiver<bool>,
}

impl LiveService {
    /// `stop` turning true ends every stream, so that a graceful shutdown is not held up.
    pub fn new(
        sessions: Arc<dyn SessionRepository>,
        events: Arc<dyn EventRepository>,
        feed: Arc<SessionFeed>,
        max_streams: usize,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            sessions,
            events,
            feed,
            permits: Arc::new(Semaphore::new(max_streams)),
            max_streams,
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
    /// buffer, its feed subscription and its slot) are freed when the receiver is dropped.
    #[tracing::instrument(skip_all, fields(session_id = %session, after_seq))]
    pub async fn tail(
        &self,
        session: &SessionId,
        after_seq: i64,
    ) -> Result<mpsc::Receiver<TailMessage>, ServiceError> {
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
        let (sender, receiver) = mpsc::channel(BUFFER);
        let tail = Tail {
            sessions: Arc::clone(&self.sessions),
            events: Arc::clone(&self.events),
            session: session.clone(),
            last_seq: after_seq,
            gap: None,
            sender,
            stop: self.stop.clone(),
        };
        let span = tracing::info_span!("live_stream", session_id = %session);
        tokio::spawn(
            tail.run(subscription, seen, permit, current)
                .instrument(span),
        );
        Ok(receiver)
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
    events: Arc<dyn EventRepository>,
    session: SessionId,
    last_seq: i64,
    /// The seq just past a gap, and when this stream first saw that gap.
    gap: Option<(i64, Instant)>,
    sender: mpsc::Sender<TailMessage>,
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
        loop {
            let mut wake = match self.deliver(false).await {
                Err(Gone) => return,
                Ok(Delivered::All) => None,
                Ok(Delivered::UpToGap(at) | Delivered::StoreFailed(at)) => Some(at),
            };
            if let Some(since) = closed_since {
                if since.elapsed() >= SETTLE || is_old(session.updated_at) {
                    match self.finish(&session).await {
                        Ok(true) | Err(Gone) => return,
                        Ok(false) => wake = Some(Instant::now() + RETRY),
                    }
                } else {
                    wake = earliest(wake, Some(since + SETTLE));
                }
            }
            let mut stop = self.stop.clone();
            tokio::select! {
                changes = subscription.changed() => {
                    if changes.closes != seen.closes && closed_since.is_none() {
                        match self.sessions.get(&self.session).await {
                            Ok(Some(now)) if !now.status.is_open() => {
                                session = now;
                                closed_since = Some(Instant::now());
                            }
                            // Erased: there is nothing left to follow.
                            Ok(None) => return,
                            Ok(Some(_)) => {}
                            Err(e) => tracing::warn!(error = %e, "live stream could not read its session"),
                        }
                    }
                    seen = changes;
                }
                () = sleep_until(wake) => {}
                () = self.sender.closed() => return,
                () = stopped(&mut stop) => return,
            }
        }
    }

    /// Sends what is left, past any gap, then the close. `Ok(false)` when the store did not
    /// answer: the close must not go out before every event has.
    async fn finish(&mut self, session: &Session) -> Result<bool, Gone> {
        match self.deliver(true).await? {
            Delivered::StoreFailed(_) => Ok(false),
            Delivered::All | Delivered::UpToGap(_) => {
                self.send(TailMessage::Closed(session.clone())).await?;
                Ok(true)
            }
        }
    }

    /// Sends the stored events after `last_seq` in seq order, stopping at a gap that may
    /// still fill unless `past_gaps`.
    async fn deliver(&mut self, past_gaps: bool) -> Result<Delivered, Gone> {
        loop {
            let query = EventPageQuery {
                order: Order::Asc,
                start: PageStart::AfterSeq(self.last_seq),
                filter: EventFilter::default(),
                limit: CATCH_UP_BATCH,
            };
            let page = match self.events.page(&self.session, &query).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "live stream could not read events; retrying");
                    return Ok(Delivered::StoreFailed(Instant::now() + RETRY));
                }
            };
            let full = page.len() == CATCH_UP_BATCH;
            for event in page {
                if !past_gaps && event.seq != self.last_seq + 1 && !self.gap_settled(&event) {
                    let since = self.gap.map_or_else(Instant::now, |(_, since)| since);
                    return Ok(Delivered::UpToGap(since + SETTLE));
                }
                self.last_seq = event.seq;
                self.gap = None;
                self.send(TailMessage::Event(event)).await?;
            }
            if !full {
                return Ok(Delivered::All);
            }
        }
    }

    /// Whether the stream may move past the gap before `event`.
    fn gap_settled(&mut self, event: &Event) -> bool {
        if is_old(event.received_at) {
            return true;
        }
        match self.gap {
            Some((seq, since)) if seq == event.seq => since.elapsed() >= SETTLE,
            _ => {
                self.gap = Some((event.seq, Instant::now()));
                false
            }
        }
    }

    /// Waits for room in the reader's buffer, but not past the service's stop.
    async fn send(&mut self, message: TailMessage) -> Result<(), Gone> {
        let mut stop = self.stop.clone();
        tokio::select! {
            sent = self.sender.send(message) => sent.map_err(|_| Gone),
            () = stopped(&mut stop) => Err(Gone),
        }
    }
}

fn is_old(t: Timestamp) -> bool {
    let age_ms = Timestamp::now().millis().saturating_sub(t.millis());
    age_ms >= i64::try_from(SETTLED_AGE.as_millis()).unwrap_or(i64::MAX)
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
