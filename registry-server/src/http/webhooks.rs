//! Webhooks (admin): registration, the delivery log, a test send, and the worker that
//! dispatches feed events into deliveries and POSTs them.
//!
//! A delivery is a POST of the event's JSON with
//! `Blocks-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the secret>`,
//! plus `Blocks-Webhook-Id`, `Blocks-Delivery-Id` (the same on every attempt, for the
//! receiver to drop duplicates) and `Blocks-Event-Id`. A 2xx answer within
//! [`SEND_TIMEOUT`] delivers it; anything else is retried with exponential backoff (2 s,
//! doubling, at most an hour apart) for a day after the event.
//!
//! Where a webhook may point (a server-side request forgery guard): `https`, or `http` to a
//! loopback address; never a private, link-local, shared or unspecified address (cloud
//! metadata endpoints live there) unless the server runs with
//! `--webhooks-allow-private`. Names are resolved when a delivery is sent and every
//! address is checked then, so a name that later resolves to a private address is refused
//! too. Redirects are not followed.

use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use block_types::webhooks::WebhookTest;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use uuid::Uuid;

use super::extract::{Body, Caller, Id, QueryParams};
use super::routes::{Route, delete, get, post};
use super::{ApiError, ApiResult, St};
use crate::store::{Attempt, Claimed, Store, Webhook, WebhookCreate, WebhookCreated};

/// One delivery attempt's limit, connection included.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries one server sends at once (a dead receiver ties up at most these).
const CONCURRENT: u32 = 16;
/// How long a claimed delivery is this server's (longer than an attempt can take).
const LEASE: chrono::Duration = chrono::Duration::seconds(60);
/// The worker looks for due deliveries at least this often.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How often deliveries queued past the retry period are given up.
const GIVE_UP_EVERY: Duration = Duration::from_secs(10);
/// Dispatch rounds are at least this far apart.
const DISPATCH_EVERY: Duration = Duration::from_millis(50);
/// Deliveries listed at most.
const MAX_LISTED: u32 = 500;

/// The webhook sender: HTTP clients that check every address they connect to.
#[derive(Debug)]
pub struct Webhooks {
    strict: reqwest::Client,
    open: reqwest::Client,
    allow_private: std::sync::atomic::AtomicBool,
}

