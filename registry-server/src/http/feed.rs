//! `GET /api/events/stream`: the change feed as server-sent events.
//!
//! One pump task per server reads new events from the store's table (woken by this
//! process's commits, by another replica's change notification, and every
//! [`POLL_EVERY`] in any case) and broadcasts them. A subscriber first reads what it missed
//! from the table (after its `Last-Event-ID`), then follows the broadcast, skipping what it
//! already sent; if it falls behind the broadcast it reads the table again. So a subscriber
//! gets every event after its start once, in the feed's order, however slow it is, and a
//! slow one costs a bounded buffer, not memory that grows.
//!
//! What a subscriber sees: document events of the documents its token may read (an
//! anonymous document counts as part of the documents that reference it, or as the token's
//! own while it wrote it and nothing references it), type and schema events (every token
//! reads types), and key events with `admin` only. The token is checked again every
//! [`RECHECK_EVERY`]: a revoked or expired token's stream ends, and changed grants apply.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use block_types::events::{ChangeEvent, EventKind, ResetEvent};
use futures::Stream;
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use super::extract::{Caller, QueryParams};
use super::routes::{Route, get};
use super::{ApiError, ApiResult, AppState};
use crate::store::{EventFilter, FeedEvent, Position, Resume, Scope, Store, StoreError, TokenInfo};

/// The pump reads the table at least this often (events of another replica whose
/// notification was missed, and PostgreSQL events held back behind a running transaction).
pub const POLL_EVERY: Duration = Duration::from_millis(250);
/// Events held back this long (committed behind a running transaction) make the feed
/// `lagging`.
const LAG_AFTER: Duration = Duration::from_secs(1);
/// How long a new stream waits for the pump's first read of the store (a server just
/// started) before it is answered 503.
const PUMP_START_WAIT: Duration = Duration::from_secs(5);
/// Events read from the table at a time.
const BATCH: u32 = 500;
/// Events the broadcast holds for subscribers that are behind; past it they read the table.
const BROADCAST_CAPACITY: usize = 1024;
/// Events waiting for one subscriber's connection.
const SUBSCRIBER_BUFFER: usize = 64;
/// Streams open at once on this server, and per token.
pub const MAX_STREAMS: usize = 1000;
/// Streams one token (with the children it minted) may hold open at once.
pub const MAX_STREAMS_PER_TOKEN: usize = 32;
/// A comment line is sent when nothing else was for this long, so proxies keep the
/// connection and the client can tell a dead one.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);
/// How often a stream checks that its token is still valid (and rereads its grants).
const RECHECK_EVERY: Duration = Duration::from_secs(10);
/// How long a client waits before reconnecting (the `retry` field).
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The server's side of the feed: the pump's broadcast and the open streams.
#[derive(Debug)]
pub struct Feed {
    events: broadcast::Sender<Arc<FeedEvent>>,
    streams: Mutex<HashMap<Uuid, usize>>,
    /// Set at shutdown: open streams end, new ones are refused.
    closing: tokio::sync::watch::Sender<bool>,
    /// Set while committed events are held back behind a long transaction (PostgreSQL):
    /// subscribers are told (`lagging`), so a cache stops trusting what it holds.
    lagging: tokio::sync::watch::Sender<bool>,
    /// Set once the pump has read where the feed ends: a stream starts only after that, so
    /// no event between a stream's start and the pump's is one neither of them sends.
    pumping: tokio::sync::watch::Sender<bool>,
}

impl Feed {
    /// Starts the pump over `store` (inside a Tokio runtime); it ends with the store.
    pub fn start(store: &Arc<Store>) -> Arc<Self> {
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let feed = Arc::new(Self {
            events,
            streams: Mutex::new(HashMap::new()),
            closing: tokio::sync::watch::Sender::new(false),
            lagging: tokio::sync::watch::Sender::new(false),
            pumping: tokio::sync::watch::Sender::new(false),
        });
        tokio::spawn(pump(Arc::downgrade(store), Arc::downgrade(&feed)));
        feed
    }

    /// Ends every open stream and refuses new ones (at shutdown).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.lock().values().sum()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<Uuid, usize>> {
        self.streams.lock()
    }

    /// Counts a new stream of `token`, or refuses it past the limits.
    fn open(self: &Arc<Self>, token: Uuid) -> Result<StreamSlot, ApiError> {
        if *self.closing.borrow() {
            return Err(ApiError::Unavailable("the server is shutting down".into()));
        }
        let mut streams = self.lock();
        if streams.values().sum::<usize>() >= MAX_STREAMS {
            return Err(ApiError::Busy(format!(
                "this server has {MAX_STREAMS} event streams open, the most it serves; retry later"
            )));
        }
        let mine = streams.entry(token).or_default();
        if *mine >= MAX_STREAMS_PER_TOKEN {
            return Err(ApiError::Busy(format!(
                "this token has {MAX_STREAMS_PER_TOKEN} event streams open, the most one token may; close one first"
            )));
        }
        *mine += 1;
        Ok(StreamSlot {
            feed: Arc::clone(self),
            token,
        })
    }
}

