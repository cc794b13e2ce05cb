//! `blocks register` and `blocks type …`: block types and their schemas.

use super::client;
use super::documents::say_deleted;
use super::or_missing;
use super::output::text;
use super::output::{Format, print};
use anyhow::{Context, anyhow, bail};
use block_types::DataValidator;
use block_types::catalog::Collection;
use block_types::model::{BlockType, BlockTypeUpdate};
use registry_client::Client;
use serde_json::{Value, json};

/// `blocks register`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// Collections to register: core, sqlalchemy, gcp, docker.
    #[arg(value_parser = ["core", "sqlalchemy", "gcp", "docker"], required_unless_present_any = ["all", "file"])]
    pub collections: Vec<String>,
    /// Every built-in collection.
    #[arg(long)]
    pub all: bool,
    /// A custom block type: a JSON file `{"block_type": {"name", "slug", "description", …},
    /// "fields": <JSON Schema, with "secret_fields">, "capabilities": […], "version": "…"}`,
    /// checked before it is sent.
    #[arg(long, conflicts_with_all = ["collections", "all"])]
    pub file: Option<std::path::PathBuf>,
    /// Also update the metadata (description, logo, docs URL, example) of types that
    /// already exist.
    #[arg(long)]
    pub update_metadata: bool,
}

/// A custom block type from `blocks register --file`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CustomType {
    block_type: block_types::model::BlockTypeCreate,
    fields: Value,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    version: Option<String>,
}

/// Checks a custom type before anything is sent: names, the schema compiles, and every
/// secret field names a property.
pub(super) fn custom_spec(path: &std::path::Path) -> anyhow::Result<block_types::BlockSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let custom: CustomType = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a block type definition", path.display()))?;
    let ty = &custom.block_type;
    block_types::validate::block_type_slug(&ty.slug).map_err(|e| anyhow!("block_type.{e}"))?;
    block_types::validate::block_type_name(&ty.name).map_err(|e| anyhow!("block_type.{e}"))?;
    if !custom.fields.is_object() {
        bail!("fields must be a JSON Schema object");
    }
    DataValidator::new(&custom.fields).map_err(|e| anyhow!("{e}"))?;
    let properties = custom.fields["properties"].as_object();
    for secret in block_types::secret_fields::secret_fields_of(&custom.fields) {
        let path = secret.to_string();
        let root = path.split('.').next().unwrap_or_default();
        if root != "*" && !properties.is_some_and(|p| p.contains_key(root)) {
            bail!("secret_fields names {path:?}, which is not a property of the schema");
        }
    }
    let mut fields = custom.fields.clone();
    fields["block_type_slug"] = json!(ty.slug);
    Ok(block_types::BlockSpec {
        block_type: custom.block_type.into(),
        fields,
        capabilities: custom.capabilities,
        version: custom.version.unwrap_or_else(|| "1".to_owned()),
    })
}

/// `blocks type …`.
#[derive(Debug, clap::Subcommand)]
pub enum TypeCommand {
    /// List block types.
    Ls,
    /// Show a block type and its schemas.
    Inspect {
        /// The type's slug.
        slug: String,
    },
    /// Delete a block type that no document uses.
    Delete {
        /// The type's slug.
        slug: String,
    },
}

pub(super) fn collections(args: &RegisterArgs) -> Vec<Collection> {
    if args.all {
        return Collection::ALL.to_vec();
    }
    args.collections
        .iter()
        .filter_map(|c| match c.as_str() {
            "core" => Some(Collection::Core),
            "sqlalchemy" => Some(Collection::Sqlalchemy),
            "gcp" => Some(Collection::Gcp),
            "docker" => Some(Collection::Docker),
            _ => None,
        })
        .collect()
}

/// `blocks register`: each type of the collections (existing metadata left alone) and its
/// current schema.
pub async fn register(args: &RegisterArgs, format: Format) -> anyhow::Result<()> {
    let specs: Vec<block_types::BlockSpec> = match &args.file {
        Some(path) => vec![custom_spec(path)?],
        None => collections(args)
            .into_iter()
            .flat_map(|c| c.specs())
            .collect(),
    };
    let client = client()?;
    if args.file.is_some() {
        for spec in &specs {
            let slug = &spec.block_type.slug;
            if let Ok(existing) = client.block_type(slug).await
                && existing.is_protected
            {
                bail!("{slug} is a protected built-in type; a custom type needs its own slug");
            }
        }
    }
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for spec in specs {
        let (ty, schema) = client.register(&spec).await?;
        if args.update_metadata && !ty.is_protected {
            let info = &spec.block_type;
            // Only what the spec sets: a field it leaves out stays as it is.
            client
                .update_block_type(
                    ty.id,
                    &BlockTypeUpdate {
                        logo_url: info.logo_url.clone().map(Some),
                        documentation_url: info.documentation_url.clone().map(Some),
                        description: info.description.clone().map(Some),
                        code_example: info.code_example.clone().map(Some),
                    },
                )
                .await?;
        }
        rows.push(vec![ty.slug.clone(), schema.checksum.clone()]);
        out.push(json!({"slug": ty.slug, "block_type_id": ty.id, "block_schema_id": schema.id, "checksum": schema.checksum}));
    }
    print(format, &Value::Array(out), &["TYPE", "SCHEMA"], &rows);
    Ok(())
}

/// The block type `slug` (a clear error when there is none).
async fn type_by_slug(client: &Client, slug: &str) -> anyhow::Result<BlockType> {
    client
        .block_type(slug)
        .await
        .map_err(or_missing(format!("block type {slug} on the server")))
}

/// `blocks type …`.
pub async fn types(command: &TypeCommand, format: Format) -> anyhow::Result<()> {
    let client = client()?;
    match command {
        TypeCommand::Ls => {
            let types = client.block_types().await?;
            let rows: Vec<Vec<String>> = types
                .iter()
                .map(|t| vec![t.slug.clone(), t.name.clone(), t.is_protected.to_string()])
                .collect();
            print(format, &types, &["SLUG", "NAME", "PROTECTED"], &rows);
        }
        TypeCommand::Inspect { slug } => {
            let ty = type_by_slug(&client, slug).await?;
            let schemas = client.block_schemas_of(ty.id).await?;
            let rows: Vec<Vec<String>> = schemas
                .iter()
                .map(|s| {
                    vec![
                        s.checksum.clone(),
                        s.version.clone(),
                        s.fields.get("secret_fields").map(text).unwrap_or_default(),
                    ]
                })
                .collect();
            let both = json!({"block_type": ty, "block_schemas": schemas});
            print(
                format,
                &both,
                &["SCHEMA", "VERSION", "SECRET FIELDS"],
                &rows,
            );
        }
        TypeCommand::Delete { slug } => {
            let ty = type_by_slug(&client, slug).await?;
            client.delete_block_type(ty.id).await?;
            say_deleted(slug, format);
        }
    }
    Ok(())
}
