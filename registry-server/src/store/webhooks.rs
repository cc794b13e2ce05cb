//! Webhooks in the store: their configuration (the signing secret sealed under the master
//! key), the dispatch of feed events into deliveries, and the deliveries themselves, which
//! replicas claim with a lease so each is attempted by one of them at a time.
//!
//! Dispatch reads the feed after a cursor shared by every replica (a setting) and, in one
//! transaction, writes a delivery for each event and matching webhook and moves the cursor:
//! an event is dispatched once, however many replicas run. On PostgreSQL the replica that
//! holds the cursor's row lock dispatches; the others skip the round.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use block_types::ChangeEvent;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::events::Position;
use super::{
    Backend, Result, Store, StoreError, json_col, now_micros, parse_uuid, to_json, to_time,
};
use crate::crypto::MasterKey;
use block_types::webhooks::{Delivery, Webhook, WebhookCreate};

/// Webhooks one server keeps, at most.
pub const MAX_WEBHOOKS: i64 = 100;
/// The longest webhook URL.
pub(crate) const MAX_URL_BYTES: usize = 2048;
/// The longest description.
pub(crate) const MAX_DESCRIPTION_BYTES: usize = 1000;
/// A delivery is retried for this long after its event, then given up.
pub const RETRY_FOR: chrono::Duration = chrono::Duration::hours(24);
/// The wait after the first failed attempt; each next one doubles, up to [`MAX_BACKOFF`].
pub(crate) const FIRST_BACKOFF: chrono::Duration = chrono::Duration::seconds(2);
const MAX_BACKOFF: chrono::Duration = chrono::Duration::hours(1);
/// Deliveries of one webhook in flight at once across replicas (checked when claiming), so
/// a receiver that never answers holds at most these, not every sender's slot.
const PER_WEBHOOK: i64 = 4;
/// Events dispatched per round.
const DISPATCH_BATCH: u32 = 500;
const CURSOR: &str = "webhook_cursor";
/// The longest error kept on a delivery.
const MAX_ERROR_BYTES: usize = 500;

/// A delivery a replica claimed: what to send where.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The delivery.
    pub id: Uuid,
    /// The webhook.
    pub webhook_id: Uuid,
    /// Where to POST.
    pub url: String,
    /// The body (the event's JSON).
    pub body: String,
    /// The event's id.
    pub event_id: i64,
    /// This attempt's number (1 for the first).
    pub attempt: i64,
    /// When it was queued (it is given up [`RETRY_FOR`] after).
    pub created: DateTime<Utc>,
    /// The lease this claim holds: its outcome is recorded only while no other replica
    /// took the delivery since.
    lease: i64,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Attempt {
    /// A 2xx answer.
    Delivered(u16),
    /// Another answer, or none (`status` is then `None`).
    Failed {
        /// The answer's status.
        status: Option<u16>,
        /// What went wrong, in words (never the receiver's body).
        error: String,
    },
}

fn secret_aad(id: Uuid) -> Vec<u8> {
    format!("blocks webhook secret {id}").into_bytes()
}

fn webhook_of(row: &AnyRow) -> Result<Webhook> {
    Ok(Webhook {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        filter: json_col(row, "filter")?,
        created: to_time(row.try_get("created")?),
        token_id: row
            .try_get::<Option<String>, _>("token_id")?
            .map(|t| parse_uuid(&t))
            .transpose()?,
    })
}

