//! Tests of envelope encryption: formats, binding, tampering, wrong keys, redaction.

use block_types::secret_fields::{SecretPath, secret_locations};
use serde_json::json;

use super::*;

const CANARY: &str = "canary-5be0f1";

fn path(p: &[&str]) -> Vec<String> {
    p.iter().map(|s| (*s).to_owned()).collect()
}

fn fast_params() -> KdfParams {
    KdfParams::generate().unwrap()
}

#[test]
fn master_key_text_encoding_round_trips_and_rejects_bad_input() {
    let key = MasterKey::generate().unwrap();
    let text = key.to_base64();
    let again = MasterKey::from_base64(&format!("{}\n", text.expose_secret())).unwrap();
    assert_eq!(again.0.as_ref(), key.0.as_ref());
    assert!(matches!(
        MasterKey::from_base64("not base64!"),
        Err(CryptoError::BadKeyEncoding(_))
    ));
    assert!(matches!(
        MasterKey::from_base64(&STANDARD.encode([0u8; 16])),
        Err(CryptoError::BadKeyEncoding(_))
    ));
    let two_lines = format!("{}\n{}", text.expose_secret(), text.expose_secret());
    assert!(matches!(
        MasterKey::from_base64(&two_lines),
        Err(CryptoError::BadKeyEncoding(_))
    ));
}

#[test]
fn debug_never_shows_keys() {
    let master = MasterKey::generate().unwrap();
    let data_key = DataKey::generate().unwrap();
    let encoded = master.to_base64();
    assert_eq!(format!("{master:?}"), "MasterKey(********)");
    assert!(!format!("{master:?}").contains(encoded.expose_secret()));
    let debug = format!("{data_key:?}");
    assert!(debug.contains(&data_key.id().to_string()));
    assert!(!debug.contains(&STANDARD.encode(data_key.key.as_ref())));
}

#[test]
fn key_check_detects_a_wrong_master_key() {
    let right = MasterKey::generate().unwrap();
    let wrong = MasterKey::generate().unwrap();
    let check = right.key_check().unwrap();
    right.verify(&check).unwrap();
    assert!(matches!(
        wrong.verify(&check),
        Err(CryptoError::WrongMasterKey)
    ));
    let mut flipped = check.clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert!(matches!(
        right.verify(&flipped),
        Err(CryptoError::WrongMasterKey)
    ));
}

#[test]
fn passphrase_derivation_is_deterministic_per_salt() {
    let params = fast_params();
    assert!(params.m_cost_kib >= 19 * 1024 && params.t_cost >= 2);
    let pass = SecretString::from("correct horse battery staple");
    let a = MasterKey::derive(&pass, &params).unwrap();
    let b = MasterKey::derive(&pass, &params).unwrap();
    assert_eq!(a.0.as_ref(), b.0.as_ref());
    let other_salt = fast_params();
    let c = MasterKey::derive(&pass, &other_salt).unwrap();
    assert_ne!(a.0.as_ref(), c.0.as_ref());
    let wrong = MasterKey::derive(&SecretString::from("wrong"), &params).unwrap();
    assert!(matches!(
        wrong.verify(&a.key_check().unwrap()),
        Err(CryptoError::WrongMasterKey)
    ));
    let weak = KdfParams {
        m_cost_kib: 1024,
        ..params
    };
    assert!(matches!(
        MasterKey::derive(&pass, &weak),
        Err(CryptoError::Kdf(_))
    ));
}

#[test]
fn data_keys_wrap_under_the_master_key_and_are_bound_to_their_id() {
    let master = MasterKey::generate().unwrap();
    let key = DataKey::generate().unwrap();
    let wrapped = master.wrap(&key).unwrap();
    assert!(
        !wrapped.windows(KEY_LEN).any(|w| w == key.key.as_ref()),
        "the raw key is not in the wrapping"
    );
    let back = master.unwrap_key(key.id(), &wrapped).unwrap();
    assert_eq!(back.key.as_ref(), key.key.as_ref());
    assert!(matches!(
        master.unwrap_key(Uuid::new_v4(), &wrapped),
        Err(CryptoError::Tampered)
    ));
    let other = MasterKey::generate().unwrap();
    assert!(matches!(
        other.unwrap_key(key.id(), &wrapped),
        Err(CryptoError::Tampered)
    ));
}

