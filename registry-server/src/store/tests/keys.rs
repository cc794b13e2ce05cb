//! Encryption at rest: what a dump holds, tampering, wrong keys, rotation, master changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use block_types::catalog::{GcpCredentials, Secret, SqlAlchemyConnector};
use block_types::model::BlockDocumentUpdate;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::Row;

use super::harness::{TestDb, create, obj, on_both, register};
use crate::crypto::{CryptoError, MasterKey};
use crate::store::{Backend, MasterKeySource, Rights, Store, StoreConfig, StoreError};

const CANARY: &str = "canary-d0c4e2a8";

/// Everything the database holds, as bytes: the SQLite files, or every row of every table.
pub(super) async fn dump(db: &TestDb, store: &Store) -> Vec<u8> {
    match db.backend {
        Backend::Sqlite => {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&store.write)
                .await
                .unwrap();
            let mut bytes = Vec::new();
            for entry in std::fs::read_dir(db.dir().unwrap()).unwrap() {
                bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
            }
            bytes
        }
        Backend::Postgres => {
            let tables: Vec<String> = sqlx::query_scalar(
                "select tablename::text from pg_tables where schemaname = 'public'",
            )
            .fetch_all(&store.read)
            .await
            .unwrap();
            assert!(tables.len() >= 9, "{tables:?}");
            let mut bytes = Vec::new();
            for table in tables {
                let rows: Vec<String> =
                    sqlx::query_scalar(&format!("select row_to_json(x)::text from {table} x"))
                        .fetch_all(&store.read)
                        .await
                        .unwrap();
                for row in rows {
                    bytes.extend(row.into_bytes());
                }
            }
            bytes
        }
    }
}

pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The forms a key could take in a dump: raw, hex (PostgreSQL's bytea text), base64.
fn forms(key: &[u8]) -> Vec<Vec<u8>> {
    vec![
        key.to_vec(),
        hex::encode(key).into_bytes(),
        STANDARD.encode(key).into_bytes(),
    ]
}

#[tokio::test]
async fn a_raw_dump_holds_no_plaintext_secret_and_no_key() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, sql_schema) = register::<SqlAlchemyConnector>(&store).await;
        let (_, gcp_schema) = register::<GcpCredentials>(&store).await;
        let (_, secret_schema) = register::<Secret>(&store).await;
        create(&store, &sql_schema, "pg", json!({"connection_info": {"driver": "postgresql+psycopg2", "password": CANARY, "host": "h"}})).await;
        create(&store, &gcp_schema, "gcp", json!({"service_account_info": {"private_key": CANARY}, "project": "p"})).await;
        // The URL form embeds the password: the whole URL is secret.
        let url = create(&store, &sql_schema, "pg-url", json!({"connection_info": format!("postgresql://u:{CANARY}@h/db")})).await;
        assert_eq!(url.data["connection_info"], json!("********"));
        let doc = create(&store, &secret_schema, "json-secret", json!({"value": {"username": "u", "password": CANARY}})).await;
        // Several versions, so history is checked too.
        store
            .update_block_document(doc.id, BlockDocumentUpdate { data: Some(obj(json!({"value": format!("{CANARY}-2")}))), ..Default::default() }, None, Rights::ADMIN)
            .await
            .unwrap();
        let bytes = dump(db, &store).await;
        assert!(contains(&bytes, b"service_account"), "the dump is readable: non-secret data is plain");
        assert!(!contains(&bytes, CANARY.as_bytes()), "a plaintext secret is in the database");
        for key in store.read_lock(&store.keyring).keys.values() {
            for form in forms(key.raw()) {
                assert!(!contains(&bytes, &form), "an unwrapped data key is in the database");
            }
        }
        for form in forms(db.master.raw()) {
            assert!(!contains(&bytes, &form), "the master key is in the database");
        }
    })
    .await;
}

