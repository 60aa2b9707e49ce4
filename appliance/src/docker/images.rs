//! The image verbs: list (with `reference`, `dangling` and `label`
//! filters), inspect, history, pull (`POST /images/create`), tag, remove,
//! save and load, from the port layer's storage component
//! (`/storage/images...`).
//!
//! Owns the mapping of Docker's image semantics onto the port layer's:
//! the pull progress stream in Docker's shape, `rmi`'s refusals in
//! Docker's words (the containers using an image come from the port
//! layer's container list). Must not reach the image store itself.

use std::collections::BTreeMap;

use appliance::portlayer::model::Container;
use appliance::storage::model::Image;
use appliance::storage::oci::normalize_reference;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::containers::docker_filters;
use super::types::{ImageInspect, ImageSummary, short_name};
use super::{Docker, DockerError, Query, Reply};
use crate::client::{ClientError, encode};

/// The port layer's path for image `name` (references contain `/`).
fn image_path(name: &str) -> String {
    format!(
        "/storage/images/{}",
        name.split('/').map(encode).collect::<Vec<_>>().join("/")
    )
}

/// Image `name` from the port layer; its 404 is Docker's "No such image".
async fn get_image(d: &Docker, name: &str) -> Result<Image, DockerError> {
    d.client
        .get::<Image>(&image_path(name))
        .await
        .map_err(|e| on_image(e, name))
}

/// A port layer error on image `name`: its 404 is "No such image".
fn on_image(e: ClientError, name: &str) -> DockerError {
    match &e {
        ClientError::Api(a) if a.status == 404 => DockerError::NoSuchImage(name.to_string()),
        _ => DockerError::PortLayer(e),
    }
}

/// A short id as docker prints it: 12 hex digits.
fn short_id(id: &str) -> String {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.chars().take(12).collect()
}

fn json_reply(status: StatusCode, body: &impl serde::Serialize) -> Reply {
    super::json(status, body)
}

/// `GET /images/json?filters=`.
pub async fn list(d: &Docker, q: &Query) -> Reply {
    let filters = ImageFilters::parse(q.get("filters"))?;
    let images: Vec<Image> = d.client.get("/storage/images").await?;
    let out: Vec<ImageSummary> = images
        .iter()
        .filter(|i| filters.matches(i))
        .map(|i| {
            let mut s = ImageSummary::new(i);
            // As dockerd: a reference filter lists only the names it matched.
            s.repo_tags.retain(|n| filters.names(n));
            s
        })
        .collect();
    json_reply(StatusCode::OK, &out)
}

/// Docker's image filters this personality serves.
#[derive(Debug, Default)]
struct ImageFilters {
    /// Globs over the image's names (`busybox`, `busybox:*`, `*/app`).
    reference: Vec<String>,
    dangling: Option<bool>,
    /// `key` or `key=value`.
    label: Vec<String>,
}

impl ImageFilters {
    fn parse(json: Option<&str>) -> Result<Self, DockerError> {
        let mut f = Self::default();
        let Some(json) = json else { return Ok(f) };
        for (key, values) in docker_filters(json)? {
            match key.as_str() {
                "reference" => f.reference = values,
                "label" => f.label = values,
                "dangling" => {
                    for v in values {
                        f.dangling = Some(match v.as_str() {
                            "true" | "1" => true,
                            "false" | "0" => false,
                            other => {
                                return Err(DockerError::bad_request(format!(
                                    "Invalid filter 'dangling={other}'"
                                )));
                            }
                        });
                    }
                }
                other => {
                    return Err(DockerError::bad_request(format!(
                        "Invalid filter '{other}': this appliance filters images by reference, dangling and label"
                    )));
                }
            }
        }
        Ok(f)
    }

    fn matches(&self, i: &Image) -> bool {
        if let Some(dangling) = self.dangling
            && dangling != i.names.is_empty()
        {
            return false;
        }
        if !self.reference.is_empty() && !i.names.iter().any(|n| self.names(&short_name(n))) {
            return false;
        }
        self.label.iter().all(|l| match l.split_once('=') {
            Some((k, v)) => i.config.labels.get(k).is_some_and(|have| have == v),
            None => i.config.labels.contains_key(l),
        })
    }
}

