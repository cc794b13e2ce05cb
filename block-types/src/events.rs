//! The change feed's wire model: what `GET /api/events/stream` sends for every change of a
//! block document, type or schema and every step of a key rotation.
//!
//! An event names what changed (ids, type slug, name, version) and who changed it (the
//! token's id); it never carries a value, not even a masked one.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::FieldError;
use crate::model::timestamp;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// A document was created (also by an import or a duplicate).
    DocumentCreated,
    /// A document's data changed (a new version).
    DocumentUpdated,
    /// A document moved to another schema of its type (a new version).
    DocumentSchemaChanged,
    /// A document was rolled back to the data of an older version (a new version).
    DocumentRolledBack,
    /// A document was deleted.
    DocumentDeleted,
    /// A block type was registered.
    TypeCreated,
    /// A block type's metadata changed.
    TypeUpdated,
    /// A block type was deleted with its schemas.
    TypeDeleted,
    /// A block schema was registered.
    SchemaCreated,
    /// A block schema was deleted.
    SchemaDeleted,
    /// A new data key seals new writes; the previous one is retired.
    KeyRotationStarted,
    /// Every version is sealed under the active key; the retired keys were destroyed.
    KeyRotationFinished,
}

impl EventKind {
    /// Every kind, in the order above.
    pub const ALL: [EventKind; 12] = [
        Self::DocumentCreated,
        Self::DocumentUpdated,
        Self::DocumentSchemaChanged,
        Self::DocumentRolledBack,
        Self::DocumentDeleted,
        Self::TypeCreated,
        Self::TypeUpdated,
        Self::TypeDeleted,
        Self::SchemaCreated,
        Self::SchemaDeleted,
        Self::KeyRotationStarted,
        Self::KeyRotationFinished,
    ];

    /// The kind's name on the wire (`block-document.updated`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DocumentCreated => "block-document.created",
            Self::DocumentUpdated => "block-document.updated",
            Self::DocumentSchemaChanged => "block-document.schema-changed",
            Self::DocumentRolledBack => "block-document.rolled-back",
            Self::DocumentDeleted => "block-document.deleted",
            Self::TypeCreated => "block-type.created",
            Self::TypeUpdated => "block-type.updated",
            Self::TypeDeleted => "block-type.deleted",
            Self::SchemaCreated => "block-schema.created",
            Self::SchemaDeleted => "block-schema.deleted",
            Self::KeyRotationStarted => "key.rotation-started",
            Self::KeyRotationFinished => "key.rotation-finished",
        }
    }

    /// Whether the event is about one block document (and names it).
    pub fn is_document(self) -> bool {
        matches!(
            self,
            Self::DocumentCreated
                | Self::DocumentUpdated
                | Self::DocumentSchemaChanged
                | Self::DocumentRolledBack
                | Self::DocumentDeleted
        )
    }

    /// Whether the event is about the data keys.
    pub fn is_key(self) -> bool {
        matches!(self, Self::KeyRotationStarted | Self::KeyRotationFinished)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind name that is not one of [`EventKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event kind {0:?}")]
pub struct UnknownKind(pub String);

impl FromStr for EventKind {
    type Err = UnknownKind;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownKind(text.to_owned()))
    }
}

impl Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One change, as the feed sends it (the `data` of a server-sent event whose `id` is
/// [`ChangeEvent::id`] and whose `event` is the kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// The event's number in the feed: resume after it with `Last-Event-ID`.
    pub id: i64,
    /// When the change was written.
    #[serde(with = "timestamp")]
    pub occurred: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
    /// The document, for document events.
    pub block_document_id: Option<Uuid>,
    /// The block type's slug (document, type and schema events).
    pub block_type_slug: Option<String>,
    /// The document's name (document events).
    pub block_document_name: Option<String>,
    /// Whether the document is anonymous (a nested block Prefect saved without a name).
    #[serde(default)]
    pub is_anonymous: bool,
    /// The schema (schema events, and a document's move to another schema).
    pub block_schema_id: Option<Uuid>,
    /// The data key (key events).
    pub key_id: Option<Uuid>,
    /// The document's version after the change (before it, for a delete).
    pub version: Option<i64>,
    /// The token that made the change (none for the server's own changes).
    pub token_id: Option<Uuid>,
}

/// The `reset` event: the events after the `Last-Event-ID` a subscriber gave are no longer
/// kept (or that id was never one of ours), so it may have missed some. A cache should drop
/// everything; the stream goes on with new events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetEvent {
    /// The id the subscriber resumed from.
    pub last_event_id: Option<i64>,
    /// Why the events cannot be replayed.
    pub reason: String,
}

/// Which events a subscriber or a webhook wants: of block types whose slug matches a glob,
/// documents whose name matches a glob, some kinds (none listed: every kind).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// A glob over type slugs; events without a type (keys) do not match.
    #[serde(rename = "type", default)]
    pub type_slug: Option<String>,
    /// A glob over document names; only document events match.
    #[serde(default)]
    pub name: Option<String>,
    /// The kinds wanted; empty: all.
    #[serde(default)]
    pub kinds: Vec<EventKind>,
}

/// The longest glob of a filter.
pub const MAX_FILTER_GLOB: usize = 255;

impl EventFilter {
    /// Refuses an empty, overlong or control-character glob, naming the field.
    pub fn check(&self) -> Result<(), FieldError> {
        for (field, glob) in [("type", &self.type_slug), ("name", &self.name)] {
            if let Some(text) = glob {
                if text.is_empty() || text.len() > MAX_FILTER_GLOB {
                    return Err(FieldError::new(
                        field,
                        format!("must be 1 to {MAX_FILTER_GLOB} bytes"),
                    ));
                }
                if text.chars().any(char::is_control) {
                    return Err(FieldError::new(field, "must not hold control characters"));
                }
            }
        }
        if self.kinds.len() > EventKind::ALL.len() {
            return Err(FieldError::new("kinds", "lists a kind more than once"));
        }
        Ok(())
    }

    /// Whether `event` is one of those wanted.
    pub fn matches(&self, event: &ChangeEvent) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&event.kind) {
            return false;
        }
        let globbed = |glob: &Option<String>, value: &Option<String>| match (glob, value) {
            (None, _) => true,
            (Some(glob), Some(value)) => crate::access::glob(glob, value),
            (Some(_), None) => false,
        };
        globbed(&self.type_slug, &event.block_type_slug)
            && globbed(&self.name, &event.block_document_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_by_name() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), kind);
        }
        assert!("block-document.eaten".parse::<EventKind>().is_err());
        assert_eq!(EventKind::ALL.iter().filter(|k| k.is_document()).count(), 5);
    }
}
