//! Creating and editing blocks with forms generated from their schemas ([`super::form`]).
//!
//! The server validates with the block's schema through the same store calls as the API;
//! errors are shown at their fields and the form keeps what was typed (secrets excepted).
//! An edit is conditional on the version the form was read at. "Create new …" on a
//! reference field opens the referenced type's form carrying the parent's draft (without
//! its secrets) in a hidden field; once the new block is saved, the parent's form comes back
//! with the reference set, so nothing typed there is lost and no server state is kept.

use std::collections::{BTreeSet, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use block_types::FieldError;
use block_types::model::{
    BlockDocumentCreate, BlockDocumentUpdate, BlockSchema, BlockSchemaFilter,
    BlockSchemaFilterBody, BlockType,
};
use block_types::secret_fields::{SecretPath, secret_paths_of};
use maud::{Markup, html};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::blocks::{Opened, blocks_page, change_block, document_type};
use super::form::{self, Action, FormInput, Mode, RefOption};
use super::layout::form_token;
use super::session::{ConsoleWrite, FormPairs};
use super::{PageError, Viewer, catalog};
use crate::http::AppState;
use crate::store::TokenAccess as _;
use crate::store::{DocumentQuery, Scope, StoreError};

/// Block types a form offers reference pickers for, at most.
const MAX_REFERENCE_TYPES: usize = 32;
/// Errors a form shows at most (the rest are counted at the top).
const MAX_SHOWN_ERRORS: usize = 200;

/// Longest draft a "Create new …" round trip carries (bytes of JSON).
const MAX_DRAFT_BYTES: usize = 256 * 1024;

/// Where a form goes back to after a nested "Create new …".
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Draft {
    /// `new:<slug>` or `edit:<id>`.
    target: String,
    /// The form path of the reference field to fill in.
    path: String,
    /// The parent's decoded data, secrets removed.
    data: Map<String, Value>,
    /// The version an edit was read at.
    #[serde(default)]
    version: Option<i64>,
    /// The name typed for a new parent.
    #[serde(default)]
    name: String,
}

/// The newest schema of a type.
async fn newest_schema(state: &AppState, ty: &BlockType) -> Result<BlockSchema, PageError> {
    state
        .store
        .filter_block_schemas(&BlockSchemaFilterBody {
            block_schemas: Some(BlockSchemaFilter {
                block_type_id: Some(block_types::model::AnyOf {
                    any_: Some(vec![ty.id]),
                }),
                ..BlockSchemaFilter::default()
            }),
            limit: Some(1),
            ..BlockSchemaFilterBody::default()
        })
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| {
            PageError::new(
                StatusCode::CONFLICT,
                format!("{} has no schema registered, so it has no form.", ty.name),
            )
        })
}

async fn type_by_slug(state: &AppState, slug: &str) -> Result<BlockType, PageError> {
    match state.store.read_block_type_by_slug(slug).await {
        Ok(ty) => Ok(ty),
        Err(StoreError::NotFound(_)) => Err(PageError::not_found(format!(
            "There is no block type \"{slug}\"."
        ))),
        Err(e) => Err(e.into()),
    }
}

/// What a new block's form starts from: the type `slug` names, its newest schema and what
/// the form needs besides.
async fn newest_form(
    state: &AppState,
    slug: &str,
) -> Result<(BlockType, BlockSchema, Context), PageError> {
    let ty = type_by_slug(state, slug).await?;
    let schema = newest_schema(state, &ty).await?;
    let ctx = context(state, &schema.fields).await?;
    Ok((ty, schema, ctx))
}

/// The schema a read document was written with (reads always carry it).
fn own_schema(doc: &block_types::model::BlockDocument) -> Result<BlockSchema, PageError> {
    doc.block_schema.clone().ok_or_else(|| {
        PageError::from(crate::http::ApiError::Internal(
            "a read document came without its schema".into(),
        ))
    })
}

