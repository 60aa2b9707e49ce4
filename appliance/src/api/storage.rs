//! The `storage` component over REST: image stores and images, volume
//! stores and volumes, and joining volumes to containers through handles.
//!
//! Owns the routes under `/storage`. Image references contain `/`, so an
//! image is addressed as the rest of the path (`/storage/images/{*image}`);
//! the verbs that act on images by name take it in the body. Pulls stream
//! their progress as JSON lines; imports take the archive as the request
//! body, streamed. Must not hold storage logic: that is
//! `portlayer::storage`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::exec::{HandleBody, Policy, parse_policies};
use super::extract::{JsonBody, PathArgs, QueryArgs};
use crate::backend::ArchiveSummary;
use crate::portlayer::model::VolumeMount;
use crate::portlayer::storage::{PullEvent, PullSpec, Storage, StorageError, VolumeSpec};
use crate::storage::model::{Image, StoreUsage, Volume};
use crate::store::StoreKind;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/storage/images", get(list_images))
        .route("/storage/images/pull", post(pull))
        .route("/storage/images/import", post(import))
        .route("/storage/images/tag", post(tag))
        .route("/storage/images/export", post(export))
        .route(
            "/storage/images/{*image}",
            get(inspect_image).delete(remove_image),
        )
        .route(
            "/storage/image-stores",
            get(image_stores).post(add_image_store),
        )
        .route("/storage/volumes", get(list_volumes).post(create_volume))
        .route(
            "/storage/volumes/{name}",
            get(inspect_volume).delete(remove_volume),
        )
        .route(
            "/storage/volume-stores",
            get(volume_stores).post(add_volume_store),
        )
        .route("/storage/handles/volume-join", post(volume_join))
        .route("/storage/handles/volume-leave", post(volume_leave))
        .route("/storage/archive/{id}", get(archive_get).put(archive_put))
}

/// Runs a storage call that does file I/O off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, "", e.to_string()))?
        .map_err(ApiError::from)
}

fn storage(s: &ApiState) -> Result<Arc<Storage>, ApiError> {
    s.pl.storage.clone().ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            "storage",
            "This appliance has no storage component",
        )
    })
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImageListQuery {
    /// Filterspec over `id`, `name` (any of its names), `store`,
    /// `created_at` and `label.<key>` (the image's labels).
    pub filter: String,
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VolumeListQuery {
    /// Filterspec over `name`, `store`, `fstype`, `size_mib` and
    /// `label.<key>`.
    pub filter: String,
}

/// Lists images.
#[utoipa::path(
    get, path = "/storage/images", tag = "storage", operation_id = "storage_list_images",
    params(ImageListQuery),
    responses(
        (status = 200, description = "The matching images, with the containers using each", body = Vec<Image>),
        (status = 400, description = "Invalid filter (INVALID_ARGUMENT)", body = ErrorBody),
    )
)]
pub async fn list_images(
    State(s): State<ApiState>,
    QueryArgs(q): QueryArgs<ImageListQuery>,
) -> Result<axum::Json<Vec<Image>>, ApiError> {
    let st = storage(&s)?;
    Ok(axum::Json(blocking(move || st.images(&q.filter)).await?))
}

