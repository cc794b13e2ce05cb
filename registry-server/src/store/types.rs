//! Block types: create, register, read, update, delete, filter.

use block_types::model::{BlockType, BlockTypeCreate, BlockTypeFilterBody, BlockTypeUpdate, Page};
use block_types::{BlockTypeInfo, EventKind, validate};
use sqlx::Row;
use uuid::Uuid;

use super::events::Subject;
use super::filter::push_schema_filter;
use super::filter::push_type_filter;
use super::rows::TYPE_COLUMNS;
use super::rows::type_from_row;
use super::sql::Sql;
use super::{Result, Rights, Store, StoreError, now_micros};

/// Why a type named like Prefect's own is refused (Prefect's words; a 403 over HTTP).
const RESERVED_NAME: &str = "Block type names beginning with 'Prefect' are reserved.";

fn validate_create(body: &BlockTypeCreate) -> Result<()> {
    let mut errors = Vec::new();
    errors.extend(validate::block_type_name(&body.name).err());
    errors.extend(validate::block_type_slug(&body.slug).err());
    errors.extend(validate::http_url("logo_url", body.logo_url.as_deref()).err());
    errors.extend(validate::http_url("documentation_url", body.documentation_url.as_deref()).err());
    if errors.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Invalid(errors))
    }
}

fn validate_update(body: &BlockTypeUpdate) -> Result<()> {
    let mut errors = Vec::new();
    if let Some(url) = &body.logo_url {
        errors.extend(validate::http_url("logo_url", url.as_deref()).err());
    }
    if let Some(url) = &body.documentation_url {
        errors.extend(validate::http_url("documentation_url", url.as_deref()).err());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Invalid(errors))
    }
}

impl Store {
    /// Registers a built-in collection: each type (leaving existing metadata alone) and its
    /// current schema.
    pub async fn register_collection(
        &self,
        collection: block_types::catalog::Collection,
    ) -> Result<()> {
        for spec in collection.specs() {
            let ty = self.ensure_block_type(&spec.block_type, false).await?;
            self.create_block_schema(spec.to_schema_create(ty.id), super::Rights::ADMIN)
                .await?;
        }
        Ok(())
    }

    /// Creates a block type. A name beginning with "Prefect" (in any case) is reserved
    /// ([`StoreError::Protected`]); names, slugs and URLs are validated; a taken slug is
    /// [`StoreError::AlreadyExists`].
    pub async fn create_block_type(&self, body: BlockTypeCreate) -> Result<BlockType> {
        self.insert_block_type(&body, false, None).await
    }

    /// [`Store::create_block_type`] by `author` (a token id), for the change feed.
    pub async fn create_block_type_by(
        &self,
        body: BlockTypeCreate,
        author: Option<Uuid>,
    ) -> Result<BlockType> {
        self.insert_block_type(&body, false, author).await
    }