/// The block type slugs a schema's fields may reference.
fn reference_slugs(fields: &Value) -> BTreeSet<String> {
    let mut slugs = BTreeSet::new();
    for defs in ["definitions", "$defs"] {
        if let Some(defs) = fields.get(defs).and_then(Value::as_object) {
            for def in defs.values() {
                if let Some(slug) = def.get("block_type_slug").and_then(Value::as_str) {
                    slugs.insert(slug.to_owned());
                }
            }
        }
    }
    if let Some(refs) = fields
        .get("block_schema_references")
        .and_then(Value::as_object)
    {
        for r in refs.values() {
            let mut add = |v: &Value| {
                if let Some(slug) = v.get("block_type_slug").and_then(Value::as_str) {
                    slugs.insert(slug.to_owned());
                }
            };
            match r {
                Value::Array(list) => list.iter().for_each(&mut add),
                other => add(other),
            }
        }
    }
    slugs
}

/// What a form needs besides the schema: documents for reference pickers and type names.
struct Context {
    references: HashMap<String, Vec<RefOption>>,
    type_names: HashMap<String, String>,
}

async fn context(state: &AppState, fields: &Value) -> Result<Context, PageError> {
    let types = catalog::all_types(&state.store).await?;
    let mut references = HashMap::new();
    for slug in reference_slugs(fields)
        .into_iter()
        .take(MAX_REFERENCE_TYPES)
    {
        let Some(ty) = types.iter().find(|t| t.slug == slug) else {
            references.insert(slug, Vec::new());
            continue;
        };
        let page = state
            .store
            .browse_documents(&DocumentQuery {
                block_type_id: Some(ty.id),
                limit: crate::store::MAX_PAGE,
                ..DocumentQuery::default()
            })
            .await?;
        references.insert(
            slug,
            page.items
                .into_iter()
                .map(|d| RefOption {
                    id: d.id,
                    name: d.name,
                })
                .collect(),
        );
    }
    let type_names = types.into_iter().map(|t| (t.slug, t.name)).collect();
    Ok(Context {
        references,
        type_names,
    })
}