impl ImageFilters {
    /// Whether the reference filter (if any) matches `name` (as docker
    /// shows it): the whole of it or its repository.
    fn names(&self, name: &str) -> bool {
        self.reference.is_empty()
            || self
                .reference
                .iter()
                .any(|p| glob(p, name) || glob(p, repo_of(name)))
    }
}

/// `busybox` of `busybox:latest`, `host:5000/a` of `host:5000/a:v1`.
fn repo_of(name: &str) -> &str {
    let name = name.split('@').next().unwrap_or(name);
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => name,
    }
}

/// `*` (any run of characters but `/`) and `?` (one character), as Go's
/// `path.Match` that docker's reference filter uses.
fn glob(pattern: &str, s: &str) -> bool {
    fn go(p: &[char], s: &[char]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some(('*', rest)) => (0..=s.len()).any(|i| !s[..i].contains(&'/') && go(rest, &s[i..])),
            Some(('?', rest)) => s.first().is_some_and(|c| *c != '/') && go(rest, &s[1..]),
            Some((c, rest)) => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    go(&p, &s)
}

/// `GET /images/{name}/json`.
pub async fn inspect(d: &Docker, name: &str) -> Reply {
    let i = get_image(d, name).await?;
    json_reply(StatusCode::OK, &ImageInspect::new(&i))
}

/// `GET /images/{name}/history`: one entry per layer, newest first (the
/// port layer keeps no build history).
pub async fn history(d: &Docker, name: &str) -> Reply {
    let i = get_image(d, name).await?;
    let created = i.created_at / 1000;
    let out: Vec<Value> = i
        .layers
        .iter()
        .rev()
        .enumerate()
        .map(|(n, l)| {
            json!({
                "Id": if n == 0 { i.id.clone() } else { "<missing>".into() },
                "Created": created,
                "CreatedBy": format!("layer {}", l.digest),
                "Tags": if n == 0 { i.names.iter().map(|s| short_name(s)).collect() } else { vec![] },
                "Size": l.size,
                "Comment": "",
            })
        })
        .collect();
    json_reply(StatusCode::OK, &out)
}

/// The reference `fromImage` and `tag` make: `busybox` + `latest` is
/// `busybox:latest`, a digest tag is joined with `@`.
fn pull_reference(from_image: &str, tag: Option<&str>) -> String {
    match tag {
        None => from_image.to_string(),
        Some(t) if t.contains(':') => format!("{from_image}@{t}"),
        Some(t) => format!("{from_image}:{t}"),
    }
}

/// How docker names an image in a pull's messages: the registry left out
/// for Docker Hub (`busybox:latest`, `127.0.0.1:5000/app:v1`).
fn familiar(reference: &str) -> String {
    short_name(reference)
}

/// The repository path without its registry, and the tag or digest, for
/// the `Pulling from` line: `library/busybox`, `latest`.
fn pulling_from(reference: &str) -> (String, String) {
    let (name, tag) = match reference.split_once('@') {
        Some((n, digest)) => (n.to_string(), digest.to_string()),
        None => match reference.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n.to_string(), t.to_string()),
            _ => (reference.to_string(), "latest".to_string()),
        },
    };
    let path = name
        .split_once('/')
        .map_or(name.clone(), |(_, p)| p.to_string());
    (path, tag)
}

