//! Schemathesis against the port layer's own OpenAPI document: generated
//! requests (valid and invalid, a bounded number per operation) for every
//! documented operation, checking that the server never fails with a 5xx
//! and answers with the statuses, content types and bodies the document
//! declares.
//!
//! `appliance serve --tcp 127.0.0.1:PORT` runs in a network namespace of
//! its own (so that whatever scopes the run creates stay there), and
//! schemathesis (from PyPI, pinned, installed by `make deps` into
//! /opt/appliance-venv) runs in the same namespace. The hooks in
//! `tests/schemathesis/hooks.py` keep the stores it adds inside this test's
//! directory and the volumes it makes small.
//!
//! Left out, each for a reason the document cannot change:
//! - `GET /events`: an endless stream (Server-Sent Events); schemathesis
//!   reads a response to its end.
//! - `POST /storage/images/pull`: it fetches from the registry the
//!   reference names, which is off this machine; and a registry that cannot
//!   be reached is a 502 by design (`IMAGE_SOURCE`), which
//!   `not_a_server_error` counts as the server's fault.
//! - The stateful phase: it chains responses into requests (a creation's
//!   handle into `POST /exec/commit`, then a start), which would boot
//!   container VMs. Without it no handle can be had (they are sealed), so no
//!   request of the run starts a VM; creating containers (a handle, nothing
//!   committed), storage, network, kv and diagnostics are all covered.

use std::path::Path;
use std::process::Command;

use tests::netns::Netns;
use tests::server::Server;

/// Where `.ci/deps` installs schemathesis.
const SCHEMATHESIS: &str = "/opt/appliance-venv/bin/schemathesis";
/// The namespace is the test's own, so any port is free in it.
const ADDR: &str = "127.0.0.1:18080";
/// The checks the server is held to.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

#[test]
fn the_server_answers_as_its_openapi_document_says() {
    assert!(
        Path::new(SCHEMATHESIS).exists(),
        "{SCHEMATHESIS} is missing: run `make deps`, which installs schemathesis into /opt/appliance-venv"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let stores = dir.path().join("stores");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::create_dir_all(&stores).expect("stores dir");
    let ns = Netns::new("st");
    let server = Server::start_tcp(&state, Some(&ns), ADDR.parse().expect("address"));
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis/hooks.py");
    // Reproducible and bounded by default (about half a minute); another
    // seed or more examples explore further.
    let seed = std::env::var("APPLIANCE_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let examples = std::env::var("APPLIANCE_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "30".into());
    let url = format!("http://{ADDR}/openapi.json");
    let started = std::time::Instant::now();
    let out: std::process::Output = {
        let mut c: Command = ns.command(&[
            "timeout",
            "600",
            SCHEMATHESIS,
            "run",
            &url,
            "--checks",
            CHECKS,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            &examples,
            "--workers",
            "2",
            "--seed",
            &seed,
            "--request-timeout",
            "60",
            "--exclude-path",
            "/events",
            "--exclude-path",
            "/storage/images/pull",
            "--no-color",
        ]);
        // Its caches (crashes to replay) go to the test's directory, not
        // the repository.
        c.current_dir(dir.path())
            .env("SCHEMATHESIS_HOOKS", &hooks)
            .env("APPLIANCE_SCHEMATHESIS_ROOT", &stores)
            .output()
            .expect("running schemathesis")
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    println!("schemathesis took {:?}", started.elapsed());
    let log = std::fs::read_to_string(state.join("serve.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "schemathesis found the server and its document disagreeing (status {:?}):\n{text}\nserve.log:\n{log}",
        out.status.code()
    );
    // The run reached the server: it tested operations and passed them.
    assert!(text.contains("passed"), "{text}");
    drop(server);
}
