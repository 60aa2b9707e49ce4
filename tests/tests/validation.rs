//! What a caller names and asks for is refused at the port layer's edge,
//! end to end: `appliance serve` as its own process, driven by the CLI and
//! by raw HTTP on its socket. Nothing here boots a VM: every request is
//! refused before anything is made.

use tests::server::{Server, stderr, stdout};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn bad_names_and_values_are_refused_naming_the_field_and_leave_nothing() {
    let d = tempfile::tempdir().expect("tempdir");
    let s = Server::start(d.path());

    for (args, says) in [
        (
            vec!["create", "--name", "../../etc", "busybox", "--", "true"],
            "name: \"../../etc\" is not a valid container name",
        ),
        (
            vec![
                "create",
                "--hostname",
                "h1\n6.6.6.6 evil.example",
                "busybox",
                "--",
                "true",
            ],
            "hostname: \"h1\\n6.6.6.6 evil.example\" is not a valid hostname (RFC 1123)",
        ),
        (
            vec!["create", "--memory", "2147483647", "busybox", "--", "true"],
            "memory_mib: 2147483647 MiB is not between",
        ),
        (
            vec!["create", "-l", "../../x=1", "busybox", "--", "true"],
            "labels: \"../../x\" is not a valid label key",
        ),
        (
            vec!["volume", "create", "../../x"],
            "name: \"../../x\" is not a valid volume name",
        ),
        (
            vec!["tag", "busybox", "../../etc:x"],
            "name: \"../../etc:x\" is not a valid image reference",
        ),
    ] {
        let o = s.cli(&args);
        assert!(!o.status.success(), "{args:?} was taken: {}", stdout(&o));
        let err = stderr(&o);
        assert!(
            err.contains(says) && err.contains("code INVALID_ARGUMENT"),
            "{args:?}: {err}"
        );
        // The newline is shown escaped: the message is one line.
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let ps = s.cli(&["ps", "-a", "-q"]);
    assert_eq!(stdout(&ps).trim(), "", "a refused create left a container");

    // Stores: a name with `..`, a path that is a file.
    let stores = d.path().join("elsewhere");
    let (code, body) = s.http(
        "POST",
        "/storage/volume-stores",
        Some(&format!(
            r#"{{"name": "../../etc", "path": "{}"}}"#,
            stores.display()
        )),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(json(&body)["element"], "name", "{body}");
    assert!(!stores.exists(), "a refused store made its directory");
    let (code, body) = s.http(
        "POST",
        "/storage/image-stores",
        Some(r#"{"name": "f", "path": "/etc/passwd"}"#),
    );
    assert_eq!(code, 400, "{body}");
    let e = json(&body);
    assert_eq!(
        (e["code"].as_str(), e["element"].as_str()),
        (Some("INVALID_ARGUMENT"), Some("path"))
    );
    let (_, listed) = s.http("GET", "/storage/volume-stores", None);
    assert_eq!(json(&listed).as_array().map(Vec::len), Some(1), "{listed}");

    // An upload that is not an image archive: the client's fault.
    let not_tar = d.path().join("not.tar");
    std::fs::write(&not_tar, b"not a tar\n".repeat(200)).expect("write");
    let o = s.cli(&["import", &not_tar.to_string_lossy()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("element archive, code INVALID_ARGUMENT"),
        "{}",
        stderr(&o)
    );
}
