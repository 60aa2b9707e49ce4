//! The `kv` component over REST: the clients' key/value store with
//! compare-and-set on versions.
//!
//! Owns the routes under `/kv`. Keys may contain `/` (`/kv/app/web/port`
//! is the key `app/web/port`). Must not give keys any meaning.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{JsonBody, PathArgs, QueryArgs};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/kv", get(list))
        .route("/kv/{*key}", get(get_key).put(put_key).delete(delete_key))
}

/// One key, its value and its version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// Increases with every write of any key and is never reused, even
    /// after the key is deleted and made again.
    pub version: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutRequest {
    pub value: String,
    /// Write only if the key's version is this one (0: only if the key
    /// does not exist); otherwise 409 `CONFLICT` with `current_version`.
    /// Absent: write unconditionally.
    #[serde(default)]
    pub expected_version: Option<u64>,
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only keys starting with this.
    pub prefix: String,
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete only if the key's version is this one; otherwise 409
    /// `CONFLICT` with `current_version` (0: the key does not exist).
    pub expected_version: Option<u64>,
}

/// Lists keys by prefix, in key order.
#[utoipa::path(
    get, path = "/kv", tag = "kv", operation_id = "kv_list",
    params(ListQuery),
    responses((status = 200, description = "The matching entries", body = Vec<Entry>))
)]
pub async fn list(
    State(s): State<ApiState>,
    QueryArgs(q): QueryArgs<ListQuery>,
) -> Result<axum::Json<Vec<Entry>>, ApiError> {
    let entries = s.pl.store.call(move |st| st.kv_list(&q.prefix)).await?;
    Ok(axum::Json(
        entries
            .into_iter()
            .map(|(key, value, version)| Entry {
                key,
                value,
                version,
            })
            .collect(),
    ))
}

/// Reads a key.
#[utoipa::path(
    get, path = "/kv/{key}", tag = "kv", operation_id = "kv_get",
    params(("key" = String, Path, description = "The key; may contain '/'")),
    responses(
        (status = 200, description = "The entry", body = Entry),
        (status = 404, description = "No such key (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn get_key(
    State(s): State<ApiState>,
    PathArgs(key): PathArgs<String>,
) -> Result<axum::Json<Entry>, ApiError> {
    let found = {
        let key = key.clone();
        s.pl.store.call(move |st| st.kv_get(&key)).await?
    };
    match found {
        Some((value, version)) => Ok(axum::Json(Entry {
            key,
            value,
            version,
        })),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            key.clone(),
            format!("Key {key} not found"),
        )),
    }
}

/// Writes a key, optionally only at an expected version.
#[utoipa::path(
    put, path = "/kv/{key}", tag = "kv", operation_id = "kv_put",
    params(("key" = String, Path, description = "The key; may contain '/'")),
    request_body = PutRequest,
    responses(
        (status = 200, description = "Written; the new version", body = Entry),
        (status = 409, description = "The version is not the expected one (CONFLICT, with current_version)", body = ErrorBody),
    )
)]
pub async fn put_key(
    State(s): State<ApiState>,
    PathArgs(key): PathArgs<String>,
    JsonBody(r): JsonBody<PutRequest>,
) -> Result<axum::Json<Entry>, ApiError> {
    let version = {
        let (key, value, expected) = (key.clone(), r.value.clone(), r.expected_version);
        s.pl.store
            .call(move |st| st.kv_put(&key, &value, expected))
            .await?
    };
    Ok(axum::Json(Entry {
        key,
        value: r.value,
        version,
    }))
}

/// Deletes a key, optionally only at an expected version.
#[utoipa::path(
    delete, path = "/kv/{key}", tag = "kv", operation_id = "kv_delete",
    params(("key" = String, Path, description = "The key; may contain '/'"), DeleteQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such key (NOT_FOUND)", body = ErrorBody),
        (status = 409, description = "The version is not the expected one (CONFLICT, with current_version)", body = ErrorBody),
    )
)]
pub async fn delete_key(
    State(s): State<ApiState>,
    PathArgs(key): PathArgs<String>,
    QueryArgs(q): QueryArgs<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    {
        let key = key.clone();
        s.pl.store
            .call(move |st| st.kv_delete(&key, q.expected_version))
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testutil::*;
    use super::*;

    #[tokio::test]
    async fn compare_and_set_over_rest() {
        let h = Harness::new();
        let (status, e) = h.call("GET", "/kv/app/web/port", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            (e["code"].as_str(), e["element"].as_str()),
            (Some("NOT_FOUND"), Some("app/web/port"))
        );

        // Create only if absent.
        let (status, v1) = h
            .call(
                "PUT",
                "/kv/app/web/port",
                Some(json!({"value": "80", "expected_version": 0})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{v1}");
        assert_eq!(v1["key"], "app/web/port");
        let v1 = v1["version"].as_u64().unwrap();
        let (status, e) = h
            .call(
                "PUT",
                "/kv/app/web/port",
                Some(json!({"value": "81", "expected_version": 0})),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{e}");
        assert_eq!(e["code"], "CONFLICT");
        assert_eq!(e["current_version"], v1);

        let (status, v2) = h
            .call(
                "PUT",
                "/kv/app/web/port",
                Some(json!({"value": "8080", "expected_version": v1})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let v2 = v2["version"].as_u64().unwrap();
        assert!(v2 > v1);
        let (status, e) = h
            .call(
                "PUT",
                "/kv/app/web/port",
                Some(json!({"value": "stale", "expected_version": v1})),
            )
            .await;
        assert_eq!(
            (status, e["current_version"].as_u64()),
            (StatusCode::CONFLICT, Some(v2))
        );
        let (_, got) = h.call("GET", "/kv/app/web/port", None).await;
        assert_eq!(
            got,
            json!({"key": "app/web/port", "value": "8080", "version": v2})
        );

        h.call("PUT", "/kv/app/db", Some(json!({"value": "x"})))
            .await;
        h.call("PUT", "/kv/other", Some(json!({"value": "y"})))
            .await;
        let (_, listed) = h.call("GET", "/kv?prefix=app/", None).await;
        let keys: Vec<_> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["key"].clone())
            .collect();
        assert_eq!(keys, [json!("app/db"), json!("app/web/port")]);

        let (status, e) = h
            .call(
                "DELETE",
                &format!("/kv/app/web/port?expected_version={v1}"),
                None,
            )
            .await;
        assert_eq!(
            (status, e["current_version"].as_u64()),
            (StatusCode::CONFLICT, Some(v2))
        );
        let (status, _) = h
            .call(
                "DELETE",
                &format!("/kv/app/web/port?expected_version={v2}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = h.call("DELETE", "/kv/app/web/port", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let (status, e) = h.call("PUT", "/kv/x", Some(json!({"value": 1}))).await;
        assert_eq!(
            (status, e["element"].as_str()),
            (StatusCode::BAD_REQUEST, Some("value"))
        );
    }
}