/// Removes every value a secret path covers, so a draft carried through the browser never
/// holds a secret.
fn without_secrets(fields: &Value, data: &Map<String, Value>) -> Map<String, Value> {
    fn strip(value: &mut Value, path: &str, secrets: &[SecretPath]) {
        if let Value::Object(map) = value {
            map.retain(|k, _| {
                !secrets
                    .iter()
                    .any(|s| s.covers(&SecretPath::parse(&format!("{path}{k}"))))
            });
            for (k, v) in map.iter_mut() {
                strip(v, &format!("{path}{k}."), secrets);
            }
        }
    }
    let secrets = secret_paths_of(fields);
    let mut value = Value::Object(data.clone());
    strip(&mut value, "", &secrets);
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The stored data as a form shows it: references as `$ref`s.
fn editable_data(doc: &block_types::model::BlockDocument) -> Map<String, Value> {
    let mut data = doc.data.clone();
    for (field, reference) in &doc.block_document_references {
        data.insert(
            field.clone(),
            json!({"$ref": {"block_document_id": reference.block_document.id}}),
        );
    }
    data
}

/// One form page (create or edit).
struct FormPage<'a> {
    ty: &'a BlockType,
    schema: &'a BlockSchema,
    mode: Mode,
    /// The document being edited: id, name, version.
    editing: Option<(Uuid, &'a str, i64)>,
    name: &'a str,
    data: Option<&'a Map<String, Value>>,
    original: Option<&'a Map<String, Value>>,
    errors: &'a [FieldError],
    /// A message above the form.
    problem: Option<String>,
    /// The draft of the parent form this one was opened from.
    parent: Option<&'a str>,
    /// A message above the form that is not a problem (what was just saved).
    notice: Option<String>,
}

impl<'a> FormPage<'a> {
    /// An empty form for a new block of type `ty`.
    fn create(ty: &'a BlockType, schema: &'a BlockSchema) -> Self {
        Self {
            ty,
            schema,
            mode: Mode::Create,
            editing: None,
            name: "",
            data: None,
            original: None,
            errors: &[],
            problem: None,
            parent: None,
            notice: None,
        }
    }

    /// The form of block `id` (`name`, read at `version`), holding its stored data
    /// (`original`).
    fn edit(
        ty: &'a BlockType,
        schema: &'a BlockSchema,
        (id, name, version): (Uuid, &'a str, i64),
        original: &'a Map<String, Value>,
    ) -> Self {
        Self {
            mode: Mode::Edit,
            editing: Some((id, name, version)),
            name,
            original: Some(original),
            ..Self::create(ty, schema)
        }
    }
}

fn render_form(viewer: &Viewer, ctx: &Context, page: &FormPage<'_>) -> Markup {
    let hidden_errors = page.errors.len().saturating_sub(MAX_SHOWN_ERRORS);
    let errors = &page.errors[..page.errors.len().min(MAX_SHOWN_ERRORS)];
    let input = FormInput {
        schema: &page.schema.fields,
        mode: page.mode,
        data: page.data,
        original: page.original,
        references: &ctx.references,
        type_names: &ctx.type_names,
        errors,
    };
    let mut top: Vec<FieldError> = form::unmatched_errors(&input)
        .into_iter()
        .filter(|e| e.field != "name")
        .collect();
    let name_error = page.errors.iter().find(|e| e.field == "name");
    top.dedup();
    let (action, title, submit) = match page.editing {
        Some((id, name, _)) => (format!("/blocks/{id}/edit"), format!("Edit {name}"), "Save"),
        None => (
            format!("/blocks/new/{}", page.ty.slug),
            format!("Add {}", page.ty.name),
            "Create",
        ),
    };
    html! {
        nav.crumbs aria-label="Breadcrumb" {
            a href="/blocks" { "Blocks" } " / "
            @if let Some((id, name, _)) = page.editing {
                a href=(format!("/blocks/{id}")) { (name) } " / " span aria-current="page" { "Edit" }
            } @else {
                a href="/blocks/new" { "Add" } " / " span aria-current="page" { (page.ty.name) }
            }
        }
        h1 {
            img src=(catalog::icon(&page.ty.slug)) alt="" width="28" height="28";
            (title)
        }
        @if let Some(notice) = &page.notice {
            p.notice role="status" { (notice) }
        }
        @if let Some(problem) = &page.problem {
            div.error-message role="alert" { (problem) }
        }
        @if !top.is_empty() {
            div.error-message role="alert" {
                p { "The block was not saved:" }
                ul { @for e in &top { li { (e.to_string()) } } }
            }
        } @else if !page.errors.is_empty() {
            div.error-message role="alert" { "The block was not saved: see the fields marked below." }
        }
        @if hidden_errors > 0 {
            p.error-message { "…and " (hidden_errors) " more problems not shown; fix these first." }
        }
        form.form-panel method="post" action=(action) novalidate {
            (form_token(viewer))
            // Enter in a field submits with the form's first button: make that "save", not a
            // row or "Create new …" button further down.
            button.default-submit type="submit" tabindex="-1" aria-hidden="true" { (submit) }
            input type="hidden" name="_schema" value=(page.schema.id);
            @if let Some((_, _, version)) = page.editing {
                input type="hidden" name="_version" value=(version);
            }
            @if let Some(parent) = page.parent {
                input type="hidden" name="_parent" value=(parent);
            }
            div.field {
                label for="block-name" { "Block name" }
                @if let Some((_, name, _)) = page.editing {
                    input #block-name type="text" value=(name) readonly aria-describedby="block-name-hint";
                    p.hint #block-name-hint { "A block keeps its name; to rename it, create a new one." }
                } @else {
                    input #block-name type="text" name="_name" value=(page.name) required maxlength="255"
                        autocomplete="off" spellcheck="false" data-name-check=(page.ty.slug)
                        aria-invalid=[name_error.map(|_| "true")]
                        aria-describedby=(if name_error.is_some() { "block-name-hint block-name-error block-name-taken" } else { "block-name-hint block-name-taken" });
                    p.hint #block-name-hint { "How code loads it: letters, digits and dashes, e.g. zoom-gcs." }
                    @if let Some(e) = name_error {
                        p.error #block-name-error { (e.message) }
                    }
                    p.error #block-name-taken aria-live="polite" {}
                }
            }
            (form::render(&input))
            div.actions {
                button.primary type="submit" { (submit) }
                @if page.editing.is_none() && page.parent.is_none() {
                    button type="submit" name="_then" value="another" { "Create and add another" }
                }
                @if let Some((id, _, _)) = page.editing {
                    a.button href=(format!("/blocks/{id}")) { "Cancel" }
                } @else {
                    a.button href="/blocks/new" { "Cancel" }
                }
            }
        }
        @if let Some(description) = &page.ty.description {
            section aria-labelledby="about-h" {
                h2 #about-h { "About " (page.ty.name) }
                div.description { (super::markdown::render(description)) }
            }
        }
    }
}

fn form_response(
    viewer: &Viewer,
    ctx: &Context,
    page: &FormPage<'_>,
    status: StatusCode,
) -> Response {
    let title = match page.editing {
        Some((_, name, _)) => format!("Edit {name}"),
        None => format!("Add {}", page.ty.name),
    };
    let mut response = blocks_page(viewer, title, &render_form(viewer, ctx, page));
    *response.status_mut() = status;
    response
}

/// `?added=<id>` on a new form: the block "Create and add another" just created.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct NewQuery {
    #[serde(default)]
    added: Option<String>,
}

pub(super) async fn new_form(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(slug): Path<String>,
    Query(query): Query<NewQuery>,
) -> Result<Response, Response> {
    async {
        viewer.require(Scope::Write, "Creating a block")?;
        let (ty, schema, ctx) = newest_form(&state, &slug).await?;
        // Named by id and looked up, so a link cannot make the page say anything else.
        let added = match query.added.as_deref().map(Uuid::parse_str) {
            Some(Ok(id)) => state.store.read_block_document(id, false).await.ok(),
            _ => None,
        };
        let notice = added
            .filter(|doc| doc.block_type_id == ty.id)
            .and_then(|doc| doc.name)
            .map(|name| format!("Created {name}. Add another {} below.", ty.name));
        let page = FormPage {
            notice,
            ..FormPage::create(&ty, &schema)
        };
        Ok::<_, PageError>(form_response(&viewer, &ctx, &page, StatusCode::OK))
    }
    .await
    .map_err(|e| e.render(Some(&viewer)))
}

/// `?schema=newest` on an edit form: edit the block on its type's newest schema (the
/// dashboard's "upgrade").
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct EditQuery {
    #[serde(default)]
    schema: Option<String>,
}

pub(super) async fn edit_form(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(raw): Path<String>,
    Query(query): Query<EditQuery>,
) -> Result<Response, Response> {
    async {
        let Opened { id, tagged, name } =
            Opened::to_change(&state, &viewer, &raw, Scope::Write, "Editing a block").await?;
        let doc = &tagged.document;
        let ty = document_type(doc)?.clone();
        let own = own_schema(doc)?;
        let (schema, notice) = match query.schema.as_deref() {
            Some("newest") => {
                let newest = newest_schema(&state, &ty).await?;
                let notice = (newest.id != own.id).then(|| {
                    let secrets = if viewer.may(Scope::ReadSecrets) {
                        ""
                    } else {
                        " If the block holds secrets, moving it needs a token with the read-secrets scope, or every secret typed again."
                    };
                    format!(
                        "This form uses {}'s newest schema (version {}); saving moves the block to it from version {}. Fields the newest schema does not define are dropped.{secrets}",
                        ty.name, newest.version, own.version
                    )
                });
                (newest, notice)
            }
            _ => (own, None),
        };
        let original = editable_data(doc);
        let ctx = context(&state, &schema.fields).await?;
        let page = FormPage {
            notice,
            ..FormPage::edit(&ty, &schema, (id, &name, tagged.version), &original)
        };
        Ok::<_, PageError>(form_response(&viewer, &ctx, &page, StatusCode::OK))
    }
    .await
    .map_err(|e| e.render(Some(&viewer)))
}

/// The schema a submitted form was rendered from: it must be a schema of the type.
async fn submitted_schema(
    state: &AppState,
    form: &FormPairs,
    ty: &BlockType,
) -> Result<BlockSchema, PageError> {
    let id = form
        .get("_schema")
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| {
            PageError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "_schema: the form lacks the schema it was made from; reload it",
            )
        })?;
    let schema = match state.store.read_block_schema(id).await {
        Ok(s) => s,
        Err(StoreError::NotFound(_)) => {
            return Err(PageError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "The schema this form was made from no longer exists; reload the form.",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    if schema.block_type_id != ty.id {
        return Err(PageError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "_schema: the schema does not belong to this block type",
        ));
    }
    Ok(schema)
}

fn parse_draft(form: &FormPairs) -> Result<Option<Draft>, PageError> {
    let bad = || {
        PageError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "_parent: the form it came from could not be read; start again from that form",
        )
    };
    match form.get("_parent").filter(|p| !p.is_empty()) {
        None => Ok(None),
        Some(text) if text.len() > MAX_DRAFT_BYTES => Err(PageError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "_parent: the form it came from is too large to carry along",
        )),
        Some(text) => {
            let draft: Draft = serde_json::from_str(text).map_err(|_| bad())?;
            check_reference_path(&draft.path)?;
            let target_ok = match draft.target.split_once(':') {
                Some(("new", slug)) => block_types::validate::block_type_slug(slug).is_ok(),
                Some(("edit", id)) => Uuid::parse_str(id).is_ok(),
                _ => false,
            };
            if target_ok {
                Ok(Some(draft))
            } else {
                Err(bad())
            }
        }
    }
}

