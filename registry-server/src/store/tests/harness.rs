//! Fresh databases for tests: a temporary SQLite file, and a uniquely named PostgreSQL
//! database under `BLOCKS_TEST_POSTGRES_URL` (the workspace's one helper,
//! `tests::PostgresDb`) that is dropped afterwards. When PostgreSQL is unreachable the
//! PostgreSQL half says so and is skipped, except under `CI`, where it fails.

use std::panic::AssertUnwindSafe;

use block_types::model::{
    BlockDocument, BlockDocumentCreate, BlockSchema, BlockSchemaCreate, BlockType, BlockTypeCreate,
};
use block_types::{Block, BlockSpec};
use futures::FutureExt as _;
use serde_json::{Map, Value};

use crate::crypto::MasterKey;
use crate::store::{Backend, MasterKeySource, Rights, Store, StoreConfig};

/// A fresh, empty database and a master key for it.
pub(crate) struct TestDb {
    pub(crate) backend: Backend,
    pub(crate) url: String,
    pub(crate) master: MasterKey,
    dir: Option<tempfile::TempDir>,
    postgres: Option<::tests::PostgresDb>,
}

impl TestDb {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("blocks.db");
        Self {
            backend: Backend::Sqlite,
            url: format!("sqlite://{}", path.display()),
            master: MasterKey::generate().unwrap(),
            dir: Some(dir),
            postgres: None,
        }
    }

    async fn postgres() -> Option<Self> {
        let db = ::tests::PostgresDb::create().await?;
        Some(Self {
            backend: Backend::Postgres,
            url: db.url.to_string(),
            master: MasterKey::generate().unwrap(),
            dir: None,
            postgres: Some(db),
        })
    }

    /// Opens the store with this database's master key.
    pub(crate) async fn open(&self) -> Store {
        self.open_with(StoreConfig::default()).await
    }

    pub(crate) async fn open_with(&self, config: StoreConfig) -> Store {
        Store::open(
            &self.url,
            MasterKeySource::Key(self.master.duplicate()),
            config,
        )
        .await
        .unwrap()
    }

    /// The SQLite file's directory.
    pub(crate) fn dir(&self) -> Option<&std::path::Path> {
        self.dir.as_ref().map(tempfile::TempDir::path)
    }

    async fn drop_database(self) {
        if let Some(db) = self.postgres {
            db.drop_database().await;
        }
    }
}

/// Runs `test` on a fresh SQLite database, then on a fresh PostgreSQL database, which is
/// dropped afterwards even when the test fails.
pub(crate) async fn on_both(test: impl AsyncFn(&TestDb)) {
    let sqlite = TestDb::sqlite();
    test(&sqlite).await;
    if let Some(pg) = TestDb::postgres().await {
        let outcome = AssertUnwindSafe(test(&pg)).catch_unwind().await;
        pg.drop_database().await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Registers a built-in block type and its schema (nested ones first).
pub(crate) async fn register<B: Block>(store: &Store) -> (BlockType, BlockSchema) {
    for nested in B::nested_specs() {
        register_spec(store, &nested).await;
    }
    register_spec(store, &B::spec()).await
}

pub(crate) async fn register_spec(store: &Store, spec: &BlockSpec) -> (BlockType, BlockSchema) {
    let ty = store
        .ensure_block_type(&spec.block_type, false)
        .await
        .unwrap();
    let (schema, _) = store
        .create_block_schema(spec.to_schema_create(ty.id), Rights::ADMIN)
        .await
        .unwrap();
    (ty, schema)
}

/// A block type of a client's own: a name and a slug, nothing else.
pub(crate) fn type_body(name: &str, slug: &str) -> BlockTypeCreate {
    BlockTypeCreate {
        name: name.into(),
        slug: slug.into(),
        logo_url: None,
        documentation_url: None,
        description: None,
        code_example: None,
    }
}

/// Creates a block type of a client's own ([`type_body`]).
pub(crate) async fn custom_type(store: &Store, name: &str, slug: &str) -> BlockType {
    store
        .create_block_type(type_body(name, slug))
        .await
        .unwrap()
}

/// A schema of `block_type_id` with `fields`, no capabilities, at `version`.
pub(crate) fn schema_body(
    fields: Map<String, Value>,
    block_type_id: uuid::Uuid,
    version: &str,
) -> BlockSchemaCreate {
    BlockSchemaCreate {
        fields,
        block_type_id,
        capabilities: vec![],
        version: version.into(),
    }
}

/// Registers, as an admin, a schema of `ty` with `fields` (an object) at `version`:
/// (the schema, whether it was new).
pub(crate) async fn custom_schema(
    store: &Store,
    ty: &BlockType,
    fields: Value,
    version: &str,
) -> (BlockSchema, bool) {
    store
        .create_block_schema(schema_body(obj(fields), ty.id, version), Rights::ADMIN)
        .await
        .unwrap()
}

pub(crate) fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// The body that creates a named document of `schema` with `data`.
pub(crate) fn create_body(schema: &BlockSchema, name: &str, data: Value) -> BlockDocumentCreate {
    BlockDocumentCreate {
        name: Some(name.to_owned()),
        data: obj(data),
        block_schema_id: schema.id,
        block_type_id: schema.block_type_id,
        is_anonymous: false,
    }
}

/// Creates a named document of `schema` with `data`.
pub(crate) async fn create(
    store: &Store,
    schema: &BlockSchema,
    name: &str,
    data: Value,
) -> BlockDocument {
    store
        .create_block_document(create_body(schema, name, data))
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
}