/// One open stream, counted until dropped.
struct StreamSlot {
    feed: Arc<Feed>,
    token: Uuid,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.feed.lock();
        if let Some(n) = streams.get_mut(&self.token) {
            *n -= 1;
            if *n == 0 {
                streams.remove(&self.token);
            }
        }
    }
}

/// Reads new events and broadcasts them, from the end of the feed at start.
async fn pump(store: Weak<Store>, feed: Weak<Feed>) {
    let (mut signal, mut at) = loop {
        let Some(s) = store.upgrade() else { return };
        // Before the end is read: a commit in between wakes the first read.
        let signal = s.feed_signal();
        match s.feed_end().await {
            Ok(end) => {
                if let Some(f) = feed.upgrade() {
                    f.pumping.send_replace(true);
                }
                break (signal, end);
            }
            Err(e) if e.is_closed() => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the change feed; trying again");
                drop(s);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut held_since: Option<std::time::Instant> = None;
    let mut checked_lag = std::time::Instant::now();
    loop {
        {
            let (Some(s), Some(f)) = (store.upgrade(), feed.upgrade()) else {
                return;
            };
            loop {
                match s.events_after(at, BATCH).await {
                    Ok(batch) => {
                        let full = batch.len() == BATCH as usize;
                        // A subscriber may reload a block through this replica the moment
                        // it hears of the change: its cached tree must not be older than
                        // the event (the listener's notification may come a moment later).
                        let changed: Vec<Uuid> = batch
                            .iter()
                            .filter_map(|e| e.event.block_document_id)
                            .collect();
                        if !changed.is_empty() {
                            s.forget_trees(&changed);
                        }
                        for event in batch {
                            at = event.position;
                            // No subscriber: nobody to tell.
                            let _ = f.events.send(Arc::new(event));
                        }
                        if !full {
                            break;
                        }
                    }
                    Err(e) if e.is_closed() => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the change feed; trying again");
                        break;
                    }
                }
            }
            // Committed changes whose events wait behind a running transaction: after a
            // moment, subscribers hear that the feed lags (an unreadable feed lags too).
            // Looked at every POLL_EVERY, not on every commit.
            if checked_lag.elapsed() >= POLL_EVERY {
                checked_lag = std::time::Instant::now();
                let held = s.feed_held_back(at).await.unwrap_or(true);
                match (held, held_since) {
                    (false, _) => held_since = None,
                    (true, None) => held_since = Some(std::time::Instant::now()),
                    (true, Some(_)) => {}
                }
                let lagging = held_since.is_some_and(|since| since.elapsed() >= LAG_AFTER);
                f.lagging
                    .send_if_modified(|now| std::mem::replace(now, lagging) != lagging);
            }
        }
        tokio::select! {
            changed = signal.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(POLL_EVERY) => {}
        }
    }
}

pub(super) fn routes() -> Vec<Route> {
    vec![
        get("/api/events/stream", stream)
            .unversioned()
            .tag("events")
            .summary("The change feed as server-sent events (text/event-stream): every change of a block the token may read, resumable with Last-Event-ID")
            .query(&[
                ("type", "string", "Only events of block types whose slug matches this glob (`*` matches any run)"),
                ("name", "string", "Only document events whose document name matches this glob"),
                ("kind", "string", "Only these kinds, comma-separated (`block-document.updated,block-document.deleted`)"),
                ("last_event_id", "integer", "Resume after this event (as the Last-Event-ID header does)"),
            ])
            .returns(200, None),
    ]
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    #[serde(rename = "type")]
    type_slug: Option<String>,
    name: Option<String>,
    kind: Option<String>,
    last_event_id: Option<String>,
}

/// What a subscriber asked for, from the query.
fn filter_of(query: &StreamQuery) -> Result<EventFilter, ApiError> {
    let kinds = match &query.kind {
        None => Vec::new(),
        Some(text) => text
            .split(',')
            .map(|k| k.trim().parse::<EventKind>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                ApiError::field(
                    "kind",
                    format!(
                        "{e}; the kinds are {}",
                        EventKind::ALL.map(EventKind::as_str).join(", ")
                    ),
                )
            })?,
    };
    let filter = EventFilter {
        type_slug: query.type_slug.clone(),
        name: query.name.clone(),
        kinds,
    };
    filter.check().map_err(|e| StoreError::Invalid(vec![e]))?;
    Ok(filter)
}