/// One image, by id, unique id prefix or reference.
#[utoipa::path(
    get, path = "/storage/images/{image}", tag = "storage", operation_id = "storage_inspect_image",
    params(("image" = String, Path, description = "Id, id prefix or reference (`busybox`, `host:5000/a/b:v1`)")),
    responses(
        (status = 200, description = "The image", body = Image),
        (status = 404, description = "No such image (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn inspect_image(
    State(s): State<ApiState>,
    PathArgs(image): PathArgs<String>,
) -> Result<axum::Json<Image>, ApiError> {
    let st = storage(&s)?;
    Ok(axum::Json(blocking(move || st.image(&image)).await?))
}

/// What `DELETE /storage/images/{image}` removed.
#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
pub struct Removed {
    /// Names untagged and image ids deleted.
    pub removed: Vec<String>,
}

/// Removes an image as `rmi` does: a name of an image that has other names
/// is only untagged; otherwise the image, its disk and its unshared blobs
/// go. Refused while a container uses the image (IN_USE names it).
#[utoipa::path(
    delete, path = "/storage/images/{image}", tag = "storage", operation_id = "storage_remove_image",
    params(("image" = String, Path, description = "Id, id prefix or reference")),
    responses(
        (status = 200, description = "What was removed", body = Removed),
        (status = 404, description = "No such image (NOT_FOUND)", body = ErrorBody),
        (status = 409, description = "A container uses it (IN_USE)", body = ErrorBody),
    )
)]
pub async fn remove_image(
    State(s): State<ApiState>,
    PathArgs(image): PathArgs<String>,
) -> Result<axum::Json<Removed>, ApiError> {
    let st = storage(&s)?;
    let removed = blocking(move || st.remove_image(&image)).await?;
    Ok(axum::Json(Removed { removed }))
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagRequest {
    /// The image: id, id prefix or reference.
    #[schema(example = "busybox")]
    pub image: String,
    /// The new name ("repo:tag"; moved from any image that has it).
    #[schema(example = "app:v1")]
    pub name: String,
}

/// Gives an image another name.
#[utoipa::path(
    post, path = "/storage/images/tag", tag = "storage", operation_id = "storage_tag_image",
    request_body = TagRequest,
    responses(
        (status = 200, description = "The image, with its names", body = Image),
        (status = 400, description = "The name is not an image reference, or is a digest (INVALID_ARGUMENT)", body = ErrorBody),
        (status = 404, description = "No such image (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn tag(
    State(s): State<ApiState>,
    JsonBody(r): JsonBody<TagRequest>,
) -> Result<axum::Json<Image>, ApiError> {
    let st = storage(&s)?;
    Ok(axum::Json(
        blocking(move || st.tag(&r.image, &r.name)).await?,
    ))
}

/// The last line of a pull's stream.
#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum PullEnd {
    Done { image: Box<Image> },
    Error { error: ErrorBody },
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PullQuery {
    /// Answer once, with the image (or the error and its status), instead
    /// of streaming progress.
    pub wait: bool,
}

/// Pulls an image from its registry. Plain HTTP is used only for
/// registries on loopback addresses or when `insecure` is set. Every blob
/// is verified against its digest; the image is listed only once its disk
/// is built. Streams JSON lines (`application/x-ndjson`): `resolved`,
/// `layer`, `layer-done`, `building`, then `done` with the image or
/// `error` with an error body. With `?wait=true`, answers once.
#[utoipa::path(
    post, path = "/storage/images/pull", tag = "storage", operation_id = "storage_pull",
    params(PullQuery),
    request_body = PullSpec,
    responses(
        (status = 200, description = "Progress lines then `done` or `error` (or, with wait, the image)", body = PullEnd),
        (status = 400, description = "The reference is not one, or the store name is bad (INVALID_ARGUMENT), before anything is fetched", body = ErrorBody),
        (status = 404, description = "With wait: no such image or tag (NOT_FOUND)", body = ErrorBody),
        (status = 502, description = "With wait: the registry failed, or the content is bad (IMAGE_SOURCE)", body = ErrorBody),
        (status = 507, description = "With wait: the store is full (NO_SPACE)", body = ErrorBody),
    )
)]
pub async fn pull(
    State(s): State<ApiState>,
    QueryArgs(q): QueryArgs<PullQuery>,
    JsonBody(spec): JsonBody<PullSpec>,
) -> Result<Response, ApiError> {
    let st = storage(&s)?;
    // A bad request is a 400 before the stream starts, not a line in it.
    st.check_pull(&spec)?;
    if q.wait {
        let img = st.pull(&spec, &|_| {}).await?;
        return Ok(axum::Json(img).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let progress_tx = tx.clone();
        let report: Box<dyn Fn(PullEvent) + Send + Sync> = Box::new(move |ev: PullEvent| {
            if let Ok(line) = serde_json::to_string(&ev) {
                let _ = progress_tx.send(line);
            }
        });
        let end = match st.pull(&spec, &*report).await {
            Ok(image) => PullEnd::Done {
                image: Box::new(image),
            },
            Err(e) => PullEnd::Error {
                error: ApiError::from(e).body,
            },
        };
        if let Ok(line) = serde_json::to_string(&end) {
            let _ = tx.send(line);
        }
    });
    let lines = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
        .map(|l| Ok::<_, std::io::Error>(format!("{l}\n")));
    Ok((
        [(CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// The image store; "default" if empty.
    pub store: String,
    /// A name for the image (the archive must hold one image).
    pub tag: Option<String>,
}

/// Imports a `docker save` archive or an OCI image layout (a tar stream,
/// the request body). Nothing is listed unless all of it is good.
#[utoipa::path(
    post, path = "/storage/images/import", tag = "storage", operation_id = "storage_import",
    params(ImportQuery),
    request_body(content = super::openapi::Tar, content_type = "application/x-tar"),
    responses(
        (status = 200, description = "The images imported", body = Vec<Image>),
        (status = 400, description = "Not an image archive (not a tar, no manifest) or a bad one (an escaping entry, a digest mismatch): INVALID_ARGUMENT, element `archive`; or a bad `tag` (INVALID_ARGUMENT)", body = ErrorBody),
        (status = 404, description = "No such image store (NOT_FOUND)", body = ErrorBody),
        (status = 507, description = "The store is full (NO_SPACE)", body = ErrorBody),
    )
)]
pub async fn import(
    State(s): State<ApiState>,
    QueryArgs(q): QueryArgs<ImportQuery>,
    body: Body,
) -> Result<axum::Json<Vec<Image>>, ApiError> {
    let st = storage(&s)?;
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let reader = tokio_util::io::StreamReader::new(stream);
    let (images, reader) = blocking(move || {
        let mut sync = tokio_util::io::SyncIoBridge::new(reader);
        let images = st.import(&mut sync, &q.store, q.tag.as_deref());
        Ok((images, sync.into_inner()))
    })
    .await?;
    let _ = drain(reader.into_inner()).await;
    Ok(axum::Json(images?))
}

/// Reads what is left of a request body, for a handler whose consumer
/// stopped early (a refused entry, a full store): answering before the
/// client has sent everything closes the connection under it, and it sees
/// a broken pipe instead of the answer.
async fn drain<S, E>(mut rest: S) -> Result<(), E>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    while let Some(chunk) = rest.next().await {
        chunk?;
    }
    Ok(())
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// The images: ids, id prefixes or references. One named by a
    /// reference is named so in the archive; one named by id is unnamed.
    #[schema(example = json!(["busybox"]), min_items = 1)]
    pub images: Vec<String>,
}

/// Exports images as one tar (streamed): an OCI image layout with `docker
/// save`'s `manifest.json` (`RepoTags`) beside it, made of the images'
/// stored blobs, which `docker load` and `/storage/images/import` read.
/// Everything is checked before the first byte; a failure after it ends
/// the stream early.
#[utoipa::path(
    post, path = "/storage/images/export", tag = "storage", operation_id = "storage_export",
    request_body = ExportRequest,
    responses(
        (status = 200, description = "The archive", body = super::openapi::Tar, content_type = "application/x-tar"),
        (status = 400, description = "No image named, or an image without its blobs (one not pulled or imported): INVALID_ARGUMENT naming it", body = ErrorBody),
        (status = 404, description = "No such image (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn export(
    State(s): State<ApiState>,
    JsonBody(r): JsonBody<ExportRequest>,
) -> Result<Response, ApiError> {
    let st = storage(&s)?;
    let plan = {
        let st = st.clone();
        blocking(move || st.export_plan(&r.images)).await?
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        if let Err(e) = st.export(&plan, &mut w) {
            tracing::warn!("export: {e}");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    Ok((
        [(CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response())
}

/// How much of an export is sent at once.
const CHUNK: usize = 256 * 1024;

/// A blocking writer whose bytes go, chunk by chunk, to a response body;
/// fails once the client has gone.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "The client left"))
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreRequest {
    /// Letters, digits, `_`, `.` and `-`, starting with a letter or digit.
    #[schema(pattern = "^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", max_length = 64)]
    pub name: String,
    /// An absolute directory on the appliance's host (made if missing),
    /// with no `.`, `..` or empty parts.
    #[schema(pattern = "^/", max_length = 4096)]
    pub path: String,
}

/// Image stores, with their usage.
#[utoipa::path(
    get, path = "/storage/image-stores", tag = "storage", operation_id = "storage_image_stores",
    responses((status = 200, description = "The image stores", body = Vec<StoreUsage>))
)]
pub async fn image_stores(
    State(s): State<ApiState>,
) -> Result<axum::Json<Vec<StoreUsage>>, ApiError> {
    let st = storage(&s)?;
    let out = blocking(move || st.stores(StoreKind::Image)).await?;
    Ok(axum::Json(out))
}

/// Adds an image store.
#[utoipa::path(
    post, path = "/storage/image-stores", tag = "storage", operation_id = "storage_add_image_store",
    request_body = StoreRequest,
    responses(
        (status = 201, description = "Added (or already there with this path)"),
        (status = 400, description = "A bad name or path, or the path is not a directory (INVALID_ARGUMENT)", body = ErrorBody),
        (status = 409, description = "The name is taken by another path, or the path by another store, named in `element` (CONFLICT)", body = ErrorBody),
    )
)]
pub async fn add_image_store(
    State(s): State<ApiState>,
    JsonBody(r): JsonBody<StoreRequest>,
) -> Result<StatusCode, ApiError> {
    let st = storage(&s)?;
    let (name, path) = (r.name.clone(), r.path.clone());
    blocking(move || st.add_store(StoreKind::Image, &name, std::path::Path::new(&path))).await?;
    Ok(StatusCode::CREATED)
}

/// Volume stores, with their usage.
#[utoipa::path(
    get, path = "/storage/volume-stores", tag = "storage", operation_id = "storage_volume_stores",
    responses((status = 200, description = "The volume stores", body = Vec<StoreUsage>))
)]
pub async fn volume_stores(
    State(s): State<ApiState>,
) -> Result<axum::Json<Vec<StoreUsage>>, ApiError> {
    let st = storage(&s)?;
    let out = blocking(move || st.stores(StoreKind::Volume)).await?;
    Ok(axum::Json(out))
}

/// Adds a volume store.
#[utoipa::path(
    post, path = "/storage/volume-stores", tag = "storage", operation_id = "storage_add_volume_store",
    request_body = StoreRequest,
    responses(
        (status = 201, description = "Added (or already there with this path)"),
        (status = 400, description = "A bad name or path, or the path is not a directory (INVALID_ARGUMENT)", body = ErrorBody),
        (status = 409, description = "The name is taken by another path, or the path by another store, named in `element` (CONFLICT)", body = ErrorBody),
    )
)]
pub async fn add_volume_store(
    State(s): State<ApiState>,
    JsonBody(r): JsonBody<StoreRequest>,
) -> Result<StatusCode, ApiError> {
    let st = storage(&s)?;
    let (name, path) = (r.name.clone(), r.path.clone());
    blocking(move || st.add_store(StoreKind::Volume, &name, std::path::Path::new(&path))).await?;
    Ok(StatusCode::CREATED)
}

