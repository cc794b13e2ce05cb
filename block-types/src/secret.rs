//! Redacting holders for secret values.
//!
//! Every secret field of a built-in block is held in one of these types. They serialize
//! to the real value (a block must be saved with its secrets), but their `Debug` output is
//! always `"********"`, they have no `Display`, and the memory is zeroed on drop.

use std::fmt;

use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use zeroize::Zeroize;

/// The string every masked secret is shown as, on the wire and in `Debug` output.
pub const OBFUSCATED: &str = "********";

/// A secret string, such as a password or a webhook URL.
///
/// ```
/// use block_types::SecretString;
/// let password = SecretString::from("hunter2");
/// assert_eq!(format!("{password:?}"), "SecretString(\"********\")");
/// assert_eq!(password.expose_secret(), "hunter2");
/// ```
pub struct SecretString(secrecy::SecretString);

impl SecretString {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(secrecy::SecretString::from(value.into()))
    }

    /// The plaintext. Call it only where the value is used, never to log it.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl Clone for SecretString {
    fn clone(&self) -> Self {
        Self::new(self.expose_secret())
    }
}

impl PartialEq for SecretString {
    fn eq(&self, other: &Self) -> bool {
        self.expose_secret() == other.expose_secret()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretString").field(&OBFUSCATED).finish()
    }
}

impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose_secret())
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Never echo the offending value in the error: it may be secret.
        match Value::deserialize(deserializer)? {
            Value::String(text) => Ok(Self::new(text)),
            mut other => {
                zeroize_json(&mut other);
                Err(serde::de::Error::custom("expected a string"))
            }
        }
    }
}

/// A JSON value whose memory is zeroed when it is dropped.
#[derive(Clone, Default)]
struct ZeroizingJson(Value);

impl Zeroize for ZeroizingJson {
    fn zeroize(&mut self) {
        zeroize_json(&mut self.0);
    }
}

/// Zeroes the strings of a JSON value (keys included) and leaves `null` behind. Use it on
/// plaintext secret values before they are dropped.
pub fn zeroize_json(value: &mut Value) {
    match std::mem::take(value) {
        Value::String(mut s) => s.zeroize(),
        Value::Array(mut items) => items.iter_mut().for_each(zeroize_json),
        Value::Object(map) => {
            for (mut k, mut v) in map {
                k.zeroize();
                zeroize_json(&mut v);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A secret JSON value: the value of a `Secret` block, which may be a string or any JSON.
pub struct SecretJson(SecretBox<ZeroizingJson>);

impl SecretJson {
    /// Wraps a value.
    pub fn new(value: Value) -> Self {
        Self(SecretBox::new(Box::new(ZeroizingJson(value))))
    }

    /// The plaintext value. Call it only where the value is used, never to log it.
    pub fn expose_secret(&self) -> &Value {
        &self.0.expose_secret().0
    }

    /// The value as a string when it is a JSON string.
    pub fn expose_str(&self) -> Option<&str> {
        self.expose_secret().as_str()
    }
}

impl Clone for SecretJson {
    fn clone(&self) -> Self {
        Self::new(self.expose_secret().clone())
    }
}

impl PartialEq for SecretJson {
    fn eq(&self, other: &Self) -> bool {
        self.expose_secret() == other.expose_secret()
    }
}

impl fmt::Debug for SecretJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretJson").field(&OBFUSCATED).finish()
    }
}

impl Serialize for SecretJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.expose_secret().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SecretJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Self::new)
    }
}

impl From<Value> for SecretJson {
    fn from(value: Value) -> Self {
        Self::new(value)
    }
}

/// A secret JSON object whose every entry is secret (Prefect's `SecretDict`), such as a
/// service-account key or webhook headers.
///
/// It deserializes from an object or from a string holding a JSON object, as Prefect does.
pub struct SecretMap(SecretJson);

impl SecretMap {
    /// Wraps an object.
    pub fn new(value: Map<String, Value>) -> Self {
        Self(SecretJson::new(Value::Object(value)))
    }

    /// The plaintext object. Call it only where the value is used, never to log it.
    pub fn expose_secret(&self) -> &Map<String, Value> {
        match self.0.expose_secret() {
            Value::Object(map) => map,
            _ => unreachable!("a SecretMap always holds an object"),
        }
    }

    /// The number of top-level entries; not secret.
    pub fn len(&self) -> usize {
        self.expose_secret().len()
    }

    /// Whether the map has no entries; not secret.
    pub fn is_empty(&self) -> bool {
        self.expose_secret().is_empty()
    }
}

impl Default for SecretMap {
    fn default() -> Self {
        Self::new(Map::new())
    }
}

impl Clone for SecretMap {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl PartialEq for SecretMap {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl fmt::Debug for SecretMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretMap").field(&OBFUSCATED).finish()
    }
}

impl Serialize for SecretMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SecretMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Never echo the offending value in the error: it is secret.
        match Value::deserialize(deserializer)? {
            Value::Object(map) => Ok(Self::new(map)),
            Value::String(mut text) => {
                let parsed = serde_json::from_str::<Value>(&text);
                text.zeroize();
                match parsed {
                    Ok(Value::Object(map)) => Ok(Self::new(map)),
                    _ => Err(serde::de::Error::custom(
                        "expected a JSON object or a string holding a JSON object",
                    )),
                }
            }
            mut other => {
                zeroize_json(&mut other);
                Err(serde::de::Error::custom(
                    "expected a JSON object or a string holding a JSON object",
                ))
            }
        }
    }
}

impl From<Map<String, Value>> for SecretMap {
    fn from(value: Map<String, Value>) -> Self {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CANARY: &str = "canary-7f3a9c";

    #[test]
    fn debug_never_shows_the_value() {
        let s = SecretString::from(CANARY);
        let j = SecretJson::new(json!({"password": CANARY}));
        let m = SecretMap::new(json!({"key": CANARY}).as_object().unwrap().clone());
        for text in [
            format!("{s:?}"),
            format!("{s:#?}"),
            format!("{j:?}"),
            format!("{j:#?}"),
            format!("{m:?}"),
            format!("{m:#?}"),
        ] {
            assert!(!text.contains(CANARY), "{text}");
            assert!(text.contains(OBFUSCATED), "{text}");
        }
    }

    #[test]
    fn serde_round_trips_the_real_value() {
        let s: SecretString = serde_json::from_value(json!(CANARY)).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), json!(CANARY));
        let j: SecretJson = serde_json::from_value(json!({"a": [1, CANARY]})).unwrap();
        assert_eq!(serde_json::to_value(&j).unwrap(), json!({"a": [1, CANARY]}));
    }

    #[test]
    fn secret_map_accepts_an_object_or_a_json_string() {
        let from_obj: SecretMap = serde_json::from_value(json!({"k": CANARY})).unwrap();
        let from_str: SecretMap =
            serde_json::from_value(json!(format!("{{\"k\": \"{CANARY}\"}}"))).unwrap();
        assert_eq!(from_obj, from_str);
        assert_eq!(from_obj.len(), 1);
    }

    #[test]
    fn secret_map_errors_never_echo_the_value() {
        for bad in [
            json!(CANARY),
            json!([CANARY]),
            json!(format!("[\"{CANARY}\"]")),
        ] {
            let err = serde_json::from_value::<SecretMap>(bad).unwrap_err();
            assert!(!err.to_string().contains(CANARY), "{err}");
        }
    }

    #[test]
    fn zeroize_clears_nested_values() {
        let mut z = ZeroizingJson(json!({"a": ["x", {"b": "y"}], "n": 1}));
        z.zeroize();
        assert_eq!(z.0, Value::Null);
    }
}
