//! The `network` component over REST: scopes (create, list, inspect,
//! remove) and the endpoint compositions on handles (join, bind, unbind,
//! leave), committed with `POST /exec/commit` like every other change.
//!
//! Owns the routes and their request types; the rules are the port
//! layer's (`portlayer::network`).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::error::{ApiError, ErrorBody};
use super::exec::HandleBody;
use super::extract::{JsonBody, PathArgs, QueryArgs};
use crate::portlayer::model::{Endpoint, OutgoingRule, PublishedPort, Scope};
use crate::portlayer::network::ScopeSpec;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/network/scopes", get(list_scopes).post(create_scope))
        .route(
            "/network/scopes/{name}",
            get(inspect_scope).delete(remove_scope),
        )
        .route("/network/handles/join", post(join))
        .route("/network/handles/bind", post(bind))
        .route("/network/handles/unbind", post(unbind))
        .route("/network/handles/leave", post(leave))
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ScopeListQuery {
    /// Filterspec over `name`, `kind`, `subnet`, `bridge`, `default` and
    /// `label.<key>`; scopes labelled `system.hidden` are hidden unless the
    /// filter names that label.
    pub filter: String,
}

/// Lists scopes (networks).
#[utoipa::path(
    get, path = "/network/scopes", tag = "network", operation_id = "network_list_scopes",
    params(ScopeListQuery),
    responses(
        (status = 200, description = "The matching scopes", body = Vec<Scope>),
        (status = 400, description = "Invalid filter (INVALID_ARGUMENT)", body = ErrorBody),
    )
)]
pub async fn list_scopes(
    State(s): State<ApiState>,
    QueryArgs(q): QueryArgs<ScopeListQuery>,
) -> Result<axum::Json<Vec<Scope>>, ApiError> {
    let scopes =
        s.pl.off(move |pl| Ok(pl.network.scopes(&q.filter)?))
            .await?;
    Ok(axum::Json(scopes))
}

/// Creates a scope: `bridge` (a host bridge of its own, NAT out when
/// `outgoing`), `external` (an existing host bridge, no NAT) or `closed`
/// (members reach each other only). Subnets may not overlap.
#[utoipa::path(
    post, path = "/network/scopes", tag = "network", operation_id = "network_create_scope",
    request_body = ScopeSpec,
    responses(
        (status = 201, description = "The scope", body = Scope),
        (status = 400, description = "Bad name, subnet, gateway, range or MTU (INVALID_ARGUMENT)", body = ErrorBody),
        (status = 409, description = "The name is taken, or the subnet overlaps the scope named in `element` (CONFLICT)", body = ErrorBody),
    )
)]
pub async fn create_scope(
    State(s): State<ApiState>,
    JsonBody(spec): JsonBody<ScopeSpec>,
) -> Result<(StatusCode, axum::Json<Scope>), ApiError> {
    let scope =
        s.pl.off(move |pl| Ok(pl.network.create_scope(&spec)?))
            .await?;
    s.pl.apply_network().await?;
    Ok((StatusCode::CREATED, axum::Json(scope)))
}