/// The id a subscriber resumes after: the `Last-Event-ID` header, or the query parameter
/// (for clients that cannot set headers on their first request).
fn last_event_id(headers: &HeaderMap, query: &StreamQuery) -> Result<Option<i64>, ApiError> {
    let (field, text) = match headers.get("last-event-id") {
        Some(value) => (
            "Last-Event-ID",
            Some(value.to_str().unwrap_or("\u{fffd}").to_owned()),
        ),
        None => ("last_event_id", query.last_event_id.clone()),
    };
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
        return Ok(None);
    };
    match text.trim().parse::<i64>() {
        Ok(id) if id >= 0 => Ok(Some(id)),
        _ => Err(ApiError::field(
            field,
            "must be the id of an event this stream sent (a non-negative integer)",
        )),
    }
}

async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    QueryParams(query): QueryParams<StreamQuery>,
) -> ApiResult<Response> {
    let filter = filter_of(&query)?;
    let last = last_event_id(&headers, &query)?;
    let Some(token) = caller.token.clone() else {
        return Err(ApiError::Unauthorized("this route needs a token".into()));
    };
    let secret = super::auth::presented_token(&headers)
        .map(SecretString::from)
        .ok_or_else(|| ApiError::Unauthorized("this route needs a token".into()))?;
    // Counted per token family: children minted by one token share its streams.
    let family = state.store.token_family_root(token.id).await?;
    let slot = state.feed.open(family)?;
    // The pump's start comes before this stream's (read below): an event committed after
    // this stream's start is one the pump broadcasts.
    let mut pumping = state.feed.pumping.subscribe();
    match tokio::time::timeout(PUMP_START_WAIT, pumping.wait_for(|started| *started)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) | Err(_) => {
            return Err(ApiError::Unavailable(
                "the change feed is not reading the store yet; retry later".into(),
            ));
        }
    }
    // Subscribed before the start is read: nothing committed in between is missed.
    let live = state.feed.events.subscribe();
    let (start, reset) = match last {
        None => (state.store.feed_end().await?, None),
        Some(id) => match state.store.resume_after(id).await? {
            Resume::After(position) => (position, None),
            Resume::Reset(end) => (end, Some(id)),
        },
    };
    let (tx, rx) = mpsc::channel::<Event>(SUBSCRIBER_BUFFER);
    let first = Event::default().retry(RETRY_AFTER).comment("subscribed");
    let _ = tx.try_send(first);
    if let Some(id) = reset {
        let reset = ResetEvent {
            last_event_id: Some(id),
            reason: "the events after this id are no longer kept (or it is not an id of this feed); drop what you derived from earlier events".to_owned(),
        };
        let _ = tx.try_send(
            Event::default()
                .event("reset")
                .json_data(&reset)
                .unwrap_or_default(),
        );
    }
    let subscriber = Subscriber {
        closing: state.feed.closing.subscribe(),
        lagging: state.feed.lagging.subscribe(),
        checked: std::time::Instant::now(),
        store: Arc::clone(&state.store),
        token,
        secret,
        filter,
        at: start,
        out: tx,
        _slot: slot,
    };
    tokio::spawn(subscriber.run(live));
    let body = Sse::new(receiver_stream(rx))
        .keep_alive(KeepAlive::new().interval(HEARTBEAT_EVERY).text("heartbeat"));
    let mut response = body.into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    // Tells nginx-like proxies not to buffer the stream.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    Ok(response)
}

fn receiver_stream(rx: mpsc::Receiver<Event>) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    })
}

/// One subscriber's task: reads the table from its start, then follows the broadcast.
struct Subscriber {
    closing: tokio::sync::watch::Receiver<bool>,
    lagging: tokio::sync::watch::Receiver<bool>,
    /// When the token was last authenticated.
    checked: std::time::Instant,
    store: Arc<Store>,
    token: Arc<TokenInfo>,
    secret: SecretString,
    filter: EventFilter,
    at: Position,
    out: mpsc::Sender<Event>,
    _slot: StreamSlot,
}

/// Why a subscriber stops.
enum Stop {
    /// The client went away.
    Gone,
    /// The token is no longer valid.
    Refused,
}

