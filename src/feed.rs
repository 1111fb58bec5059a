//! Wake-ups for live streams: "something changed in session X".
//!
//! A wake-up carries no data. A woken stream reads the store from its own position, so a
//! lost, doubled or spurious wake-up can delay a message but never lose or repeat one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::SessionId;

/// Resolves once `stop` turns true (or its sender is gone): the service is stopping.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// What a session has seen; a stream compares them to learn what happened since it last
/// looked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// The number of append wake-ups the whole feed had sent, for any session, at this
    /// session's latest one, or when its channel was made. It never goes back, not even
    /// when the channel is dropped and made again, so a read that noted a higher or equal
    /// value started after every append it stands for.
    pub appends: u64,
    /// Closes of the session since its channel was made.
    pub closes: u64,
}

/// How many void seqs are kept per watched session; a stream at an older one waits out
/// the gap, as for any seq it does not know to be void.
const VOIDS_KEPT: usize = 64;

/// Per-session wake-up channels, shared by every stream of this instance.
pub struct SessionFeed {
    channels: Mutex<Channels>,
    /// Whether database change streams currently feed this instance (else it polls).
    change_streams: AtomicBool,
    /// How many sessions have a listening stream here, for whoever follows the database.
    watched: watch::Sender<usize>,
}

impl Default for SessionFeed {
    fn default() -> Self {
        Self {
            channels: Mutex::default(),
            change_streams: AtomicBool::default(),
            watched: watch::Sender::new(0),
        }
    }
}

/// The watched sessions' channels, and the append wake-ups sent so far for any session.
#[derive(Default)]
struct Channels {
    by_session: HashMap<SessionId, Channel>,
    appends: u64,
}

/// A watched session's wake-ups, and the seqs this instance knows will never be filled.
struct Channel {
    sender: watch::Sender<Changes>,
    voids: VecDeque<i64>,
}

/// A stream's registration; dropping it frees the session's channel once nobody listens.
pub struct Subscription {
    feed: Arc<SessionFeed>,
    session: SessionId,
    receiver: Option<watch::Receiver<Changes>>,
}

impl SessionFeed {
    pub fn subscribe(self: &Arc<Self>, session: &SessionId) -> Subscription {
        let mut channels = self.lock();
        let appends = channels.appends;
        let receiver = channels
            .by_session
            .entry(session.clone())
            .or_insert_with(|| Channel {
                sender: watch::channel(Changes { appends, closes: 0 }).0,
                voids: VecDeque::new(),
            })
            .sender
            .subscribe();
        self.watched.send_replace(channels.by_session.len());
        Subscription {
            feed: Arc::clone(self),
            session: session.clone(),
            receiver: Some(receiver),
        }
    }

    /// Events were appended to `session`.
    pub fn appended(&self, session: &SessionId) {
        self.lock().signal(Some(session), true, false);
    }

    /// The appends that reserved `seqs` in `session` stored nothing (their eventIds were
    /// taken), so those seqs will never be filled and streams need not wait at them.
    /// Known on this instance only, and kept only while a stream here watches the session.
    pub fn voided(&self, session: &SessionId, seqs: &[i64]) {
        if seqs.is_empty() {
            return;
        }
        let mut channels = self.lock();
        let Some(channel) = channels.by_session.get_mut(session) else {
            return;
        };
        channel.voids.extend(seqs);
        let excess = channel.voids.len().saturating_sub(VOIDS_KEPT);
        channel.voids.drain(..excess);
        // Streams waiting at one of these gaps look again.
        channels.signal(Some(session), true, false);
    }

    /// Whether every seq in `seqs` is known to be void in `session`.
    pub fn all_void(&self, session: &SessionId, mut seqs: std::ops::Range<i64>) -> bool {
        let channels = self.lock();
        let voids = channels.by_session.get(session).map(|c| &c.voids);
        seqs.all(|seq| voids.is_some_and(|v| v.contains(&seq)))
    }

    /// `session` was closed, or erased. Its void seqs go: an erased id may be created
    /// again, with seqs of its own.
    pub fn closed(&self, session: &SessionId) {
        let mut channels = self.lock();
        if let Some(channel) = channels.by_session.get_mut(session) {
            channel.voids.clear();
        }
        channels.signal(Some(session), false, true);
    }

    /// Anything may have changed anywhere: after a gap in change notifications, or on each
    /// tick when the deployment offers no change notifications at all.
    pub fn everything_changed(&self) {
        self.lock().signal(None, true, true);
    }

    pub fn set_change_streams(&self, active: bool) {
        self.change_streams.store(active, Ordering::Relaxed);
    }

    /// Whether changes made through other instances arrive by change stream.
    pub fn change_streams(&self) -> bool {
        self.change_streams.load(Ordering::Relaxed)
    }

    /// Sessions with at least one listening stream on this instance.
    pub fn watched(&self) -> usize {
        self.lock().by_session.len()
    }

    /// Resolves once a stream listens on this instance.
    pub async fn until_watched(&self) {
        let mut watched = self.watched.subscribe();
        // The sender lives in `self`, so the wait cannot fail.
        let _ = watched.wait_for(|sessions| *sessions > 0).await;
    }