/// One scope.
#[utoipa::path(
    get, path = "/network/scopes/{name}", tag = "network", operation_id = "network_inspect_scope",
    params(("name" = String, Path, description = "Scope name")),
    responses(
        (status = 200, description = "The scope", body = Scope),
        (status = 404, description = "No such scope (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn inspect_scope(
    State(s): State<ApiState>,
    PathArgs(name): PathArgs<String>,
) -> Result<axum::Json<Scope>, ApiError> {
    Ok(axum::Json(
        s.pl.off(move |pl| Ok(pl.network.scope(&name)?)).await?,
    ))
}

/// Removes a scope, its bridge and rules. Refused while containers are
/// members (IN_USE names them).
#[utoipa::path(
    delete, path = "/network/scopes/{name}", tag = "network", operation_id = "network_remove_scope",
    params(("name" = String, Path, description = "Scope name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such scope (NOT_FOUND)", body = ErrorBody),
        (status = 409, description = "Containers are members (IN_USE)", body = ErrorBody),
    )
)]
pub async fn remove_scope(
    State(s): State<ApiState>,
    PathArgs(name): PathArgs<String>,
) -> Result<StatusCode, ApiError> {
    s.pl.off(move |pl| Ok(pl.network.remove_scope(&name)?))
        .await?;
    s.pl.apply_network().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct JoinRequest {
    #[schema(min_length = 1)]
    pub handle: String,
    pub scope: String,
    /// Names other members resolve to it, besides its name.
    pub aliases: Vec<String>,
    /// A static address in the scope's range.
    pub ip: String,
    /// "PORT[/tcp|/udp]".
    pub exposed: Vec<String>,
    pub published: Vec<PublishedPort>,
    /// Outgoing policy: targets allowed or denied, first match wins.
    pub outgoing: Vec<OutgoingRule>,
}

/// Joins the container to a scope (an endpoint, not yet active: bind it).
/// A running container cannot take a NIC: its commit answers ERROR for the
/// endpoint; stop it first.
#[utoipa::path(
    post, path = "/network/handles/join", tag = "network", operation_id = "network_join",
    request_body = JoinRequest,
    responses(
        (status = 200, description = "The new handle", body = HandleBody),
        (status = 400, description = "Bad handle, alias, address, port or policy (INVALID_ARGUMENT, BAD_HANDLE)", body = ErrorBody),
        (status = 404, description = "No such scope (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn join(
    State(s): State<ApiState>,
    JsonBody(r): JsonBody<JoinRequest>,
) -> Result<axum::Json<HandleBody>, ApiError> {
    let endpoint = Endpoint {
        scope: r.scope,
        aliases: r.aliases,
        requested_ip: r.ip,
        exposed: r.exposed,
        published: r.published,
        outgoing: r.outgoing,
        ..Default::default()
    };
    // Checked against the scope now, so a bad join fails here, not at
    // Commit.
    let handle =
        s.pl.off(move |pl| {
            pl.network.check_join(&endpoint)?;
            pl.network_join(&r.handle, endpoint)
        })
        .await?;
    Ok(axum::Json(HandleBody { handle }))
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeRequest {
    #[schema(min_length = 1)]
    pub handle: String,
    pub scope: String,
}

/// Activates the endpoint: Commit leases its address (EXHAUSTED names a
/// full scope) and publishes its ports (IN_USE names the holder of a host
/// port).
#[utoipa::path(
    post, path = "/network/handles/bind", tag = "network", operation_id = "network_bind",
    request_body = ScopeRequest,
    responses(
        (status = 200, description = "The new handle", body = HandleBody),
        (status = 400, description = "Bad handle (BAD_HANDLE)", body = ErrorBody),
    )
)]
pub async fn bind(
    State(s): State<ApiState>,
    JsonBody(r): JsonBody<ScopeRequest>,
) -> Result<axum::Json<HandleBody>, ApiError> {
    Ok(axum::Json(HandleBody {
        handle: s.pl.network_bind(&r.handle, &r.scope)?,
    }))
}

/// Deactivates the endpoint: its address and host ports are released.
#[utoipa::path(
    post, path = "/network/handles/unbind", tag = "network", operation_id = "network_unbind",
    request_body = ScopeRequest,
    responses(
        (status = 200, description = "The new handle", body = HandleBody),
        (status = 400, description = "Bad handle (BAD_HANDLE)", body = ErrorBody),
    )
)]
pub async fn unbind(
    State(s): State<ApiState>,
    JsonBody(r): JsonBody<ScopeRequest>,
) -> Result<axum::Json<HandleBody>, ApiError> {
    Ok(axum::Json(HandleBody {
        handle: s.pl.network_unbind(&r.handle, &r.scope)?,
    }))
}