/// `POST /images/create?fromImage=&tag=` (docker pull): the port layer's
/// pull, its progress as Docker's JSON lines.
pub async fn create(d: &Docker, q: &Query) -> Reply {
    if q.get("fromSrc").is_some() {
        return Err(DockerError::Status {
            status: StatusCode::NOT_IMPLEMENTED,
            message: "Importing a root filesystem (docker import, fromSrc) is not supported by this appliance; use docker load for image archives".into(),
        });
    }
    let Some(from) = q.get("fromImage") else {
        return Err(DockerError::bad_request(
            "Name an image to pull (fromImage)",
        ));
    };
    let given = pull_reference(from, q.get("tag"));
    let reference = normalize_reference(&given).map_err(|e| {
        DockerError::bad_request(format!("invalid reference format: {given:?}: {e}"))
    })?;
    let before = d
        .client
        .get::<Image>(&image_path(&reference))
        .await
        .ok()
        .map(|i| i.id);
    let spec = appliance::portlayer::storage::PullSpec {
        reference: reference.clone(),
        ..Default::default()
    };
    let mut stream = match d.client.post_stream("/storage/images/pull", &spec).await {
        Ok(s) => s,
        Err(ClientError::Api(a)) if a.status == 400 => {
            return Err(DockerError::bad_request(format!(
                "invalid reference {given:?}: {}",
                a.message
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        let mut progress = PullProgress::new(reference, before);
        let mut buf = Vec::new();
        loop {
            match stream.chunk().await {
                Ok(Some(chunk)) => {
                    buf.extend_from_slice(&chunk);
                    while let Some(n) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=n).collect();
                        for out in progress.line(&line) {
                            let _ = tx.send(out);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(error_line(&format!("The pull's stream broke: {e}")));
                    return;
                }
            }
        }
        if !progress.ended {
            let _ = tx.send(error_line("The pull ended without a result"));
        }
    });
    let lines = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
        .map(|v| Ok::<_, std::io::Error>(format!("{v}\n")));
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response())
}

fn error_line(message: &str) -> Value {
    json!({ "errorDetail": { "message": message }, "error": message })
}

/// A port layer pull line.
#[derive(Deserialize, Debug)]
#[serde(tag = "status", rename_all = "kebab-case")]
enum PullLine {
    Resolved {
        manifest_digest: String,
        layers: Vec<appliance::storage::model::Layer>,
    },
    Layer {
        digest: String,
        done: u64,
        total: u64,
    },
    LayerDone {
        digest: String,
        cached: bool,
    },
    Building {},
    Done {
        image: Box<Image>,
    },
    Error {
        error: ErrorLine,
    },
}

#[derive(Deserialize, Debug)]
struct ErrorLine {
    message: String,
}

/// Turns the port layer's pull lines into Docker's.
struct PullProgress {
    reference: String,
    /// The id the reference named before the pull, if any.
    before: Option<String>,
    manifest_digest: String,
    ended: bool,
}

impl PullProgress {
    fn new(reference: String, before: Option<String>) -> Self {
        Self {
            reference,
            before,
            manifest_digest: String::new(),
            ended: false,
        }
    }

    fn line(&mut self, raw: &[u8]) -> Vec<Value> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return vec![];
        }
        let line: PullLine = match serde_json::from_slice(raw) {
            Ok(l) => l,
            // A kind of line this personality does not know: not Docker's.
            Err(_) => return vec![],
        };
        match line {
            PullLine::Resolved {
                manifest_digest,
                layers,
            } => {
                self.manifest_digest = manifest_digest;
                let (path, tag) = pulling_from(&self.reference);
                let mut out = vec![json!({ "status": format!("Pulling from {path}"), "id": tag })];
                out.extend(layers.iter().map(|l| {
                    json!({ "status": "Pulling fs layer", "progressDetail": {}, "id": short_id(&l.digest) })
                }));
                out
            }
            PullLine::Layer {
                digest,
                done,
                total,
            } => vec![json!({
                "status": "Downloading",
                "progressDetail": { "current": done, "total": total },
                "id": short_id(&digest),
            })],
            PullLine::LayerDone { digest, cached } => vec![json!({
                "status": if cached { "Already exists" } else { "Pull complete" },
                "progressDetail": {},
                "id": short_id(&digest),
            })],
            PullLine::Building {} => vec![],
            PullLine::Done { image } => {
                self.ended = true;
                let digest = if self.manifest_digest.is_empty() {
                    image.manifest_digest.clone()
                } else {
                    self.manifest_digest.clone()
                };
                let name = familiar(&self.reference);
                let status = if self.before.as_deref() == Some(image.id.as_str()) {
                    format!("Status: Image is up to date for {name}")
                } else {
                    format!("Status: Downloaded newer image for {name}")
                };
                vec![
                    json!({ "status": format!("Digest: {digest}") }),
                    json!({ "status": status }),
                ]
            }
            PullLine::Error { error } => {
                self.ended = true;
                vec![error_line(&error.message)]
            }
        }
    }
}

