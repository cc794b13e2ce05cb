//! Trusted issuers and roles in the store, on both databases.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::harness::on_both;
use crate::store::{Grant, IssuerCreate, RoleConfig, Scope, StoreError, Ttl};

fn role(issuer: &str) -> RoleConfig {
    RoleConfig {
        issuer: issuer.into(),
        claims: BTreeMap::from([("sub".to_owned(), "system:serviceaccount:etl:*".to_owned())]),
        scopes: BTreeSet::from([Scope::ReadSecrets]),
        grants: vec![Grant::parse("read-secrets:gcs-bucket/zoom-*").unwrap()],
        ttl: Some(Ttl::parse("15m").unwrap()),
    }
}

#[tokio::test]
async fn issuers_and_roles_are_kept_replaced_and_deleted_in_order() {
    on_both(async |db| {
        let store = db.open().await;
        let fetched = store
            .create_issuer(IssuerCreate {
                issuer: "https://kubernetes.default.svc".into(),
                audience: "blocks".into(),
                jwks_url: Some("https://kubernetes.default.svc/openid/v1/jwks".into()),
                jwks: None,
            })
            .await
            .unwrap();
        let kept = store
            .create_issuer(IssuerCreate {
                issuer: "https://token.actions.githubusercontent.com".into(),
                audience: "blocks".into(),
                jwks_url: None,
                jwks: Some(json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]})),
            })
            .await
            .unwrap();
        assert_eq!(store.list_issuers().await.unwrap().len(), 2);
        assert_eq!(
            store.issuer("https://token.actions.githubusercontent.com").await.unwrap(),
            Some(kept.clone())
        );
        assert!(matches!(
            store
                .create_issuer(IssuerCreate {
                    issuer: fetched.issuer.clone(),
                    audience: "x".into(),
                    jwks_url: fetched.jwks_url.clone(),
                    jwks: None,
                })
                .await,
            Err(StoreError::AlreadyExists(_))
        ));

        let put = store.put_role("etl-loader", role(&fetched.issuer)).await.unwrap();
        assert_eq!(put.ttl, 900);
        assert_eq!(put.issuer, fetched.issuer);
        // Replaced whole.
        let mut other = role(&kept.issuer);
        other.ttl = None;
        let replaced = store.put_role("etl-loader", other).await.unwrap();
        assert_eq!(replaced.issuer, kept.issuer);
        assert_eq!(replaced.ttl, 3600);
        assert_eq!(store.list_roles().await.unwrap(), vec![replaced.clone()]);
        assert!(matches!(
            store.delete_issuer(kept.id).await,
            Err(StoreError::InUse { referrers, .. }) if referrers == ["etl-loader"]
        ));
        store.delete_role("etl-loader").await.unwrap();
        assert_eq!(store.role("etl-loader").await.unwrap(), None);
        store.delete_issuer(kept.id).await.unwrap();
        assert!(matches!(store.delete_issuer(kept.id).await, Err(StoreError::NotFound(_))));
        assert!(matches!(
            store.put_role("etl-loader", role(&kept.issuer)).await,
            Err(StoreError::Invalid(e)) if e[0].field == "issuer"
        ));
    })
    .await;
}
