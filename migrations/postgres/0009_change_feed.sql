-- The change feed: one row per change of a block document, type or schema and per key
-- rotation step, written in the change's own transaction. Never a value.
--
-- `xid` is the writing transaction's id (`pg_current_xact_id()`). Concurrent writers take
-- `seq` numbers in one order and commit in another, so a reader could see seq 8 before seq
-- 7 commits; the feed is read in (xid, seq) order and only up to the oldest transaction
-- still running, so every reader sees every event once, in one order, with no gaps.
create table block_event (
    seq bigint generated always as identity primary key,
    xid bigint not null,
    occurred bigint not null,
    kind text not null,
    block_document_id text,
    block_type_slug text,
    name text,
    is_anonymous bigint not null default 0,
    block_schema_id text,
    key_id text,
    version bigint,
    token_id text
);
create index block_event_position on block_event (xid, seq);
create index block_event_by_time on block_event (occurred);