/// Lists volumes.
#[utoipa::path(
    get, path = "/storage/volumes", tag = "storage", operation_id = "storage_list_volumes",
    params(VolumeListQuery),
    responses(
        (status = 200, description = "The matching volumes, with the containers using each", body = Vec<Volume>),
        (status = 400, description = "Invalid filter (INVALID_ARGUMENT)", body = ErrorBody),
    )
)]
pub async fn list_volumes(
    State(s): State<ApiState>,
    QueryArgs(q): QueryArgs<VolumeListQuery>,
) -> Result<axum::Json<Vec<Volume>>, ApiError> {
    let st = storage(&s)?;
    Ok(axum::Json(blocking(move || st.volumes(&q.filter)).await?))
}

/// Creates a volume: an empty ext4 disk of its own.
#[utoipa::path(
    post, path = "/storage/volumes", tag = "storage", operation_id = "storage_create_volume",
    request_body = VolumeSpec,
    responses(
        (status = 201, description = "The volume", body = Volume),
        (status = 400, description = "Bad name or size (INVALID_ARGUMENT)", body = ErrorBody),
        (status = 404, description = "No such volume store (NOT_FOUND)", body = ErrorBody),
        (status = 409, description = "The name is taken (CONFLICT)", body = ErrorBody),
        (status = 507, description = "The store is full (NO_SPACE)", body = ErrorBody),
    )
)]
pub async fn create_volume(
    State(s): State<ApiState>,
    JsonBody(spec): JsonBody<VolumeSpec>,
) -> Result<(StatusCode, axum::Json<Volume>), ApiError> {
    let st = storage(&s)?;
    let v = blocking(move || st.create_volume(&spec)).await?;
    Ok((StatusCode::CREATED, axum::Json(v)))
}

