//! Sign-in with a workload identity, on SQLite and PostgreSQL, against a test issuer: key
//! pairs made here, its JWKS served on loopback (and kept in the store, as a JWKS file is).
//! A valid exchange; wrong audience, wrong issuer, expired, not yet valid, issued in the
//! future, an unknown `kid` then key rotation at the issuer, `alg: none`, HMAC signed with
//! the public key, a claim mismatch, a tampered signature: each a 401 with a clear reason
//! and an audit record, none a 5xx, and the JWT never in the audit log.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::test_app::{Ctx, Resp, all_audit, get, lenient, send, setup};
use super::tests::send_expecting;
use crate::store::tests::harness::on_both;

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "blocks";
const SUBJECT: &str = "system:serviceaccount:etl:loader";

/// A signing key and its public JWK.
struct Key {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

/// A fresh P-256 key pair (ES256).
fn es256(kid: &str) -> Key {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    Key {
        alg: Algorithm::ES256,
        kid: kid.to_owned(),
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }),
    }
}

/// The test-only RSA key of the fixtures (RS256).
fn rs256(kid: &str) -> Key {
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use rsa::pkcs8::DecodePrivateKey as _;
    use rsa::traits::PublicKeyParts as _;
    let account: Value = serde_json::from_str(include_str!(
        "../../../tests/fixtures/test-service-account.json"
    ))
    .unwrap();
    let private =
        rsa::RsaPrivateKey::from_pkcs8_pem(account["private_key"].as_str().unwrap()).unwrap();
    let der = private.to_pkcs1_der().unwrap();
    Key {
        alg: Algorithm::RS256,
        kid: kid.to_owned(),
        encoding: EncodingKey::from_rsa_der(der.as_bytes()),
        jwk: json!({
            "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(private.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(private.e().to_bytes_be()),
        }),
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims a Kubernetes projected service-account token would carry.
fn claims() -> Value {
    json!({"iss": ISSUER, "aud": [AUDIENCE], "sub": SUBJECT, "iat": now(), "nbf": now(), "exp": now() + 600,
           "kubernetes.io": {"namespace": "etl"}})
}

fn sign(key: &Key, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

/// A JWKS served on loopback, whose keys a test can change (rotation at the issuer).
async fn jwks_server(keys: Arc<Mutex<Vec<Value>>>) -> String {
    let app = axum::Router::new().route(
        "/keys",
        axum::routing::get(move || {
            let keys = keys.clone();
            async move { axum::Json(json!({"keys": keys.lock().clone()})) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/keys")
}

async fn login(ctx: &Ctx, role: &str, jwt: &str) -> Resp {
    send(
        &ctx.app,
        "POST",
        "/api/auth/jwt",
        None,
        Some(&json!({"role": role, "jwt": jwt})),
        &[],
    )
    .await
}

/// Asserts a sign-in was refused (401) for `reason`, which its detail names.
#[track_caller]
fn refused(r: &Resp, reason: &str) {
    assert_eq!(r.status, 401, "{reason}: {}", r.text);
    assert!(
        r.detail().contains(reason),
        "expected {reason:?} in {:?}",
        r.detail()
    );
}

#[tokio::test]
async fn a_workload_signs_in_with_its_identity_token_and_every_forgery_is_refused() {
    on_both(async |db| {
        let ctx = setup(db, lenient()).await;
        let admin = ctx.admin.clone();
        let first = es256("first");
        let rsa = rs256("rsa");
        let published = Arc::new(Mutex::new(vec![first.jwk.clone(), rsa.jwk.clone()]));
        let url = jwks_server(published.clone()).await;
        let issuer = json!({"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": url});
        let issuers = "/api/auth/issuers";
        send_expecting(&ctx.app, "POST", issuers, &admin, Some(&issuer), 201).await;
        let role = json!({
            "issuer": ISSUER,
            "claims": {"sub": "system:serviceaccount:etl:*", "aud": AUDIENCE},
            "scopes": ["read-secrets"],
            "grants": [{"scope": "read-secrets", "selector": "gcs-bucket/zoom-*"}],
            "ttl": "10m",
        });
        let etl_loader = "/api/auth/roles/etl-loader";
        send_expecting(&ctx.app, "PUT", etl_loader, &admin, Some(&role), 200).await;

        // Valid exchanges, ES256 and RS256: a short-lived token limited to the role's grants.
        for key in [&first, &rsa] {
            let r = login(&ctx, "etl-loader", &sign(key, &claims())).await;
            assert_eq!(r.status, 200, "{:?}: {}", key.alg, r.text);
            let token = r.body["token"].as_str().unwrap().to_owned();
            assert_eq!(r.body["scopes"], json!(["read-secrets"]));
            assert_eq!(r.body["grants"][0]["selector"], "gcs-bucket/zoom-*");
            let expires: chrono::DateTime<chrono::Utc> =
                r.body["expires"].as_str().unwrap().parse().unwrap();
            assert!(expires <= chrono::Utc::now() + chrono::Duration::minutes(10));
            assert_eq!(
                get(&ctx.app, "/api/block_types/slug/secret", &token)
                    .await
                    .status,
                200
            );
            let r = get(
                &ctx.app,
                "/api/block_types/slug/secret/block_documents/name/x?include_secrets=true",
                &token,
            )
            .await;
            assert_eq!(r.status, 404, "outside the role's grants");
        }

        // Every forgery and mismatch: 401, saying why.
        let with = |patch: Value| {
            let mut c = claims();
            for (k, v) in patch.as_object().unwrap() {
                c[k] = v.clone();
            }
            c
        };
        for (patch, reason) in [
            (json!({"aud": "someone-else"}), "aud"),
            (json!({"iss": "https://evil.test"}), "iss"),
            (json!({"exp": now() - 120}), "expired"),
            (json!({"nbf": now() + 300}), "nbf"),
            (json!({"iat": now() + 300}), "iat"),
            (
                json!({"sub": "system:serviceaccount:web:frontend"}),
                "sub claim",
            ),
        ] {
            let jwt = sign(&first, &with(patch));
            refused(&login(&ctx, "etl-loader", &jwt).await, reason);
        }
        refused(
            &login(&ctx, "nobody", &sign(&first, &claims())).await,
            "no role",
        );
        let mut missing_exp = claims();
        missing_exp.as_object_mut().unwrap().remove("exp");
        refused(
            &login(&ctx, "etl-loader", &sign(&first, &missing_exp)).await,
            "exp",
        );
        // A tampered payload: the signature no longer verifies.
        let good = sign(&first, &claims());
        let parts: Vec<&str> = good.split('.').collect();
        let tampered_claims = with(json!({"sub": SUBJECT, "extra": "x"}));
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(tampered_claims.to_string()),
            parts[2]
        );
        refused(&login(&ctx, "etl-loader", &tampered).await, "signature");
        // alg none.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims().to_string())
        );
        refused(&login(&ctx, "etl-loader", &none).await, "RS256 or ES256");
        // HS256 with the issuer's public key as the secret (algorithm confusion).
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa".into());
        let secret = serde_json::to_vec(&rsa.jwk).unwrap();
        let confused =
            jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
        refused(
            &login(&ctx, "etl-loader", &confused).await,
            "only RS256 and ES256",
        );
        // Not a JWT at all.
        refused(&login(&ctx, "etl-loader", "not-a-jwt").await, "not a JWT");

        // A key the issuer has not published: refused; once it publishes it (rotation),
        // the same kind of token signs in.
        let second = es256("second");
        refused(
            &login(&ctx, "etl-loader", &sign(&second, &claims())).await,
            "kid",
        );
        published.lock().push(second.jwk.clone());
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let r = login(&ctx, "etl-loader", &sign(&second, &claims())).await;
        assert_eq!(r.status, 200, "after rotation: {}", r.text);
        // A key the issuer withdrew keeps working only until the cache is refreshed; a key
        // signed by another party never does.
        let stranger = es256("first");
        refused(
            &login(&ctx, "etl-loader", &sign(&stranger, &claims())).await,
            "signature",
        );

        // Every exchange is audited with role, issuer and subject, never the JWT.
        let records: Vec<_> = all_audit(&ctx.state.store)
            .await
            .into_iter()
            .filter(|r| r.action == "POST /api/auth/jwt")
            .collect();
        assert!(records.iter().filter(|r| r.status == 200).count() >= 3);
        assert!(records.iter().filter(|r| r.outcome == "denied").count() >= 13);
        for record in &records {
            assert!(record.target.contains("role="), "{}", record.target);
            assert!(
                !record.target.contains(parts[2]),
                "a JWT signature in the audit log"
            );
            assert!(!record.target.contains(&good), "a JWT in the audit log");
        }
        assert!(
            records
                .iter()
                .any(|r| r.status == 200 && r.target.contains(SUBJECT) && r.token_id.is_some())
        );
    })
    .await;
}

#[tokio::test]
async fn issuers_and_roles_are_checked_and_a_kept_jwks_needs_no_fetch() {
    on_both(async |db| {
        let ctx = setup(db, lenient()).await;
        let admin = ctx.admin.clone();
        let key = rs256("kept");
        let post = |body: Value| {
            let admin = admin.clone();
            let app = ctx.app.clone();
            async move { send(&app, "POST", "/api/auth/issuers", Some(&admin), Some(&body), &[]).await }
        };
        for (body, field) in [
            (json!({"issuer": "http://evil.test", "audience": "a", "jwks": {"keys": [key.jwk]}}), "issuer"),
            (json!({"issuer": ISSUER, "audience": "", "jwks": {"keys": [key.jwk]}}), "audience"),
            (json!({"issuer": ISSUER, "audience": "a"}), "jwks_url"),
            (json!({"issuer": ISSUER, "audience": "a", "jwks": {"keys": []}}), "jwks"),
            (json!({"issuer": ISSUER, "audience": "a", "jwks_url": "http://10.0.0.1/keys"}), "jwks_url"),
        ] {
            let r = post(body).await;
            assert_eq!(r.status, 422, "{field}: {}", r.text);
            assert!(r.text.contains(field), "{field}: {}", r.text);
        }
        // The keys kept in the store (what `--jwks-file` uploads): no URL at all.
        let r = post(json!({"issuer": ISSUER, "audience": AUDIENCE, "jwks": {"keys": [key.jwk]}})).await;
        assert_eq!(r.status, 201, "{}", r.text);
        let issuer_id = r.body["id"].as_str().unwrap().to_owned();
        assert_eq!(post(json!({"issuer": ISSUER, "audience": AUDIENCE, "jwks": {"keys": [key.jwk]}})).await.status, 409);

        let put = |name: &str, body: Value| {
            let admin = admin.clone();
            let app = ctx.app.clone();
            let uri = format!("/api/auth/roles/{name}");
            async move { send(&app, "PUT", &uri, Some(&admin), Some(&body), &[]).await }
        };
        for (name, body, field) in [
            ("ci", json!({"issuer": ISSUER, "claims": {"sub": "x"}, "scopes": ["admin"]}), "scopes"),
            ("ci", json!({"issuer": ISSUER, "claims": {}, "scopes": ["read"]}), "claims"),
            ("ci", json!({"issuer": "https://unknown.test", "claims": {"sub": "x"}, "scopes": ["read"]}), "issuer"),
            ("ci", json!({"issuer": ISSUER, "claims": {"sub": "x"}, "scopes": ["read"], "ttl": "2d"}), "ttl"),
            ("ci", json!({"issuer": ISSUER, "claims": {"sub": "x"}, "scopes": ["read"], "grants": [{"scope": "write", "selector": "*/*"}]}), "grants[0].scope"),
            ("bad_name", json!({"issuer": ISSUER, "claims": {"sub": "x"}, "scopes": ["read"]}), "name"),
        ] {
            let r = put(name, body).await;
            assert_eq!(r.status, 422, "{field}: {}", r.text);
            assert!(r.text.contains(field), "{field}: {}", r.text);
        }
        // GitHub Actions-style claims, all of which must match.
        let r = put("deploy", json!({"issuer": ISSUER, "claims": {"repository": "acme/pipelines", "ref": "refs/heads/main"}, "scopes": ["read"], "ttl": 60})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let ci = |git_ref: &str| json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "repo:acme/pipelines", "repository": "acme/pipelines", "ref": git_ref, "exp": now() + 60});
        let r = login(&ctx, "deploy", &sign(&key, &ci("refs/heads/main"))).await;
        assert_eq!(r.status, 200, "{}", r.text);
        refused(&login(&ctx, "deploy", &sign(&key, &ci("refs/heads/feature"))).await, "ref claim");
        // Roles and issuers are listed; an issuer in use is not deleted.
        let roles = get(&ctx.app, "/api/auth/roles", &admin).await;
        assert_eq!(roles.body[0]["name"], "deploy");
        assert_eq!(roles.body[0]["ttl"], 60);
        let issuer = format!("/api/auth/issuers/{issuer_id}");
        let r = send_expecting(&ctx.app, "DELETE", &issuer, &admin, None, 409).await;
        assert!(r.text.contains("deploy"));
        // Only an admin configures sign-in.
        let (reader, _) = super::test_app::token(&ctx.state.store, &[crate::store::Scope::Write]).await;
        assert_eq!(get(&ctx.app, "/api/auth/roles", &reader).await.status, 403);
        send_expecting(&ctx.app, "DELETE", "/api/auth/roles/deploy", &admin, None, 204).await;
        refused(&login(&ctx, "deploy", &sign(&key, &ci("refs/heads/main"))).await, "no role");
        send_expecting(&ctx.app, "DELETE", &issuer, &admin, None, 204).await;
    })
    .await;
}

#[tokio::test]
async fn tokens_end_with_their_identity_keys_are_kept_public_and_guessers_are_slowed() {
    on_both(async |db| {
        // At most 3 failed sign-ins a minute from one address.
        let ctx = setup(db, crate::http::AuthGuard::new(3, Duration::from_secs(60))).await;
        let admin = ctx.admin.clone();
        let key = es256("kept");
        // A pasted JWKS with a private part and a shared secret: only the public key stays.
        let mut private = key.jwk.clone();
        private["d"] = json!("c2VjcmV0LXByaXZhdGUtcGFydA");
        let jwks = json!({"keys": [private, {"kty": "oct", "k": "c2hhcmVkLXNlY3JldA", "kid": "hmac"}]});
        let issuers = "/api/auth/issuers";
        let r = send_expecting(&ctx.app, "POST", issuers, &admin,
            Some(&json!({"issuer": ISSUER, "audience": AUDIENCE, "jwks": jwks})), 201).await;
        assert_eq!(r.body["jwks"]["keys"].as_array().unwrap().len(), 1, "{}", r.text);
        let listed = get(&ctx.app, "/api/auth/issuers", &admin).await;
        assert!(!listed.text.contains("c2VjcmV0LXByaXZhdGUtcGFydA") && !listed.text.contains("c2hhcmVkLXNlY3JldA"), "{}", listed.text);
        send_expecting(&ctx.app, "POST", issuers, &admin,
            Some(&json!({"issuer": "https://other.test", "audience": AUDIENCE, "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}})), 422).await;
        // A role matching anything of the issuer is refused.
        send_expecting(&ctx.app, "PUT", "/api/auth/roles/any", &admin,
            Some(&json!({"issuer": ISSUER, "claims": {"sub": "**"}, "scopes": ["read"]})), 422).await;
        send_expecting(&ctx.app, "PUT", "/api/auth/roles/etl-loader", &admin,
            Some(&json!({"issuer": ISSUER, "claims": {"sub": SUBJECT}, "scopes": ["read"], "ttl": "1h"})), 200).await;

        // A JWT with 90 s left: the token ends with it, not an hour later.
        let mut soon = claims();
        soon["exp"] = json!(now() + 90);
        let r = login(&ctx, "etl-loader", &sign(&key, &soon)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header(axum::http::header::CACHE_CONTROL), Some("no-store"));
        let left = r.body["expires_in"].as_i64().unwrap();
        assert!((1..=90).contains(&left), "{left}");

        // Failed sign-ins count per address: past the limit, 429, whatever is sent.
        for _ in 0..3 {
            refused(&login(&ctx, "etl-loader", "not-a-jwt").await, "not a JWT");
        }
        let r = login(&ctx, "etl-loader", &sign(&key, &claims())).await;
        assert_eq!(r.status, 429, "{}", r.text);
        assert!(r.header(axum::http::header::RETRY_AFTER).is_some());
        let records: Vec<_> = all_audit(&ctx.state.store)
            .await
            .into_iter()
            .filter(|r| r.action == "POST /api/auth/jwt" && r.status == 429)
            .collect();
        assert_eq!(records.len(), 1, "the first refusal of the window is recorded");
    })
    .await;
}
