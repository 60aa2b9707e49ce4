//! The OpenAPI document, generated from the handlers' and types'
//! annotations, served at `/openapi.json` and kept in the repository as
//! `appliance/openapi.json` (a test fails when the two differ).
//!
//! Owns the list of documented routes and schemas and the tags' texts; the
//! per-route texts live with the handlers.

use std::sync::OnceLock;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::openapi::{Content, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::error::{ErrorBody, ErrorCode};
use super::{ApiState, diagnostics, events, exec, interaction, kv, network, storage};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "appliance port layer",
        description = "The port layer of a container runtime in which every container is a \
microVM. Components: `exec` (containers, tasks, handles, Commit), `storage` \
(image stores, images, volume stores, volumes), `network` (scopes, \
endpoints, addresses, ports), `interaction` \
(logs, attach), `events`, `diagnostics`, `kv`.\n\n\
Mutations go through handles: every composition call takes an opaque handle \
and returns a new one; nothing changes until `POST /exec/commit`. Handles are \
sealed (they cannot be forged) and survive appliance restarts.\n\n\
Every error is `{\"code\", \"message\", \"element\"}` with a stable `code`: \
`NOT_FOUND` (404), `CONFLICT` (409, with `current_version` for a stale \
version), `INVALID_ARGUMENT` (400), `BAD_HANDLE` (400), `NAME_TAKEN` (409), \
`METHOD_NOT_ALLOWED` (405), `IN_USE` (409, naming the containers), \
`NO_SPACE` (507), `IMAGE_SOURCE` (502), `EXHAUSTED` (409, a scope with no \
free address), `INTERNAL` (500)."
    ),
    paths(
        exec::create,
        exec::list,
        exec::inspect,
        exec::get_handle,
        exec::task_join,
        exec::task_bind,
        exec::task_unbind,
        exec::task_leave,
        exec::change_state,
        exec::rename,
        exec::commit,
        exec::wait,
        exec::signal,
        exec::remove,
        storage::list_images,
        storage::inspect_image,
        storage::remove_image,
        storage::tag,
        storage::pull,
        storage::import,
        storage::export,
        storage::image_stores,
        storage::add_image_store,
        storage::volume_stores,
        storage::add_volume_store,
        storage::list_volumes,
        storage::create_volume,
        storage::inspect_volume,
        storage::remove_volume,
        storage::volume_join,
        storage::volume_leave,
        storage::archive_get,
        storage::archive_put,
        network::list_scopes,
        network::create_scope,
        network::inspect_scope,
        network::remove_scope,
        network::join,
        network::bind,
        network::unbind,
        network::leave,
        interaction::logs,
        interaction::attach,
        events::events,
        diagnostics::operations,
        diagnostics::operation,
        diagnostics::cancel_operation,
        diagnostics::errors,
        diagnostics::stats,
        diagnostics::logs,
        kv::list,
        kv::get_key,
        kv::put_key,
        kv::delete_key,
        openapi_document,
    ),
    components(schemas(
        ErrorBody,
        ErrorCode,
        interaction::AttachControl,
        interaction::AttachExit,
        interaction::Size,
        events::Event,
        events::EventFormat,
        crate::portlayer::storage::PullEvent,
        Tar,
    )),
    modifiers(&MalformedRequests),
    tags(
        (name = "exec", description = "Containers and their tasks, handles, composition and Commit."),
        (name = "storage", description = "Image stores and images, volume stores and volumes, volume joins."),
        (name = "network", description = "Scopes (networks), endpoints joined to containers, addresses, published ports, outgoing policy."),
        (name = "interaction", description = "Logs and attach: a task's stdin, stdout and stderr."),
        (name = "events", description = "Everything the port layer does, as a filtered stream."),
        (name = "diagnostics", description = "Operations in progress, recorded errors, statistics."),
        (name = "kv", description = "A key/value store for clients, with compare-and-set."),
        (name = "openapi", description = "This document."),
    )
)]
pub struct ApiDoc;

