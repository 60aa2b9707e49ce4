//! Docker's volumes: the `volume` verbs over the port layer's storage API
//! (`/storage/volumes`), the translation of `-v`/`--mount` at create into
//! the port layer's volume mounts, `rm -v`'s removal of a container's
//! anonymous volumes, and what inspect shows of them.
//!
//! Owns the Docker side only: a volume is the port layer's (an ext4 disk
//! of its own), named volumes are made on demand as Docker does, and an
//! anonymous one (`-v /data`) gets a generated name and Docker's
//! `com.docker.volume.anonymous` label, by which `rm -v` and prune find
//! it. What the client asked for (`Binds`, `Config.Volumes`) is kept in
//! container labels under `types::LABEL_PREFIX`, for inspect. Host
//! directories cannot be mounted into a VM: such binds are refused.

use std::collections::{BTreeMap, BTreeSet};

use appliance::portlayer::model::{Container, VolumeMount};
use appliance::storage::model::{StoreUsage, Volume};
use axum::body::Bytes;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::types::CreateRequest;
use super::{Docker, DockerError, Query, Reply, json};
use crate::client::{ClientError, encode};

/// Docker's label on anonymous volumes (what prune removes by default).
pub const ANONYMOUS: &str = "com.docker.volume.anonymous";
/// The container's `HostConfig.Binds`, as JSON.
const BINDS: &str = "io.appliance.docker.binds";
/// The container's `Config.Volumes` paths, as JSON.
const CONFIG_VOLUMES: &str = "io.appliance.docker.volumes";

fn volume_path(name: &str) -> String {
    format!("/storage/volumes/{}", encode(name))
}

/// `POST /volumes/create`'s body.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    name: String,
    driver: String,
    driver_opts: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
}

/// Docker's Volume object.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct DockerVolume {
    name: String,
    driver: String,
    mountpoint: String,
    created_at: String,
    labels: BTreeMap<String, String>,
    scope: String,
    options: BTreeMap<String, String>,
    usage_data: UsageData,
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct UsageData {
    size: i64,
    ref_count: i64,
}

/// Where a volume lives on the host: its disk in its volume store.
fn mountpoint(v: &Volume, stores: &[StoreUsage]) -> String {
    match stores.iter().find(|s| s.name == v.store) {
        Some(s) => format!("{}/{}", s.path.trim_end_matches('/'), v.disk),
        None => format!("{}:{}", v.store, v.disk),
    }
}

impl DockerVolume {
    fn new(v: &Volume, stores: &[StoreUsage]) -> Self {
        let mut options = BTreeMap::new();
        options.insert("size".to_string(), format!("{}m", v.size_mib));
        Self {
            name: v.name.clone(),
            driver: "local".into(),
            mountpoint: mountpoint(v, stores),
            created_at: appliance::api::time::format_rfc3339_nanos(
                v.created_at.saturating_mul(1_000_000),
            ),
            labels: v.labels.clone(),
            scope: "local".into(),
            options,
            usage_data: UsageData {
                size: i64::try_from(v.disk_size).unwrap_or(i64::MAX),
                ref_count: i64::try_from(v.used_by.len()).unwrap_or(i64::MAX),
            },
        }
    }
}

async fn stores(d: &Docker) -> Vec<StoreUsage> {
    d.client
        .get("/storage/volume-stores")
        .await
        .unwrap_or_default()
}

/// The volume, or Docker's `get NAME: no such volume`.
async fn get(d: &Docker, name: &str) -> Result<Volume, DockerError> {
    d.client
        .get(&volume_path(name))
        .await
        .map_err(|e| match &e {
            ClientError::Api(a) if a.status == 404 => no_such_volume(name),
            _ => DockerError::PortLayer(e),
        })
}

fn no_such_volume(name: &str) -> DockerError {
    DockerError::Status {
        status: StatusCode::NOT_FOUND,
        message: format!("get {name}: no such volume"),
    }
}

