-- Webhooks: a URL that receives every change-feed event its filter selects, as a POST
-- signed with the webhook's secret (kept sealed under the master key).
create table webhook (
    id text primary key,
    url text not null,
    description text not null,
    -- JSON {"type": glob|null, "name": glob|null, "kinds": [..]}.
    filter text not null,
    secret blob not null,
    created integer not null,
    token_id text
);

-- One event to deliver to one webhook, and how that went. A replica claims a due delivery
-- by setting `lease_until`; no other replica takes it before then.
create table webhook_delivery (
    id text primary key,
    webhook_id text not null references webhook (id) on delete cascade,
    event_seq integer not null,
    kind text not null,
    -- The event as sent (ids, names, versions; never a value).
    event text not null,
    -- pending, delivered or failed.
    state text not null,
    attempts integer not null default 0,
    next_attempt integer not null,
    lease_until integer,
    last_status integer,
    last_error text,
    created integer not null,
    finished integer,
    unique (webhook_id, event_seq)
);
create index webhook_delivery_due on webhook_delivery (state, next_attempt);
create index webhook_delivery_by_webhook on webhook_delivery (webhook_id, created);
