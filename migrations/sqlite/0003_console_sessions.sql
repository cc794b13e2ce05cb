-- Console sessions: a browser that signed in to the web console with an API token. Same
-- column shapes as 0002: uuid text, microseconds since the Unix epoch.

-- One signed-in browser. Only the SHA-256 of the session secret is kept; the secret itself
-- lives in the browser's cookie. A session acts as its token, so it ends with it: lookups
-- join api_token and refuse a revoked or expired token.
create table console_session (
    secret_hash text primary key,
    token_id text not null references api_token (id) on delete cascade,
    created integer not null,
    -- Moved forward by lookups, at most once a minute; the idle limit counts from here.
    last_seen integer not null
);
create index console_session_by_token on console_session (token_id);
