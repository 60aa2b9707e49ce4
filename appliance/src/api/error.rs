//! API errors: the one JSON shape every failure takes,
//! `{"code", "message", "element"}` (plus `current_version` on a version
//! conflict), and the mapping from the port layer's and the store's errors
//! to a stable code and an HTTP status.
//!
//! Owns that mapping and nothing else: it must not decide what is an error
//! (the port layer and the store do) nor parse requests (`extract` does).

use std::error::Error as StdError;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::handle::HandleError;
use crate::portlayer::exec::PortError;
use crate::portlayer::network::NetworkError;
use crate::portlayer::storage::StorageError;
use crate::store::StoreError;

/// A stable, machine-readable error code. Clients branch on this, never on
/// the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// 404: the element (container, task, key, operation) does not exist.
    NotFound,
    /// 409: the element changed since the caller's version was read
    /// (`current_version` says what it is now), or it already exists.
    Conflict,
    /// 400: the request is malformed or asks for something impossible
    /// (invalid field, name, number, path, filter or policy; an image
    /// reference that is not one; an uploaded archive that is not a good
    /// image archive). `element` names the field.
    InvalidArgument,
    /// 400: the handle is malformed, forged or issued under another key.
    BadHandle,
    /// 409: another container already has this name.
    NameTaken,
    /// 405: the path exists, the method does not.
    MethodNotAllowed,
    /// 409: a container still uses the image or volume (the message names
    /// it; `GET /exec/containers?filter=image_id=...` or `volume=...` lists
    /// them).
    InUse,
    /// 409: a network scope has no free address left in its range.
    Exhausted,
    /// 507: the store ran out of space; nothing was recorded.
    NoSpace,
    /// 502: a registry failed or refused (the message says what it said),
    /// or what it sent is bad (digest mismatch, malformed manifest, a layer
    /// entry that would escape). Content a client uploads is its own:
    /// `INVALID_ARGUMENT`.
    ImageSource,
    /// 500: the appliance failed; the message says where.
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict
            | ErrorCode::NameTaken
            | ErrorCode::InUse
            | ErrorCode::Exhausted => StatusCode::CONFLICT,
            ErrorCode::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::ImageSource => StatusCode::BAD_GATEWAY,
            ErrorCode::InvalidArgument | ErrorCode::BadHandle => StatusCode::BAD_REQUEST,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// What failed and why: the whole chain of causes.
    pub message: String,
    /// The id of the element at fault (a container id, a task element
    /// `<container>/task/<task>`, a key, or a request field such as
    /// `handle`, `filter` or `task.args`); empty if none applies.
    pub element: String,
    /// On `CONFLICT` from a stale version: the element's current version
    /// (0: it does not exist any more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
}

/// An error response: a status and the JSON body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(code: ErrorCode, element: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status: code.status(),
            body: ErrorBody {
                code,
                message: message.into(),
                element: element.into(),
                current_version: None,
            },
        }
    }

    /// A 400 `INVALID_ARGUMENT` about a request field.
    pub fn invalid(element: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::InvalidArgument, element, message)
    }

    /// The same error with another HTTP status (for rejections whose
    /// status axum decides, such as 413 for a body over the limit).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

/// An error's message followed by those of its sources, `": "`-separated.
/// A source whose text the message already ends with (a transparent
/// wrapper's `"{0}"`) is not repeated.
pub fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let msg = s.to_string();
        if !msg.is_empty() && !out.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        next = s.source();
    }
    out
}

/// Code, element and current version for a store error.
fn store_parts(e: &StoreError) -> (ErrorCode, String, Option<u64>) {
    match e {
        StoreError::NotFound { id, .. } => (ErrorCode::NotFound, id.clone(), None),
        StoreError::AlreadyExists { id, .. } => (ErrorCode::Conflict, id.clone(), None),
        StoreError::AlreadyFinished { id, .. } => (ErrorCode::Conflict, id.clone(), None),
        StoreError::Conflict { id, current, .. } => {
            (ErrorCode::Conflict, id.clone(), Some(*current))
        }
        StoreError::NameTaken { name, .. } => (ErrorCode::NameTaken, name.clone(), None),
        StoreError::InUse { id, .. } => (ErrorCode::InUse, id.clone(), None),
        StoreError::Ambiguous { prefix, .. } => (ErrorCode::InvalidArgument, prefix.clone(), None),
        StoreError::Invalid { what, .. } => (ErrorCode::InvalidArgument, (*what).into(), None),
        StoreError::Overlap { with, .. } => (ErrorCode::Conflict, with.clone(), None),
        StoreError::PathTaken { by, .. } => (ErrorCode::Conflict, by.clone(), None),
        StoreError::Exhausted { scope, .. } => (ErrorCode::Exhausted, scope.clone(), None),
        StoreError::SchemaTooNew { .. }
        | StoreError::Dir { .. }
        | StoreError::Thread(_)
        | StoreError::WorkerGone
        | StoreError::Sqlite(_)
        | StoreError::Json(_) => (ErrorCode::Internal, String::new(), None),
    }
}