/// A tar stream (`application/x-tar`), uncompressed or gzipped: the body
/// of an import or a copy into a container, the answer of a copy out.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Tar(#[allow(dead_code)] Vec<u8>);

/// Any operation that takes parameters or a body can be sent them
/// malformed (a field of the wrong type, a number out of range, an unknown
/// query parameter, a body that is not JSON): a 400 `INVALID_ARGUMENT`
/// naming the field, which every such operation documents.
struct MalformedRequests;

impl Modify for MalformedRequests {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for item in doc.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let takes_input = op.request_body.is_some()
                    || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                if takes_input {
                    op.responses
                        .responses
                        .entry("400".into())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description(
                                    "Malformed request: a parameter or field of the wrong type \
                                     or out of range, or an unknown one (INVALID_ARGUMENT)",
                                )
                                .content(
                                    "application/json",
                                    Content::new(Some(Ref::from_schema_name("Error"))),
                                )
                                .build()
                                .into()
                        });
                }
            }
        }
    }
}

/// The document as pretty JSON, ending with a newline.
pub fn openapi_json() -> String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut s = ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()));
        s.push('\n');
        s
    })
    .clone()
}

pub fn routes() -> Router<ApiState> {
    Router::new().route("/openapi.json", get(openapi_document))
}