/// Rewrites the sealed secrets of a document's current version.
async fn set_secrets(store: &Store, id: uuid::Uuid, secrets: &str) {
    sqlx::query("update block_document_version set secrets = $1 where block_document_id = $2")
        .bind(secrets)
        .bind(id.to_string())
        .execute(&store.write)
        .await
        .unwrap();
    // A change behind the store's back: its read cache cannot have heard of it.
    store.forget_trees(&[id]);
}

async fn get_secrets(store: &Store, id: uuid::Uuid) -> Value {
    let text: String = sqlx::query_scalar(
        "select secrets from block_document_version where block_document_id = $1",
    )
    .bind(id.to_string())
    .fetch_one(&store.read)
    .await
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn moved_or_altered_ciphertexts_fail_and_a_wrong_master_key_is_refused() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, schema) = register::<Secret>(&store).await;
        let a = create(&store, &schema, "a", json!({"value": "secret-a"})).await;
        let b = create(&store, &schema, "b", json!({"value": "secret-b"})).await;
        let a_secrets = get_secrets(&store, a.id).await;
        let b_secrets = get_secrets(&store, b.id).await;

        // A's ciphertext copied into B: B no longer decrypts (never shows A's secret).
        set_secrets(&store, b.id, &a_secrets.to_string()).await;
        let moved = store.read_block_document(b.id, true).await;
        // The read names the document that cannot be decrypted, never a value.
        assert!(
            matches!(&moved, Err(StoreError::Unreadable(m)) if m.contains(&b.id.to_string()) && !m.contains("secret-a")),
            "{moved:?}"
        );
        // Masked reads decrypt too (to shape the mask), so they fail closed as well.
        assert!(store.read_block_document(b.id, false).await.is_err());

        // The same ciphertext under another field path: refused.
        let mut other_path = b_secrets.clone();
        other_path[0]["path"] = json!(["other"]);
        set_secrets(&store, b.id, &other_path.to_string()).await;
        assert!(store.read_block_document(b.id, true).await.is_err());

        // One flipped bit anywhere in the ciphertext: refused.
        let sealed = STANDARD
            .decode(b_secrets[0]["ciphertext"].as_str().unwrap())
            .unwrap();
        for i in [0, 1, 17, 20, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 0x04;
            let mut tampered = b_secrets.clone();
            tampered[0]["ciphertext"] = json!(STANDARD.encode(&bad));
            set_secrets(&store, b.id, &tampered.to_string()).await;
            assert!(
                store.read_block_document(b.id, true).await.is_err(),
                "byte {i}"
            );
        }
        set_secrets(&store, b.id, &b_secrets.to_string()).await;
        assert_eq!(
            store.read_block_document(b.id, true).await.unwrap().data["value"],
            json!("secret-b")
        );
        store.close().await;

        // A wrong master key is refused at open, with a clear message.
        let wrong = Store::open(
            &db.url,
            MasterKeySource::Key(MasterKey::generate().unwrap()),
            StoreConfig::default(),
        )
        .await;
        let Err(err) = wrong else {
            panic!("a wrong key opened the store")
        };
        assert!(
            matches!(err, StoreError::Crypto(CryptoError::WrongMasterKey)),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("master key does not match"),
            "{err}"
        );
        // A passphrase for a key-file store is refused too, not silently re-keyed.
        let pass = Store::open(
            &db.url,
            MasterKeySource::Passphrase(SecretString::from("x")),
            StoreConfig::default(),
        )
        .await;
        assert!(matches!(pass, Err(StoreError::Config(_))));
        // The right key still opens it.
        let again = db.open().await;
        assert_eq!(
            again.read_block_document(a.id, true).await.unwrap().data["value"],
            json!("secret-a")
        );
    })
    .await;
}

