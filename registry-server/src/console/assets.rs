//! The console's stylesheet, script and icons, embedded in the binary. Each answer carries
//! an entity tag of its bytes, so a browser revalidates instead of keeping a stale copy.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};

/// (path under `/assets/`, content type, bytes).
const FILES: &[(&str, &str, &str)] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    ),
    (
        "icons/blocks.svg",
        "image/svg+xml",
        include_str!("assets/icons/blocks.svg"),
    ),
    (
        "icons/core.svg",
        "image/svg+xml",
        include_str!("assets/icons/core.svg"),
    ),
    (
        "icons/sqlalchemy.svg",
        "image/svg+xml",
        include_str!("assets/icons/sqlalchemy.svg"),
    ),
    (
        "icons/gcp.svg",
        "image/svg+xml",
        include_str!("assets/icons/gcp.svg"),
    ),
    (
        "icons/docker.svg",
        "image/svg+xml",
        include_str!("assets/icons/docker.svg"),
    ),
];

/// The bytes of an asset, for tests and page-weight figures.
#[cfg(test)]
pub(crate) fn asset(path: &str) -> Option<&'static str> {
    FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, _, b)| *b)
}

fn etag(bytes: &str) -> String {
    format!(
        "\"{}\"",
        hex::encode(&Sha256::digest(bytes.as_bytes())[..12])
    )
}

pub(super) async fn serve(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some((_, content_type, bytes)) = FILES.iter().find(|(p, _, _)| *p == file) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let tag = etag(bytes);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            *bytes,
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::{FILES, asset};

    #[test]
    fn assets_load_nothing_from_elsewhere() {
        for (path, _, _) in FILES {
            let text = asset(path).expect("listed");
            for needle in ["http://", "https://", "//cdn", "@import", "eval("] {
                // The SVGs name their XML namespace, which loads nothing.
                let allowed = needle == "http://"
                    && text.matches(needle).count()
                        == text.matches("http://www.w3.org/2000/svg").count();
                assert!(allowed || !text.contains(needle), "{needle} in {path}");
            }
        }
        assert!(asset("console.js").is_some_and(|js| js.contains("setupCopy")));
        assert!(asset("nope.js").is_none());
    }
}
