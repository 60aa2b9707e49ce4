//! Docker networks and published ports end to end: the real docker CLI
//! against `appliance serve --docker-socket` running inside a network
//! namespace of the test's own (the CLI stays outside, on the unix
//! socket), with real container VMs (TCG).

use std::process::Command;

use tests::docker::Docker;
use tests::netns::Netns;
use tests::server::{stderr, stdout};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("JSON {s:?}: {e}"))
}

/// `docker ARGS` that must fail: its stderr.
fn fails(d: &Docker, args: &[&str]) -> String {
    let o = d.run(args);
    assert_ne!(
        o.status.code(),
        Some(0),
        "docker {args:?} succeeded: {}",
        stdout(&o)
    );
    stderr(&o)
}

/// A raw Docker API call over the socket: (status, body).
fn api(d: &Docker, method: &str, path: &str, body: &str) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(&d.socket)
        .args(["-X", method, "-H", "Content-Type: application/json"])
        .args(["-d", body])
        .arg(format!("http://docker/v1.45{path}"))
        .output()
        .expect("curl");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_string())
}

/// What a TCP client in the namespace reads first from `host:port` (empty
/// if it cannot connect).
fn nc_from(ns: &Netns, host: &str, port: &str) -> String {
    let code = format!(
        "import socket\ntry:\n    s = socket.create_connection(({host:?}, {port}), 10)\n    \
         print(s.recv(200).decode().strip())\nexcept OSError:\n    pass"
    );
    let o = ns.run(&["python3", "-c", &code]);
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// What the namespace reads once the container answers there
/// (it boots meanwhile): tried for up to a minute.
fn answer_from(ns: &Netns, host: &str, port: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let got = nc_from(ns, host, port);
        if !got.is_empty() || std::time::Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn server_script(name: &str) -> String {
    format!("while true; do echo hi-from-{name} | nc -l -p 80; done")
}

#[test]
fn networks_resolve_members_by_name_refuse_removal_in_use_and_connect_stopped_containers() {
    let ns = Netns::new("dnet");
    let d = Docker::start_full(Some(&ns), &[]);

    // The predefined network, and a user network.
    let ls = d.ok(&[
        "network",
        "ls",
        "--format",
        "{{.Name}} {{.Driver}} {{.Scope}}",
    ]);
    assert_eq!(ls.trim(), "bridge bridge local", "{ls}");
    let e = fails(&d, &["network", "rm", "bridge"]);
    assert!(
        e.contains("bridge is a pre-defined network and cannot be removed"),
        "{e}"
    );
    let id = d.ok(&[
        "network",
        "create",
        "--subnet",
        "10.77.5.0/24",
        "--gateway",
        "10.77.5.1",
        "--label",
        "team=a",
        "appnet",
    ]);
    assert_eq!(id.trim().len(), 64, "an id: {id}");
    let e = fails(&d, &["network", "create", "appnet"]);
    assert!(e.contains("network with name appnet already exists"), "{e}");
    let ls = d.ok(&["network", "ls", "-q", "--filter", "label=team=a"]);
    assert_eq!(ls.trim(), &id.trim()[..12], "filtered by label");
    let ls = d.ok(&[
        "network",
        "ls",
        "--format",
        "{{.Name}}",
        "--filter",
        "name=app",
    ]);
    assert_eq!(ls.trim(), "appnet");
    let n = json(&d.ok(&["network", "inspect", "appnet"]));
    let n = &n[0];
    assert_eq!(n["Id"], id.trim());
    assert_eq!(n["Driver"], "bridge");
    assert_eq!(n["Scope"], "local");
    assert_eq!(n["Internal"], false);
    assert_eq!(n["Labels"]["team"], "a");
    assert_eq!(n["IPAM"]["Config"][0]["Subnet"], "10.77.5.0/24");
    assert_eq!(n["IPAM"]["Config"][0]["Gateway"], "10.77.5.1");
    // By id prefix too.
    let by_id = json(&d.ok(&["network", "inspect", &id.trim()[..10]]));
    assert_eq!(by_id[0]["Name"], "appnet");

    // A member answers by its name and its alias.
    let srv = d.ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--network",
        "appnet",
        "--network-alias",
        "db",
        "busybox",
        "sh",
        "-c",
        &server_script("srv"),
    ]);
    let srv = srv.trim();
    let o = d.run(&[
        "run",
        "--rm",
        "--network",
        "appnet",
        "busybox",
        "sh",
        "-c",
        // srv may still be booting, and between two answers its loop
        // starts the next listener: each is tried for up to a minute.
        "for h in srv db; do for i in $(seq 60); do \
             nc -w 10 $h 80 </dev/null && break; sleep 1; done; done",
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "hi-from-srv\nhi-from-srv\n");

    let i = json(&d.ok(&["inspect", "srv"]));
    let i = &i[0];
    assert_eq!(i["HostConfig"]["NetworkMode"], "appnet");
    let net = &i["NetworkSettings"]["Networks"]["appnet"];
    let ip = net["IPAddress"].as_str().expect("IPAddress").to_string();
    assert!(ip.starts_with("10.77.5."), "{i}");
    assert_eq!(net["Gateway"], "10.77.5.1");
    assert_eq!(net["NetworkID"], id.trim());
    assert!(
        net["Aliases"]
            .as_array()
            .expect("aliases")
            .contains(&"db".into()),
        "{net}"
    );
    assert_eq!(i["NetworkSettings"]["IPAddress"], ip.as_str());
    assert_eq!(i["NetworkSettings"]["IPPrefixLen"], 24);
    assert!(!net["MacAddress"].as_str().unwrap_or_default().is_empty());
    let fmt = d.ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        "srv",
    ]);
    assert_eq!(fmt.trim(), ip);
    let n = json(&d.ok(&["network", "inspect", "appnet"]));
    let member = &n[0]["Containers"][srv];
    assert_eq!(member["Name"], "srv", "{n}");
    assert_eq!(member["IPv4Address"], format!("{ip}/24"));

    // In use: Docker's refusal, and the network stays.
    let e = fails(&d, &["network", "rm", "appnet"]);
    assert!(
        e.contains(&format!(
            "error while removing network: network appnet id {} has active endpoints",
            id.trim()
        )),
        "{e}"
    );
    // A running container's VM cannot take a NIC: said, nothing changes.
    let e = fails(&d, &["network", "connect", "bridge", "srv"]);
    assert!(
        e.contains("the container is running") && e.contains("stop it first"),
        "{e}"
    );
    let i = json(&d.ok(&["inspect", "srv"]));
    assert!(i[0]["NetworkSettings"]["Networks"].get("bridge").is_none());

    // Unknown networks and modes this appliance cannot give: nothing made.
    let before = d.ok(&["ps", "-a", "-q"]);
    // (Docker's 404: the CLI takes any 404 of create for a missing image
    // and pulls, so the status is checked on the API.)
    let (status, answer) = api(
        &d,
        "POST",
        "/containers/create?name=lost",
        r#"{"Image":"busybox","HostConfig":{"NetworkMode":"nosuch"}}"#,
    );
    assert_eq!(
        (status, answer.trim()),
        (404, r#"{"message":"network nosuch not found"}"#)
    );
    let e = fails(&d, &["create", "--network", "host", "busybox", "true"]);
    assert!(e.contains("Network mode host is not supported"), "{e}");
    let e = fails(
        &d,
        &["create", "--network", "container:srv", "busybox", "true"],
    );
    assert!(e.contains("container:srv is not supported"), "{e}");
    assert_eq!(d.ok(&["ps", "-a", "-q"]), before, "nothing was created");

    // A stopped container is connected and disconnected.
    d.ok(&[
        "create",
        "--name",
        "lone",
        "--network",
        "none",
        "busybox",
        "true",
    ]);
    let i = json(&d.ok(&["inspect", "lone"]));
    assert_eq!(i[0]["HostConfig"]["NetworkMode"], "none");
    assert_eq!(i[0]["NetworkSettings"]["Networks"], serde_json::json!({}));
    d.ok(&["network", "connect", "--alias", "solo", "appnet", "lone"]);
    let i = json(&d.ok(&["inspect", "lone"]));
    let net = &i[0]["NetworkSettings"]["Networks"]["appnet"];
    assert!(
        net["IPAddress"]
            .as_str()
            .expect("ip")
            .starts_with("10.77.5."),
        "{net}"
    );
    assert!(
        net["Aliases"]
            .as_array()
            .expect("aliases")
            .contains(&"solo".into())
    );
    let e = fails(&d, &["network", "connect", "appnet", "lone"]);
    assert!(e.contains("already exists in network appnet"), "{e}");
    d.ok(&["network", "disconnect", "appnet", "lone"]);
    let i = json(&d.ok(&["inspect", "lone"]));
    assert_eq!(i[0]["NetworkSettings"]["Networks"], serde_json::json!({}));
    let e = fails(&d, &["network", "disconnect", "appnet", "lone"]);
    assert!(e.contains("is not connected to network appnet"), "{e}");

    // A static address, and an internal network.
    d.ok(&[
        "create",
        "--name",
        "fixed",
        "--network",
        "appnet",
        "--ip",
        "10.77.5.50",
        "busybox",
        "true",
    ]);
    let i = json(&d.ok(&["inspect", "fixed"]));
    let net = &i[0]["NetworkSettings"]["Networks"]["appnet"];
    assert_eq!(net["IPAddress"], "10.77.5.50", "{net}");
    assert_eq!(net["IPAMConfig"]["IPv4Address"], "10.77.5.50", "{net}");
    d.ok(&["network", "create", "--internal", "sealed"]);
    let n = json(&d.ok(&["network", "inspect", "sealed"]));
    assert_eq!(n[0]["Internal"], true, "{n}");

    // Prune removes the unused user networks only.
    d.ok(&["network", "create", "spare"]);
    let pruned = d.ok(&["network", "prune", "-f"]);
    assert!(
        pruned.contains("spare") && pruned.contains("sealed"),
        "{pruned}"
    );
    let ls = d.ok(&["network", "ls", "--format", "{{.Name}}"]);
    let names: Vec<&str> = ls.lines().collect();
    assert_eq!(names, ["appnet", "bridge"], "{ls}");

    d.ok(&["rm", "-f", "srv", "lone", "fixed"]);
    d.ok(&["network", "rm", "appnet"]);
    let e = fails(&d, &["network", "inspect", "appnet"]);
    assert!(e.contains("network appnet not found"), "{e}");
}

