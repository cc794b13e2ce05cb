//! Watching the change feed: [`Client::watch`] gives a stream of the server's change events
//! (`GET /api/events/stream`), reconnecting with `Last-Event-ID` so none is missed; and
//! [`Client::watching`] makes the cache drop a block the moment it (or anything it
//! references) changes.

use std::pin::Pin;
use std::time::Duration;

use block_types::events::{ChangeEvent, EventKind, ResetEvent};
use eventsource_stream::Eventsource as _;
use futures::{Stream, StreamExt as _};
use reqwest::StatusCode;

use crate::client::Client;
use crate::error::Error;

/// The first reconnect's wait; each next one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Which events to watch: every one the token may read, or those of a type, a name glob,
/// some kinds.
///
/// ```
/// use registry_client::Watch;
///
/// let buckets = Watch::all().of_type("gcs-bucket").named("zoom-*");
/// # let _ = buckets;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watch {
    type_slug: Option<String>,
    name: Option<String>,
    kinds: Vec<EventKind>,
}

impl Watch {
    /// Every event the token may see.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only events of block types whose slug matches `glob` (`*` matches any run).
    #[must_use]
    pub fn of_type(mut self, glob: impl Into<String>) -> Self {
        self.type_slug = Some(glob.into());
        self
    }

    /// Only document events of documents whose name matches `glob`.
    #[must_use]
    pub fn named(mut self, glob: impl Into<String>) -> Self {
        self.name = Some(glob.into());
        self
    }

    /// Only these kinds.
    #[must_use]
    pub fn kinds(mut self, kinds: impl IntoIterator<Item = EventKind>) -> Self {
        self.kinds = kinds.into_iter().collect();
        self
    }

    fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if let Some(slug) = &self.type_slug {
            query.push(("type", slug.clone()));
        }
        if let Some(name) = &self.name {
            query.push(("name", name.clone()));
        }
        if !self.kinds.is_empty() {
            let kinds: Vec<&str> = self.kinds.iter().map(|k| k.as_str()).collect();
            query.push(("kind", kinds.join(",")));
        }
        query
    }
}

/// What a watch yields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// A change.
    Change(ChangeEvent),
    /// The server no longer keeps the events since the last one this stream saw (it was
    /// disconnected for longer than the feed's retention): anything derived from earlier
    /// events may be stale. The stream goes on with new events.
    Reset(ResetEvent),
}

/// What the watch loop tells its consumer, connection changes included.
#[derive(Debug)]
pub(crate) enum Signal {
    /// A stream is open. `resumed` when it picks up after an event we saw (the missed
    /// events come next), not from the end of the feed.
    Connected {
        resumed: bool,
    },
    /// The server sent every event we missed: from here on every change reaches us.
    Ready,
    /// Changes are readable whose events wait behind a long transaction on the server:
    /// until the next `Ready`, a change may not have reached us yet.
    Lagging,
    /// An event this client cannot read (a kind of a newer server): something changed.
    Unreadable,
    /// The stream was lost; reconnecting.
    Disconnected,
    Event(WatchEvent),
}

type Events = Pin<
    Box<
        dyn Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

struct Loop {
    client: Client,
    filter: Watch,
    last: Option<i64>,
    events: Option<Events>,
    backoff: Duration,
    failed: bool,
}

impl Client {
    /// The server's change events that `filter` selects and the token may read, as they
    /// happen (see the README's "Watching changes"). The stream reconnects by itself after
    /// a lost connection or a server restart, resuming after the last event it yielded, so
    /// none is missed (a [`WatchEvent::Reset`] says when the server no longer has them). It
    /// ends with an error the server gives for good: a refused token, a bad filter.
    ///
    /// ```no_run
    /// use futures::StreamExt as _;
    /// use registry_client::{Client, Watch, WatchEvent};
    ///
    /// # async fn run() -> Result<(), registry_client::Error> {
    /// let client = Client::from_env()?;
    /// let mut changes = std::pin::pin!(client.watch(Watch::all().of_type("gcs-bucket")));
    /// while let Some(event) = changes.next().await {
    ///     if let WatchEvent::Change(change) = event? {
    ///         println!("{} {:?}", change.kind, change.block_document_name);
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn watch(&self, filter: Watch) -> impl Stream<Item = Result<WatchEvent, Error>> + Send {
        self.signals(filter).filter_map(|signal| async move {
            match signal {
                Ok(Signal::Event(event)) => Some(Ok(event)),
                Ok(
                    Signal::Connected { .. }
                    | Signal::Ready
                    | Signal::Lagging
                    | Signal::Unreadable
                    | Signal::Disconnected,
                ) => None,
                Err(e) => Some(Err(e)),
            }
        })
    }

    /// [`Client::watch`] with the connection changes, for the watching cache.
    pub(crate) fn signals(
        &self,
        filter: Watch,
    ) -> impl Stream<Item = Result<Signal, Error>> + Send + 'static {
        let state = Loop {
            client: self.clone(),
            filter,
            last: None,
            events: None,
            backoff: FIRST_BACKOFF,
            failed: false,
        };
        futures::stream::unfold(state, |mut state| async move {
            if state.failed {
                return None;
            }
            let item = state.next().await;
            if item.is_err() {
                state.failed = true;
            }
            Some((item, state))
        })
    }
}