/// A `size` driver option (`512m`, `2g`, or MiB) in MiB.
fn size_mib(s: &str) -> Result<u64, DockerError> {
    let s = s.trim();
    let lower = s.to_ascii_lowercase();
    let (digits, mul) = match lower.strip_suffix(['m', 'g']) {
        Some(d) if lower.ends_with('g') => (d.to_string(), 1024),
        Some(d) => (d.to_string(), 1),
        None => (lower.clone(), 1),
    };
    let digits = digits.strip_suffix('i').unwrap_or(&digits);
    digits
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| {
            DockerError::bad_request(format!(
                "Invalid volume size {s:?}: give MiB, or a number with m or g (512m, 2g)"
            ))
        })
}

/// The port layer's spec for a Docker volume create.
fn volume_spec(
    name: &str,
    driver: &str,
    opts: &BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
) -> Result<serde_json::Value, DockerError> {
    if !matches!(driver, "" | "local") {
        return Err(DockerError::bad_request(format!(
            "Volume driver {driver:?} is not supported by this appliance: only \"local\" is"
        )));
    }
    let mut size = 0;
    for (k, v) in opts {
        match k.as_str() {
            "size" => size = size_mib(v)?,
            other => {
                return Err(DockerError::bad_request(format!(
                    "Volume option {other:?} is not supported by this appliance \
                     (a volume is a disk of its own; only \"size\" is)"
                )));
            }
        }
    }
    Ok(serde_json::json!({ "name": name, "size_mib": size, "labels": labels }))
}