#[test]
fn published_ports_are_reached_from_the_namespace_and_shown_by_port_ps_and_inspect() {
    let ns = Netns::new("dport");
    // Published ports on 127.0.0.1 are DNAT'd from loopback.
    ns.run_ok(&["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"]);
    let d = Docker::start_full(Some(&ns), &[]);

    // Without --network: the default bridge, as Docker's.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8080:80",
        "-p",
        "127.0.0.1:8081:80/tcp",
        "-p",
        "80",
        "--expose",
        "90",
        "busybox",
        "sh",
        "-c",
        &server_script("web"),
    ]);
    let i = json(&d.ok(&["inspect", "web"]));
    let i = &i[0];
    assert_eq!(i["HostConfig"]["NetworkMode"], "bridge");
    let bridge = &i["NetworkSettings"]["Networks"]["bridge"];
    assert!(
        bridge["IPAddress"]
            .as_str()
            .expect("ip")
            .starts_with("10.88.0."),
        "{i}"
    );
    let bound = i["NetworkSettings"]["Ports"]["80/tcp"]
        .as_array()
        .expect("80/tcp bound")
        .clone();
    assert_eq!(bound.len(), 3, "{bound:?}");
    assert_eq!(
        bound[0],
        serde_json::json!({"HostIp": "0.0.0.0", "HostPort": "8080"})
    );
    assert_eq!(
        bound[1],
        serde_json::json!({"HostIp": "127.0.0.1", "HostPort": "8081"})
    );
    let ephemeral = bound[2]["HostPort"].as_str().expect("port").to_string();
    let e: u16 = ephemeral.parse().expect("a port");
    assert!((32768..=60999).contains(&e), "{ephemeral}");
    assert_eq!(
        i["NetworkSettings"]["Ports"]["90/tcp"],
        serde_json::Value::Null
    );
    assert_eq!(
        i["HostConfig"]["PortBindings"]["80/tcp"][1],
        serde_json::json!({"HostIp": "127.0.0.1", "HostPort": "8081"})
    );

    let port = d.ok(&["port", "web"]);
    let mut lines: Vec<&str> = port.lines().collect();
    lines.sort();
    let mut want = vec![
        "80/tcp -> 0.0.0.0:8080".to_string(),
        "80/tcp -> 127.0.0.1:8081".to_string(),
        format!("80/tcp -> 0.0.0.0:{ephemeral}"),
    ];
    want.sort();
    assert_eq!(lines, want, "{port}");
    assert_eq!(d.ok(&["port", "web", "80"]).lines().count(), 3);
    let ps = d.ok(&["ps", "--format", "{{.Names}} {{.Ports}}"]);
    assert!(ps.contains("0.0.0.0:8080->80/tcp"), "{ps}");
    assert!(ps.contains("127.0.0.1:8081->80/tcp"), "{ps}");
    assert!(ps.contains("90/tcp"), "{ps}");

    // Reached from the server's namespace, on each published port.
    assert_eq!(answer_from(&ns, "127.0.0.1", "8080"), "hi-from-web");
    assert_eq!(answer_from(&ns, "127.0.0.1", "8081"), "hi-from-web");
    assert_eq!(answer_from(&ns, "127.0.0.1", &ephemeral), "hi-from-web");

    // -P publishes every exposed port on a host port of its own (a
    // created container holds its ports already).
    d.ok(&[
        "create", "--name", "all", "-P", "--expose", "7000", "--expose", "7001/udp", "busybox",
        "true",
    ]);
    let port = d.ok(&["port", "all"]);
    let mut lines: Vec<&str> = port.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 2, "{port}");
    assert!(lines[0].starts_with("7000/tcp -> 0.0.0.0:"), "{port}");
    assert!(lines[1].starts_with("7001/udp -> 0.0.0.0:"), "{port}");
    assert!(
        !port.contains(&format!(":{ephemeral}\n")),
        "a port of its own: {port}"
    );

    // A host port held by another container: refused, nothing created.
    let before = d.ok(&["ps", "-a", "-q"]);
    let e = fails(&d, &["create", "-p", "8080:80", "busybox", "true"]);
    assert!(e.contains("8080"), "{e}");
    assert_eq!(d.ok(&["ps", "-a", "-q"]), before);

    // Bad specs that reach the server are Docker-shaped 400s naming the
    // spec; nothing is created.
    for (body, says) in [
        (
            r#"{"Image":"busybox","HostConfig":{"PortBindings":{"80/tcp":[{"HostPort":"99999"}]}}}"#,
            "invalid port specification: \\\"99999\\\"",
        ),
        (
            r#"{"Image":"busybox","ExposedPorts":{"80/sctp":{}}}"#,
            "80/sctp",
        ),
        (
            r#"{"Image":"busybox","HostConfig":{"PortBindings":{"80/tcp":[{"HostIp":"localhost","HostPort":"1"}]}}}"#,
            "invalid IP address",
        ),
        (
            r#"{"Image":"busybox","HostConfig":{"NetworkMode":"none","PortBindings":{"80/tcp":[{"HostPort":"9000"}]}}}"#,
            "conflicting options",
        ),
    ] {
        let (status, answer) = api(&d, "POST", "/containers/create?name=bad", body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains(says), "{body}: {answer}");
        assert!(answer.starts_with("{\"message\":"), "{answer}");
    }
    let e = fails(&d, &["create", "-p", "70000:80", "busybox", "true"]);
    assert!(e.contains("70000"), "{e}");
    assert_eq!(d.ok(&["ps", "-a", "-q"]), before, "nothing was created");

    d.ok(&["rm", "-f", "web", "all"]);
    assert_eq!(nc_from(&ns, "127.0.0.1", "8080"), "", "unpublished with it");
}
