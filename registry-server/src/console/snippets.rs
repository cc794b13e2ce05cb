//! The code that loads a block, in Rust and in Python, as the detail page shows it.

use block_types::catalog::{
    AsyncSqlAlchemyConnector, DateTime, DockerContainer, DockerHost, DockerRegistry,
    DockerRegistryCredentials, GcpCredentials, GcsBucket, Json, LocalFileSystem, Secret,
    SqlAlchemyConnector, StringBlock, Webhook,
};
use block_types::{Block, model::BlockType};

/// The Rust type of a built-in block type, by slug.
fn rust_type(slug: &str) -> Option<&'static str> {
    fn name<T: Block>() -> (&'static str, &'static str) {
        let full = std::any::type_name::<T>();
        (T::SLUG, full.rsplit("::").next().unwrap_or(full))
    }
    [
        name::<Secret>(),
        name::<Webhook>(),
        name::<LocalFileSystem>(),
        name::<Json>(),
        name::<StringBlock>(),
        name::<DateTime>(),
        name::<SqlAlchemyConnector>(),
        name::<AsyncSqlAlchemyConnector>(),
        name::<GcpCredentials>(),
        name::<GcsBucket>(),
        name::<DockerRegistry>(),
        name::<DockerContainer>(),
        name::<DockerRegistryCredentials>(),
        name::<DockerHost>(),
    ]
    .into_iter()
    .find(|(s, _)| *s == slug)
    .map(|(_, n)| n)
}

/// `text` as a string literal (Rust and Python read the same escapes for these).
fn literal(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// A variable name for a type: `gcs-bucket` → `gcs_bucket`.
fn variable(slug: &str) -> String {
    let v: String = slug
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if v.is_empty() || v.starts_with(|c: char| c.is_ascii_digit()) {
        format!("block_{v}")
    } else {
        v
    }
}

/// The Rust code that loads `name` of `block_type`.
pub(crate) fn rust(block_type: &BlockType, name: &str) -> String {
    match rust_type(&block_type.slug) {
        Some(ty) => format!(
            "use block_types::catalog::{ty};\nuse registry_client::BlockExt as _;\n\nlet {var} = {ty}::load({name}).await?;",
            var = variable(&block_type.slug),
            name = literal(name),
        ),
        None => format!(
            "let client = registry_client::Client::from_env()?;\nlet {var} = client.load_json({path}).await?;",
            var = variable(&block_type.slug),
            path = literal(&format!("{}/{}", block_type.slug, name)),
        ),
    }
}

/// Where Prefect's Python classes of the built-in types live (the collections the course
/// installs; the Docker container and registry are Prefect 2's).
fn python_class(slug: &str) -> Option<(&'static str, &'static str)> {
    Some(match slug {
        "secret" => ("prefect.blocks.system", "Secret"),
        "json" => ("prefect.blocks.system", "JSON"),
        "string" => ("prefect.blocks.system", "String"),
        "date-time" => ("prefect.blocks.system", "DateTime"),
        "webhook" => ("prefect.blocks.webhook", "Webhook"),
        "local-file-system" => ("prefect.filesystems", "LocalFileSystem"),
        "gcp-credentials" => ("prefect_gcp", "GcpCredentials"),
        "gcs-bucket" => ("prefect_gcp.cloud_storage", "GcsBucket"),
        "sqlalchemy-connector" => ("prefect_sqlalchemy", "SqlAlchemyConnector"),
        "async-sqlalchemy-connector" => ("prefect_sqlalchemy", "AsyncSqlAlchemyConnector"),
        "docker-container" => ("prefect.infrastructure", "DockerContainer"),
        "docker-registry" => ("prefect.infrastructure.docker", "DockerRegistry"),
        "docker-registry-credentials" => ("prefect_docker", "DockerRegistryCredentials"),
        "docker-host" => ("prefect_docker", "DockerHost"),
        _ => return None,
    })
}

/// The Python code that loads `name`: the type's own example with the name put in (when
/// it is Python), else the class of a built-in type, else Prefect's generic `Block.load`.
pub(crate) fn python(block_type: &BlockType, name: &str) -> String {
    let example = block_type
        .code_example
        .as_deref()
        .map(|e| {
            e.trim()
                .trim_start_matches("```python")
                .trim_end_matches("```")
                .trim()
        })
        .filter(|e| e.contains("BLOCK_NAME") && e.contains("import ") && !e.contains("::"));
    if let Some(example) = example {
        return example
            .replace("\"BLOCK_NAME\"", &literal(name))
            .replace("'BLOCK_NAME'", &literal(name))
            .replace("BLOCK_NAME", name);
    }
    let var = variable(&block_type.slug);
    match python_class(&block_type.slug) {
        Some((module, class)) => format!(
            "from {module} import {class}\n\n{var} = {class}.load({name})",
            name = literal(name),
        ),
        None => format!(
            "from prefect.blocks.core import Block\n\n{var} = Block.load({path})",
            path = literal(&format!("{}/{}", block_type.slug, name)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_type(slug: &str, example: Option<&str>) -> BlockType {
        let spec = block_types::catalog::spec_for_slug("gcs-bucket").expect("built-in");
        let mut ty = BlockType {
            slug: slug.to_owned(),
            code_example: example.map(ToOwned::to_owned),
            ..serde_json::from_value(serde_json::json!({
                "id": uuid::Uuid::nil(),
                "created": "2024-01-01T00:00:00Z",
                "updated": "2024-01-01T00:00:00Z",
                "name": spec.block_type.name,
                "slug": slug,
            }))
            .expect("a block type")
        };
        ty.slug = slug.to_owned();
        ty
    }

    #[test]
    fn rust_snippets_use_the_typed_load_for_built_ins() {
        assert_eq!(
            rust(&block_type("gcs-bucket", None), "zoom-gcs"),
            "use block_types::catalog::GcsBucket;\nuse registry_client::BlockExt as _;\n\nlet gcs_bucket = GcsBucket::load(\"zoom-gcs\").await?;"
        );
        assert!(
            rust(&block_type("my-thing", None), "a\"b").contains(r#"load_json("my-thing/a\"b")"#)
        );
    }

    #[test]
    fn python_snippets_put_the_name_into_the_example() {
        let ty = block_type(
            "gcs-bucket",
            Some(
                "```python\nfrom prefect_gcp.cloud_storage import GcsBucket\n\ngcs_bucket_block = GcsBucket.load(\"BLOCK_NAME\")\n```",
            ),
        );
        assert_eq!(
            python(&ty, "zoom-gcs"),
            "from prefect_gcp.cloud_storage import GcsBucket\n\ngcs_bucket_block = GcsBucket.load(\"zoom-gcs\")"
        );
        assert!(python(&block_type("x", None), "n").contains("Block.load(\"x/n\")"));
        // A built-in type's example is Rust: its Python class is used instead.
        let rust_example = block_type(
            "gcs-bucket",
            Some(
                "```rust\nuse block_types::catalog::GcsBucket;\nGcsBucket::load(\"BLOCK_NAME\")\n```",
            ),
        );
        assert_eq!(
            python(&rust_example, "zoom-gcs"),
            "from prefect_gcp.cloud_storage import GcsBucket\n\ngcs_bucket = GcsBucket.load(\"zoom-gcs\")"
        );
    }
}