/// Deepest form path a "Create new …" may fill in.
const MAX_PATH_SEGMENTS: usize = 16;

/// A reference field's form path as the form writes it: `data.` and at most
/// [`MAX_PATH_SEGMENTS`] non-empty keys.
fn check_reference_path(path: &str) -> Result<(), PageError> {
    let keys: Vec<&str> = path
        .strip_prefix("data.")
        .unwrap_or("")
        .split('.')
        .collect();
    let ok =
        path.len() <= 4096 && keys.len() <= MAX_PATH_SEGMENTS && keys.iter().all(|k| !k.is_empty());
    if ok {
        Ok(())
    } else {
        Err(PageError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the field to fill in with the new block is not a field of this form",
        ))
    }
}

/// A store error as form errors (at fields) or a page error.
fn form_errors(
    e: StoreError,
    what: &str,
) -> Result<(StatusCode, Vec<FieldError>, Option<String>), PageError> {
    match e {
        StoreError::Invalid(errors) => Ok((StatusCode::UNPROCESSABLE_ENTITY, errors, None)),
        StoreError::AlreadyExists(_) if what == "create" => Ok((
            StatusCode::CONFLICT,
            vec![FieldError::new(
                "name",
                "a block of this type with this name already exists",
            )],
            None,
        )),
        StoreError::Forbidden(error) => Ok((
            StatusCode::FORBIDDEN,
            Vec::new(),
            Some(format!("Refused: {error}")),
        )),
        StoreError::BadReference(error) => {
            Ok((StatusCode::BAD_REQUEST, Vec::new(), Some(error.to_string())))
        }
        other => Err(other.into()),
    }
}

