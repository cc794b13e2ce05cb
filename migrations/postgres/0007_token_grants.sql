-- Grants and child tokens. `grants`: a JSON array of {"scope", "selector"} limiting the
-- token's scopes to some blocks (empty: every block). `parent_id`: the token that minted
-- this one through /api/tokens/child; revoking a token revokes its descendants.
alter table api_token add column grants text not null default '[]';
alter table api_token add column parent_id text;
create index api_token_by_parent on api_token (parent_id);
create index api_token_by_expiry on api_token (expires);
