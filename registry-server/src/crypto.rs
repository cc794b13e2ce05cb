//! Envelope encryption of secret field values.
//!
//! - The **master key** (KEK, 256 bits) never enters the database. It comes from a key file
//!   or `BLOCKS_MASTER_KEY` (32 bytes, standard base64, one line) or is stretched from a
//!   passphrase with argon2id (salt and parameters stored, key never). A *key-check value*
//!   stored beside the data detects a wrong master key at open.
//! - **Data keys** (DEKs, 256 bits, each with an id) encrypt secret values. They are stored
//!   only wrapped by the master key, so changing the master key re-wraps them and touches
//!   no document.
//! - Each **secret value** is encrypted with AES-256-GCM under a data key with a fresh random
//!   96-bit nonce, and associated data binding it to its place: the document id, the field
//!   path and the key id. A ciphertext copied to another field or document fails to decrypt.
//!
//! Every sealed value starts with a format version byte; field ciphertexts also carry the id
//! of their data key, so a store can tell which key opens them without trying.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use block_types::secret::zeroize_json;
use block_types::secret_fields::get_path_mut;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

/// Bytes in every key.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// The format version of every sealed value this module writes.
pub const FORMAT_V1: u8 = 1;

const KEY_CHECK_AAD: &[u8] = b"blocks/key-check/v1";
const KEY_CHECK_PLAINTEXT: &[u8] = b"blocks master key check";
const WRAP_AAD: &[u8] = b"blocks/data-key/v1";
const FIELD_AAD: &[u8] = b"blocks/field/v1";

/// What can go wrong. No variant carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The master key does not open this store.
    #[error("the master key does not match this store (its key-check value did not verify)")]
    WrongMasterKey,
    /// A key given as text is not 32 bytes of standard base64.
    #[error("a master key must be 32 bytes in standard base64 on one line: {0}")]
    BadKeyEncoding(&'static str),
    /// A sealed value failed authentication: tampered, truncated, moved, or under another key.
    #[error("a sealed value failed to decrypt: it was altered, moved, or sealed under another key")]
    Tampered,
    /// A sealed value has a format this version cannot read.
    #[error("a sealed value has unknown format version {0}")]
    UnknownFormat(u8),
    /// Argon2 rejected its parameters.
    #[error("cannot derive a key from the passphrase: {0}")]
    Kdf(String),
    /// The operating system's random source failed.
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

fn random_bytes<const N: usize>() -> Result<Zeroizing<[u8; N]>, CryptoError> {
    let mut out = Zeroizing::new([0u8; N]);
    getrandom::fill(out.as_mut()).map_err(|e| CryptoError::Random(e.to_string()))?;
    Ok(out)
}

/// AES-256-GCM seal: `version || nonce || ciphertext+tag`.
fn seal(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    plaintext: &[u8],
    prefix: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let cipher = Aes256Gcm::new(&(*key).into());
    let nonce_bytes = random_bytes::<NONCE_LEN>()?;
    let nonce = Nonce::from(*nonce_bytes);
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Tampered)?;
    let mut out = Vec::with_capacity(1 + prefix.len() + NONCE_LEN + ciphertext.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(prefix);
    out.extend_from_slice(nonce_bytes.as_ref());
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Opens what [`seal`] wrote with the same `prefix` length.
fn open(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    sealed: &[u8],
    prefix_len: usize,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let (&version, rest) = sealed.split_first().ok_or(CryptoError::Tampered)?;
    if version != FORMAT_V1 {
        return Err(CryptoError::UnknownFormat(version));
    }
    if rest.len() < prefix_len + NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Tampered);
    }
    let (nonce, ciphertext) = rest[prefix_len..].split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Tampered)?;
    let cipher = Aes256Gcm::new(&(*key).into());
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Tampered)
}

/// Argon2id parameters and salt for a passphrase-derived master key. Stored in the
/// database; the derived key never is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Random salt, base64.
    pub salt: String,
    /// Memory cost in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Parallelism.
    pub p_cost: u32,
}

impl KdfParams {
    /// The least memory accepted: 19 MiB.
    pub const MIN_M_COST_KIB: u32 = 19 * 1024;
    /// The fewest iterations accepted.
    pub const MIN_T_COST: u32 = 2;

    /// Fresh parameters with a random 16-byte salt at the minimum costs.
    pub fn generate() -> Result<Self, CryptoError> {
        let salt = random_bytes::<16>()?;
        Ok(Self {
            salt: STANDARD.encode(salt.as_ref()),
            m_cost_kib: Self::MIN_M_COST_KIB,
            t_cost: Self::MIN_T_COST,
            p_cost: 1,
        })
    }
}

/// The master key (key-encryption key). Its `Debug` never shows the key.
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

#[cfg(test)]
impl MasterKey {
    /// The raw key, for tests that prove it never reaches storage.
    pub(crate) fn raw(&self) -> &[u8] {
        self.0.as_ref()
    }