#[test]
fn field_ciphertexts_are_bound_to_document_path_and_key() {
    let key = DataKey::generate().unwrap();
    let doc = Uuid::new_v4();
    let p = path(&["connection_info", "password"]);
    let sealed = key.encrypt_field(doc, &p, CANARY.as_bytes()).unwrap();
    assert_eq!(sealed[0], FORMAT_V1);
    assert_eq!(sealed_key_id(&sealed).unwrap(), key.id());
    assert!(!String::from_utf8_lossy(&sealed).contains(CANARY));
    assert_eq!(
        key.decrypt_field(doc, &p, &sealed).unwrap().as_slice(),
        CANARY.as_bytes()
    );
    // Moved to another document or another field: refused.
    assert!(matches!(
        key.decrypt_field(Uuid::new_v4(), &p, &sealed),
        Err(CryptoError::Tampered)
    ));
    assert!(matches!(
        key.decrypt_field(doc, &path(&["url"]), &sealed),
        Err(CryptoError::Tampered)
    ));
    // A path that differs only in how it splits on dots is another place.
    assert!(matches!(
        key.decrypt_field(doc, &path(&["connection_info.password"]), &sealed),
        Err(CryptoError::Tampered)
    ));
    // Another key, even one claiming the same id: refused.
    let other = DataKey {
        id: key.id(),
        key: random_bytes::<KEY_LEN>().unwrap(),
    };
    assert!(matches!(
        other.decrypt_field(doc, &p, &sealed),
        Err(CryptoError::Tampered)
    ));
    // The same plaintext twice gives two ciphertexts (fresh nonces).
    assert_ne!(
        sealed,
        key.encrypt_field(doc, &p, CANARY.as_bytes()).unwrap()
    );
}

#[test]
fn one_flipped_byte_anywhere_fails() {
    let key = DataKey::generate().unwrap();
    let doc = Uuid::new_v4();
    let p = path(&["value"]);
    let sealed = key.encrypt_field(doc, &p, CANARY.as_bytes()).unwrap();
    for i in 0..sealed.len() {
        for bit in [0x01, 0x80] {
            let mut bad = sealed.clone();
            bad[i] ^= bit;
            assert!(
                key.decrypt_field(doc, &p, &bad).is_err(),
                "byte {i} bit {bit:#x}"
            );
        }
    }
    for len in 0..sealed.len() {
        assert!(
            key.decrypt_field(doc, &p, &sealed[..len]).is_err(),
            "truncated to {len}"
        );
    }
    let mut future = sealed.clone();
    future[0] = 2;
    assert!(matches!(
        key.decrypt_field(doc, &p, &future),
        Err(CryptoError::UnknownFormat(2))
    ));
}

#[test]
fn sealing_document_data_leaves_no_plaintext_and_opens_back() {
    let key = DataKey::generate().unwrap();
    let doc = Uuid::new_v4();
    let original = json!({
        "connection_info": {"driver": "postgresql+psycopg2", "password": CANARY, "host": "db"},
        "url": null,
        "headers": {"Authorization": CANARY, "nested": {"x": CANARY}},
        "fetch_size": 1
    });
    let Value::Object(original) = original else {
        unreachable!()
    };
    let roots = secret_locations(
        &original,
        &SecretPath::parse_all(&["connection_info.password", "url", "headers.*"]),
    );
    let mut data = original.clone();
    let sealed = seal_secrets(&mut data, &roots, doc, &key).unwrap();
    assert_eq!(sealed.len(), 2, "null values are not sealed");
    let stored = serde_json::to_string(&(&data, &sealed)).unwrap();
    assert!(!stored.contains(CANARY), "{stored}");
    assert_eq!(
        Value::Object(data.clone()),
        json!({"connection_info": {"driver": "postgresql+psycopg2", "host": "db"}, "url": null, "fetch_size": 1})
    );

    let mut opened = data.clone();
    open_secrets(&mut opened, &sealed, doc, |id| {
        (id == key.id()).then_some(&key)
    })
    .unwrap();
    // Same content (object key order may differ).
    assert_eq!(Value::Object(opened), Value::Object(original));

    // Unknown key or another document: an error and no partial result.
    let mut untouched = data.clone();
    assert!(open_secrets(&mut untouched, &sealed, doc, |_| None).is_err());
    assert!(open_secrets(&mut untouched, &sealed, Uuid::new_v4(), |_| Some(&key)).is_err());
    assert_eq!(untouched, data);
}

#[test]
fn sealed_fields_serialize_as_base64() {
    let key = DataKey::generate().unwrap();
    let field = SealedField {
        path: path(&["a"]),
        ciphertext: key.encrypt_field(Uuid::nil(), &path(&["a"]), b"1").unwrap(),
    };
    let text = serde_json::to_value(&field).unwrap();
    assert!(text["ciphertext"].is_string());
    let back: SealedField = serde_json::from_value(text).unwrap();
    assert_eq!(back, field);
}
