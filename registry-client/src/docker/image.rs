//! Image references: repository, tag, digest, and the pull policy they imply.

use super::DockerError;
use crate::encoding::encode;

/// An image reference split as the Engine's pull call wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The repository, with its registry host and port when given
    /// (`localhost:5000/flows`), without tag or digest.
    pub repository: String,
    /// The tag, when given.
    pub tag: Option<String>,
    /// The digest (`sha256:…`), when given; it wins over the tag.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Splits `[registry[:port]/]repository[:tag][@digest]`.
    ///
    /// # Errors
    /// [`DockerError`] on the `image` field when the reference is malformed.
    pub fn parse(image: &str) -> Result<Self, DockerError> {
        let fail = |message: String| DockerError::new("image", message);
        if image.is_empty() {
            return Err(fail(
                "is empty; give an image reference such as prefecthq/prefect:2-latest".to_owned(),
            ));
        }
        if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail(format!("{image:?} contains whitespace")));
        }
        if image.starts_with('-') {
            return Err(fail(format!("{image:?} starts with '-'")));
        }
        let (name, digest) = match image.rsplit_once('@') {
            Some((name, digest)) => {
                if !is_digest(digest) {
                    return Err(fail(format!(
                        "{image:?} has a malformed digest; expected algorithm:hex, e.g. sha256:…"
                    )));
                }
                (name, Some(digest.to_owned()))
            }
            None => (image, None),
        };
        // A colon after the last slash starts the tag; one before it is a registry's port.
        let (repository, tag) = match name.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
            _ => (name, None),
        };
        if let Some(tag) = tag
            && !is_tag(tag)
        {
            return Err(fail(format!(
                "{image:?} has a malformed tag {tag:?}; a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
            )));
        }
        if repository.is_empty()
            || repository.contains('@')
            || repository.starts_with('/')
            || repository.ends_with('/')
            || repository.contains("//")
        {
            return Err(fail(format!("{image:?} has a malformed repository name")));
        }
        Ok(Self {
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// Whether the reference names one image for good: a digest, or a tag other than
    /// `latest`.
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some() || self.tag.as_deref().is_some_and(|tag| tag != "latest")
    }

    /// What the pull call asks for: the digest, else the tag, else `latest` (an empty
    /// `tag` would pull every tag).
    pub fn pull_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// `/images/create?fromImage=<repository>&tag=<tag or digest>`, percent-encoded.
    pub fn pull_path(&self) -> String {
        format!(
            "/images/create?fromImage={}&tag={}",
            encode(&self.repository),
            encode(self.pull_reference())
        )
    }
}

pub(super) fn is_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    tag.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `algorithm:encoded`, as in `sha256:4f…`.
pub(super) fn is_digest(digest: &str) -> bool {
    digest.split_once(':').is_some_and(|(algorithm, encoded)| {
        !algorithm.is_empty()
            && algorithm.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '.' | '_' | '-')
            })
            && !encoded.is_empty()
            && encoded
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '=' | '_' | '-'))
    })
}