/// This OpenAPI document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "openapi", operation_id = "openapi_document",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
pub async fn openapi_document() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], openapi_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    const COPY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

    #[test]
    fn openapi_copy_is_current() {
        let kept = std::fs::read_to_string(COPY).unwrap_or_default();
        assert!(
            kept == openapi_json(),
            "{COPY} is not the generated document: run `cargo test -p appliance -- --ignored update_openapi`"
        );
    }

    #[test]
    #[ignore = "rewrites appliance/openapi.json"]
    fn update_openapi() {
        std::fs::write(COPY, openapi_json()).unwrap();
    }

    /// What the server does and the document says agree where schemathesis
    /// found them apart.
    #[test]
    fn the_document_says_what_the_server_does() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        // Any operation that takes input can be sent it malformed: a 400.
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                let takes_input = op.get("requestBody").is_some()
                    || op["parameters"].as_array().is_some_and(|p| !p.is_empty());
                if takes_input {
                    assert!(
                        op["responses"].get("400").is_some(),
                        "{method} {path} takes input but documents no 400"
                    );
                }
                // Every parameter in the path is in the path.
                for p in op["parameters"].as_array().into_iter().flatten() {
                    if p["in"] == "path" {
                        let name = p["name"].as_str().unwrap();
                        assert!(
                            path.contains(&format!("{{{name}}}")),
                            "{method} {path}: path parameter {name} is not in the path"
                        );
                    }
                }
            }
        }
        let kv_delete = &doc["paths"]["/kv/{key}"]["delete"]["responses"];
        assert!(kv_delete.get("400").is_some(), "{kv_delete}");
        // The archive bodies are binary.
        for (path, method) in [
            ("/storage/images/import", "post"),
            ("/storage/archive/{id}", "put"),
        ] {
            let schema = &doc["paths"][path][method]["requestBody"]["content"]["application/x-tar"]
                ["schema"];
            let schema = match schema.get("$ref").and_then(|r| r.as_str()) {
                Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap()],
                None => schema,
            };
            assert_eq!(
                (schema["type"].as_str(), schema["format"].as_str()),
                (Some("string"), Some("binary")),
                "{path}: {schema}"
            );
        }
        // A handle is never empty.
        let handle = &doc["components"]["schemas"]["HandleBody"]["properties"]["handle"];
        assert_eq!(handle["minLength"], 1, "{handle}");
    }

    /// The rules the document gives for names and numbers are the port
    /// layer's (`portlayer::validate`): a value fits the schema exactly
    /// when the port layer takes it.
    #[test]
    fn documented_rules_are_the_port_layers() {
        use crate::portlayer::validate;
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let long = "a".repeat(129);
        let label63 = "a".repeat(63);
        let label64 = "a".repeat(64);
        let names = [
            "web",
            "a",
            "0",
            "Web_1.a-b",
            "../../etc",
            "a/b",
            "..",
            ".",
            "-x",
            "_x",
            "a b",
            "a\nb",
            "a\u{1b}b",
            "é",
            "",
            &long,
        ];
        let hosts = [
            "h1",
            "web.example.com",
            "a-b.c",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            "a_b",
            "h1\n6.6.6.6",
            &label63,
            &label64,
            "",
        ];
        type Rule = fn(&str) -> bool;
        let cases: [(&str, &str, Rule, &[&str]); 7] = [
            (
                "CreateSpec",
                "name",
                |v| v.is_empty() || validate::container_name("", v).is_ok(),
                &names,
            ),
            (
                "RenameRequest",
                "name",
                |v| validate::container_name("", v).is_ok(),
                &names,
            ),
            (
                "VolumeSpec",
                "name",
                |v| v.is_empty() || validate::volume_name("", v).is_ok(),
                &names,
            ),
            (
                "StoreRequest",
                "name",
                |v| validate::store_name("", v).is_ok(),
                &names,
            ),
            (
                "ScopeSpec",
                "name",
                |v| validate::scope_name("", v).is_ok(),
                &names,
            ),
            (
                "Task",
                "id",
                |v| v.is_empty() || validate::task_id("", v).is_ok(),
                &names,
            ),
            (
                "CreateSpec",
                "hostname",
                |v| v.is_empty() || validate::hostname("", v).is_ok(),
                &hosts,
            ),
        ];
        for (schema, field, rule, samples) in cases {
            let prop = &schemas[schema]["properties"][field];
            let pattern = prop["pattern"]
                .as_str()
                .unwrap_or_else(|| panic!("{schema}.{field} has no pattern: {prop}"));
            let re = regex::Regex::new(pattern).unwrap();
            let max = prop["maxLength"].as_u64().unwrap_or(u64::MAX);
            for v in samples {
                let fits = re.is_match(v) && v.chars().count() as u64 <= max;
                assert_eq!(
                    fits,
                    rule(v),
                    "{schema}.{field} = {v:?} (pattern {pattern})"
                );
            }
        }
        let spec = &schemas["CreateSpec"]["properties"];
        assert_eq!(spec["memory_mib"]["maximum"], validate::MEMORY_MIB_MAX);
        assert_eq!(spec["cpus"]["maximum"], validate::CPUS_MAX);
        assert_eq!(spec["stop_signal"]["maximum"], validate::SIGNAL_MAX);
        assert_eq!(spec["stop_signal"]["minimum"], 0);
        let signal = &schemas["SignalRequest"]["properties"]["signal"];
        assert_eq!(
            (signal["minimum"].as_i64(), signal["maximum"].as_i64()),
            (Some(1), Some(64))
        );
        let path = &schemas["StoreRequest"]["properties"]["path"];
        assert_eq!(path["pattern"], "^/", "{path}");
        for side in ["rows", "cols"] {
            let n = &schemas["TtySize"]["properties"][side];
            assert_eq!(
                (n["minimum"].as_u64(), n["maximum"].as_u64()),
                (Some(1), Some(u64::from(validate::TTY_CELLS_MAX))),
                "TtySize.{side}: {n}"
            );
        }
    }

    #[test]
    fn components_keep_one_name_across_routes_and_tags() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (path, item) in paths {
            for (_method, op) in item.as_object().unwrap() {
                let tag = op["tags"][0].as_str().unwrap_or_default();
                let first = path.trim_start_matches('/').split('/').next().unwrap();
                let first = first.trim_end_matches(".json");
                assert_eq!(tag, first, "{path} is tagged {tag}");
            }
        }
        let mut ids: Vec<&str> = paths
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .map(|op| op["operationId"].as_str().unwrap())
            .collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "operation ids are unique");
        let commit = &doc["paths"]["/exec/commit"]["post"]["description"];
        assert!(commit.as_str().unwrap().contains("Idempotency"), "{commit}");
    }
}