/// Creates a volume in the port layer; an existing name is that volume.
async fn create_volume(d: &Docker, spec: &serde_json::Value) -> Result<Volume, DockerError> {
    match d.client.post::<Volume>("/storage/volumes", spec).await {
        Ok(v) => Ok(v),
        Err(ClientError::Api(a)) if a.status == 409 => {
            get(d, spec["name"].as_str().unwrap_or_default()).await
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /volumes/create`: an existing name answers with that volume.
pub async fn create(d: &Docker, body: &Bytes) -> Reply {
    let r: CreateBody = serde_json::from_slice(body)
        .map_err(|e| DockerError::bad_request(format!("Invalid volume config: {e}")))?;
    let spec = volume_spec(
        &r.name,
        &r.driver,
        &r.driver_opts.unwrap_or_default(),
        r.labels.unwrap_or_default(),
    )?;
    if !r.name.is_empty()
        && let Ok(v) = get(d, &r.name).await
    {
        return json(
            StatusCode::CREATED,
            &DockerVolume::new(&v, &stores(d).await),
        );
    }
    let v = create_volume(d, &spec).await?;
    json(
        StatusCode::CREATED,
        &DockerVolume::new(&v, &stores(d).await),
    )
}

/// Docker's volume filters, checked against one volume.
#[derive(Debug, Default, PartialEq)]
struct Filters {
    names: Vec<String>,
    labels: Vec<String>,
    dangling: Option<bool>,
    /// Prune only: anonymous volumes alone unless `all`.
    all: bool,
}

impl Filters {
    fn parse(json: Option<&str>, prune: bool) -> Result<Self, DockerError> {
        let mut f = Filters::default();
        let Some(json) = json else { return Ok(f) };
        for (key, values) in super::containers::docker_filters(json)? {
            match (key.as_str(), prune) {
                ("name", false) => f.names = values,
                ("label", _) => f.labels = values,
                ("dangling", false) => {
                    f.dangling = values.last().map(|v| v == "true" || v == "1");
                }
                ("all", true) => f.all = values.iter().any(|v| v == "true" || v == "1"),
                (other, _) => {
                    return Err(DockerError::bad_request(format!(
                        "Invalid filter {other:?}: {} are supported",
                        if prune {
                            "label and all"
                        } else {
                            "name, label and dangling"
                        }
                    )));
                }
            }
        }
        Ok(f)
    }

    fn matches(&self, v: &Volume) -> bool {
        let name = self.names.is_empty() || self.names.iter().any(|n| v.name.contains(n.as_str()));
        let labels = self.labels.iter().all(|l| match l.split_once('=') {
            Some((k, val)) => v.labels.get(k).is_some_and(|x| x == val),
            None => v.labels.contains_key(l.as_str()),
        });
        let dangling = self.dangling.is_none_or(|d| d == v.used_by.is_empty());
        name && labels && dangling
    }
}

/// `GET /volumes?filters=`.
pub async fn list(d: &Docker, q: &Query) -> Reply {
    let f = Filters::parse(q.get("filters"), false)?;
    let all: Vec<Volume> = d.client.get("/storage/volumes").await?;
    let stores = stores(d).await;
    let out: Vec<DockerVolume> = all
        .iter()
        .filter(|v| f.matches(v))
        .map(|v| DockerVolume::new(v, &stores))
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({ "Volumes": out, "Warnings": [] }),
    )
}

/// `GET /volumes/{name}`.
pub async fn inspect(d: &Docker, name: &str) -> Reply {
    let v = get(d, name).await?;
    json(StatusCode::OK, &DockerVolume::new(&v, &stores(d).await))
}

/// The container ids in a volume's `used_by` ("name (short id)").
fn users(v: &Volume) -> Vec<String> {
    v.used_by
        .iter()
        .map(|u| match u.rsplit_once(" (") {
            Some((_, id)) => id.trim_end_matches(')').to_string(),
            None => u.clone(),
        })
        .collect()
}

/// `DELETE /volumes/{name}?force=`: refused while in use; `force` makes a
/// missing volume no error (as Docker does).
pub async fn remove(d: &Docker, name: &str, q: &Query) -> Reply {
    match d.client.delete::<()>(&volume_path(name)).await {
        Ok(()) => super::empty(StatusCode::NO_CONTENT),
        Err(ClientError::Api(a)) if a.status == 404 => {
            if q.flag("force") {
                super::empty(StatusCode::NO_CONTENT)
            } else {
                Err(no_such_volume(name))
            }
        }
        Err(ClientError::Api(a)) if a.status == 409 => {
            let short = get(d, name).await.map(|v| users(&v)).unwrap_or_default();
            // Docker names them by full id.
            let mut ids = Vec::new();
            for s in short {
                match super::containers::get(d, &s).await {
                    Ok(c) => ids.push(c.id),
                    Err(_) => ids.push(s),
                }
            }
            Err(DockerError::conflict(format!(
                "remove {name}: volume is in use - [{}]",
                ids.join(" ")
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /volumes/prune?filters=`: unused anonymous volumes (all unused
/// ones with `all=true`).
pub async fn prune(d: &Docker, q: &Query) -> Reply {
    let f = Filters::parse(q.get("filters"), true)?;
    let all: Vec<Volume> = d.client.get("/storage/volumes").await?;
    let mut deleted = Vec::new();
    let mut reclaimed: u64 = 0;
    for v in all.iter().filter(|v| {
        v.used_by.is_empty() && f.matches(v) && (f.all || v.labels.contains_key(ANONYMOUS))
    }) {
        match d.client.delete::<()>(&volume_path(&v.name)).await {
            Ok(()) => {
                deleted.push(v.name.clone());
                reclaimed = reclaimed.saturating_add(v.disk_size);
            }
            // Taken meanwhile, or gone: not pruned by this call.
            Err(ClientError::Api(a)) if a.status == 404 || a.status == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    json(
        StatusCode::OK,
        &serde_json::json!({ "VolumesDeleted": deleted, "SpaceReclaimed": reclaimed }),
    )
}

/// One volume a container asks for: named (made on demand if missing) or
/// anonymous (made for it).
#[derive(Debug, PartialEq, Eq)]
struct Wanted {
    /// Empty for an anonymous volume.
    volume: String,
    path: String,
    read_only: bool,
    labels: BTreeMap<String, String>,
}

/// `--mount`'s JSON (`HostConfig.Mounts`).
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase", default)]
struct DockerMount {
    #[serde(rename = "Type")]
    kind: String,
    source: String,
    target: String,
    read_only: bool,
    volume_options: Option<VolumeOptions>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase", default)]
struct VolumeOptions {
    labels: Option<BTreeMap<String, String>>,
    driver_config: Option<DriverConfig>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase", default)]
struct DriverConfig {
    name: String,
    options: Option<BTreeMap<String, String>>,
}

fn host_bind_refusal(what: &str) -> DockerError {
    DockerError::bad_request(format!(
        "Invalid mount {what:?}: host directories are not supported: a host directory \
         cannot be mounted into a container VM; use a named volume (-v NAME:/path, `docker volume create NAME`) and copy files \
         into it with `docker cp`"
    ))
}

fn tmpfs_refusal(path: &str) -> DockerError {
    DockerError::bad_request(format!(
        "Invalid mount {path:?}: tmpfs mounts are not supported by this appliance yet; \
         use a volume"
    ))
}

fn check_target(what: &str, path: &str) -> Result<(), DockerError> {
    if !path.starts_with('/') || path == "/" || path.split('/').any(|p| p == "..") {
        return Err(DockerError::bad_request(format!(
            "Invalid mount {what:?}: the path in the container must be absolute, \
             not \"/\", with no .. parts"
        )));
    }
    Ok(())
}

/// One `HostConfig.Binds` entry: `NAME:/path[:ro|rw]`.
fn parse_bind(b: &str) -> Result<Wanted, DockerError> {
    let parts: Vec<&str> = b.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [src, dst] => (*src, *dst, ""),
        [src, dst, opts] => (*src, *dst, *opts),
        _ => {
            return Err(DockerError::bad_request(format!(
                "Invalid bind {b:?}: expected NAME:/path or NAME:/path:ro"
            )));
        }
    };
    if src.starts_with(['/', '.', '~']) {
        return Err(host_bind_refusal(b));
    }
    if src.is_empty() {
        return Err(DockerError::bad_request(format!(
            "Invalid bind {b:?}: expected NAME:/path or NAME:/path:ro"
        )));
    }
    check_target(b, dst)?;
    let mut read_only = false;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => read_only = true,
            "rw" => read_only = false,
            other => {
                return Err(DockerError::bad_request(format!(
                    "Invalid bind {b:?}: option {other:?} is not supported (ro and rw are)"
                )));
            }
        }
    }
    Ok(Wanted {
        volume: src.to_string(),
        path: dst.to_string(),
        read_only,
        labels: BTreeMap::new(),
    })
}

/// One `HostConfig.Mounts` entry (`--mount type=volume,...`).
fn parse_mount(m: &serde_json::Value) -> Result<Wanted, DockerError> {
    let what = m.to_string();
    let dm: DockerMount = serde_json::from_value(m.clone())
        .map_err(|e| DockerError::bad_request(format!("Invalid mount {what}: {e}")))?;
    match dm.kind.as_str() {
        "volume" => {}
        "bind" => return Err(host_bind_refusal(&format!("{}:{}", dm.source, dm.target))),
        "tmpfs" => return Err(tmpfs_refusal(&dm.target)),
        other => {
            return Err(DockerError::bad_request(format!(
                "Invalid mount {what}: type {other:?} is not supported (volume is)"
            )));
        }
    }
    check_target(&dm.target, &dm.target)?;
    let opts = dm.volume_options.unwrap_or_default();
    if let Some(dc) = &opts.driver_config {
        volume_spec(
            "",
            &dc.name,
            &dc.options.clone().unwrap_or_default(),
            BTreeMap::new(),
        )?;
    }
    Ok(Wanted {
        volume: dm.source,
        path: dm.target,
        read_only: dm.read_only,
        labels: opts.labels.unwrap_or_default(),
    })
}

/// What a create asks for: `Binds`, `Mounts`, then an anonymous volume
/// for each `Config.Volumes` path not covered. Two on one path are
/// refused.
fn wanted(r: &CreateRequest) -> Result<Vec<Wanted>, DockerError> {
    if let Some(path) = r.host_config.tmpfs.iter().flat_map(BTreeMap::keys).next() {
        return Err(tmpfs_refusal(path));
    }
    let mut out = Vec::new();
    for b in r.host_config.binds.iter().flatten() {
        out.push(parse_bind(b)?);
    }
    for m in r.host_config.mounts.iter().flatten() {
        out.push(parse_mount(m)?);
    }
    for path in r.volumes.iter().flat_map(BTreeMap::keys) {
        check_target(path, path)?;
        if !out.iter().any(|w| w.path == *path) {
            out.push(Wanted {
                volume: String::new(),
                path: path.clone(),
                read_only: false,
                labels: BTreeMap::new(),
            });
        }
    }
    let mut seen = BTreeSet::new();
    for w in &out {
        if !seen.insert(w.path.as_str()) {
            return Err(DockerError::bad_request(format!(
                "Duplicate mount point: {}",
                w.path
            )));
        }
    }
    Ok(out)
}

/// The volumes a create asks for, made ready: named ones made if missing,
/// anonymous ones made with a generated name. All input is checked before
/// anything is made. Adds the labels inspect reads to `labels`. The
/// anonymous volumes made are returned too, for removal should the create
/// fail.
pub async fn mounts_for_create(
    d: &Docker,
    r: &CreateRequest,
    labels: &mut BTreeMap<String, String>,
) -> Result<(Vec<VolumeMount>, Vec<String>), DockerError> {
    let wanted = wanted(r)?;
    if let Some(binds) = &r.host_config.binds
        && !binds.is_empty()
    {
        labels.insert(
            BINDS.into(),
            serde_json::to_string(binds).unwrap_or_default(),
        );
    }
    if let Some(v) = &r.volumes
        && !v.is_empty()
    {
        let paths: Vec<&String> = v.keys().collect();
        labels.insert(
            CONFIG_VOLUMES.into(),
            serde_json::to_string(&paths).unwrap_or_default(),
        );
    }
    let mut mounts = Vec::new();
    let mut made = Vec::new();
    for w in wanted {
        let volume = if w.volume.is_empty() {
            let mut l = w.labels.clone();
            l.insert(ANONYMOUS.into(), String::new());
            let spec = serde_json::json!({ "labels": l });
            match d.client.post::<Volume>("/storage/volumes", &spec).await {
                Ok(v) => {
                    made.push(v.name.clone());
                    v.name
                }
                Err(e) => {
                    remove_volumes(d, &made).await;
                    return Err(e.into());
                }
            }
        } else {
            let spec = volume_spec(&w.volume, "", &BTreeMap::new(), w.labels.clone())?;
            if let Err(e) = create_volume(d, &spec).await {
                remove_volumes(d, &made).await;
                return Err(e);
            }
            w.volume
        };
        mounts.push(VolumeMount {
            volume,
            path: w.path,
            read_only: w.read_only,
        });
    }
    Ok((mounts, made))
}

/// Removes volumes, logging what fails (nothing depends on it).
pub async fn remove_volumes(d: &Docker, names: &[String]) {
    for n in names {
        if let Err(e) = d.client.delete::<()>(&volume_path(n)).await {
            tracing::warn!("docker: removing volume {n}: {e}");
        }
    }
}

/// `rm -v`: the container's anonymous volumes, once it is gone.
pub async fn remove_anonymous(d: &Docker, c: &Container) {
    let mut anonymous = Vec::new();
    for m in &c.mounts {
        if let Ok(v) = d.client.get::<Volume>(&volume_path(&m.volume)).await
            && v.labels.contains_key(ANONYMOUS)
        {
            anonymous.push(v.name);
        }
    }
    remove_volumes(d, &anonymous).await;
}

/// Inspect's `Mounts`, `HostConfig.Binds` and `Config.Volumes`.
pub async fn fill_inspect(d: &Docker, c: &Container, out: &mut super::types::ContainerInspect) {
    let stores = if c.mounts.is_empty() {
        vec![]
    } else {
        stores(d).await
    };
    let mut mounts = Vec::new();
    for m in &c.mounts {
        let source = match d.client.get::<Volume>(&volume_path(&m.volume)).await {
            Ok(v) => mountpoint(&v, &stores),
            Err(_) => String::new(),
        };
        mounts.push(serde_json::json!({
            "Type": "volume",
            "Name": m.volume,
            "Source": source,
            "Destination": m.path,
            "Driver": "local",
            "Mode": if m.read_only { "ro" } else { "" },
            "RW": !m.read_only,
            "Propagation": "",
        }));
    }
    out.mounts = mounts;
    out.host_config.binds = c
        .labels
        .get(BINDS)
        .and_then(|b| serde_json::from_str(b).ok());
    out.config.volumes = c
        .labels
        .get(CONFIG_VOLUMES)
        .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok())
        .map(|paths| {
            paths
                .into_iter()
                .map(|p| (p, serde_json::json!({})))
                .collect()
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_are_named_volumes_and_host_paths_are_refused() {
        assert_eq!(
            parse_bind("v1:/data:ro").expect("bind"),
            Wanted {
                volume: "v1".into(),
                path: "/data".into(),
                read_only: true,
                labels: BTreeMap::new(),
            }
        );
        assert!(!parse_bind("v1:/data").expect("bind").read_only);
        let e = parse_bind("/tmp:/x").expect_err("host bind");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.message().contains("\"/tmp:/x\""), "{}", e.message());
        assert!(e.message().contains("named volume"), "{}", e.message());
        for bad in [
            "v1",
            "v1:data",
            "v1:/",
            "v1:/a/../b",
            "v1:/a:z",
            ":/a",
            "a:b:c:d",
        ] {
            let e = parse_bind(bad).expect_err(bad);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.message().contains(bad), "{bad}: {}", e.message());
        }
    }

    #[test]
    fn mounts_and_config_volumes_make_the_list() {
        let r: CreateRequest = serde_json::from_str(
            r#"{"Volumes":{"/anon":{},"/data":{}},
                "HostConfig":{"Binds":["v1:/data"],
                "Mounts":[{"Type":"volume","Source":"v2","Target":"/m","ReadOnly":true}]}}"#,
        )
        .expect("parses");
        let w = wanted(&r).expect("wanted");
        let got: Vec<(&str, &str, bool)> = w
            .iter()
            .map(|w| (w.volume.as_str(), w.path.as_str(), w.read_only))
            .collect();
        assert_eq!(
            got,
            [
                ("v1", "/data", false),
                ("v2", "/m", true),
                ("", "/anon", false)
            ]
        );
        for (mount, says) in [
            (
                r#"{"Type":"bind","Source":"/h","Target":"/x"}"#,
                "host directory",
            ),
            (r#"{"Type":"tmpfs","Target":"/t"}"#, "tmpfs"),
            (r#"{"Type":"npipe","Target":"/t"}"#, "npipe"),
            (
                r#"{"Type":"volume","Source":"v","Target":"/t","VolumeOptions":{"DriverConfig":{"Name":"nfs"}}}"#,
                "nfs",
            ),
        ] {
            let m: serde_json::Value = serde_json::from_str(mount).expect("json");
            let e = parse_mount(&m).expect_err(mount);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{mount}");
            assert!(e.message().contains(says), "{mount}: {}", e.message());
        }
        let r: CreateRequest =
            serde_json::from_str(r#"{"HostConfig":{"Binds":["a:/x","b:/x"]}}"#).expect("parses");
        let e = wanted(&r).expect_err("duplicate");
        assert_eq!(e.message(), "Duplicate mount point: /x");
        let r: CreateRequest =
            serde_json::from_str(r#"{"HostConfig":{"Tmpfs":{"/t":""}}}"#).expect("parses");
        assert!(
            wanted(&r)
                .expect_err("tmpfs")
                .message()
                .contains("\"/t\": tmpfs")
        );
    }

    #[test]
    fn filters_sizes_and_users_read_like_dockers() {
        let v = Volume {
            name: "data-1".into(),
            labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
            used_by: vec!["box (abc123)".into()],
            ..Volume::default()
        };
        let f = |j: &str| Filters::parse(Some(j), false).expect("filters");
        assert!(f(r#"{"name":{"data":true}}"#).matches(&v));
        assert!(!f(r#"{"name":{"other":true}}"#).matches(&v));
        assert!(f(r#"{"label":{"app=web":true}}"#).matches(&v));
        assert!(f(r#"{"label":["app"]}"#).matches(&v));
        assert!(!f(r#"{"label":{"app=db":true}}"#).matches(&v));
        assert!(f(r#"{"dangling":{"false":true}}"#).matches(&v));
        assert!(!f(r#"{"dangling":{"true":true}}"#).matches(&v));
        assert!(Filters::parse(Some(r#"{"driver":["x"]}"#), false).is_err());
        assert!(
            Filters::parse(Some(r#"{"all":["true"]}"#), true)
                .expect("prune")
                .all
        );
        assert_eq!(users(&v), ["abc123"]);
        assert_eq!(size_mib("512m").expect("m"), 512);
        assert_eq!(size_mib("2g").expect("g"), 2048);
        assert_eq!(size_mib("64").expect("plain"), 64);
        assert!(size_mib("lots").is_err() && size_mib("0").is_err());
        // Hidden from the labels docker clients see.
        let prefix = super::super::types::LABEL_PREFIX;
        assert!(BINDS.starts_with(prefix) && CONFIG_VOLUMES.starts_with(prefix));
    }
}
