//! `/api/openapi.json`: an OpenAPI 3.1 description generated from the route table, so it
//! lists exactly the routes the router serves, with their scopes, parameters, request and
//! response schemas.

use std::collections::BTreeMap;

use axum::Json;
use serde_json::{Map, Value, json};

use super::routes::{Access, Route, get};

pub(super) fn routes() -> Vec<Route> {
    vec![
        get("/api/openapi.json", || async {
            Json(document(&super::all_routes()))
        })
        .unversioned()
        .tag("server")
        .summary("This API's OpenAPI description")
        .returns(200, Some("Object")),
    ]
}

/// A schema reference for a component name (`Name[]` is a list of `Name`).
fn schema_ref(name: &str) -> Value {
    if let Some(item) = name.strip_suffix("[]") {
        return json!({"type": "array", "items": schema_ref(item)});
    }
    match name {
        "Boolean" => json!({"type": "boolean"}),
        "String" => json!({"type": "string"}),
        "Integer" => json!({"type": "integer"}),
        "Object" => json!({"type": "object"}),
        "Text" => json!({"type": "string"}),
        other => json!({"$ref": format!("#/components/schemas/{other}")}),
    }
}

/// The OpenAPI document for `routes`.
pub(crate) fn document(routes: &[Route]) -> Value {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for route in routes {
        let mut op = Map::new();
        op.insert("tags".into(), json!([route.tag]));
        op.insert("summary".into(), json!(route.doc.summary));
        op.insert(
            "operationId".into(),
            json!(format!(
                "{}{}",
                route.method.as_str().to_ascii_lowercase(),
                route.path.replace(['/', '{', '}', '.'], "_")
            )),
        );
        let mut params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
            })
            .collect();
        for (name, ty, description) in route.doc.query {
            params.push(json!({"name": name, "in": "query", "required": false,
                "description": description, "schema": {"type": ty}}));
        }
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some(body) = route.doc.request {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": schema_ref(body)}}}),
            );
        }
        let mut responses = Map::new();
        let ok = match route.doc.response {
            Some("Text") => {
                json!({"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}})
            }
            Some(name) => {
                json!({"description": "OK", "content": {"application/json": {"schema": schema_ref(name)}}})
            }
            None => json!({"description": "OK"}),
        };
        responses.insert(route.doc.status.to_string(), ok);
        let error = |d: &str| json!({"description": d, "content": {"application/json": {"schema": schema_ref("Error")}}});
        match route.meta.access {
            Access::Token(scope) => {
                op.insert("security".into(), json!([{"bearer": [scope.as_str()]}]));
                op.insert("x-required-scope".into(), json!(scope.as_str()));
                responses.insert(
                    "401".into(),
                    error("No token, or an unknown, expired or revoked one"),
                );
                responses.insert("403".into(), error("The token lacks the scope"));
                responses.insert(
                    "429".into(),
                    error("Too many failed authentications; see Retry-After"),
                );
            }
            Access::Socket => {
                op.insert(
                    "x-required-scope".into(),
                    json!("read (in the socket's auth message)"),
                );
            }
            Access::Public => {
                op.insert("security".into(), json!([]));
            }
        }
        if route.doc.request.is_some() {
            responses.insert(
                "422".into(),
                json!({"description": "Invalid body; each error names its field",
                "content": {"application/json": {"schema": schema_ref("ValidationError")}}}),
            );
        }
        op.insert("responses".into(), Value::Object(responses));
        paths.entry(route.path.to_owned()).or_default().insert(
            route.method.as_str().to_ascii_lowercase(),
            Value::Object(op),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "blocks registry",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Typed, encrypted configuration blocks. The block endpoints speak Prefect's wire format.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "A token from POST /api/tokens (or the first admin token in $BLOCKS_HOME/profile.toml). Basic auth with the token as password also works."}},
            "schemas": components(),
        },
    })
}