/// Removes the endpoint.
#[utoipa::path(
    post, path = "/network/handles/leave", tag = "network", operation_id = "network_leave",
    request_body = ScopeRequest,
    responses(
        (status = 200, description = "The new handle", body = HandleBody),
        (status = 400, description = "Bad handle (BAD_HANDLE)", body = ErrorBody),
    )
)]
pub async fn leave(
    State(s): State<ApiState>,
    JsonBody(r): JsonBody<ScopeRequest>,
) -> Result<axum::Json<HandleBody>, ApiError> {
    Ok(axum::Json(HandleBody {
        handle: s.pl.network_leave(&r.handle, &r.scope)?,
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testutil::*;
    use axum::http::StatusCode;

    /// Scope names and aliases follow the container-name rule; labels and
    /// a host bridge's name have theirs.
    #[tokio::test]
    async fn bad_scope_names_and_aliases_are_400_naming_the_field() {
        let h = Harness::new();
        for (body, element, says) in [
            (
                json!({"name": "../../x"}),
                "name",
                "name: \"../../x\" is not a valid scope name",
            ),
            (
                json!({"name": "-x"}),
                "name",
                "name: \"-x\" is not a valid scope name",
            ),
            (
                json!({"name": "_x"}),
                "name",
                "name: \"_x\" is not a valid scope name",
            ),
            (
                json!({"name": "a\nb"}),
                "name",
                "name: \"a\\nb\" is not a valid scope name",
            ),
            (
                json!({"name": "n", "labels": {"../x": ""}}),
                "labels",
                "labels: \"../x\" is not a valid label key",
            ),
            (
                json!({"name": "n", "kind": "external", "bridge": "br0 x"}),
                "bridge",
                "bridge: \"br0 x\" is not a network interface name",
            ),
        ] {
            let (st, e) = h.call("POST", "/network/scopes", Some(body.clone())).await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {e}");
            assert_eq!(e["element"], element, "{body}: {e}");
            assert!(e["message"].as_str().unwrap().starts_with(says), "{e}");
        }
        let (st, e) = h
            .call("POST", "/network/scopes", Some(json!({"name": "n1"})))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{e}");
        let id = h.create("web").await;
        let (_, hc) = h
            .call("GET", &format!("/exec/containers/{id}/handle"), None)
            .await;
        for bad in ["_a", "a b", "a\n6.6.6.6", "../x"] {
            let (st, e) = h
                .call(
                    "POST",
                    "/network/handles/join",
                    Some(json!({"handle": hc["handle"], "scope": "n1", "aliases": ["db", bad]})),
                )
                .await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{bad:?}: {e}");
            assert_eq!(e["element"], "aliases[1]", "{e}");
            assert!(
                e["message"]
                    .as_str()
                    .unwrap()
                    .contains("is not a valid network alias"),
                "{e}"
            );
        }
        let (st, e) = h
            .call(
                "POST",
                "/network/handles/join",
                Some(json!({"handle": hc["handle"], "scope": "n1", "aliases": ["db", "db.local", "Web-1"]})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{e}");
    }

    /// The port-layer seed's `AddContainerToNetwork`, over REST: get a
    /// handle on the container, join the network, bind, commit.
    #[tokio::test]
    async fn add_container_to_network_as_the_seed_writes_it() {
        let h = Harness::new();
        let (st, scope) = h
            .call(
                "POST",
                "/network/scopes",
                Some(json!({"name": "gibson_network"})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{scope}");
        let (st, created) = h
            .call(
                "POST",
                "/exec/containers",
                Some(json!({"name": "cookie_monster", "image": "busybox", "task": {"args": ["true"]}})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{created}");
        let (st, _) = h
            .call(
                "POST",
                "/exec/commit",
                Some(json!({"handle": created["handle"]})),
            )
            .await;
        assert_eq!(st, StatusCode::OK);

        let (_, hc) = h
            .call("GET", "/exec/containers/cookie_monster/handle", None)
            .await;
        let (_, hn) = h.call("GET", "/network/scopes/gibson_network", None).await;
        assert_eq!(hn["name"], "gibson_network");
        let (st, joined) = h
            .call(
                "POST",
                "/network/handles/join",
                Some(json!({"handle": hc["handle"], "scope": "gibson_network"})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{joined}");
        let (_, bound) = h
            .call(
                "POST",
                "/network/handles/bind",
                Some(json!({"handle": joined["handle"], "scope": "gibson_network"})),
            )
            .await;
        let (st, r) = h
            .call(
                "POST",
                "/exec/commit",
                Some(json!({"handle": bound["handle"]})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{r}");
        let id = created["id"].as_str().unwrap();
        assert_eq!(
            r["results"][format!("{id}/network/gibson_network")]["status"],
            "SUCCESS"
        );
        let (_, c) = h.call("GET", "/exec/containers/cookie_monster", None).await;
        let e = &c["endpoints"]["gibson_network"];
        assert_eq!(e["address"], "10.88.1.2/24", "{c}");
        assert_eq!(e["bound"], true);

        // Bad input is refused at join, naming the endpoint.
        let (_, hc) = h
            .call("GET", "/exec/containers/cookie_monster/handle", None)
            .await;
        let (st, err) = h
            .call(
                "POST",
                "/network/handles/join",
                Some(json!({"handle": hc["handle"], "scope": "gibson_network", "outgoing": [{"constraint": "denied", "target": "tcp:nowhere"}]})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{err}");
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains("not an IPv4 address"),
            "{err}"
        );
        // An in-use scope is not removed; an overlapping one not created.
        let (st, err) = h
            .call("DELETE", "/network/scopes/gibson_network", None)
            .await;
        assert_eq!(
            (st, err["code"].as_str()),
            (StatusCode::CONFLICT, Some("IN_USE")),
            "{err}"
        );
        let (st, err) = h
            .call(
                "POST",
                "/network/scopes",
                Some(json!({"name": "other", "subnet": "10.88.1.0/25"})),
            )
            .await;
        assert_eq!(
            (st, err["element"].as_str()),
            (StatusCode::CONFLICT, Some("gibson_network")),
            "{err}"
        );
    }
}