impl Default for Webhooks {
    fn default() -> Self {
        Self {
            strict: sender(false),
            open: sender(true),
            allow_private: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

fn sender(allow_private: bool) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // A proxy from the environment would resolve and reach the address itself,
        // past the checks below.
        .no_proxy()
        .timeout(SEND_TIMEOUT)
        .connect_timeout(SEND_TIMEOUT)
        .dns_resolver(Arc::new(Guarded { allow_private }))
        .user_agent(concat!("blocks-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

impl Webhooks {
    /// Lets webhooks reach private and link-local addresses (`--webhooks-allow-private`).
    pub fn allow_private(&self, allow: bool) {
        self.allow_private
            .store(allow, std::sync::atomic::Ordering::Relaxed);
    }

    fn private_allowed(&self) -> bool {
        self.allow_private
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn client(&self) -> &reqwest::Client {
        if self.private_allowed() {
            &self.open
        } else {
            &self.strict
        }
    }

    /// Checks a webhook URL: scheme, no credentials, and (for an address) where it points.
    fn check_url(&self, text: &str) -> Result<url::Url, ApiError> {
        let url = url::Url::parse(text)
            .map_err(|e| ApiError::field("url", format!("is not a URL: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ApiError::field(
                "url",
                "must not carry credentials (the receiver checks the signature instead)",
            ));
        }
        let host = url
            .host()
            .ok_or_else(|| ApiError::field("url", "has no host"))?;
        let loopback = match &host {
            url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
            url::Host::Ipv4(ip) => ip.is_loopback(),
            url::Host::Ipv6(ip) => ip.is_loopback(),
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(ApiError::field(
                    "url",
                    "must use https (plain http only to a loopback address)",
                ));
            }
            other => {
                return Err(ApiError::field(
                    "url",
                    format!("must use https, not {other}"),
                ));
            }
        }
        let ip = match host {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        };
        if let Some(ip) = ip
            && !self.private_allowed()
            && !reachable(ip)
        {
            return Err(ApiError::field(
                "url",
                format!(
                    "points at {ip}, a private, link-local or reserved address; the server refuses those unless started with --webhooks-allow-private"
                ),
            ));
        }
        Ok(url)
    }

    /// POSTs `body` signed with `secret`; how it went.
    async fn send(
        &self,
        url: &str,
        secret: &secrecy::SecretString,
        body: String,
        headers: &[(&str, String)],
    ) -> Attempt {
        // An address in the URL is never resolved, so it is checked here, at every send
        // (the server's setting may have changed since the webhook was registered).
        if !self.private_allowed()
            && let Some(ip) = url::Url::parse(url).ok().and_then(|u| match u.host() {
                Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
                _ => None,
            })
            && !reachable(ip)
        {
            return Attempt::Failed {
                status: None,
                error: format!("{ip} is a private, link-local or reserved address"),
            };
        }
        let timestamp = chrono::Utc::now().timestamp();
        let signature = signature(secret.expose_secret(), timestamp, &body);
        let mut request = self
            .client()
            .post(url)
            .header("content-type", "application/json")
            .header("blocks-signature", format!("t={timestamp},v1={signature}"));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        match request.body(body).send().await {
            Ok(response) if response.status().is_success() => {
                Attempt::Delivered(response.status().as_u16())
            }
            Ok(response) => Attempt::Failed {
                status: Some(response.status().as_u16()),
                error: format!("the receiver answered {}", response.status()),
            },
            Err(e) => Attempt::Failed {
                status: None,
                error: describe(&e),
            },
        }
    }
}

/// What went wrong with a send, in words (never a body).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        format!("no answer within {} s", SEND_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// `hex(HMAC-SHA256(secret, "<timestamp>.<body>"))`.
pub fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body.as_bytes());
    hex::encode(context.sign().as_ref())
}

/// Whether a webhook may connect to `ip` without `--webhooks-allow-private`: loopback, or
/// a public address (not private, link-local, shared, unspecified, broadcast, multicast,
/// benchmarking, documentation or otherwise reserved). IPv6 forms that carry an IPv4
/// address (mapped, compatible, NAT64, 6to4) are judged by that address.
pub fn reachable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || !(v4.is_private()
                    || v4.is_link_local()
                    || v4.is_unspecified()
                    || v4.is_broadcast()
                    || v4.is_multicast()
                    || v4.is_documentation()
                    || (a == 100 && (64..128).contains(&b))
                    || (a == 192 && b == 0 && c == 0)
                    || (a == 192 && b == 88 && c == 99)
                    || (a == 198 && (18..20).contains(&b))
                    || a == 0
                    || a >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                IpAddr::V4(std::net::Ipv4Addr::from(
                    (u32::from(hi) << 16) | u32::from(lo),
                ))
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return reachable(IpAddr::V4(v4));
            }
            if v6.is_loopback() {
                return true;
            }
            // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::/96, 64:ff9b:1::/48).
            if s[..6] == [0; 6] || (s[0] == 0x64 && s[1] == 0xff9b) {
                return reachable(embedded(s[6], s[7]));
            }
            // 6to4 (2002:a.b.c.d::/48).
            if s[0] == 0x2002 {
                return reachable(embedded(s[1], s[2]));
            }
            !(v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0)
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// Resolves names and keeps only the addresses a webhook may reach.
struct Guarded {
    allow_private: bool,
}

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<std::net::SocketAddr> = found
                .iter()
                .copied()
                .filter(|addr| allow_private || reachable(addr.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!(
                    "{host} resolves only to private, link-local or reserved addresses (allowed with --webhooks-allow-private)"
                )
                .into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// Starts the worker over `store`: dispatches new feed events into deliveries and sends
/// the due ones, until the store is gone.
pub(super) fn start(store: &Arc<Store>, webhooks: &Arc<Webhooks>) {
    tokio::spawn(worker(Arc::downgrade(store), Arc::downgrade(webhooks)));
}

async fn worker(store: Weak<Store>, webhooks: Weak<Webhooks>) {
    let mut signal = match store.upgrade() {
        Some(store) => store.feed_signal(),
        None => return,
    };
    let mut dispatched = std::time::Instant::now()
        .checked_sub(DISPATCH_EVERY)
        .unwrap_or_else(std::time::Instant::now);
    // Sends in flight: a new claim fills each slot as soon as a send ends, so one slow
    // receiver never holds the others' deliveries back.
    let mut sending = tokio::task::JoinSet::new();
    let mut gave_up = std::time::Instant::now();
    loop {
        {
            let (Some(store), Some(webhooks)) = (store.upgrade(), webhooks.upgrade()) else {
                return;
            };
            // Each dispatch is a transaction that moves the shared cursor: under a stream
            // of writes, one every DISPATCH_EVERY queues many events at once.
            if dispatched.elapsed() >= DISPATCH_EVERY {
                dispatched = std::time::Instant::now();
                match store.dispatch_webhooks().await {
                    Ok(_) => {}
                    Err(e) if e.is_closed() => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not queue webhook deliveries; trying again");
                    }
                }
            }
            if gave_up.elapsed() >= GIVE_UP_EVERY {
                gave_up = std::time::Instant::now();
                match store.give_up_stale_deliveries().await {
                    Ok(_) => {}
                    Err(e) if e.is_closed() => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not give up stale webhook deliveries");
                    }
                }
            }
            let room =
                CONCURRENT.saturating_sub(u32::try_from(sending.len()).unwrap_or(CONCURRENT));
            // Claimed a few at a time, not one per ended send.
            if room >= CONCURRENT / 4 || sending.is_empty() {
                match store.claim_deliveries(room, LEASE).await {
                    Ok(claimed) => {
                        for delivery in claimed {
                            let (store, webhooks) = (Arc::clone(&store), Arc::clone(&webhooks));
                            sending
                                .spawn(async move { deliver(&store, &webhooks, delivery).await });
                        }
                    }
                    Err(e) if e.is_closed() => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not claim webhook deliveries; trying again");
                    }
                }
            }
        }
        tokio::select! {
            // A send ended: its slot takes the next due delivery at once.
            Some(_) = sending.join_next(), if !sending.is_empty() => continue,
            changed = signal.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(POLL_EVERY) => {}
        }
        // Let a burst of writes gather before the next dispatch.
        tokio::time::sleep(DISPATCH_EVERY.saturating_sub(dispatched.elapsed())).await;
    }
}

async fn deliver(store: &Store, webhooks: &Webhooks, delivery: Claimed) {
    let outcome = match store.webhook_secret(delivery.webhook_id).await {
        Ok(secret) => {
            let headers = [
                ("blocks-webhook-id", delivery.webhook_id.to_string()),
                ("blocks-delivery-id", delivery.id.to_string()),
                ("blocks-event-id", delivery.event_id.to_string()),
            ];
            webhooks
                .send(&delivery.url, &secret, delivery.body.clone(), &headers)
                .await
        }
        Err(e) => Attempt::Failed {
            status: None,
            error: format!("the webhook's secret cannot be opened: {e}"),
        },
    };
    if let Attempt::Failed { error, .. } = &outcome {
        tracing::info!(
            webhook = %delivery.webhook_id,
            event = delivery.event_id,
            attempt = delivery.attempt,
            %error,
            "a webhook delivery failed; it is retried later"
        );
    }
    if let Err(e) = store.finish_delivery(&delivery, outcome).await {
        tracing::warn!(error = %e, "could not record a webhook delivery; it is attempted again when its lease ends");
    }
}

pub(super) fn routes() -> Vec<Route> {
    vec![
        post("/api/webhooks", create)
            .admin()
            .unversioned()
            .tag("webhooks")
            .summary("Register a webhook; the answer carries its signing secret, shown once")
            .body("WebhookCreate")
            .returns(201, Some("WebhookCreated")),
        get("/api/webhooks", list)
            .admin()
            .unversioned()
            .tag("webhooks")
            .summary("Every webhook (never a secret)")
            .returns(200, Some("Webhook[]")),
        delete("/api/webhooks/{id}", remove)
            .admin()
            .unversioned()
            .tag("webhooks")
            .summary("Delete a webhook and its pending deliveries")
            .returns(204, None),
        get("/api/webhooks/{id}/deliveries", deliveries)
            .admin()
            .unversioned()
            .tag("webhooks")
            .summary("A webhook's deliveries, newest first: state, attempts, last status and error")
            .query(&[(
                "limit",
                "integer",
                "At most this many (default 50, at most 500)",
            )])
            .returns(200, Some("WebhookDelivery[]")),
        post("/api/webhooks/{id}/test", test)
            .admin()
            .unversioned()
            .tag("webhooks")
            .summary("Send a signed `webhook.test` event now and answer how it went (not retried)")
            .returns(200, Some("WebhookTest")),
    ]
}

async fn create(
    State(state): St,
    caller: Caller,
    Body(body): Body<WebhookCreate>,
) -> ApiResult<Response> {
    state.webhooks.check_url(&body.url)?;
    let (webhook, secret) = state
        .store
        .create_webhook(body, caller.rights().token)
        .await?;
    let created = WebhookCreated {
        webhook,
        secret: secret.expose_secret().to_owned(),
    };
    let mut response = (StatusCode::CREATED, Json(created)).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

async fn list(State(state): St) -> ApiResult<Json<Vec<Webhook>>> {
    Ok(Json(state.store.list_webhooks().await?))
}

async fn remove(State(state): St, Id(id): Id) -> ApiResult<StatusCode> {
    state.store.delete_webhook(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<u32>,
}

async fn deliveries(
    State(state): St,
    Id(id): Id,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_LISTED).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("must be between 1 and {MAX_LISTED}"),
        ));
    }
    Ok(Json(json!(state.store.list_deliveries(id, limit).await?)))
}