impl Store {
    /// Registers a webhook; returns it and its signing secret (shown once, kept sealed).
    pub async fn create_webhook(
        &self,
        body: WebhookCreate,
        token: Option<Uuid>,
    ) -> Result<(Webhook, SecretString)> {
        if body.url.is_empty() || body.url.len() > MAX_URL_BYTES {
            return Err(StoreError::invalid(
                "url",
                format!("must be 1 to {MAX_URL_BYTES} bytes"),
            ));
        }
        if body.description.len() > MAX_DESCRIPTION_BYTES {
            return Err(StoreError::invalid(
                "description",
                format!("must be at most {MAX_DESCRIPTION_BYTES} bytes"),
            ));
        }
        body.filter
            .check()
            .map_err(|e| prefixed("filter", StoreError::Invalid(vec![e])))?;
        let kinds: HashSet<_> = body.filter.kinds.iter().collect();
        if kinds.len() != body.filter.kinds.len() {
            return Err(StoreError::invalid(
                "filter.kinds",
                "lists a kind more than once",
            ));
        }
        let id = Uuid::new_v4();
        let mut raw = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(raw.as_mut())
            .map_err(|e| StoreError::Config(format!("no randomness for a webhook secret: {e}")))?;
        let secret =
            zeroize::Zeroizing::new(format!("whsec_{}", URL_SAFE_NO_PAD.encode(raw.as_ref())));
        let end = self.feed_end().await?;
        let mut tx = self.write.begin().await?;
        // Sealed under the master key while its check value is locked, so a concurrent
        // master-key change (which takes the same lock and reseals every secret) cannot
        // commit between the sealing and the insert.
        self.lock_key_check(&mut tx).await?;
        let sealed = self
            .master_key()
            .seal_bytes(&secret_aad(id), secret.as_bytes())?;
        self.count_query();
        let count: i64 = sqlx::query_scalar("select count(*) from webhook")
            .fetch_one(&mut *tx)
            .await?;
        if count >= MAX_WEBHOOKS {
            return Err(StoreError::invalid(
                "url",
                format!(
                    "this server has {MAX_WEBHOOKS} webhooks, the most it keeps; delete one first"
                ),
            ));
        }
        let now = now_micros();
        self.count_query();
        sqlx::query(
            "insert into webhook (id, url, description, filter, secret, created, token_id) \
             values ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.to_string())
        .bind(&body.url)
        .bind(&body.description)
        .bind(to_json(&body.filter))
        .bind(sealed)
        .bind(now)
        .bind(token.map(|t| t.to_string()))
        .execute(&mut *tx)
        .await?;
        // The first webhook (none other now) starts dispatch at the end of the feed, not
        // where it stopped when the last one was deleted.
        self.count_query();
        sqlx::query(if count == 0 {
            "insert into server_metadata (key, value) values ($1, $2) \
             on conflict (key) do update set value = excluded.value"
        } else {
            "insert into server_metadata (key, value) values ($1, $2) on conflict (key) do nothing"
        })
        .bind(CURSOR)
        .bind(to_json(&end.to_pair()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.feed_committed();
        let webhook = Webhook {
            id,
            url: body.url,
            description: body.description,
            filter: body.filter,
            created: to_time(now),
            token_id: token,
        };
        Ok((webhook, SecretString::from(secret.as_str())))
    }

    /// Every webhook, oldest first.
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        self.count_query();
        let rows = sqlx::query(
            "select id, url, description, filter, created, token_id from webhook order by created, id",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(webhook_of).collect()
    }

    /// One webhook.
    pub async fn webhook(&self, id: Uuid) -> Result<Webhook> {
        self.count_query();
        let row = sqlx::query(
            "select id, url, description, filter, created, token_id from webhook where id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.read)
        .await?
        .ok_or_else(|| StoreError::NotFound("Webhook not found".to_owned()))?;
        webhook_of(&row)
    }

    /// Deletes a webhook and its deliveries (pending ones are not sent).
    pub async fn delete_webhook(&self, id: Uuid) -> Result<()> {
        self.count_query();
        let deleted = sqlx::query("delete from webhook where id = $1")
            .bind(id.to_string())
            .execute(&self.write)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound("Webhook not found".to_owned()));
        }
        Ok(())
    }

    /// The webhook's signing secret, opened.
    pub async fn webhook_secret(&self, id: Uuid) -> Result<SecretString> {
        self.count_query();
        let sealed: Vec<u8> = sqlx::query_scalar("select secret from webhook where id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound("Webhook not found".to_owned()))?;
        let plain = self.master_key().open_bytes(&secret_aad(id), &sealed)?;
        let text = std::str::from_utf8(&plain)
            .map_err(|_| StoreError::Corrupt(format!("webhook {id}: secret is not text")))?;
        Ok(SecretString::from(text))
    }

    /// Inside a change of the master key: seals every webhook secret under `new`.
    pub(crate) async fn reseal_webhook_secrets(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        old: &MasterKey,
        new: &MasterKey,
    ) -> Result<()> {
        self.count_query();
        let rows = sqlx::query(&format!(
            "select id, secret from webhook{}",
            self.for_update()
        ))
        .fetch_all(&mut **tx)
        .await?;
        for row in rows {
            let id = parse_uuid(&row.try_get::<String, _>("id")?)?;
            let sealed: Vec<u8> = row.try_get("secret")?;
            let plain = old.open_bytes(&secret_aad(id), &sealed)?;
            self.count_query();
            sqlx::query("update webhook set secret = $1 where id = $2")
                .bind(new.seal_bytes(&secret_aad(id), &plain)?)
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// One dispatch round: turns the events after the shared cursor into deliveries for
    /// the webhooks they match, and moves the cursor, in one transaction. Returns how many
    /// deliveries it queued (0 when another replica holds the cursor, or nothing is new).
    pub async fn dispatch_webhooks(&self) -> Result<usize> {
        // Asked of a reader first: without a webhook, the writer (SQLite's only writer
        // connection) is not touched at all.
        self.count_query();
        let any: i64 =
            sqlx::query_scalar("select count(*) from (select 1 from webhook limit 1) as x")
                .fetch_one(&self.read)
                .await?;
        if any == 0 {
            return Ok(0);
        }
        let mut tx = self.write.begin().await?;
        self.count_query();
        let skip_locked = match self.backend {
            Backend::Postgres => " for update skip locked",
            Backend::Sqlite => "",
        };
        let cursor: Option<String> = sqlx::query_scalar(&format!(
            "select value from server_metadata where key = $1{skip_locked}"
        ))
        .bind(CURSOR)
        .fetch_optional(&mut *tx)
        .await?;
        // No webhook was ever registered, or another replica is dispatching.
        let Some(cursor) = cursor else { return Ok(0) };
        let at = serde_json::from_str::<[i64; 2]>(&cursor)
            .map(Position::from_pair)
            .map_err(|e| StoreError::Corrupt(format!("webhook cursor: {e}")))?;
        let events = self.events_after(at, DISPATCH_BATCH).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(0);
        };
        self.count_query();
        let hooks =
            sqlx::query("select id, url, description, filter, created, token_id from webhook")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(webhook_of)
                .collect::<Result<Vec<_>>>()?;
        // No webhook: nothing to queue and no write (the next first webhook moves the
        // cursor to the end of the feed).
        if hooks.is_empty() {
            return Ok(0);
        }
        let now = now_micros();
        let mut queued = 0;
        for event in &events {
            for hook in hooks.iter().filter(|h| h.filter.matches(&event.event)) {
                self.queue_delivery(&mut tx, hook.id, &event.event, now)
                    .await?;
                queued += 1;
            }
        }
        self.count_query();
        sqlx::query("update server_metadata set value = $1 where key = $2")
            .bind(to_json(&last.to_pair()))
            .bind(CURSOR)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(queued)
    }

    async fn queue_delivery(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        webhook: Uuid,
        event: &ChangeEvent,
        now: i64,
    ) -> Result<()> {
        self.count_query();
        sqlx::query(
            "insert into webhook_delivery (id, webhook_id, event_seq, kind, event, state, attempts, next_attempt, created) \
             values ($1, $2, $3, $4, $5, 'pending', 0, $6, $6) on conflict (webhook_id, event_seq) do nothing",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(webhook.to_string())
        .bind(event.id)
        .bind(event.kind.as_str())
        .bind(to_json(event))
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Gives up the pending deliveries queued longer ago than [`RETRY_FOR`] that no claim
    /// holds (never attempted: a receiver so slow that its queue outgrew the retry
    /// period), so pending rows cannot pile up for ever. Returns how many.
    pub async fn give_up_stale_deliveries(&self) -> Result<u64> {
        let now = now_micros();
        self.count_query();
        let stale: i64 = sqlx::query_scalar(
            "select count(*) from (select 1 from webhook_delivery where state = 'pending' and created < $1 limit 1) as x",
        )
        .bind(now - RETRY_FOR.num_microseconds().unwrap_or(i64::MAX / 4))
        .fetch_one(&self.read)
        .await?;
        if stale == 0 {
            return Ok(0);
        }
        self.count_query();
        Ok(sqlx::query(
            "update webhook_delivery set state = 'failed', finished = $1, \
             last_error = coalesce(last_error, 'not attempted within a day') \
             where state = 'pending' and created < $2 and (lease_until is null or lease_until < $1)",
        )
        .bind(now)
        .bind(now - RETRY_FOR.num_microseconds().unwrap_or(i64::MAX / 4))
        .execute(&self.write)
        .await?
        .rows_affected())
    }

    /// Claims up to `n` due deliveries for `lease` (no other replica takes them before it
    /// ends), counting the attempt.
    pub async fn claim_deliveries(&self, n: u32, lease: chrono::Duration) -> Result<Vec<Claimed>> {
        let now = now_micros();
        // Asked of a reader first, so an idle queue costs the writer nothing.
        self.count_query();
        let due: i64 = sqlx::query_scalar(
            "select count(*) from (select 1 from webhook_delivery where state = 'pending' and next_attempt <= $1 limit 1) as x",
        )
        .bind(now)
        .fetch_one(&self.read)
        .await?;
        if due == 0 {
            return Ok(Vec::new());
        }
        let skip_locked = match self.backend {
            Backend::Postgres => " for update skip locked",
            Backend::Sqlite => "",
        };
        self.count_query();
        // A unique lease value per claim (microseconds, made distinct by a random offset
        // below a millisecond), so a late outcome of an expired claim is not recorded.
        let lease_until = now
            + lease.num_microseconds().unwrap_or(i64::MAX / 4)
            + i64::from(Uuid::new_v4().as_u128() as u16 % 1000);
        let rows = sqlx::query(&format!(
            "update webhook_delivery set lease_until = $1, attempts = attempts + 1 \
             where id in (select d.id from webhook_delivery d where d.state = 'pending' and d.next_attempt <= $2 \
                            and (d.lease_until is null or d.lease_until < $2) \
                            and (select count(*) from webhook_delivery o where o.webhook_id = d.webhook_id \
                                   and o.state = 'pending' and o.lease_until >= $2) < $4 \
                          order by d.next_attempt limit $3{skip_locked}) \
             returning id, webhook_id, event, event_seq, attempts, created"
        ))
        .bind(lease_until)
        .bind(now)
        .bind(i64::from(n))
        .bind(PER_WEBHOOK)
        .fetch_all(&self.write)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let webhook_id = parse_uuid(&row.try_get::<String, _>("webhook_id")?)?;
            self.count_query();
            let url: Option<String> = sqlx::query_scalar("select url from webhook where id = $1")
                .bind(webhook_id.to_string())
                .fetch_optional(&self.read)
                .await?;
            // Deleted meanwhile: its deliveries went with it.
            let Some(url) = url else { continue };
            claimed.push(Claimed {
                id: parse_uuid(&row.try_get::<String, _>("id")?)?,
                webhook_id,
                url,
                body: row.try_get("event")?,
                event_id: row.try_get("event_seq")?,
                attempt: row.try_get("attempts")?,
                created: to_time(row.try_get("created")?),
                lease: lease_until,
            });
        }
        Ok(claimed)
    }

    /// Records how an attempt of `delivery` ended: delivered, retried later (with backoff)
    /// or, [`RETRY_FOR`] after it was queued, given up.
    pub async fn finish_delivery(&self, delivery: &Claimed, attempt: Attempt) -> Result<()> {
        let now = Utc::now();
        self.count_query();
        match attempt {
            Attempt::Delivered(status) => {
                sqlx::query(
                    "update webhook_delivery set state = 'delivered', last_status = $1, last_error = null, \
                     lease_until = null, finished = $2 where id = $3 and lease_until = $4",
                )
                .bind(i64::from(status))
                .bind(now.timestamp_micros())
                .bind(delivery.id.to_string())
                .bind(delivery.lease)
                .execute(&self.write)
                .await?;
            }
            Attempt::Failed { status, error } => {
                let mut error = error;
                if error.len() > MAX_ERROR_BYTES {
                    let mut cut = MAX_ERROR_BYTES;
                    while !error.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    error.truncate(cut);
                }
                let next = now + backoff(delivery.attempt);
                let give_up = next > delivery.created + RETRY_FOR;
                sqlx::query(
                    "update webhook_delivery set state = $1, last_status = $2, last_error = $3, \
                     lease_until = null, next_attempt = $4, finished = $5 \
                     where id = $6 and lease_until = $7 and state = 'pending'",
                )
                .bind(if give_up { "failed" } else { "pending" })
                .bind(status.map(i64::from))
                .bind(error)
                .bind(next.timestamp_micros())
                .bind(give_up.then_some(now.timestamp_micros()))
                .bind(delivery.id.to_string())
                .bind(delivery.lease)
                .execute(&self.write)
                .await?;
            }
        }
        Ok(())
    }

    /// A webhook's deliveries, newest first, at most `limit`.
    pub async fn list_deliveries(&self, webhook: Uuid, limit: u32) -> Result<Vec<Delivery>> {
        self.webhook(webhook).await?;
        self.count_query();
        let rows = sqlx::query(
            "select id, event_seq, kind, state, attempts, last_status, last_error, created, next_attempt, finished \
             from webhook_delivery where webhook_id = $1 order by created desc, event_seq desc limit $2",
        )
        .bind(webhook.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Delivery {
                    id: parse_uuid(&row.try_get::<String, _>("id")?)?,
                    event_id: row.try_get("event_seq")?,
                    kind: row.try_get("kind")?,
                    state: row.try_get("state")?,
                    attempts: row.try_get("attempts")?,
                    last_status: row.try_get("last_status")?,
                    last_error: row.try_get("last_error")?,
                    created: to_time(row.try_get("created")?),
                    next_attempt: to_time(row.try_get("next_attempt")?),
                    finished: row
                        .try_get::<Option<i64>, _>("finished")?
                        .map(|t| to_time(t).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                })
            })
            .collect()
    }

    /// Deletes finished deliveries older than `cutoff` (microseconds).
    pub(crate) async fn prune_deliveries(&self, cutoff: i64) -> Result<u64> {
        self.count_query();
        Ok(
            sqlx::query("delete from webhook_delivery where state <> 'pending' and finished < $1")
                .bind(cutoff)
                .execute(&self.write)
                .await?
                .rows_affected(),
        )
    }
}

/// The wait after failed attempt `n` (1 for the first): 2 s, doubling, at most an hour.
pub fn backoff(attempt: i64) -> chrono::Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    (FIRST_BACKOFF * 2_i32.pow(doublings)).min(MAX_BACKOFF)
}

fn prefixed(prefix: &str, e: StoreError) -> StoreError {
    match e {
        StoreError::Invalid(errors) => {
            StoreError::Invalid(errors.into_iter().map(|e| e.prefixed(prefix)).collect())
        }
        other => other,
    }
}