/// One volume.
#[utoipa::path(
    get, path = "/storage/volumes/{name}", tag = "storage", operation_id = "storage_inspect_volume",
    params(("name" = String, Path, description = "Volume name")),
    responses(
        (status = 200, description = "The volume", body = Volume),
        (status = 404, description = "No such volume (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn inspect_volume(
    State(s): State<ApiState>,
    PathArgs(name): PathArgs<String>,
) -> Result<axum::Json<Volume>, ApiError> {
    let st = storage(&s)?;
    Ok(axum::Json(blocking(move || st.volume(&name)).await?))
}

/// Removes a volume and its data. Refused while a container uses it
/// (IN_USE names it).
#[utoipa::path(
    delete, path = "/storage/volumes/{name}", tag = "storage", operation_id = "storage_remove_volume",
    params(("name" = String, Path, description = "Volume name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such volume (NOT_FOUND)", body = ErrorBody),
        (status = 409, description = "A container uses it (IN_USE)", body = ErrorBody),
    )
)]
pub async fn remove_volume(
    State(s): State<ApiState>,
    PathArgs(name): PathArgs<String>,
) -> Result<StatusCode, ApiError> {
    let st = storage(&s)?;
    blocking(move || st.remove_volume(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeJoinRequest {
    #[schema(min_length = 1)]
    pub handle: String,
    /// The volume's name.
    pub volume: String,
    /// Absolute path in the container.
    pub path: String,
    #[serde(default)]
    pub read_only: bool,
    /// Join-time policies: `read-only` mounts it read-only in the guest.
    #[serde(default)]
    pub policies: Vec<Policy>,
}

/// Joins a volume to a (stopped) container, mounted at `path`. The tether
/// keeps the mount point's owner and mode on a fresh volume.
#[utoipa::path(
    post, path = "/storage/handles/volume-join", tag = "storage", operation_id = "storage_volume_join",
    request_body = VolumeJoinRequest,
    responses(
        (status = 200, description = "The new handle", body = HandleBody),
        (status = 400, description = "Bad handle, path or policy", body = ErrorBody),
        (status = 404, description = "No such volume (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn volume_join(
    State(s): State<ApiState>,
    JsonBody(r): JsonBody<VolumeJoinRequest>,
) -> Result<axum::Json<HandleBody>, ApiError> {
    let policies = parse_policies(&r.policies)?;
    let mount = VolumeMount {
        volume: r.volume,
        path: r.path,
        read_only: r.read_only,
    };
    let handle =
        s.pl.off(move |pl| pl.volume_join(&r.handle, mount, &policies))
            .await?;
    Ok(axum::Json(HandleBody { handle }))
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeLeaveRequest {
    #[schema(min_length = 1)]
    pub handle: String,
    /// The path the volume is mounted at.
    pub path: String,
}

/// Removes the volume mounted at `path` from a (stopped) container.
#[utoipa::path(
    post, path = "/storage/handles/volume-leave", tag = "storage", operation_id = "storage_volume_leave",
    request_body = VolumeLeaveRequest,
    responses(
        (status = 200, description = "The new handle", body = HandleBody),
        (status = 400, description = "Bad handle (BAD_HANDLE)", body = ErrorBody),
    )
)]
pub async fn volume_leave(
    State(s): State<ApiState>,
    JsonBody(r): JsonBody<VolumeLeaveRequest>,
) -> Result<axum::Json<HandleBody>, ApiError> {
    let handle = s.pl.volume_leave(&r.handle, &r.path)?;
    Ok(axum::Json(HandleBody { handle }))
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ArchiveQuery {
    /// Absolute path in the container's filesystem (no `..` parts).
    pub path: String,
}

/// A tar stream of `path` in a container's filesystem, as `docker cp`
/// gives it: the top entry is the path's last component; symlinks in the
/// path resolve inside the container. A stopped container's disks are
/// booted for the copy. A stream that breaks off half way ends the
/// response without its final chunk: clients must treat that as a failure.
#[utoipa::path(
    get, path = "/storage/archive/{id}", tag = "storage", operation_id = "storage_archive_get",
    params(("id" = String, Path, description = "Container id, unique id prefix or name"), ArchiveQuery),
    responses(
        (status = 200, description = "The tar stream", content_type = "application/x-tar", body = super::openapi::Tar),
        (status = 400, description = "Bad path, paused container, or the path does not exist (INVALID_ARGUMENT)", body = ErrorBody),
        (status = 404, description = "No such container (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn archive_get(
    State(s): State<ApiState>,
    PathArgs(id): PathArgs<String>,
    QueryArgs(q): QueryArgs<ArchiveQuery>,
) -> Result<Response, ApiError> {
    let mut read = s.pl.archive_get(&id, &q.path).await?;
    // The first chunk decides between an error response and a stream.
    let first = match read.data.recv().await {
        Some(Ok(b)) => b,
        Some(Err(e)) => return Err(ApiError::invalid(id, e)),
        None => bytes::Bytes::new(),
    };
    let rest = tokio_stream::wrappers::ReceiverStream::new(read.data)
        .map(|r| r.map_err(std::io::Error::other));
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(rest);
    Ok((
        [(CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(body),
    )
        .into_response())
}

/// Unpacks a tar stream (the request body) into the directory `path` of a
/// container's filesystem, running or stopped. Owners, modes and times are
/// kept; entries that would leave the directory (`..`, absolute paths,
/// through symlinks) are refused, naming the entry.
#[utoipa::path(
    put, path = "/storage/archive/{id}", tag = "storage", operation_id = "storage_archive_put",
    params(("id" = String, Path, description = "Container id, unique id prefix or name"), ArchiveQuery),
    request_body(content = super::openapi::Tar, content_type = "application/x-tar"),
    responses(
        (status = 200, description = "What was written", body = ArchiveSummary),
        (status = 400, description = "Bad path or archive: not a directory, an escaping entry (INVALID_ARGUMENT)", body = ErrorBody),
        (status = 404, description = "No such container (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn archive_put(
    State(s): State<ApiState>,
    PathArgs(id): PathArgs<String>,
    QueryArgs(q): QueryArgs<ArchiveQuery>,
    body: Body,
) -> Result<axum::Json<ArchiveSummary>, ApiError> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut stream = body.into_data_stream();
    let feed = tokio::spawn(async move {
        while let Some(chunk) = stream.next().await {
            let b = chunk.map_err(|e| e.to_string())?;
            if tx.send(b).await.is_err() {
                // The copy stopped taking it.
                return drain(stream).await.map_err(|e| e.to_string());
            }
        }
        Ok(())
    });
    let summary = s.pl.archive_put(&id, &q.path, rx).await;
    let fed = feed.await;
    let summary = summary?;
    match fed {
        Ok(Ok(())) => Ok(axum::Json(summary)),
        Ok(Err(e)) => Err(ApiError::invalid(
            "body",
            format!("Reading the archive: {e}"),
        )),
        Err(e) => Err(ApiError::new(ErrorCode::Internal, "", e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use serde_json::json;

    use super::super::testutil::Harness;

    fn raw_tar(name: &[u8], data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(data.len() as u64);
        h.set_mode(0o640);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut t = h.as_bytes().to_vec();
        t.extend(data);
        t.resize(512 + data.len().div_ceil(512) * 512, 0);
        t.extend([0u8; 1024]);
        t
    }

    async fn put(h: &Harness, uri: &str, tar: Vec<u8>) -> (StatusCode, serde_json::Value) {
        let req = Request::builder()
            .method("PUT")
            .uri(uri)
            .body(Body::from(tar))
            .unwrap();
        let resp = h.send(req).await;
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    /// Names, paths and references the caller gives are refused with a 400
    /// naming the field, before anything is made or fetched.
    #[tokio::test]
    async fn bad_names_paths_and_references_are_400_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let h = Harness::with_storage(dir.path());
        let inside = dir.path().join("new-store");
        let inside = inside.to_string_lossy();
        let cases = [
            (
                "/storage/image-stores",
                json!({"name": "f", "path": "/etc/passwd"}),
                "path",
                "path: \"/etc/passwd\" is not a directory",
            ),
            (
                "/storage/image-stores",
                json!({"name": "f", "path": "/etc/passwd/x"}),
                "path",
                "path: \"/etc/passwd/x\" is not a directory",
            ),
            (
                "/storage/image-stores",
                json!({"name": "f", "path": "relative"}),
                "path",
                "path: \"relative\" is not a valid store path",
            ),
            (
                "/storage/volume-stores",
                json!({"name": "f", "path": "/srv/../etc"}),
                "path",
                "path: \"/srv/../etc\" is not a valid store path",
            ),
            (
                "/storage/volume-stores",
                json!({"name": "../../etc", "path": inside}),
                "name",
                "name: \"../../etc\" is not a valid store name",
            ),
            (
                "/storage/image-stores",
                json!({"name": "", "path": inside}),
                "name",
                "name: \"\" is not a valid store name",
            ),
            (
                "/storage/volumes",
                json!({"name": "../../x"}),
                "name",
                "name: \"../../x\" is not a valid volume name",
            ),
            (
                "/storage/volumes",
                json!({"name": "v", "labels": {"a\nb": ""}}),
                "labels",
                "labels: \"a\\nb\" is not a valid label key",
            ),
            (
                "/storage/images/tag",
                json!({"image": "busybox", "name": "../../etc:x"}),
                "name",
                "name: \"../../etc:x\" is not a valid image reference",
            ),
            (
                "/storage/images/pull?wait=true",
                json!({"reference": "../../etc"}),
                "reference",
                "reference: \"../../etc\" is not a valid image reference",
            ),
            // Streaming too: refused before the stream starts.
            (
                "/storage/images/pull",
                json!({"reference": "../../etc"}),
                "reference",
                "reference: \"../../etc\" is not a valid image reference",
            ),
            (
                "/storage/images/pull",
                json!({"reference": ""}),
                "reference",
                "reference: An image reference is required",
            ),
        ];
        for (uri, body, element, starts) in cases {
            let (status, e) = h.call("POST", uri, Some(body.clone())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {body}: {e}");
            assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
            assert_eq!(e["element"], element, "{uri} {body}: {e}");
            let msg = e["message"].as_str().unwrap();
            assert!(msg.starts_with(starts), "{uri} {body}: {msg}");
        }
        // Nothing was made for the refused store.
        assert!(!dir.path().join("new-store").exists());
        let (status, stores) = h.call("GET", "/storage/volume-stores", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(stores.as_array().unwrap().len(), 1, "{stores}");
        // A good one is made.
        let (status, e) = h
            .call(
                "POST",
                "/storage/image-stores",
                Some(json!({"name": "fast", "path": inside})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{e}");
        // Its directory under another name: a conflict naming the store.
        let (status, e) = h
            .call(
                "POST",
                "/storage/image-stores",
                Some(json!({"name": "quick", "path": inside})),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{e}");
        assert_eq!(
            (e["code"].as_str(), e["element"].as_str()),
            (Some("CONFLICT"), Some("fast")),
            "{e}"
        );
    }

    /// An upload that is not an image archive is the client's fault: a 400
    /// naming the archive, not a 502 as if a registry had failed.
    #[tokio::test]
    async fn an_export_is_an_archive_import_reads_and_names_are_checked_first() {
        let dir = tempfile::tempdir().unwrap();
        let h = Harness::with_storage(dir.path());
        let layout = crate::storage::busybox::layout_tar().unwrap();
        let import = |body: Vec<u8>| {
            Request::builder()
                .method("POST")
                .uri("/storage/images/import?tag=bb:v1")
                .header("content-type", "application/x-tar")
                .body(Body::from(body))
                .unwrap()
        };
        let resp = h.send(import(layout)).await;
        assert_eq!(resp.status(), StatusCode::OK);

        for (images, status, element) in [
            (json!([]), StatusCode::BAD_REQUEST, "images"),
            (json!(["bb:v1", "nosuch"]), StatusCode::NOT_FOUND, "nosuch"),
        ] {
            let (s, e) = h
                .call(
                    "POST",
                    "/storage/images/export",
                    Some(json!({ "images": images })),
                )
                .await;
            assert_eq!(s, status, "{e}");
            assert!(e["element"].as_str().unwrap().contains(element), "{e}");
        }

        let req = Request::builder()
            .method("POST")
            .uri("/storage/images/export")
            .header("content-type", "application/json")
            .body(Body::from(json!({ "images": ["bb:v1"] }).to_string()))
            .unwrap();
        let resp = h.send(req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/x-tar");
        let tar = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        let mut members = Vec::new();
        for e in tar::Archive::new(&tar[..]).entries().unwrap() {
            members.push(e.unwrap().path().unwrap().display().to_string());
        }
        for m in ["oci-layout", "index.json", "manifest.json"] {
            assert!(members.contains(&m.to_string()), "{m}: {members:?}");
        }
        // Read back by import: the same image, under its name.
        let resp = h.send(import(tar)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let images: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(
            images[0]["names"]
                .as_array()
                .unwrap()
                .contains(&json!("docker.io/library/bb:v1")),
            "{images}"
        );
    }

    #[tokio::test]
    async fn importing_what_is_not_an_image_archive_is_400() {
        let dir = tempfile::tempdir().unwrap();
        let h = Harness::with_storage(dir.path());
        let not_tar = b"this is not a tar archive\n".repeat(100);
        // An escaping member, in an otherwise good tar.
        let escaping = raw_tar(b"../../etc/passwd", b"x");
        for (body, says) in [
            (not_tar, "Reading the archive"),
            (escaping, "escapes the archive"),
        ] {
            let req = Request::builder()
                .method("POST")
                .uri("/storage/images/import")
                .header("content-type", "application/x-tar")
                .body(Body::from(body))
                .unwrap();
            let resp = h.send(req).await;
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
            assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
            assert_eq!(e["element"], "archive", "{e}");
            let msg = e["message"].as_str().unwrap();
            assert!(
                msg.starts_with("The archive is not an image archive that can be imported: ")
                    && msg.contains(says),
                "{msg}"
            );
        }
        let (status, e) = h
            .call("POST", "/storage/images/import?tag=../../etc", None)
            .await;
        assert_eq!(
            (status, e["element"].as_str()),
            (StatusCode::BAD_REQUEST, Some("tag")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn archives_go_in_and_come_out_and_escapes_are_named() {
        let h = Harness::new();
        let (status, c) = h
            .call(
                "POST",
                "/exec/containers",
                Some(serde_json::json!({"name": "box", "image": "busybox", "task": {"args": ["true"]}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{c}");
        let (status, _) = h
            .call(
                "POST",
                "/exec/commit",
                Some(serde_json::json!({"handle": c["handle"]})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);

        let (status, r) = put(
            &h,
            "/storage/archive/box?path=/tmp",
            raw_tar(b"a.txt", b"hi\n"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{r}");
        assert_eq!(r["entries"], 1);
        assert_eq!(r["bytes"], 3);

        let resp = h
            .send(
                Request::builder()
                    .uri("/storage/archive/box?path=/tmp/a.txt")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/x-tar");
        let tar = resp.into_body().collect().await.unwrap().to_bytes();
        let mut a = tar::Archive::new(&tar[..]);
        let mut e = a.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_string_lossy(), "a.txt");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut e, &mut text).unwrap();
        assert_eq!(text, "hi\n");

        let (status, r) = put(
            &h,
            "/storage/archive/box?path=/tmp",
            raw_tar(b"../../x", b"x"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{r}");
        assert!(r["message"].as_str().unwrap().contains("../../x"), "{r}");
        let (status, r) = put(
            &h,
            "/storage/archive/box?path=/tmp/../etc",
            raw_tar(b"y", b"y"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{r}");
        assert_eq!(r["element"], "path");
        let (status, r) = put(&h, "/storage/archive/nope?path=/tmp", raw_tar(b"y", b"y")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{r}");
        // Without a storage component, the storage routes say so.
        let (status, r) = h.call("GET", "/storage/images", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{r}");
        assert_eq!(r["element"], "storage");
    }
}