impl Subscriber {
    async fn run(mut self, mut live: broadcast::Receiver<Arc<FeedEvent>>) {
        let mut closing = self.closing.clone();
        let mut recheck = tokio::time::interval(RECHECK_EVERY);
        recheck.reset();
        if self.catch_up().await.is_err() {
            return;
        }
        // Everything missed is sent: from here a cache may trust what it holds.
        let mut lagging = self.lagging.clone();
        let name = if *lagging.borrow_and_update() {
            "lagging"
        } else {
            "ready"
        };
        if self
            .out
            .send(Event::default().event(name).data("{}"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            tokio::select! {
                // Events before the lag flag: the pump broadcasts what was held back
                // before it clears the flag.
                biased;
                received = live.recv() => match received {
                    Ok(event) => {
                        if event.position > self.at {
                            self.at = event.position;
                            if self.send(&event.event).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if self.catch_up().await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = recheck.tick() => {
                    if self.recheck().await.is_err() {
                        return;
                    }
                }
                () = self.out.closed() => return,
                // Only ever set: any change is the shutdown.
                _ = closing.changed() => return,
                changed = lagging.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now_lagging = *lagging.borrow_and_update();
                    // Caught up again: whatever was held back came first (the pump
                    // broadcast it before clearing the flag).
                    let name = if now_lagging { "lagging" } else { "ready" };
                    if self.out.send(Event::default().event(name).data("{}")).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Sends what the table holds after `at`.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        loop {
            let batch = match self.store.events_after(self.at, BATCH).await {
                Ok(batch) => batch,
                Err(e) => {
                    // The client reconnects with its Last-Event-ID and misses nothing.
                    tracing::warn!(error = %e, "cannot read the change feed; ending a stream");
                    return Err(Stop::Gone);
                }
            };
            let full = batch.len() == BATCH as usize;
            for event in batch {
                self.at = event.position;
                self.send(&event.event).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Between batches and sends: the client still there, the server not shutting down,
    /// the token checked again when that is due (a subscriber far behind never leaves
    /// the catch-up, so it is checked here too).
    async fn still_wanted(&mut self) -> Result<(), Stop> {
        if self.out.is_closed() || *self.closing.borrow() {
            return Err(Stop::Gone);
        }
        if self.checked.elapsed() >= RECHECK_EVERY {
            self.recheck().await?;
        }
        Ok(())
    }

    /// Sends `event` when the subscriber asked for it and its token may see it.
    async fn send(&mut self, event: &ChangeEvent) -> Result<(), Stop> {
        self.still_wanted().await?;
        if !self.filter.matches(event) {
            return Ok(());
        }
        match may_see(&self.store, &self.token, event).await {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            // Not skipped: the client resumes from the last event it got.
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell who may see an event; ending a stream");
                return Err(Stop::Gone);
            }
        }
        let sse = Event::default()
            .id(event.id.to_string())
            .event(event.kind.as_str())
            .json_data(event)
            .map_err(|_| Stop::Gone)?;
        self.out.send(sse).await.map_err(|_| Stop::Gone)
    }

    /// Authenticates the token again: a revoked or expired one ends the stream; new
    /// grants apply from now on.
    async fn recheck(&mut self) -> Result<(), Stop> {
        self.checked = std::time::Instant::now();
        match self.store.authenticate(self.secret.expose_secret()).await {
            Ok(Ok(info)) => {
                self.token = Arc::new(info);
                Ok(())
            }
            Ok(Err(_)) => Err(Stop::Refused),
            // The database is unreachable: keep the stream; the next check decides.
            Err(e) => {
                tracing::warn!(error = %e, "cannot check an event stream's token; checking again later");
                Ok(())
            }
        }
    }
}

/// Whether `token` may see `event`: the document (or, for an anonymous one, a named
/// document whose tree holds it, or the token's own write), every token for types and
/// schemas, `admin` for keys.
pub(crate) async fn may_see(
    store: &Store,
    token: &TokenInfo,
    event: &ChangeEvent,
) -> crate::store::Result<bool> {
    if event.kind.is_key() {
        return Ok(token.grants(Scope::Admin));
    }
    if !event.kind.is_document() || !token.limited() {
        return Ok(true);
    }
    let (Some(slug), Some(name)) = (&event.block_type_slug, &event.block_document_name) else {
        return Ok(false);
    };
    if !event.is_anonymous {
        return Ok(token.may(Scope::Read, slug, name));
    }
    if event.token_id == Some(token.id) {
        return Ok(true);
    }
    let Some(id) = event.block_document_id else {
        return Ok(false);
    };
    Ok(store
        .named_referrers(id)
        .await?
        .iter()
        .any(|owner| token.may(Scope::Read, &owner.slug, &owner.name)))
}
