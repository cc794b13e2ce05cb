//! `/metrics` in the Prometheus text format: requests and latencies per route template
//! (never a concrete path, so no block name appears), store and key figures, the audit
//! writer's counters.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::routes::{Route, get};
use super::{ApiResult, AppState, St};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

/// A bounded method label: any method outside the standard ones is `OTHER`, so callers
/// cannot create label sets at will.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The server's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    queries: Counter<u64, AtomicU64>,
    audit_records: Counter<u64, AtomicU64>,
    audit_groups: Counter<u64, AtomicU64>,
    audit_failures: Counter<u64, AtomicU64>,
    write_groups: Counter<u64, AtomicU64>,
    write_group_writes: Counter<u64, AtomicU64>,
    tree_cache: Family<OutcomeLabels, Counter<u64, AtomicU64>>,
    tree_cache_entries: Gauge<i64, AtomicI64>,
    tree_cache_bytes: Gauge<i64, AtomicI64>,
    keys: Family<StateLabels, Gauge<i64, AtomicI64>>,
    active_key_encryptions: Gauge<i64, AtomicI64>,
    documents_by_key_state: Family<StateLabels, Gauge<i64, AtomicI64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("blocks");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer, by method and route template",
            latency.clone(),
        );
        let queries = Counter::default();
        registry.register(
            "store_queries",
            "Statements this process sent to the database",
            queries.clone(),
        );
        let audit_records = Counter::default();
        registry.register(
            "audit_records",
            "Audit records stored",
            audit_records.clone(),
        );
        let audit_groups = Counter::default();
        registry.register(
            "audit_group_commits",
            "Audit transactions committed (records per commit = records / commits)",
            audit_groups.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "audit_failures",
            "Audit groups that could not be stored (their requests answered 503)",
            audit_failures.clone(),
        );
        let write_groups = Counter::default();
        registry.register(
            "write_group_commits",
            "SQLite: groups of writes committed together, one sync each (0 on PostgreSQL)",
            write_groups.clone(),
        );
        let write_group_writes = Counter::default();
        registry.register(
            "write_group_writes",
            "SQLite: writes those groups held (writes per sync = writes / commits)",
            write_group_writes.clone(),
        );
        let tree_cache = Family::default();
        registry.register(
            "tree_cache_lookups",
            "Document reads by whether their resolved tree came from the read cache (hit) or the database (miss); evicted and invalidated count trees dropped",
            tree_cache.clone(),
        );
        let tree_cache_entries = Gauge::default();
        registry.register(
            "tree_cache_entries",
            "Resolved trees kept in the read cache",
            tree_cache_entries.clone(),
        );
        let tree_cache_bytes = Gauge::default();
        registry.register(
            "tree_cache_bytes",
            "Stored bytes (plain data and sealed values) the read cache holds",
            tree_cache_bytes.clone(),
        );
        let keys = Family::default();
        registry.register("data_keys", "Data keys by state", keys.clone());
        let active_key_encryptions = Gauge::default();
        registry.register(
            "active_key_encryptions",
            "Encryptions made (or reserved) under the active data key",
            active_key_encryptions.clone(),
        );
        let documents_by_key_state = Family::default();
        registry.register(
            "documents_sealed",
            "Documents whose current version is sealed under an active or a retired key",
            documents_by_key_state.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            queries,
            audit_records,
            audit_groups,
            audit_failures,
            write_groups,
            write_group_writes,
            tree_cache,
            tree_cache_entries,
            tree_cache_bytes,
            keys,
            active_key_encryptions,
            documents_by_key_state,
        }
    }
}

/// Brings a counter up to a total kept elsewhere.
fn catch_up(counter: &Counter<u64, AtomicU64>, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

impl Metrics {
    fn observe(&self, method: &'static str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                method,
                route: route.to_owned(),
            })
            .observe(seconds);
    }
}

/// The middleware that counts and times every request.
pub(super) async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    state.metrics.observe(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

pub(super) fn routes() -> Vec<Route> {
    vec![
        get("/metrics", render)
            .unversioned()
            .tag("server")
            .summary("Prometheus metrics (text format); needs the read scope, without grants")
            .returns(200, Some("Text")),
    ]
}

async fn render(State(state): St, caller: super::extract::Caller) -> ApiResult<Response> {
    if caller.limited().is_some() {
        // The figures cover the whole store (how many documents there are, what every
        // route served): nothing for a token that may see only some blocks.
        return Err(super::ApiError::Forbidden(
            "the metrics cover the whole store: scrape them with a token without grants".into(),
        ));
    }
    let m = &state.metrics;
    catch_up(&m.queries, state.store.query_count());
    let audit = state.audit.stats();
    catch_up(&m.audit_records, audit.records.load(Ordering::Relaxed));
    catch_up(&m.audit_groups, audit.groups.load(Ordering::Relaxed));
    catch_up(&m.audit_failures, audit.failures.load(Ordering::Relaxed));
    if let Some((commits, writes)) = state.store.write_group_stats() {
        catch_up(&m.write_groups, commits);
        catch_up(&m.write_group_writes, writes);
    }
    let trees = state.store.tree_cache_stats();
    for (outcome, total) in [
        ("hit", trees.hits),
        ("miss", trees.misses),
        ("evicted", trees.evictions),
        ("invalidated", trees.invalidations),
    ] {
        let labels = OutcomeLabels {
            outcome: outcome.to_owned(),
        };
        catch_up(&m.tree_cache.get_or_create(&labels), total);
    }
    m.tree_cache_entries
        .set(i64::try_from(trees.entries).unwrap_or(i64::MAX));
    m.tree_cache_bytes
        .set(i64::try_from(trees.bytes).unwrap_or(i64::MAX));
    let keys = state.store.key_status().await?;
    for key_state in ["active", "retired", "destroyed"] {
        let labels = StateLabels {
            state: key_state.to_owned(),
        };
        let of_state = keys.keys.iter().filter(|k| k.state == key_state);
        m.keys
            .get_or_create(&labels)
            .set(of_state.clone().count() as i64);
        m.documents_by_key_state
            .get_or_create(&labels)
            .set(of_state.map(|k| k.documents).sum());
    }
    if let Some(active) = keys.keys.iter().find(|k| k.id == keys.active) {
        m.active_key_encryptions.set(active.encryptions);
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &m.registry)
        .map_err(|e| super::ApiError::Internal(format!("encoding metrics: {e}")))?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}