#[tokio::test]
async fn rotation_under_concurrent_readers_and_writers_leaves_nothing_under_the_retired_key() {
    on_both(async |db| {
        let store = Arc::new(db.open().await);
        let (_, schema) = register::<Secret>(&store).await;
        let mut docs = Vec::new();
        for i in 0..40 {
            docs.push(
                create(
                    &store,
                    &schema,
                    &format!("s{i}"),
                    json!({"value": format!("value-{i}")}),
                )
                .await
                .id,
            );
        }
        let before = store.key_status().await.unwrap();
        let retired = before.active;
        assert_eq!(
            before.keys[0].versions, 40,
            "every version records the key it is sealed under"
        );
        assert_eq!(before.keys[0].documents, 40);
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..4 {
            let (store, stop, docs) = (store.clone(), stop.clone(), docs.clone());
            workers.push(tokio::spawn(async move {
                let mut ops = 0u32;
                // Bounded: stops when rotation is done, or after 2,000 operations.
                while !stop.load(Ordering::Relaxed) && ops < 2_000 {
                    let id = docs[(ops as usize * 7 + w) % docs.len()];
                    if w % 2 == 0 {
                        let doc = store
                            .read_block_document(id, true)
                            .await
                            .expect("a read failed during rotation");
                        assert!(doc.data["value"].as_str().unwrap().starts_with("value-"));
                    } else {
                        let body = BlockDocumentUpdate {
                            data: Some(obj(json!({"value": format!("value-w{w}-{ops}")}))),
                            ..Default::default()
                        };
                        store
                            .update_block_document(id, body, None, Rights::ADMIN)
                            .await
                            .expect("a write failed during rotation");
                    }
                    ops += 1;
                }
                ops
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let new_key = store.rotate_data_key().await.unwrap();
        assert_ne!(new_key, retired);
        let moved = store.spawn_reencryption(7).await.unwrap().unwrap();
        assert!(
            moved >= 40,
            "every document had a version under the old key ({moved})"
        );
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for worker in workers {
            total += worker.await.unwrap();
        }
        assert!(total > 0);
        // Writers may have sealed under the old key until the rotation committed; a last
        // pass moves those too.
        store.reencrypt_all(7).await.unwrap();
        let status = store.key_status().await.unwrap();
        assert_eq!(status.active, new_key);
        let old = status.keys.iter().find(|k| k.id == retired).unwrap();
        assert_eq!(old.versions, 0, "versions are left under the retired key");
        assert_eq!(old.state, "destroyed");
        for id in &docs {
            let doc = store.read_block_document(*id, true).await.unwrap();
            assert!(doc.data["value"].as_str().unwrap().starts_with("value-"));
        }
        // A fresh process (no cached keys) reads everything with the remaining keys.
        store.close().await;
        let reopened = db.open().await;
        for id in &docs {
            reopened.read_block_document(*id, true).await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn a_data_key_is_retired_automatically_at_its_limit() {
    on_both(async |db| {
        let store = db
            .open_with(StoreConfig {
                key_rotation_threshold: 5,
                ..StoreConfig::default()
            })
            .await;
        let (_, schema) = register::<Secret>(&store).await;
        let first = store.key_status().await.unwrap().active;
        for i in 0..6 {
            create(&store, &schema, &format!("s{i}"), json!({"value": "v"})).await;
        }
        let status = store.key_status().await.unwrap();
        assert_ne!(status.active, first, "the key was not rotated at its limit");
        let old = status.keys.iter().find(|k| k.id == first).unwrap();
        assert_eq!(old.state, "retired");
        assert!(old.encryptions >= 5);
    })
    .await;
}

#[tokio::test]
async fn changing_the_master_key_rewraps_data_keys_only_and_is_atomic() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, schema) = register::<Secret>(&store).await;
        let doc = create(&store, &schema, "s", json!({"value": CANARY})).await;
        let versions_before: Vec<String> =
            sqlx::query_scalar("select secrets from block_document_version")
                .fetch_all(&store.read)
                .await
                .unwrap();

        // Interrupted before commit: the old key still opens the store.
        let next = MasterKey::generate().unwrap();
        store.fail_at(Some("change_master_before_commit"));
        assert!(
            store
                .change_master_key(MasterKeySource::Key(next.duplicate()))
                .await
                .is_err()
        );
        store.fail_at(None);
        store.close().await;
        db.open().await.close().await;

        // Completed: the new key opens it, the old one is refused, documents untouched.
        let store = db.open().await;
        store
            .change_master_key(MasterKeySource::Key(next.duplicate()))
            .await
            .unwrap();
        let versions_after: Vec<String> =
            sqlx::query_scalar("select secrets from block_document_version")
                .fetch_all(&store.read)
                .await
                .unwrap();
        assert_eq!(
            versions_before, versions_after,
            "documents are not rewritten"
        );
        store.close().await;
        let old = Store::open(
            &db.url,
            MasterKeySource::Key(db.master.duplicate()),
            StoreConfig::default(),
        )
        .await;
        assert!(matches!(
            old,
            Err(StoreError::Crypto(CryptoError::WrongMasterKey))
        ));
        let reopened = Store::open(
            &db.url,
            MasterKeySource::Key(next.duplicate()),
            StoreConfig::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            reopened
                .read_block_document(doc.id, true)
                .await
                .unwrap()
                .data["value"],
            json!(CANARY)
        );

        // To a passphrase, and back to it after a restart.
        reopened
            .change_master_key(MasterKeySource::Passphrase(SecretString::from(
                "correct horse",
            )))
            .await
            .unwrap();
        reopened.close().await;
        let by_pass = Store::open(
            &db.url,
            MasterKeySource::Passphrase(SecretString::from("correct horse")),
            StoreConfig::default(),
        )
        .await
        .unwrap();
        assert!(by_pass.key_status().await.unwrap().passphrase);
        assert_eq!(
            by_pass
                .read_block_document(doc.id, true)
                .await
                .unwrap()
                .data["value"],
            json!(CANARY)
        );
        by_pass.close().await;
        let wrong = Store::open(
            &db.url,
            MasterKeySource::Passphrase(SecretString::from("wrong horse")),
            StoreConfig::default(),
        )
        .await;
        assert!(matches!(
            wrong,
            Err(StoreError::Crypto(CryptoError::WrongMasterKey))
        ));
        let key_for_pass =
            Store::open(&db.url, MasterKeySource::Key(next), StoreConfig::default()).await;
        assert!(matches!(key_for_pass, Err(StoreError::Config(_))));
    })
    .await;
}

#[tokio::test]
async fn a_new_passphrase_store_records_salt_and_parameters_but_no_key() {
    on_both(async |db| {
        let pass = SecretString::from("a long passphrase");
        let store = Store::open(
            &db.url,
            MasterKeySource::Passphrase(pass.clone()),
            StoreConfig::default(),
        )
        .await
        .unwrap();
        let params: String =
            sqlx::query_scalar("select value from server_metadata where key = 'kdf_params'")
                .fetch_one(&store.read)
                .await
                .unwrap();
        let params: crate::crypto::KdfParams = serde_json::from_str(&params).unwrap();
        assert!(params.m_cost_kib >= 19 * 1024 && params.t_cost >= 2);
        let derived = MasterKey::derive(&pass, &params).unwrap();
        let bytes = dump(db, &store).await;
        for form in forms(derived.raw()) {
            assert!(!contains(&bytes, &form));
        }
        assert!(!contains(&bytes, pass.expose_secret().as_bytes()));
        let row = sqlx::query("select count(*) as n from data_key where state = 'active'")
            .fetch_one(&store.read)
            .await
            .unwrap();
        assert_eq!(row.try_get::<i64, _>("n").unwrap(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_rotation_after_another_process_changed_the_master_key_is_refused() {
    on_both(async |db| {
        let a = db.open().await;
        let b = db.open().await;
        let next = MasterKey::generate().unwrap();
        a.change_master_key(MasterKeySource::Key(next.duplicate())).await.unwrap();
        // B still holds the old master key: wrapping a new data key under it would make the
        // store unreadable with the new one.
        let refused = b.rotate_data_key().await;
        assert!(matches!(refused, Err(StoreError::Config(ref m)) if m.contains("changed by another process")), "{refused:?}");
        a.close().await;
        b.close().await;
        let reopened = Store::open(&db.url, MasterKeySource::Key(next), StoreConfig::default()).await.unwrap();
        assert_eq!(reopened.key_status().await.unwrap().keys.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn an_undecryptable_document_is_listed_as_unreadable_and_its_read_says_so() {
    use block_types::model::BlockDocumentFilterBody;
    on_both(async |db| {
        let store = db.open().await;
        let (_, schema) = register::<Secret>(&store).await;
        let good = create(&store, &schema, "good", json!({"value": CANARY})).await;
        let bad = create(
            &store,
            &schema,
            "bad",
            json!({"value": format!("{CANARY}-bad")}),
        )
        .await;
        // Alter the stored ciphertext of `bad` (one byte of its sealed value).
        let mut sealed = get_secrets(&store, bad.id).await;
        let text = sealed[0]["ciphertext"].as_str().unwrap().to_owned();
        let flipped: String = text
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i == text.len() - 4 {
                    if c == 'A' { 'B' } else { 'A' }
                } else {
                    c
                }
            })
            .collect();
        sealed[0]["ciphertext"] = json!(flipped);
        set_secrets(&store, bad.id, &sealed.to_string()).await;

        for include_secrets in [false, true] {
            let body = BlockDocumentFilterBody {
                include_secrets: Some(include_secrets),
                ..BlockDocumentFilterBody::default()
            };
            let listed = store.filter_block_documents(&body).await.unwrap();
            assert_eq!(listed.len(), 2, "the list is answered");
            let good_listed = listed.iter().find(|d| d.id == good.id).unwrap();
            assert!(!good_listed.unreadable);
            let expected = if include_secrets {
                json!(CANARY)
            } else {
                json!("********")
            };
            assert_eq!(good_listed.data["value"], expected);
            let bad_listed = listed.iter().find(|d| d.id == bad.id).unwrap();
            assert!(bad_listed.unreadable);
            assert_eq!(bad_listed.data["value"], "********");
            let wire = serde_json::to_value(bad_listed).unwrap();
            assert_eq!(wire["unreadable"], true);
            assert!(
                serde_json::to_value(good_listed)
                    .unwrap()
                    .get("unreadable")
                    .is_none()
            );
        }
        let single = store.read_block_document(bad.id, false).await;
        match single {
            Err(StoreError::Unreadable(m)) => {
                assert!(m.contains(&bad.id.to_string()), "{m}");
                assert!(!m.contains(CANARY));
            }
            other => panic!("{other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn a_create_after_another_process_rotated_the_key_is_sealed_under_the_new_key() {
    on_both(async |db| {
        let store = db.open().await;
        let other = db.open().await;
        let (_, schema) = register::<Secret>(&store).await;
        // The first create reserves a block of encryptions under the first key.
        let before = create(&store, &schema, "before", json!({"value": "v-before"})).await;
        let first = store.key_status().await.unwrap().active;
        let rotated = other.rotate_data_key().await.unwrap();
        assert_ne!(rotated, first);
        // This process still holds encryptions of the first key: the create finds it
        // retired as it writes, and seals under the new one.
        let after = create(&store, &schema, "after", json!({"value": "v-after"})).await;
        let again = create(&store, &schema, "again", json!({"value": "v-again"})).await;
        let key_of = async |id: uuid::Uuid| -> String {
            sqlx::query_scalar(
                "select key_id from block_document_version where block_document_id = $1",
            )
            .bind(id.to_string())
            .fetch_one(&store.read)
            .await
            .unwrap()
        };
        assert_eq!(key_of(before.id).await, first.to_string());
        assert_eq!(key_of(after.id).await, rotated.to_string());
        assert_eq!(key_of(again.id).await, rotated.to_string());
        for (doc, value) in [(after, "v-after"), (again, "v-again")] {
            let read = other.read_block_document(doc.id, true).await.unwrap();
            assert_eq!(read.data["value"], json!(value));
        }
        let status = store.key_status().await.unwrap();
        let versions = |id| status.keys.iter().find(|k| k.id == id).unwrap().versions;
        assert_eq!((versions(first), versions(rotated)), (1, 2));
    })
    .await;
}