fn components() -> Value {
    let uuid = json!({"type": "string", "format": "uuid"});
    let time = json!({"type": "string", "format": "date-time"});
    let text = json!({"type": "string"});
    let opt_text = json!({"type": ["string", "null"]});
    let data = json!({"type": "object", "description": "Field values; a reference is {\"$ref\": {\"block_document_id\": …}}; secrets read back as \"********\" unless include_secrets"});
    let scopes =
        json!({"type": "array", "items": {"enum": ["read", "read-secrets", "write", "admin"]}});
    let grants = json!({"type": "array", "maxItems": crate::store::MAX_GRANTS, "description": "Limits the token's scopes to some blocks; empty: every block. Never on an admin token.",
        "items": {"type": "object", "required": ["scope", "selector"], "additionalProperties": false, "properties": {
            "scope": {"enum": ["read", "read-secrets", "write"]},
            "selector": {"type": "string", "pattern": "^[a-z0-9*-]+/[a-z0-9*-]+$", "description": "type-slug/name, each a glob where * matches any run of characters (gcs-bucket/zoom-*)"}}}});
    let ttl = json!({"type": ["integer", "string"], "description": "Lifetime from now: seconds, or a duration such as 15m, 1h, 90d"});
    let token_create = json!({"type": "object", "required": ["name", "scopes"], "additionalProperties": false, "properties": {
        "name": text, "scopes": scopes,
        "expires": {"type": ["string", "null"], "format": "date-time"},
        "ttl": ttl, "grants": grants}});
    let child_token_create = json!({"type": "object", "additionalProperties": false, "properties": {
        "name": text, "scopes": scopes, "grants": grants, "ttl": ttl}});
    let token_update = json!({"type": "object", "required": ["grants"], "additionalProperties": false, "properties": {
        "grants": grants}});
    let token = json!({"type": "object", "properties": {
        "id": uuid, "name": text, "scopes": scopes, "created": time,
        "expires": {"type": ["string", "null"], "format": "date-time"},
        "last_used": {"type": ["string", "null"], "format": "date-time"},
        "revoked": {"type": ["string", "null"], "format": "date-time"},
        "grants": grants,
        "parent_id": {"type": ["string", "null"], "description": "The token that minted this one; revoking it revokes this one"}}});
    let mut created_token = token.clone();
    created_token["properties"]["token"] =
        json!({"type": "string", "description": "blk_…; shown only in this response"});
    let filter = json!({"type": "object", "description": "Prefect's filter body: nested filters, offset, limit (at most 200)"});
    let mut components = json!({
        "Error": {"type": "object", "properties": {"detail": text}},
        "ValidationError": {"type": "object", "properties": {
            "exception_message": text,
            "exception_detail": {"type": "array", "items": {"type": "object", "properties": {
                "loc": {"type": "array"}, "msg": text, "type": text}}},
            "detail": text, "request_body": {"type": "null"}}},
        "Message": {"type": "object", "properties": {"message": text}},
        "BlockType": {"type": "object", "properties": {
            "id": uuid, "created": time, "updated": time, "name": text, "slug": text,
            "logo_url": opt_text, "documentation_url": opt_text, "description": opt_text,
            "code_example": opt_text, "is_protected": {"type": "boolean"}}},
        "BlockTypeCreate": {"type": "object", "required": ["name", "slug"], "additionalProperties": false, "properties": {
            "name": text, "slug": text, "logo_url": opt_text, "documentation_url": opt_text,
            "description": opt_text, "code_example": opt_text}},
        "BlockTypeUpdate": {"type": "object", "additionalProperties": false, "properties": {
            "logo_url": opt_text, "documentation_url": opt_text, "description": opt_text, "code_example": opt_text}},
        "BlockTypeFilter": filter,
        "BlockSchema": {"type": "object", "properties": {
            "id": uuid, "created": time, "updated": time, "checksum": text,
            "fields": {"type": "object", "description": "The JSON Schema"},
            "block_type_id": uuid, "block_type": {"$ref": "#/components/schemas/BlockType"},
            "capabilities": {"type": "array", "items": text}, "version": text}},
        "BlockSchemaCreate": {"type": "object", "required": ["fields", "block_type_id"], "additionalProperties": false, "properties": {
            "fields": {"type": "object"}, "block_type_id": uuid,
            "capabilities": {"type": "array", "items": text}, "version": text}},
        "BlockSchemaFilter": filter,
        "BlockDocument": {"type": "object", "properties": {
            "id": uuid, "created": time, "updated": time, "name": opt_text, "data": data,
            "block_schema_id": uuid, "block_schema": {"$ref": "#/components/schemas/BlockSchema"},
            "block_type_id": uuid, "block_type_name": opt_text,
            "block_type": {"$ref": "#/components/schemas/BlockType"},
            "block_document_references": {"type": "object"}, "is_anonymous": {"type": "boolean"},
            "unreadable": {"type": "boolean", "description": "Present and true on a listed document whose secrets cannot be decrypted (its sealed values are masked)"}}},
        "BlockDocumentCreate": {"type": "object", "required": ["data", "block_schema_id", "block_type_id"], "additionalProperties": false, "properties": {
            "name": opt_text, "data": data, "block_schema_id": uuid, "block_type_id": uuid,
            "is_anonymous": {"type": "boolean"}}},
        "BlockDocumentUpdate": {"type": "object", "additionalProperties": false, "properties": {
            "data": data, "merge_existing_data": {"type": "boolean"}, "block_schema_id": uuid}},
        "BlockDocumentFilter": filter,
        "BlockDocumentCount": filter,
        "VersionInfo": {"type": "object", "properties": {
            "version": {"type": "integer"}, "created": time, "block_schema_id": uuid,
            "key_id": {"type": ["string", "null"]}, "references": {"type": "object"},
            "token_id": {"type": ["string", "null"], "description": "The token that wrote the version (null before authors were recorded, and for the server's own writes)."}}},
        "VersionData": {"type": "object", "properties": {
            "block_document_id": uuid, "version": {"type": "integer"}, "data": data}},
        "WriteOutcome": {"type": "object", "properties": {"id": uuid, "version": {"type": "integer"}}},
        "Token": token,
        "CreatedToken": created_token,
        "AuditPage": {"type": "object", "properties": {
            "records": {"type": "array", "items": {"type": "object", "properties": {
                "seq": {"type": "integer"}, "at": time, "request_id": text,
                "token_id": {"type": ["string", "null"]}, "action": text, "target": text,
                "outcome": {"enum": ["ok", "denied", "failed", "error"]}, "status": {"type": "integer"}}}},
            "next_before": {"type": ["integer", "null"]}}},
        "KeyStatus": {"type": "object", "properties": {
            "active": uuid, "passphrase": {"type": "boolean"},
            "keys": {"type": "array", "items": {"type": "object", "properties": {
                "id": uuid, "state": {"enum": ["active", "retired", "destroyed"]},
                "encryptions": {"type": "integer"}, "versions": {"type": "integer"},
                "documents": {"type": "integer"}}}}}},
        "Rotation": {"type": "object", "properties": {"active": uuid, "reencryption": text}},
        "Settings": {"type": "object", "additionalProperties": false, "properties": {
            "retention": {"type": ["integer", "null"], "minimum": 1,
                "description": "Versions kept per document; null keeps all"},
            "audit_retention_days": {"type": ["integer", "null"], "minimum": 1, "maximum": 36500,
                "description": "Days audit records are kept (400 by default); null keeps all"},
            "event_retention_hours": {"type": ["integer", "null"], "minimum": 1, "maximum": 8784,
                "description": "Hours change-feed events are kept (168 by default); null keeps all"}}},
    });
    components["TokenCreate"] = token_create;
    components["ChildTokenCreate"] = child_token_create;
    components["TokenUpdate"] = token_update;
    components["JwtLogin"] = json!({"type": "object", "required": ["role", "jwt"], "additionalProperties": false, "properties": {
        "role": text, "jwt": {"type": "string", "description": "The workload's identity token (RS256 or ES256), at most 16 KiB"}}});
    let keys = json!({"jwks_url": {"type": ["string", "null"], "description": "https URL of the issuer's JWKS (http only on loopback); fetched by the server"},
        "jwks": {"type": ["object", "null"], "description": "The issuer's JWKS document itself ({\"keys\": [...]}), for air-gapped setups"}});
    let mut issuer_create = json!({"type": "object", "required": ["issuer", "audience"], "additionalProperties": false, "properties": {
        "issuer": {"type": "string", "description": "The iss its tokens carry"},
        "audience": {"type": "string", "description": "The aud its tokens must carry"}}});
    let mut issuer = json!({"type": "object", "properties": {"id": uuid, "issuer": text, "audience": text, "created": time}});
    for (name, schema) in keys.as_object().into_iter().flatten() {
        issuer_create["properties"][name] = schema.clone();
        issuer["properties"][name] = schema.clone();
    }
    components["IssuerCreate"] = issuer_create;
    components["Issuer"] = issuer;
    let role = json!({
        "issuer": {"type": "string", "description": "The trusted issuer's iss"},
        "claims": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Claim -> value the token must carry (* matches any run of characters); at least one"},
        "scopes": {"type": "array", "items": {"enum": ["read", "read-secrets", "write"]}},
        "grants": grants,
        "ttl": ttl});
    components["RoleConfig"] = json!({"type": "object", "required": ["issuer", "claims", "scopes"], "additionalProperties": false, "properties": role});
    let mut role_out = json!({"type": "object", "properties": role});
    role_out["properties"]["name"] = text.clone();
    role_out["properties"]["ttl"] = json!({"type": "integer", "description": "Seconds"});
    role_out["properties"]["created"] = time.clone();
    components["Role"] = role_out;
    let kinds: Vec<&str> = block_types::EventKind::ALL
        .map(block_types::EventKind::as_str)
        .to_vec();
    let filter = json!({"type": "object", "additionalProperties": false, "properties": {
        "type": {"type": ["string", "null"], "description": "Only block types whose slug matches this glob (* matches any run)"},
        "name": {"type": ["string", "null"], "description": "Only documents whose name matches this glob"},
        "kinds": {"type": "array", "items": {"enum": kinds}, "description": "Only these kinds; empty: all"}}});
    components["WebhookCreate"] = json!({"type": "object", "required": ["url"], "additionalProperties": false, "properties": {
        "url": {"type": "string", "description": "https (http only to loopback); private and link-local addresses are refused unless the server allows them"},
        "description": text, "filter": filter}});
    let webhook = json!({"type": "object", "properties": {
        "id": uuid, "url": text, "description": text, "filter": filter, "created": time, "token_id": {"type": ["string", "null"], "format": "uuid"}}});
    let mut created_hook = webhook.clone();
    created_hook["properties"]["secret"] =
        json!({"type": "string", "description": "The signing secret (whsec_…), shown this once"});
    components["Webhook"] = webhook;
    components["WebhookCreated"] = created_hook;
    components["WebhookDelivery"] = json!({"type": "object", "properties": {
        "id": uuid, "event_id": {"type": "integer"}, "kind": {"enum": kinds},
        "state": {"enum": ["pending", "delivered", "failed"]}, "attempts": {"type": "integer"},
        "last_status": {"type": ["integer", "null"]}, "last_error": {"type": ["string", "null"]},
        "created": time, "next_attempt": time, "finished": {"type": ["string", "null"], "format": "date-time"}}});
    components["WebhookTest"] = json!({"type": "object", "properties": {
        "delivered": {"type": "boolean"}, "status": {"type": ["integer", "null"]},
        "error": {"type": ["string", "null"]}, "elapsed_ms": {"type": "integer"}}});
    components
}
