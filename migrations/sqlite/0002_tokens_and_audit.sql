-- API tokens and the audit log. Same column shapes as 0001: uuid text, microseconds since
-- the Unix epoch, JSON text.

-- A bearer token. Only the SHA-256 of the token is kept; the token itself is shown once.
create table api_token (
    id text primary key,
    name text not null,
    token_hash text not null unique,
    -- JSON array of scopes: "read", "read-secrets", "write", "admin".
    scopes text not null,
    created integer not null,
    expires integer,
    last_used integer,
    revoked integer
);

-- Who did what, when, and how it ended. Never a secret value.
create table audit_event (
    seq integer primary key autoincrement,
    at integer not null,
    request_id text not null,
    token_id text,
    action text not null,
    target text not null,
    outcome text not null,
    status integer not null
);
create index audit_event_by_time on audit_event (at);
create index audit_event_by_token on audit_event (token_id, seq);
