//! Request extractors whose rejections are API errors: a JSON body
//! (`JsonBody`), query parameters (`QueryArgs`) and path parameters
//! (`PathArgs`). A malformed body, an unknown field or a bad parameter is a
//! 400 `INVALID_ARGUMENT` in the shape of every other error, naming the field
//! serde stopped at and where.
//!
//! Owns request parsing only; handlers decide what the values mean.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON request body. Requires `Content-Type: application/json` (or a
/// `+json` type): a browser cannot send that cross-origin without a CORS
/// preflight, which this API never grants.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses `bytes` as a `T`, naming the field an error is at.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::invalid("body", format!("Invalid JSON body: {inner}"))
        } else {
            ApiError::invalid(
                path.clone(),
                format!("Invalid JSON body at {path}: {inner}"),
            )
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid("body", format!("Invalid JSON body: {e}")))?;
    Ok(value)
}

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !is_json(content_type) {
            return Err(ApiError::invalid(
                "content-type",
                format!(
                    "Expected a JSON body with Content-Type: application/json, got {:?}",
                    content_type
                ),
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError::invalid("body", r.body_text()).with_status(r.status()))?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Query parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryArgs<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryArgs<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| QueryArgs(v))
            .map_err(|r| ApiError::invalid("query", r.body_text()))
    }
}

/// Path parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct PathArgs<T>(pub T);

impl<S, T> FromRequestParts<S> for PathArgs<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| PathArgs(v))
            .map_err(|r| ApiError::invalid("path", r.body_text()).with_status(r.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        rows: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        handle: String,
        size: Inner,
    }

    #[test]
    fn errors_name_the_field_and_position() {
        let e = parse_json::<Outer>(br#"{"handle": "h", "size": {"rows": "x"}}"#).unwrap_err();
        assert_eq!(e.body.element, "size.rows");
        assert!(
            e.body.message.contains("line 1 column"),
            "{}",
            e.body.message
        );

        let e = parse_json::<Outer>(br#"{"handle": "h", "colour": 1}"#).unwrap_err();
        assert_eq!(e.body.element, "colour");
        assert!(
            e.body.message.contains("unknown field `colour`"),
            "{}",
            e.body.message
        );

        let e = parse_json::<Outer>(b"{\"handle\": ").unwrap_err();
        assert_eq!(e.body.element, "handle");
        let e = parse_json::<Outer>(br#"{"handle": "h", "size": {"rows": 1}} x"#).unwrap_err();
        assert_eq!(e.body.element, "body");
        assert!(e.body.message.contains("trailing"), "{}", e.body.message);
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }
}