/// `POST /images/{name}/tag?repo=&tag=`.
pub async fn tag(d: &Docker, name: &str, q: &Query) -> Reply {
    let Some(repo) = q.get("repo") else {
        return Err(DockerError::bad_request("Name the new repository (repo)"));
    };
    let new = format!("{repo}:{}", q.get("tag").unwrap_or("latest"));
    let req = appliance::api::storage::TagRequest {
        image: name.to_string(),
        name: new,
    };
    d.client
        .post::<Image>("/storage/images/tag", &req)
        .await
        .map_err(|e| on_image(e, name))?;
    super::empty(StatusCode::CREATED)
}

/// What the port layer's `DELETE /storage/images/{image}` answers.
#[derive(Deserialize)]
struct Removed {
    removed: Vec<String>,
}

/// The containers made from image `id`, as docker names them (12 hex).
async fn users(d: &Docker, id: &str) -> Result<Vec<Container>, DockerError> {
    let all: Vec<Container> = d.client.get("/exec/containers").await?;
    Ok(all.into_iter().filter(|c| c.image_id == id).collect())
}

fn running(c: &Container) -> bool {
    use appliance::portlayer::model::PowerState;
    matches!(c.state, PowerState::Running | PowerState::Paused)
}

/// `DELETE /images/{name}?force=&noprune=` (docker rmi): a name of an
/// image with other names is untagged; the image goes with its last name
/// or when named by id, unless a container uses it.
pub async fn remove(d: &Docker, name: &str, q: &Query) -> Reply {
    let force = q.flag("force");
    let img = get_image(d, name).await?;
    let by_name = normalize_reference(name)
        .ok()
        .filter(|n| img.names.contains(n));
    let mut out: Vec<BTreeMap<&str, String>> = Vec::new();
    if let Some(n) = &by_name
        && img.names.len() > 1
    {
        let r: Removed = d.client.delete(&image_path(n)).await?;
        out.extend(r.removed.iter().map(|x| removed_entry(x)));
        return json_reply(StatusCode::OK, &out);
    }
    if by_name.is_none() && img.names.len() > 1 && !force {
        return Err(DockerError::conflict(format!(
            "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
            short_id(&img.id)
        )));
    }
    let users = users(d, &img.id).await?;
    if let Some(c) = users.first() {
        let message = match (&by_name, running(c)) {
            // dockerd would leave the image dangling; the port layer keeps
            // an image a container uses whole, names and all.
            _ if force && !running(c) => format!(
                "conflict: unable to delete {} (cannot be forced on this appliance) - image is being used by stopped container {}; remove the container first",
                short_id(&img.id),
                short_id(&c.id)
            ),
            (_, true) => format!(
                "conflict: unable to delete {} (cannot be forced) - image is being used by running container {}",
                short_id(&img.id),
                short_id(&c.id)
            ),
            (Some(_), false) => format!(
                "conflict: unable to remove repository reference \"{name}\" (must force) - container {} is using its referenced image {}",
                short_id(&c.id),
                short_id(&img.id)
            ),
            (None, false) => format!(
                "conflict: unable to delete {} (must be forced) - image is being used by stopped container {}",
                short_id(&img.id),
                short_id(&c.id)
            ),
        };
        return Err(DockerError::conflict(message));
    }
    // By id, forced, with several names: untag each, the last deletes.
    let mut names = img.names.clone();
    if names.is_empty() {
        names.push(img.id.clone());
    }
    for n in &names {
        let r: Removed = d
            .client
            .delete(&image_path(n))
            .await
            .map_err(|e| on_image(e, name))?;
        out.extend(r.removed.iter().map(|x| removed_entry(x)));
    }
    json_reply(StatusCode::OK, &out)
}