async fn test(State(state): St, Id(id): Id) -> ApiResult<Json<WebhookTest>> {
    let webhook = state.store.webhook(id).await?;
    let secret = state.store.webhook_secret(id).await?;
    let body = json!({
        "kind": "webhook.test",
        "webhook_id": id,
        "occurred": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    })
    .to_string();
    let started = std::time::Instant::now();
    let headers = [
        ("blocks-webhook-id", id.to_string()),
        ("blocks-delivery-id", Uuid::new_v4().to_string()),
    ];
    let outcome = state
        .webhooks
        .send(&webhook.url, &secret, body, &headers)
        .await;
    let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(Json(match outcome {
        Attempt::Delivered(status) => WebhookTest {
            delivered: true,
            status: Some(status),
            error: None,
            elapsed_ms: elapsed,
        },
        Attempt::Failed { status, error } => WebhookTest {
            delivered: false,
            status,
            error: Some(error),
            elapsed_ms: elapsed,
        },
    }))
}

#[cfg(test)]
mod tests {
    /// The README's Python verification computes the same value (vector from Python's
    /// `hmac.new(b"whsec_test", b"1765033445." + body, hashlib.sha256).hexdigest()`).
    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        assert_eq!(
            super::signature("whsec_test", 1_765_033_445, r#"{"id":1}"#),
            "50652276bf57db07d5986ec709de4810b26455a292716cbe9b9b125b2f884af7"
        );
    }
}