    /// Resolves once no stream has listened on this instance for `linger`.
    pub async fn until_unwatched_for(&self, linger: Duration) {
        let mut watched = self.watched.subscribe();
        loop {
            let _ = watched.wait_for(|sessions| *sessions == 0).await;
            tokio::select! {
                () = tokio::time::sleep(linger) => return,
                // A stream came (or came and went): look again.
                _ = watched.changed() => {}
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Channels> {
        // The map holds no invariant a panic could break half-way: keep using it.
        self.channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Channels {
    /// Bumps the counters of `session`'s channel, or of every channel. An append takes the
    /// next feed-wide count, under the lock, so every channel's value only ever rises.
    fn signal(&mut self, session: Option<&SessionId>, append: bool, close: bool) {
        let appends = append.then(|| {
            self.appends += 1;
            self.appends
        });
        let bump = |channel: &Channel| {
            channel.sender.send_modify(|c| {
                if let Some(appends) = appends {
                    c.appends = appends;
                }
                if close {
                    c.closes += 1;
                }
            });
        };
        match session {
            Some(id) => self.by_session.get(id).into_iter().for_each(bump),
            None => self.by_session.values().for_each(bump),
        }
    }
}

impl Subscription {
    /// Waits for the next change, and says which kinds happened since the last call.
    /// Pending forever once the feed is gone, which it never is while this exists.
    pub async fn changed(&mut self) -> Changes {
        let Some(receiver) = self.receiver.as_mut() else {
            return std::future::pending().await;
        };
        if receiver.changed().await.is_err() {
            return std::future::pending().await;
        }
        *receiver.borrow_and_update()
    }

    /// The counts as of now, leaving them unseen.
    pub fn peek(&self) -> Changes {
        self.receiver
            .as_ref()
            .map(|r| *r.borrow())
            .unwrap_or_default()
    }

    /// The counts as of now, marking them seen.
    pub fn current(&mut self) -> Changes {
        self.receiver
            .as_mut()
            .map(|r| *r.borrow_and_update())
            .unwrap_or_default()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut channels = self.feed.lock();
        if channels
            .by_session
            .get(&self.session)
            .is_some_and(|channel| channel.sender.receiver_count() == 0)
        {
            channels.by_session.remove(&self.session);
            self.feed.watched.send_replace(channels.by_session.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn wakes_only_the_streams_of_the_changed_session() {
        let feed = Arc::new(SessionFeed::default());
        let mut a = feed.subscribe(&sid("a"));
        let mut b = feed.subscribe(&sid("b"));
        feed.appended(&sid("a"));
        feed.closed(&sid("a"));
        let changes = a.changed().await;
        assert_eq!(
            changes,
            Changes {
                appends: 1,
                closes: 1
            }
        );
        let nothing = tokio::time::timeout(std::time::Duration::from_millis(20), b.changed()).await;
        assert!(nothing.is_err(), "b was not touched");
        feed.everything_changed();
        assert_eq!(
            b.changed().await,
            Changes {
                appends: 2,
                closes: 1
            }
        );
    }

    #[test]
    fn append_counts_never_go_back_when_a_session_channel_is_made_again() {
        let feed = Arc::new(SessionFeed::default());
        let mut first = feed.subscribe(&sid("a"));
        feed.appended(&sid("a"));
        let before = first.current().appends;
        drop(first);
        // Nobody listens: the channel is gone, but the append still counts.
        feed.appended(&sid("a"));
        let mut again = feed.subscribe(&sid("a"));
        assert!(again.current().appends > before);
        feed.appended(&sid("b"));
        feed.appended(&sid("a"));
        assert_eq!(again.current().appends, 4);
    }

    #[test]
    fn frees_a_session_channel_when_its_last_stream_leaves() {
        let feed = Arc::new(SessionFeed::default());
        let first = feed.subscribe(&sid("a"));
        let second = feed.subscribe(&sid("a"));
        assert_eq!(feed.watched(), 1);
        drop(first);
        assert_eq!(feed.watched(), 1);
        drop(second);
        assert_eq!(feed.watched(), 0);
        feed.appended(&sid("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn tells_when_streams_come_and_when_they_have_been_gone_for_a_while() {
        let feed = Arc::new(SessionFeed::default());
        let linger = Duration::from_secs(30);
        let early = tokio::time::timeout(Duration::from_secs(60), feed.until_watched());
        assert!(early.await.is_err(), "no stream listens yet");
        let stream = feed.subscribe(&sid("a"));
        feed.until_watched().await;
        let idle = tokio::time::timeout(Duration::from_secs(60), feed.until_unwatched_for(linger));
        assert!(idle.await.is_err(), "a stream still listens");
        drop(stream);
        let started = tokio::time::Instant::now();
        feed.until_unwatched_for(linger).await;
        assert!(
            started.elapsed() >= linger,
            "left after {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn void_seqs_are_kept_for_watched_sessions_and_wake_their_streams() {
        let feed = Arc::new(SessionFeed::default());
        feed.voided(&sid("a"), &[1]);
        let mut stream = feed.subscribe(&sid("a"));
        assert!(!feed.all_void(&sid("a"), 1..2), "nobody watched a then");
        let seen = stream.current();
        feed.voided(&sid("a"), &[2, 3]);
        let woken = tokio::time::timeout(Duration::from_secs(5), stream.changed()).await;
        assert!(woken.expect("a wake-up").appends > seen.appends);
        assert!(feed.all_void(&sid("a"), 2..4));
        assert!(!feed.all_void(&sid("a"), 2..5));
        assert!(!feed.all_void(&sid("b"), 2..3));
        let many: Vec<i64> = (10..10 + VOIDS_KEPT as i64).collect();
        feed.voided(&sid("a"), &many);
        assert!(!feed.all_void(&sid("a"), 2..3), "the oldest are let go");
        assert!(feed.all_void(&sid("a"), 10..10 + VOIDS_KEPT as i64));
        feed.closed(&sid("a"));
        assert!(
            !feed.all_void(&sid("a"), 10..11),
            "a close (or an erase) forgets them"
        );
    }
}