/// One entry of rmi's answer: an image id is `Deleted`, a name `Untagged`.
fn removed_entry(x: &str) -> BTreeMap<&'static str, String> {
    if x.starts_with("sha256:") {
        BTreeMap::from([("Deleted", x.to_string())])
    } else {
        BTreeMap::from([("Untagged", short_name(x))])
    }
}

/// `GET /images/get?names=a&names=b` and `GET /images/{name}/get` (docker
/// save): the port layer's export, streamed.
pub async fn save(d: &Docker, names: Vec<String>) -> Reply {
    if names.is_empty() {
        return Err(DockerError::bad_request("Name at least one image to save"));
    }
    // Each first, for Docker's "No such image" naming the one at fault.
    for n in &names {
        get_image(d, n).await?;
    }
    let req = appliance::api::storage::ExportRequest { images: names };
    let stream = d.client.post_stream("/storage/images/export", &req).await?;
    let body = futures::stream::unfold(stream, |mut s| async move {
        match s.chunk().await {
            Ok(Some(c)) => Some((Ok(c), s)),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), s)),
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(body),
    )
        .into_response())
}

/// The `names` of a save's query (repeated: `names=a&names=b`).
pub fn save_names(uri: &axum::http::Uri) -> Result<Vec<String>, DockerError> {
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| DockerError::bad_request(format!("Invalid query: {e}")))?;
    Ok(pairs
        .0
        .into_iter()
        .filter(|(k, v)| k == "names" && !v.is_empty())
        .map(|(_, v)| v)
        .collect())
}

