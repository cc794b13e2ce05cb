-- The change feed: one row per change of a block document, type or schema and per key
-- rotation step, written in the change's own transaction. Never a value.
--
-- `xid` orders the feed across concurrent writers on PostgreSQL (see the PostgreSQL
-- migration); SQLite has one writer at a time, so it is 0 and `seq` alone is the order.
create table block_event (
    seq integer primary key autoincrement,
    xid integer not null default 0,
    occurred integer not null,
    kind text not null,
    block_document_id text,
    block_type_slug text,
    name text,
    is_anonymous integer not null default 0,
    block_schema_id text,
    key_id text,
    version integer,
    token_id text
);
create index block_event_position on block_event (xid, seq);
create index block_event_by_time on block_event (occurred);
