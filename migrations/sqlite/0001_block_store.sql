-- The block store: types, schemas, documents with immutable versions, and the keys that
-- encrypt their secrets. Ids are uuid text, times are microseconds since the Unix epoch,
-- flags are 0/1 integers, JSON is text: the same column shapes as the PostgreSQL schema,
-- so one set of queries serves both.

-- Data keys, stored only wrapped by the master key. Exactly one is active.
create table data_key (
    id text primary key,
    created integer not null,
    wrapped blob,
    state text not null check (state in ('active', 'retired', 'destroyed')),
    encryptions integer not null default 0
);
create unique index data_key_one_active on data_key (state) where state = 'active';

-- A kind of block (`gcs-bucket`).
create table block_type (
    id text primary key,
    created integer not null,
    updated integer not null,
    name text not null,
    slug text not null unique,
    logo_url text,
    documentation_url text,
    description text,
    code_example text,
    is_protected integer not null default 0
);

-- One version of a type's JSON Schema. `fields` is kept as submitted (it is what the
-- checksum was computed from). Deleting a type that still has schemas is refused by the store.
create table block_schema (
    id text primary key,
    created integer not null,
    updated integer not null,
    checksum text not null,
    fields text not null,
    capabilities text not null,
    version text not null,
    block_type_id text not null references block_type (id),
    unique (checksum, version)
);
create index block_schema_by_type on block_schema (block_type_id, created);

-- One row per capability, so `block_capabilities.all_` is a plain join on both backends.
create table block_schema_capability (
    block_schema_id text not null references block_schema (id) on delete cascade,
    capability text not null,
    primary key (block_schema_id, capability)
);

-- A field of a schema that holds a nested block of another schema.
create table block_schema_reference (
    parent_block_schema_id text not null references block_schema (id) on delete cascade,
    name text not null,
    reference_block_schema_id text not null references block_schema (id),
    primary key (parent_block_schema_id, name, reference_block_schema_id)
);
create index block_schema_reference_by_child on block_schema_reference (reference_block_schema_id);

-- A named value of a block type. Its data lives in its versions; `version` is the current
-- one and doubles as the optimistic-concurrency token.
create table block_document (
    id text primary key,
    created integer not null,
    updated integer not null,
    name text not null,
    is_anonymous integer not null default 0,
    block_type_id text not null references block_type (id),
    block_type_name text,
    block_schema_id text not null references block_schema (id),
    version integer not null,
    unique (block_type_id, name)
);
create index block_document_by_name on block_document (name);

-- A top-level field of a document that references another document. Deleting a referenced
-- document is refused (no cascade from the child).
create table block_document_reference (
    parent_block_document_id text not null references block_document (id) on delete cascade,
    name text not null,
    reference_block_document_id text not null references block_document (id),
    primary key (parent_block_document_id, name),
    check (parent_block_document_id <> reference_block_document_id)
);
create index block_document_reference_by_child on block_document_reference (reference_block_document_id);

-- Immutable versions of a document: plain data (secrets removed), the sealed secrets (a JSON
-- array of {path, ciphertext}), the data key they are sealed under, the schema and the
-- references ({field: document id}) of that version.
create table block_document_version (
    block_document_id text not null references block_document (id) on delete cascade,
    version integer not null,
    created integer not null,
    block_schema_id text not null references block_schema (id),
    data text not null,
    secrets text not null,
    key_id text references data_key (id),
    refs text not null,
    primary key (block_document_id, version)
);
create index block_document_version_by_key on block_document_version (key_id);

-- Server metadata: the master key's key-check value and, for passphrase keys, the argon2id
-- salt and parameters. Never a key.
create table server_metadata (
    key text primary key,
    value text not null
);