    async fn insert_block_type(
        &self,
        body: &BlockTypeCreate,
        protected: bool,
        author: Option<Uuid>,
    ) -> Result<BlockType> {
        if validate::is_reserved_block_type_name(&body.name) {
            return Err(StoreError::Protected(RESERVED_NAME.to_owned()));
        }
        validate_create(body)?;
        let id = Uuid::new_v4();
        let now = now_micros();
        let mut tx = self.write.begin().await?;
        self.count_query();
        let inserted = sqlx::query(
            "insert into block_type (id, created, updated, name, slug, logo_url, documentation_url, \
             description, code_example, is_protected) values ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(&body.name)
        .bind(&body.slug)
        .bind(body.logo_url.as_deref())
        .bind(body.documentation_url.as_deref())
        .bind(body.description.as_deref())
        .bind(body.code_example.as_deref())
        .bind(i64::from(protected))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {
                let subject = Subject {
                    slug: Some(&body.slug),
                    ..Subject::default()
                };
                self.record_event(&mut tx, EventKind::TypeCreated, subject, author)
                    .await?;
                tx.commit().await?;
                self.feed_committed();
                self.read_block_type(id).await
            }
            Err(e) if StoreError::is_unique_violation(&e) => Err(StoreError::AlreadyExists(
                format!("Block type with name \"{}\" already exists", body.name),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Registers a built-in type: creates it when missing (protected if the info says so),
    /// otherwise leaves it alone, or updates its metadata when `update_metadata` is set.
    /// Safe to call from several replicas at once.
    pub async fn ensure_block_type(
        &self,
        info: &BlockTypeInfo,
        update_metadata: bool,
    ) -> Result<BlockType> {
        match self.read_block_type_by_slug(&info.slug).await {
            Ok(existing) => {
                if info.protected && !existing.is_protected {
                    let mut tx = self.write.begin().await?;
                    self.count_query();
                    sqlx::query(
                        "update block_type set is_protected = 1, updated = $2 where id = $1",
                    )
                    .bind(existing.id.to_string())
                    .bind(now_micros())
                    .execute(&mut *tx)
                    .await?;
                    let subject = Subject {
                        slug: Some(&existing.slug),
                        ..Subject::default()
                    };
                    self.record_event(&mut tx, EventKind::TypeUpdated, subject, None)
                        .await?;
                    self.announce_change(&mut tx, &[]).await?;
                    self.commit_changing(&[], tx.commit()).await?;
                }
                if update_metadata {
                    let update = BlockTypeUpdate {
                        logo_url: Some(info.logo_url.clone()),
                        documentation_url: Some(info.documentation_url.clone()),
                        description: Some(info.description.clone()),
                        code_example: Some(info.code_example.clone()),
                    };
                    self.update_block_type(existing.id, update, Rights::ADMIN)
                        .await?;
                }
                self.read_block_type(existing.id).await
            }
            Err(StoreError::NotFound(_)) => match self
                .insert_block_type(&info.to_create(), info.protected, None)
                .await
            {
                Err(StoreError::AlreadyExists(_)) => self.read_block_type_by_slug(&info.slug).await,
                other => other,
            },
            Err(e) => Err(e),
        }
    }

    /// The block type with this id.
    pub async fn read_block_type(&self, id: Uuid) -> Result<BlockType> {
        self.read_block_type_where("t.id = $1", &id.to_string())
            .await
    }

    /// The block type with this slug.
    pub async fn read_block_type_by_slug(&self, slug: &str) -> Result<BlockType> {
        self.read_block_type_where("t.slug = $1", slug).await
    }

    async fn read_block_type_where(&self, condition: &str, arg: &str) -> Result<BlockType> {
        self.count_query();
        let row = sqlx::query(&format!(
            "select {TYPE_COLUMNS} from block_type t where {condition}"
        ))
        .bind(arg)
        .fetch_optional(&self.read)
        .await?
        .ok_or_else(|| StoreError::NotFound("Block type not found".to_owned()))?;
        type_from_row(&row)
    }

    /// Updates a type's metadata; absent fields stay, `null` clears. One statement that
    /// sets only the fields sent, so concurrent updates of different fields both land.
    /// A protected type changes only for [`Rights::admin`]; for anyone else the update is
    /// answered and changes nothing.
    pub async fn update_block_type(
        &self,
        id: Uuid,
        body: BlockTypeUpdate,
        rights: Rights,
    ) -> Result<()> {
        validate_update(&body)?;
        if !rights.admin && self.read_block_type(id).await?.is_protected {
            // Protected types (secret, webhook, local-file-system) describe the server's
            // own blocks: only an admin changes what people read about them. Prefect
            // clients send this update on every save of such a block, so it is answered,
            // and changes nothing.
            return Ok(());
        }
        let mut sql = Sql::new("update block_type set updated = ");
        sql.bind_int(now_micros());
        for (column, value) in [
            ("logo_url", &body.logo_url),
            ("documentation_url", &body.documentation_url),
            ("description", &body.description),
            ("code_example", &body.code_example),
        ] {
            if let Some(value) = value {
                sql.push(&format!(", {column} = "));
                match value {
                    Some(text) => sql.bind_text(text.clone()),
                    None => sql.push("null"),
                };
            }
        }
        sql.push(" where id = ")
            .bind_text(id.to_string())
            .push(" returning slug");
        // The type is part of every answer holding a document of it: cached trees go.
        let mut tx = self.write.begin().await?;
        self.count_query();
        let Some(row) = sql.query().fetch_optional(&mut *tx).await? else {
            return Err(StoreError::NotFound("Block type not found".to_owned()));
        };
        let slug: String = row.try_get("slug")?;
        let subject = Subject {
            slug: Some(&slug),
            ..Subject::default()
        };
        self.record_event(&mut tx, EventKind::TypeUpdated, subject, rights.token)
            .await?;
        self.announce_change(&mut tx, &[]).await?;
        self.commit_changing(&[], tx.commit()).await?;
        Ok(())
    }

    /// Deletes a type and its schemas. Refused for protected types, and while documents of
    /// the type exist or other types' schemas nest its schemas (the error names them).
    pub async fn delete_block_type(&self, id: Uuid) -> Result<()> {
        self.delete_block_type_by(id, None).await
    }

    /// [`Store::delete_block_type`] by `author` (a token id), for the change feed.
    pub async fn delete_block_type_by(&self, id: Uuid, author: Option<Uuid>) -> Result<()> {
        let ty = self.read_block_type(id).await?;
        if ty.is_protected {
            return Err(StoreError::Protected(
                "protected block types cannot be deleted.".to_owned(),
            ));
        }
        let mut tx = self.write.begin().await?;
        self.refuse_if_used(
            &mut tx,
            "select t.slug || '/' || d.name from block_document d join block_type t on t.id = d.block_type_id \
             where d.block_type_id = $1 order by d.name limit 20",
            id,
            format!("block type '{}' still has block documents", ty.slug),
        )
        .await?;
        self.refuse_if_used(
            &mut tx,
            "select distinct pt.slug from block_schema_reference r \
             join block_schema c on c.id = r.reference_block_schema_id \
             join block_schema p on p.id = r.parent_block_schema_id \
             join block_type pt on pt.id = p.block_type_id \
             where c.block_type_id = $1 and p.block_type_id <> $1 order by pt.slug",
            id,
            format!(
                "block type '{}' is nested in the schemas of other block types",
                ty.slug
            ),
        )
        .await?;
        for statement in [
            "delete from block_schema_reference where parent_block_schema_id in (select id from block_schema where block_type_id = $1)",
            "delete from block_schema where block_type_id = $1",
            "delete from block_type where id = $1",
        ] {
            self.count_query();
            sqlx::query(statement)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        let subject = Subject {
            slug: Some(&ty.slug),
            ..Subject::default()
        };
        self.record_event(&mut tx, EventKind::TypeDeleted, subject, author)
            .await?;
        self.announce_change(&mut tx, &[]).await?;
        self.commit_changing(&[], tx.commit()).await?;
        Ok(())
    }

    /// Types matching the filter, ordered by name.
    pub async fn filter_block_types(&self, body: &BlockTypeFilterBody) -> Result<Vec<BlockType>> {
        let mut lists = super::filter::type_filter_lists(body.block_types.as_ref());
        lists.extend(super::filter::schema_filter_lists(
            body.block_schemas.as_ref(),
        ));
        super::filter::check_filter_lists(&lists)?;
        let page =
            Page::resolve(body.limit, body.offset).map_err(|e| StoreError::Invalid(vec![e]))?;
        let mut sql = Sql::new(&format!(
            "select {TYPE_COLUMNS} from block_type t where 1 = 1"
        ));
        if let Some(filter) = &body.block_types {
            push_type_filter(&mut sql, filter, "t", self.backend);
        }
        if let Some(filter) = &body.block_schemas {
            sql.push(" and exists (select 1 from block_schema s where s.block_type_id = t.id");
            push_schema_filter(&mut sql, filter, "s");
            sql.push(")");
        }
        let c = self.collate();
        sql.push(&format!(" order by t.name{c}, t.slug{c} limit "))
            .bind_int(page.limit.into());
        sql.push(" offset ").bind_int(page.offset.into());
        self.count_query();
        let rows = sql.query().fetch_all(&self.read).await?;
        rows.iter().map(type_from_row).collect()
    }
}