    /// A copy (keys are deliberately not `Clone`).
    pub(crate) fn duplicate(&self) -> Self {
        Self(self.0.clone())
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(********)")
    }
}

impl MasterKey {
    /// A new random master key.
    pub fn generate() -> Result<Self, CryptoError> {
        random_bytes::<KEY_LEN>().map(Self)
    }

    /// Reads the key-file / environment encoding: 32 bytes of standard base64 on one line
    /// (surrounding whitespace, such as the file's final newline, is ignored).
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        if text.contains(['\n', '\r']) {
            return Err(CryptoError::BadKeyEncoding("more than one line"));
        }
        let mut bytes = Zeroizing::new(
            STANDARD
                .decode(text)
                .map_err(|_| CryptoError::BadKeyEncoding("not standard base64"))?,
        );
        let key: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::BadKeyEncoding("not 32 bytes long"))?;
        bytes.zeroize();
        Ok(Self(Zeroizing::new(key)))
    }

    /// The key-file encoding (standard base64, no newline).
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(STANDARD.encode(self.0.as_ref()))
    }

    /// Stretches a passphrase with argon2id. This takes a noticeable fraction of a second
    /// by design: call it off the async runtime (`spawn_blocking`).
    pub fn derive(passphrase: &SecretString, params: &KdfParams) -> Result<Self, CryptoError> {
        if params.m_cost_kib < KdfParams::MIN_M_COST_KIB || params.t_cost < KdfParams::MIN_T_COST {
            return Err(CryptoError::Kdf(format!(
                "parameters below the minimum (m = {} KiB, t = {})",
                KdfParams::MIN_M_COST_KIB,
                KdfParams::MIN_T_COST
            )));
        }
        let salt = STANDARD
            .decode(&params.salt)
            .map_err(|_| CryptoError::Kdf("the stored salt is not base64".to_owned()))?;
        let argon_params = argon2::Params::new(
            params.m_cost_kib,
            params.t_cost,
            params.p_cost,
            Some(KEY_LEN),
        )
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        let argon = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon_params,
        );
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        argon
            .hash_password_into(passphrase.expose_secret().as_bytes(), &salt, key.as_mut())
            .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        Ok(Self(key))
    }

    /// A key-check value: a constant sealed under this key. Store it; [`Self::verify`]
    /// tells at open whether a key is the right one.
    pub fn key_check(&self) -> Result<Vec<u8>, CryptoError> {
        seal(&self.0, KEY_CHECK_AAD, KEY_CHECK_PLAINTEXT, &[])
    }

    /// Verifies a stored key-check value against this key.
    pub fn verify(&self, key_check: &[u8]) -> Result<(), CryptoError> {
        match open(&self.0, KEY_CHECK_AAD, key_check, 0) {
            Ok(plain) if plain.as_slice() == KEY_CHECK_PLAINTEXT => Ok(()),
            Ok(_) | Err(CryptoError::Tampered) => Err(CryptoError::WrongMasterKey),
            Err(e) => Err(e),
        }
    }

    /// Seals any bytes under this key (AES-256-GCM, bound to `aad`): export files.
    pub fn seal_bytes(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal(&self.0, aad, plaintext, &[])
    }

    /// Opens what [`MasterKey::seal_bytes`] sealed; a wrong key is
    /// [`CryptoError::Tampered`].
    pub fn open_bytes(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        open(&self.0, aad, sealed, 0)
    }

    /// Wraps a data key for storage. The wrapping is bound to the data key's id.
    pub fn wrap(&self, key: &DataKey) -> Result<Vec<u8>, CryptoError> {
        seal(&self.0, &wrap_aad(key.id), key.key.as_ref(), &[])
    }

    /// Unwraps a stored data key.
    pub fn unwrap_key(&self, id: Uuid, wrapped: &[u8]) -> Result<DataKey, CryptoError> {
        let plain = open(&self.0, &wrap_aad(id), wrapped, 0)?;
        let key: [u8; KEY_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Tampered)?;
        Ok(DataKey {
            id,
            key: Zeroizing::new(key),
        })
    }
}

fn wrap_aad(id: Uuid) -> Vec<u8> {
    let mut aad = WRAP_AAD.to_vec();
    aad.extend_from_slice(id.as_bytes());
    aad
}

/// A data key (DEK) with its id. Its `Debug` shows the id only.
pub struct DataKey {
    id: Uuid,
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    /// A new random data key with a new id.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self {
            id: Uuid::new_v4(),
            key: random_bytes::<KEY_LEN>()?,
        })
    }

    /// The key's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The raw key, for tests that prove it never reaches storage.
    #[cfg(test)]
    pub(crate) fn raw(&self) -> &[u8] {
        self.key.as_ref()
    }

    /// Encrypts one secret value (its JSON text) at `path` of document `document_id`.
    /// Output: `version || key id || nonce || ciphertext+tag`.
    pub fn encrypt_field(
        &self,
        document_id: Uuid,
        path: &[String],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        seal(
            &self.key,
            &field_aad(document_id, path, self.id),
            plaintext,
            self.id.as_bytes(),
        )
    }

    /// Decrypts what [`Self::encrypt_field`] wrote for the same document and path.
    pub fn decrypt_field(
        &self,
        document_id: Uuid,
        path: &[String],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed_key_id(sealed)? != self.id {
            return Err(CryptoError::Tampered);
        }
        open(
            &self.key,
            &field_aad(document_id, path, self.id),
            sealed,
            16,
        )
    }
}