impl Loop {
    async fn next(&mut self) -> Result<Signal, Error> {
        loop {
            let Some(events) = &mut self.events else {
                match self.connect().await? {
                    Some(events) => {
                        self.events = Some(events);
                        self.backoff = FIRST_BACKOFF;
                        return Ok(Signal::Connected {
                            resumed: self.last.is_some(),
                        });
                    }
                    None => {
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            };
            match events.next().await {
                Some(Ok(event)) => {
                    if let Some(signal) = self.decode(&event) {
                        return Ok(signal);
                    }
                }
                // Lost (or ended by the server): reconnect after the last event seen.
                Some(Err(_)) | None => {
                    self.events = None;
                    return Ok(Signal::Disconnected);
                }
            }
        }
    }

    /// Opens a stream: `Some` when open, `None` on a failure worth retrying, an error when
    /// the server refuses for good.
    async fn connect(&mut self) -> Result<Option<Events>, Error> {
        let url = self.client.url("events/stream")?;
        let token = self.client.bearer().await?;
        let mut request = self
            .client
            .stream_http()
            .get(url)
            .query(&self.filter.query())
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(token) = &token {
            use secrecy::ExposeSecret as _;
            request = request.bearer_auth(token.expose_secret());
        }
        if let Some(last) = self.last {
            request = request.header("last-event-id", last.to_string());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(_) => return Ok(None),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(Some(Box::pin(response.bytes_stream().eventsource())));
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Ok(None);
        }
        Err(self
            .client
            .check(response)
            .await
            .err()
            .unwrap_or(Error::Http {
                status: status.as_u16(),
                detail: "the event stream was refused".to_owned(),
            }))
    }

    fn decode(&mut self, event: &eventsource_stream::Event) -> Option<Signal> {
        // Whatever it is, an event with an id is past.
        if let Ok(id) = event.id.parse() {
            self.last = Some(id);
        }
        match event.event.as_str() {
            "ready" => Some(Signal::Ready),
            "lagging" => Some(Signal::Lagging),
            "reset" => Some(match serde_json::from_str::<ResetEvent>(&event.data) {
                Ok(reset) => Signal::Event(WatchEvent::Reset(reset)),
                Err(_) => Signal::Unreadable,
            }),
            _ if event.data.is_empty() => None,
            _ => Some(match serde_json::from_str::<ChangeEvent>(&event.data) {
                Ok(change) => Signal::Event(WatchEvent::Change(change)),
                Err(_) => Signal::Unreadable,
            }),
        }
    }
}

/// How often the watching cache's task looks whether its cache is still in use, when the
/// feed is quiet.
const LIVENESS_CHECK: Duration = Duration::from_secs(30);

/// The watching cache's task: follows the whole feed the token may read and drops what
/// changed. Ends when the cache is gone, or when the server refuses the stream for good
/// (the cache then revalidates every load).
pub(crate) async fn follow(client: Client, cache: std::sync::Weak<crate::client::Cache>) {
    // However this task ends (the cache gone, a refusal, its runtime shut down, a panic),
    // the cache stops trusting entries and a later load starts the task again.
    let _untrusted = Untrust(cache.clone());
    let mut signals = std::pin::pin!(client.signals(Watch::all()));
    let mut check = tokio::time::interval(LIVENESS_CHECK);
    loop {
        let signal = tokio::select! {
            signal = signals.next() => signal,
            _ = check.tick() => {
                if cache.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        let Some(cache) = cache.upgrade() else { return };
        match signal {
            Some(Ok(Signal::Connected { resumed })) => {
                // From the end of the feed: what was cached before may have changed
                // unseen. Resumed: the missed events come next, before `Ready`.
                if !resumed {
                    cache.drop_changed(None);
                }
            }
            Some(Ok(Signal::Ready)) => cache.set_connected(true),
            Some(Ok(Signal::Disconnected | Signal::Lagging)) => cache.set_connected(false),
            Some(Ok(Signal::Event(WatchEvent::Reset(_)) | Signal::Unreadable)) => {
                cache.drop_changed(None);
            }
            Some(Ok(Signal::Event(WatchEvent::Change(change)))) => {
                if change.kind.is_document() {
                    cache.drop_changed(change.block_document_id);
                } else if change.kind == EventKind::TypeDeleted {
                    cache.drop_changed(None);
                }
            }
            Some(Err(_)) | None => return,
        }
    }
}

/// Sets the cache untrusted, and its feed task to be started again, when dropped.
struct Untrust(std::sync::Weak<crate::client::Cache>);

impl Drop for Untrust {
    fn drop(&mut self) {
        if let Some(cache) = self.0.upgrade() {
            cache.set_connected(false);
            cache.follower_ended();
        }
    }
}