/// `POST /images/load?quiet=` (docker load): the tar body to the port
/// layer's import; Docker's `Loaded image` lines.
pub async fn load(d: &Docker, req: Request) -> Reply {
    let stream = req
        .into_body()
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let reader = tokio_util::io::StreamReader::new(stream);
    let images: Vec<Image> = d
        .client
        .upload(
            axum::http::Method::POST,
            "/storage/images/import",
            "application/x-tar",
            reader,
        )
        .await
        .map_err(|e| match e {
            ClientError::Api(a) if a.status == 400 => {
                DockerError::bad_request(format!("Loading the image archive: {}", a.message))
            }
            other => DockerError::PortLayer(other),
        })?;
    // One image per name it was loaded under, each with the names it had
    // by then: the union, in order.
    let mut loaded: Vec<(&str, Vec<&String>)> = Vec::new();
    for i in &images {
        let at = match loaded.iter().position(|(id, _)| *id == i.id) {
            Some(at) => at,
            None => {
                loaded.push((&i.id, vec![]));
                loaded.len() - 1
            }
        };
        for n in &i.names {
            if !loaded[at].1.contains(&n) {
                loaded[at].1.push(n);
            }
        }
    }
    let mut lines = Vec::new();
    for (id, names) in &loaded {
        if names.is_empty() {
            lines.push(format!("Loaded image ID: {id}\n"));
        }
        for n in names {
            lines.push(format!("Loaded image: {}\n", short_name(n)));
        }
    }
    let body: String = lines
        .iter()
        .map(|l| format!("{}\n", json!({ "stream": l })))
        .collect();
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(names: &[&str], labels: &[(&str, &str)]) -> Image {
        let mut i = Image {
            names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        i.config.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        i
    }

    #[test]
    fn globs_read_like_path_match() {
        assert!(glob("busybox", "busybox"));
        assert!(glob("busy*", "busybox"));
        assert!(glob("*:v?", "app:v1"));
        assert!(!glob("*", "a/b"), "* stops at /");
        assert!(glob("*/app", "team/app"));
        assert!(!glob("busybox", "busybox2"));
    }

    #[test]
    fn image_filters_by_reference_dangling_and_label() {
        let bb = image(&["docker.io/library/busybox:latest"], &[("a", "1")]);
        let reg = image(&["127.0.0.1:5000/app:v1"], &[]);
        let none = image(&[], &[]);
        let f = ImageFilters::parse(Some(r#"{"reference":{"busybox":true}}"#)).expect("parse");
        assert!(f.matches(&bb) && !f.matches(&reg) && !f.matches(&none));
        let f =
            ImageFilters::parse(Some(r#"{"reference":["127.0.0.1:5000/*:v1"]}"#)).expect("parse");
        assert!(f.matches(&reg) && !f.matches(&bb));
        let f = ImageFilters::parse(Some(r#"{"dangling":["true"]}"#)).expect("parse");
        assert!(f.matches(&none) && !f.matches(&bb));
        let f = ImageFilters::parse(Some(r#"{"dangling":["false"]}"#)).expect("parse");
        assert!(!f.matches(&none) && f.matches(&bb));
        let f = ImageFilters::parse(Some(r#"{"label":["a=1"]}"#)).expect("parse");
        assert!(f.matches(&bb) && !f.matches(&reg));
        assert!(ImageFilters::parse(Some(r#"{"dangling":["maybe"]}"#)).is_err());
        let e = ImageFilters::parse(Some(r#"{"before":["x"]}"#)).expect_err("unknown");
        assert!(e.to_string().contains("before"), "{e}");
    }

    #[test]
    fn pull_references_and_names() {
        assert_eq!(pull_reference("busybox", Some("latest")), "busybox:latest");
        assert_eq!(pull_reference("a", Some("sha256:abc")), "a@sha256:abc");
        assert_eq!(
            pulling_from("docker.io/library/busybox:latest"),
            ("library/busybox".into(), "latest".into())
        );
        assert_eq!(
            pulling_from("127.0.0.1:5000/busybox:v1"),
            ("busybox".into(), "v1".into())
        );
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
    }

    #[test]
    fn pull_lines_become_dockers() {
        let mut p = PullProgress::new("127.0.0.1:5000/busybox:latest".into(), None);
        let d = format!("sha256:{}", "ab".repeat(32));
        let out = p.line(
            format!(
                r#"{{"status":"resolved","reference":"x","manifest_digest":"sha256:m","layers":[{{"digest":"{d}","media_type":"m","size":3}}]}}"#
            )
            .as_bytes(),
        );
        assert_eq!(out[0]["status"], "Pulling from busybox");
        assert_eq!(out[0]["id"], "latest");
        assert_eq!(out[1]["status"], "Pulling fs layer");
        assert_eq!(out[1]["id"], "abababababab");
        let out =
            p.line(format!(r#"{{"status":"layer","digest":"{d}","done":1,"total":3}}"#).as_bytes());
        assert_eq!(out[0]["progressDetail"]["current"], 1);
        assert_eq!(out[0]["progressDetail"]["total"], 3);
        let out =
            p.line(format!(r#"{{"status":"layer-done","digest":"{d}","cached":true}}"#).as_bytes());
        assert_eq!(out[0]["status"], "Already exists");
        assert!(!p.ended);
        let out = p.line(br#"{"status":"done","image":{"id":"sha256:i"}}"#);
        assert_eq!(out[0]["status"], "Digest: sha256:m");
        assert_eq!(
            out[1]["status"],
            "Status: Downloaded newer image for 127.0.0.1:5000/busybox:latest"
        );
        assert!(p.ended);

        let mut p = PullProgress::new("b:latest".into(), Some("sha256:i".into()));
        let out = p.line(br#"{"status":"done","image":{"id":"sha256:i"}}"#);
        assert_eq!(out[1]["status"], "Status: Image is up to date for b:latest");
        let out = p.line(br#"{"status":"error","error":{"code":"IMAGE_SOURCE","message":"nope"}}"#);
        assert_eq!(out[0]["error"], "nope");
        assert_eq!(out[0]["errorDetail"]["message"], "nope");
    }

    #[test]
    fn rmi_answers_name_untagged_and_deleted() {
        assert_eq!(
            removed_entry("docker.io/library/busybox:latest"),
            BTreeMap::from([("Untagged", "busybox:latest".to_string())])
        );
        assert_eq!(
            removed_entry("sha256:ab"),
            BTreeMap::from([("Deleted", "sha256:ab".to_string())])
        );
    }
}