/// The id of the data key a field ciphertext was sealed under.
pub fn sealed_key_id(sealed: &[u8]) -> Result<Uuid, CryptoError> {
    match sealed.split_first() {
        Some((&FORMAT_V1, rest)) if rest.len() >= 16 => {
            Uuid::from_slice(&rest[..16]).map_err(|_| CryptoError::Tampered)
        }
        Some((&FORMAT_V1, _)) | None => Err(CryptoError::Tampered),
        Some((&other, _)) => Err(CryptoError::UnknownFormat(other)),
    }
}

/// Associated data of a field: label, document id, key id, and the path as a JSON array
/// (unambiguous even when keys contain dots).
fn field_aad(document_id: Uuid, path: &[String], key_id: Uuid) -> Vec<u8> {
    let mut aad = FIELD_AAD.to_vec();
    aad.extend_from_slice(document_id.as_bytes());
    aad.extend_from_slice(key_id.as_bytes());
    aad.extend_from_slice(serde_json::to_string(path).unwrap_or_default().as_bytes());
    aad
}

/// One secret value of a document, sealed under a data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedField {
    /// Where the value sits in the document's data.
    pub path: Vec<String>,
    /// `version || key id || nonce || ciphertext+tag`, base64 in JSON.
    #[serde(with = "base64_bytes")]
    pub ciphertext: Vec<u8>,
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// Moves the secret values of `data` out into sealed fields: for each root (see
/// [`block_types::secret_fields::secret_locations`]) holding a non-null value, the value is
/// removed from `data` and encrypted under `key`, bound to `document_id` and its path.
/// What is left in `data` holds no secret and can be stored and filtered as plain JSON.
pub fn seal_secrets(
    data: &mut Map<String, Value>,
    roots: &[Vec<String>],
    document_id: Uuid,
    key: &DataKey,
) -> Result<Vec<SealedField>, CryptoError> {
    let mut sealed = Vec::new();
    for path in roots {
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        let parent = if parents.is_empty() {
            Some(&mut *data)
        } else {
            get_path_mut(data, parents).and_then(Value::as_object_mut)
        };
        let Some(parent) = parent else { continue };
        if parent.get(last).is_none_or(Value::is_null) {
            continue;
        }
        let Some(mut value) = parent.shift_remove(last) else {
            continue;
        };
        let plaintext = Zeroizing::new(serde_json::to_vec(&value).unwrap_or_default());
        zeroize_json(&mut value);
        sealed.push(SealedField {
            path: path.clone(),
            ciphertext: key.encrypt_field(document_id, path, &plaintext)?,
        });
    }
    Ok(sealed)
}

/// Puts sealed secret values back into `data`. `key_for` finds a data key by id; a value
/// under an unknown key, or one that fails to decrypt, is an error (never a partial result).
pub fn open_secrets<'k>(
    data: &mut Map<String, Value>,
    sealed: &[SealedField],
    document_id: Uuid,
    key_for: impl Fn(Uuid) -> Option<&'k DataKey>,
) -> Result<(), CryptoError> {
    let mut opened = Vec::with_capacity(sealed.len());
    for field in sealed {
        let key = key_for(sealed_key_id(&field.ciphertext)?).ok_or(CryptoError::Tampered)?;
        let plaintext = key.decrypt_field(document_id, &field.path, &field.ciphertext)?;
        let value: Value = serde_json::from_slice(&plaintext).map_err(|_| CryptoError::Tampered)?;
        opened.push((&field.path, value));
    }
    for (path, value) in opened {
        insert_path(data, path, value);
    }
    Ok(())
}

/// Puts `value(i)` where sealed value `i` of `sealed` goes in `data`, as
/// [`open_secrets`] puts the opened values: a pre-serialized answer marks the places of
/// the values it opens per request.
pub fn place_sealed(
    data: &mut Map<String, Value>,
    sealed: &[SealedField],
    mut value: impl FnMut(usize) -> Value,
) {
    for (i, field) in sealed.iter().enumerate() {
        insert_path(data, &field.path, value(i));
    }
}

/// Sets `path` in `data`, creating intermediate objects where they are missing.
fn insert_path(data: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = data;
    for segment in parents {
        let entry = current
            .entry(segment.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else {
            unreachable!("just made an object")
        };
        current = next;
    }
    current.insert(last.clone(), value);
}

#[cfg(test)]
mod tests;