fn from_parts(
    (code, element, current_version): (ErrorCode, String, Option<u64>),
    e: &(dyn StdError + 'static),
) -> ApiError {
    let message = error_chain(e);
    if code == ErrorCode::Internal {
        tracing::error!("{message}");
    }
    ApiError {
        status: code.status(),
        body: ErrorBody {
            code,
            message,
            element,
            current_version,
        },
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        from_parts(store_parts(&e), &e)
    }
}

impl From<PortError> for ApiError {
    fn from(e: PortError) -> Self {
        let parts = match &e {
            PortError::Store(s) => store_parts(s),
            PortError::Handle(
                HandleError::Malformed(_) | HandleError::Forged | HandleError::TooLarge { .. },
            ) => (ErrorCode::BadHandle, e.element(), None),
            PortError::Handle(_) => (ErrorCode::Internal, String::new(), None),
            PortError::Invalid { .. } | PortError::Policy { .. } => {
                (ErrorCode::InvalidArgument, e.element(), None)
            }
            PortError::Filter(_) => (ErrorCode::InvalidArgument, "filter".into(), None),
            PortError::Storage(s) => storage_parts(s),
            PortError::Network(n) => network_parts(n),
        };
        from_parts(parts, &e)
    }
}

fn network_parts(e: &NetworkError) -> (ErrorCode, String, Option<u64>) {
    match e {
        NetworkError::Store(s) => store_parts(s),
        NetworkError::Invalid { .. } => (ErrorCode::InvalidArgument, e.element(), None),
        NetworkError::Filter(_) => (ErrorCode::InvalidArgument, "filter".into(), None),
    }
}

impl From<NetworkError> for ApiError {
    fn from(e: NetworkError) -> Self {
        from_parts(network_parts(&e), &e)
    }
}

fn storage_parts(e: &StorageError) -> (ErrorCode, String, Option<u64>) {
    match e {
        StorageError::Store(s) => store_parts(s),
        StorageError::Invalid { .. } | StorageError::BadArchive { .. } => {
            (ErrorCode::InvalidArgument, e.element(), None)
        }
        StorageError::Filter(_) => (ErrorCode::InvalidArgument, "filter".into(), None),
        StorageError::NoSpace { .. } | StorageError::TooBig { .. } => {
            (ErrorCode::NoSpace, e.element(), None)
        }
        StorageError::Fetch { source, .. }
            if matches!(
                **source,
                crate::storage::oci::OciError::ManifestUnknown { .. }
            ) =>
        {
            (ErrorCode::NotFound, e.element(), None)
        }
        StorageError::Fetch { .. } | StorageError::Build { .. } => {
            (ErrorCode::ImageSource, e.element(), None)
        }
        StorageError::Io { .. } => (ErrorCode::Internal, e.element(), None),
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        from_parts(storage_parts(&e), &e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portlayer::filter::Filter;

    #[test]
    fn chains_are_whole_and_not_repeated() {
        let e = PortError::from(StoreError::NotFound {
            kind: "container",
            id: "3f2a".into(),
        });
        let api = ApiError::from(e);
        assert_eq!(api.status, StatusCode::NOT_FOUND);
        assert_eq!(api.body.message, "Container 3f2a not found");
        assert_eq!(api.body.element, "3f2a");

        let bad = Filter::parse("state=running,,x=1").unwrap_err();
        let api = ApiError::from(PortError::from(bad));
        assert_eq!(api.body.code, ErrorCode::InvalidArgument);
        assert_eq!(api.body.element, "filter");
        assert!(
            api.body.message.starts_with("Invalid filter: ") && api.body.message.contains("','"),
            "{}",
            api.body.message
        );
    }

    #[test]
    fn conflicts_carry_the_current_version() {
        let api = ApiError::from(StoreError::Conflict {
            kind: "key",
            id: "a".into(),
            base: 3,
            current: 7,
        });
        assert_eq!(api.status, StatusCode::CONFLICT);
        assert_eq!(api.body.current_version, Some(7));
        let json = serde_json::to_value(&api.body).unwrap();
        assert_eq!(json["code"], "CONFLICT");
        assert_eq!(json["current_version"], 7);
        let api = ApiError::from(StoreError::NameTaken {
            name: "web".into(),
            by: "c1".into(),
        });
        assert_eq!(
            (api.status, api.body.code),
            (StatusCode::CONFLICT, ErrorCode::NameTaken)
        );
        assert!(
            serde_json::to_value(&api.body)
                .unwrap()
                .get("current_version")
                .is_none()
        );
    }
}