pub(super) async fn create(Path(slug): Path<String>, write: ConsoleWrite) -> Response {
    let target = format!("/blocks/new/{slug}");
    write
        .run("POST /blocks/new/{slug}", target, move |state, viewer, form| async move {
            create_block(&state, &viewer, &slug, &form).await
        })
        .await
}

async fn create_block(
    state: &AppState,
    viewer: &Viewer,
    slug: &str,
    form: &FormPairs,
) -> Result<(Response, Option<String>), PageError> {
    viewer.check_form(form)?;
    viewer.require(Scope::Write, "Creating a block")?;
    let ty = type_by_slug(state, slug).await?;
    let schema = submitted_schema(state, form, &ty).await?;
    let parent = parse_draft(form)?;
    let name = form.get("_name").unwrap_or("").trim().to_owned();
    let decoded = form::decode(&schema.fields, Mode::Create, None, &form.0);
    let ctx = context(state, &schema.fields).await?;
    let parent_text = form.get("_parent").filter(|p| !p.is_empty());
    let page = |data, errors, problem| FormPage {
        name: &name,
        data: Some(data),
        errors,
        problem,
        parent: parent_text,
        ..FormPage::create(&ty, &schema)
    };
    let again = || {
        form_response(
            viewer,
            &ctx,
            &page(&decoded.data, &[], None),
            StatusCode::OK,
        )
    };
    let draft = (format!("new:{slug}"), None, name.as_str());
    if let Some(answer) = unless_saving(state, viewer, &decoded, &schema, draft, again).await? {
        return Ok((answer, None));
    }
    let mut errors = decoded.errors.clone();
    if let Err(e) = block_types::validate::block_document_name(&name) {
        errors.push(FieldError::new("name", e.message));
    }
    if !errors.is_empty() {
        return Ok((
            form_response(
                viewer,
                &ctx,
                &page(&decoded.data, &errors, None),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            None,
        ));
    }
    let created = state
        .store
        .create_block_document_by(
            BlockDocumentCreate {
                name: Some(name.clone()),
                data: decoded.data.clone(),
                block_schema_id: schema.id,
                block_type_id: ty.id,
                is_anonymous: false,
            },
            Some(viewer.token.id),
        )
        .await;
    match created {
        Ok(doc) => {
            let target = Some(format!("/api/block_documents/{}", doc.id));
            let created_page = || {
                let next = if form.get("_then") == Some("another") {
                    format!("/blocks/new/{}?added={}", ty.slug, doc.id)
                } else {
                    format!("/blocks/{}?saved=created", doc.id)
                };
                Redirect::to(&next).into_response()
            };
            // The block is stored: whatever happens to the way back, the answer says so.
            let response = match parent {
                Some(draft) => match back_to_parent(state, viewer, draft, doc.id).await {
                    Ok(response) => response,
                    Err(e) => {
                        tracing::info!(status = %e.status, "the form a new block was made for could not be shown again");
                        created_page()
                    }
                },
                None => created_page(),
            };
            Ok((response, target))
        }
        Err(e) => {
            let (status, errors, problem) = form_errors(e, "create")?;
            Ok((
                form_response(viewer, &ctx, &page(&decoded.data, &errors, problem), status),
                None,
            ))
        }
    }
}

/// Answers what a submitted form asks other than saving: a reference to fill with a new
/// block gets that block's form, with this one kept as a draft (`draft`: its target
/// (`new:<slug>` or `edit:<id>`), version and name); a row added or removed gets this form
/// `again`, unchecked. `None` when the form asks to save.
async fn unless_saving(
    state: &AppState,
    viewer: &Viewer,
    decoded: &form::Decoded,
    schema: &BlockSchema,
    (target, version, name): (String, Option<i64>, &str),
    again: impl FnOnce() -> Response,
) -> Result<Option<Response>, PageError> {
    match &decoded.action {
        Action::Save => Ok(None),
        Action::NewReference { path, slug: child } => {
            check_reference_path(path)?;
            let draft = Draft {
                target,
                path: path.clone(),
                data: without_secrets(&schema.fields, &decoded.data),
                version,
                name: name.to_owned(),
            };
            Ok(Some(child_form(state, viewer, child, &draft).await?))
        }
        Action::Add(_) | Action::Remove(..) => Ok(Some(again())),
    }
}

/// The form of a new `child` block opened from a parent form's "Create new …".
async fn child_form(
    state: &AppState,
    viewer: &Viewer,
    child: &str,
    draft: &Draft,
) -> Result<Response, PageError> {
    let (ty, schema, ctx) = newest_form(state, child).await?;
    let text = serde_json::to_string(draft)
        .map_err(|e| PageError::from(crate::http::ApiError::Internal(e.to_string())))?;
    let page = FormPage {
        problem: Some(format!(
            "Create the {} block here; then the form you came from comes back with it chosen.",
            ty.name
        )),
        parent: Some(&text),
        ..FormPage::create(&ty, &schema)
    };
    Ok(form_response(viewer, &ctx, &page, StatusCode::OK))
}

/// The parent form again, with the new block chosen at the reference field.
async fn back_to_parent(
    state: &AppState,
    viewer: &Viewer,
    draft: Draft,
    child: Uuid,
) -> Result<Response, PageError> {
    let mut data = draft.data.clone();
    let reference = json!({"$ref": {"block_document_id": child}});
    set_at(&mut data, &draft.path, reference);
    if let Some(raw) = draft.target.strip_prefix("edit:") {
        let Opened { id, tagged, name } = Opened::read(state, raw).await?;
        let doc = &tagged.document;
        let ty = document_type(doc)?.clone();
        let schema = own_schema(doc)?;
        let original = editable_data(doc);
        let ctx = context(state, &schema.fields).await?;
        let version = draft.version.unwrap_or(tagged.version);
        let page = FormPage {
            data: Some(&data),
            ..FormPage::edit(&ty, &schema, (id, &name, version), &original)
        };
        return Ok(form_response(viewer, &ctx, &page, StatusCode::OK));
    }
    let slug = draft.target.strip_prefix("new:").unwrap_or_default();
    let (ty, schema, ctx) = newest_form(state, slug).await?;
    let page = FormPage {
        name: &draft.name,
        data: Some(&data),
        ..FormPage::create(&ty, &schema)
    };
    Ok(form_response(viewer, &ctx, &page, StatusCode::OK))
}

/// Sets `value` at a form path (`data.a.b`; keys percent-encoded as the form writes them).
fn set_at(data: &mut Map<String, Value>, path: &str, value: Value) {
    let keys: Vec<String> = path
        .strip_prefix("data.")
        .unwrap_or(path)
        .split('.')
        .map(|k| {
            percent_encoding::percent_decode_str(k)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let Some((last, parents)) = keys.split_last() else {
        return;
    };
    let mut here = data;
    for key in parents {
        let entry = here
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else { return };
        here = next;
    }
    here.insert(last.clone(), value);
}

pub(super) async fn update(Path(raw): Path<String>, write: ConsoleWrite) -> Response {
    change_block(
        write,
        "POST /blocks/{id}/edit",
        "Editing a block",
        raw,
        |state, viewer, form, block, version| async move {
            update_block(&state, &viewer, &form, block, version).await
        },
    )
    .await
}

async fn update_block(
    state: &AppState,
    viewer: &Viewer,
    form: &FormPairs,
    Opened { id, tagged, name }: Opened,
    version: i64,
) -> Result<Response, PageError> {
    let doc = &tagged.document;
    let ty = document_type(doc)?.clone();
    let schema = submitted_schema(state, form, &ty).await?;
    let original = editable_data(doc);
    let decoded = form::decode(&schema.fields, Mode::Edit, Some(&original), &form.0);
    let ctx = context(state, &schema.fields).await?;
    let page = |data, errors, problem, version| FormPage {
        data: Some(data),
        errors,
        problem,
        ..FormPage::edit(&ty, &schema, (id, &name, version), &original)
    };
    let again = || {
        let page = page(&decoded.data, &[], None, version);
        form_response(viewer, &ctx, &page, StatusCode::OK)
    };
    let draft = (format!("edit:{id}"), Some(version), name.as_str());
    if let Some(answer) = unless_saving(state, viewer, &decoded, &schema, draft, again).await? {
        return Ok(answer);
    }
    if !decoded.errors.is_empty() {
        return Ok(form_response(
            viewer,
            &ctx,
            &page(&decoded.data, &decoded.errors, None, version),
            StatusCode::UNPROCESSABLE_ENTITY,
        ));
    }
    let rights = viewer.token.rights();
    let body = BlockDocumentUpdate {
        block_schema_id: (schema.id != doc.block_schema_id).then_some(schema.id),
        data: Some(decoded.data.clone()),
        merge_existing_data: false,
    };
    let outcome = state
        .store
        .update_block_document(id, body, Some(version), rights)
        .await;
    match outcome {
        Ok(_) => Ok(Redirect::to(&format!("/blocks/{id}?saved=1")).into_response()),
        Err(StoreError::VersionConflict { .. }) => {
            let problem = format!(
                "{name} was changed by someone else after you opened this form (it is now at version {}; you edited version {version}). Nothing was saved. Open the current version, then make your change again.",
                tagged.version
            );
            let mut response = form_response(
                viewer,
                &ctx,
                &page(&decoded.data, &[], Some(problem), version),
                StatusCode::CONFLICT,
            );
            *response.status_mut() = StatusCode::CONFLICT;
            Ok(response)
        }
        Err(e) => {
            let (status, errors, problem) = form_errors(e, "edit")?;
            Ok(form_response(
                viewer,
                &ctx,
                &page(&decoded.data, &errors, problem, version),
                status,
            ))
        }
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct NameCheck {
    #[serde(default, rename = "type")]
    block_type: String,
    #[serde(default)]
    name: String,
}

/// `{"problem": null}` when `name` is free for a new block of the type, else what is wrong.
pub(super) async fn name_check(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<NameCheck>,
) -> Response {
    let _ = &viewer;
    let problem = match block_types::validate::block_document_name(&query.name) {
        Err(e) => Some(e.message),
        Ok(()) => match state
            .store
            .read_block_document_by_name(&query.block_type, &query.name, false)
            .await
        {
            Ok(_) => Some("a block of this type with this name already exists".to_owned()),
            Err(StoreError::NotFound(_)) => None,
            Err(_) => Some("the name could not be checked just now".to_owned()),
        },
    };
    axum::Json(json!({ "problem": problem })).into_response()
}
