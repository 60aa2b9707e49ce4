//! The network component end to end: `appliance serve` runs inside a
//! network namespace each test creates, so every bridge, tap and rule it
//! makes lives there; nothing touches the machine's own network.

use tests::netns::Netns;
use tests::server::{Server, stderr, stdout};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn scopes_endpoints_and_leases_through_the_cli_and_the_guest_gets_its_address() {
    let ns = Netns::new("net");
    let d = tempfile::tempdir().expect("tempdir");
    let s = Server::start_in(d.path(), &ns);
    let o = s.cli(&["network", "create", "--subnet", "10.77.3.0/24", "backend"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(&["network", "ls"]);
    let ls = stdout(&o);
    assert!(ls.contains("bridge") && ls.contains("10.88.0.0/24"), "{ls}");
    assert!(
        ls.contains("backend") && ls.contains("10.77.3.0/24"),
        "{ls}"
    );
    // An overlapping subnet is refused naming the scope it overlaps.
    let o = s.cli(&["network", "create", "--subnet", "10.77.3.128/25", "other"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("overlaps scope backend"),
        "{}",
        stderr(&o)
    );

    let o = s.cli(&[
        "run",
        "-d",
        "--name",
        "db",
        "--network",
        "backend",
        "--ip",
        "10.77.3.9",
        "busybox",
        "--",
        "sleep",
        "1000",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(&["ps"]);
    assert!(stdout(&o).contains("backend=10.77.3.9"), "{}", stdout(&o));
    // The guest has the address on the interface with the endpoint's MAC.
    let (_, body) = s.http("GET", "/exec/containers/db", None);
    let c = json(&body);
    let mac = c["endpoints"]["backend"]["mac"]
        .as_str()
        .expect("mac")
        .to_string();
    let o = s.cli(&["exec", "db", "--", "ip", "addr"]);
    let addrs = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(addrs.contains(&mac), "{addrs}");
    assert!(addrs.contains("inet 10.77.3.9/24"), "{addrs}");
    let o = s.cli(&["exec", "db", "--", "cat", "/etc/resolv.conf", "/etc/hosts"]);
    let files = stdout(&o);
    assert!(files.contains("nameserver 10.77.3.1"), "{files}");
    assert!(
        files.contains("10.77.3.9") && files.contains("db"),
        "{files}"
    );

    // The scope is in use; the taken static address is refused naming its
    // holder.
    let o = s.cli(&["network", "rm", "backend"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("in use by container db"),
        "{}",
        stderr(&o)
    );
    let o = s.cli(&[
        "create",
        "--name",
        "dup",
        "--network",
        "backend",
        "--ip",
        "10.77.3.9",
        "busybox",
        "true",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("in use by container db"),
        "{}",
        stderr(&o)
    );

    let o = s.cli(&["rm", "-f", "db"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(&["network", "rm", "backend"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, body) = s.http("GET", "/network/scopes", None);
    let names: Vec<String> = json(&body)
        .as_array()
        .expect("list")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["bridge"]);
}

/// The "outside": a namespace joined to the appliance's by a veth, with
/// TCP servers on 80 and 81 that tell each client the address they see it
/// from, and a UDP port it can send from.
const OUTSIDE_SERVER: &str = r#"
import socket, threading
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    while True:
        c, a = s.accept()
        c.sendall(("you are %s on %d\n" % (a[0], port)).encode())
        c.close()
for p in (80, 81):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// A child process ended (by its PID) when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP client in a namespace: what the server sends first.
fn tcp_get(ns: &Netns, host: &str, port: u16) -> String {
    let code = format!(
        "import socket\ns = socket.create_connection(({host:?}, {port}), 10)\nprint(s.recv(200).decode().strip())"
    );
    ns.run_ok(&["python3", "-c", &code]).trim().to_string()
}

/// A UDP exchange from a namespace: the answer to `text` (asked again
/// for a while, datagrams being datagrams).
fn udp_ask(ns: &Netns, host: &str, port: u16, text: &str) -> String {
    let code = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(1)\n\
         for _ in range(20):\n    s.sendto(b{text:?}, ({host:?}, {port}))\n    try:\n        print(s.recv(200).decode()); break\n    except socket.timeout:\n        pass"
    );
    ns.run_ok(&["python3", "-c", &code]).trim().to_string()
}

/// The UDP echo server of `tests/assets`, built static into `dir` (busybox
/// has no UDP server).
fn udp_echo_binary(dir: &std::path::Path) -> std::path::PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/udp_echo.c");
    let bin = dir.join("udp_echo");
    let o = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("cc (gcc) builds the UDP echo server");
    assert!(
        o.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    bin
}

/// busybox nc in container `c` to `target` port: (ok, what it printed or
/// its error).
fn nc(s: &Server, c: &str, target: &str, port: u16) -> (bool, String) {
    let o = s.cli(&[
        "exec",
        c,
        "--",
        "sh",
        "-c",
        &format!("nc -w 10 {target} {port} </dev/null"),
    ]);
    (
        o.status.success(),
        format!("{}{}", stdout(&o), stderr(&o)).trim().to_string(),
    )
}

/// A container that answers "hi-from-NAME" on TCP port 80, on `networks`
/// (flags for its first one follow).
fn serving(s: &Server, name: &str, flags: &[&str]) {
    let script = format!("while true; do echo hi-from-{name} | nc -l -p 80; done");
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["busybox", "--", "sh", "-c", &script]);
    let o = s.cli(&args);
    assert!(o.status.success(), "run {name}: {}", stderr(&o));
}

/// A POST over REST that must answer `want`; its JSON body.
fn post(s: &Server, path: &str, body: &str, want: u16) -> serde_json::Value {
    let (code, body) = s.http("POST", path, Some(body));
    assert_eq!(code, want, "{body}");
    json(&body)
}

/// The address of a container with one endpoint.
fn ip_of(s: &Server, c: &str) -> String {
    let (_, body) = s.http("GET", &format!("/exec/containers/{c}"), None);
    let v = json(&body);
    let e = v["endpoints"].as_object().expect("endpoints");
    let (_, ep) = e.iter().next().expect("one endpoint");
    let a = ep["address"].as_str().expect("address");
    a.split('/').next().unwrap_or_default().to_string()
}

fn links_and_tables(ns: &Netns) -> (Vec<String>, String) {
    let links = ns
        .run_ok(&["ip", "-br", "link"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("apt") || n.starts_with("apb-"))
        .collect();
    (links, ns.run_ok(&["nft", "list", "tables"]))
}

#[test]
fn scopes_connect_isolate_nat_publish_and_police_traffic_and_converge_after_a_crash() {
    let ns = Netns::new("nat");
    let out = Netns::new("out");
    ns.link(&out, ("ext0", "10.99.0.1/24"), ("ext1", "10.99.0.2/24"));
    let mut outside = Killed(
        out.command(&["python3", "-u", "-c", OUTSIDE_SERVER])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 in the outside namespace"),
    );
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(outside.0.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("outside server starts");
        assert_eq!(line.trim(), "ready");
    }
    let d = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start_in(d.path(), &ns);
    for args in [
        &["network", "create", "--subnet", "10.77.1.0/24", "front"][..],
        &["network", "create", "--subnet", "10.77.2.0/24", "other"][..],
        &[
            "network",
            "create",
            "--kind",
            "closed",
            "--subnet",
            "10.77.3.0/24",
            "sealed",
        ][..],
    ] {
        let o = s.cli(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }
    serving(&s, "a", &["--network", "front", "--alias", "api"]);
    serving(&s, "b", &["--network", "front"]);
    serving(&s, "c", &["--network", "other"]);
    // Published ports without --network join the default scope.
    serving(&s, "d", &["-p", "8080:80", "-p", "5353:53/udp"]);
    serving(
        &s,
        "e",
        &[
            "--network",
            "bridge",
            "--outgoing",
            "denied:tcp:10.99.0.2:81",
        ],
    );
    serving(
        &s,
        "f",
        &[
            "--network",
            "bridge",
            "--outgoing",
            "allowed:tcp:10.99.0.2/32:80",
        ],
    );
    serving(&s, "g", &["--network", "sealed"]);
    serving(&s, "h", &["--network", "sealed"]);

    // Members of one scope reach each other, by name and alias too, both
    // ways.
    assert_eq!(nc(&s, "b", &ip_of(&s, "a"), 80), (true, "hi-from-a".into()));
    assert_eq!(nc(&s, "b", "a", 80), (true, "hi-from-a".into()));
    assert_eq!(nc(&s, "b", "api", 80), (true, "hi-from-a".into()));
    assert_eq!(nc(&s, "a", "b", 80), (true, "hi-from-b".into()));
    // Another scope's member cannot reach them (refused at once) nor
    // resolve their names.
    let (ok, msg) = nc(&s, "c", &ip_of(&s, "a"), 80);
    assert!(!ok && msg.contains("refused"), "{msg}");
    let (ok, msg) = nc(&s, "c", "a", 80);
    assert!(!ok, "{msg}");

    // Out through NAT: the outside sees the host's address.
    assert_eq!(
        nc(&s, "b", "10.99.0.2", 81),
        (true, "you are 10.99.0.1 on 81".into())
    );
    // A published port, from the outside and from the host's loopback;
    // UDP too.
    assert_eq!(tcp_get(&out, "10.99.0.1", 8080), "hi-from-d");
    assert_eq!(tcp_get(&ns, "127.0.0.1", 8080), "hi-from-d");
    let echo = udp_echo_binary(d.path());
    let o = s.cli(&["cp", echo.to_str().expect("path"), "d:/tmp"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(&[
        "exec",
        "d",
        "--",
        "sh",
        "-c",
        "/tmp/udp_echo 53 </dev/null >/dev/null 2>&1 &",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(udp_ask(&out, "10.99.0.1", 5353, "ping"), "echo:ping");
    assert_eq!(udp_ask(&ns, "127.0.0.1", 5353, "pong"), "echo:pong");

    // Outgoing policy: a denied target is refused at once (a reset, not a
    // time-out) while another works; an allowed list refuses the rest.
    let (ok, msg) = nc(&s, "e", "10.99.0.2", 81);
    assert!(!ok && msg.contains("refused"), "{msg}");
    assert_eq!(
        nc(&s, "e", "10.99.0.2", 80),
        (true, "you are 10.99.0.1 on 80".into())
    );
    assert_eq!(
        nc(&s, "f", "10.99.0.2", 80),
        (true, "you are 10.99.0.1 on 80".into())
    );
    let (ok, msg) = nc(&s, "f", "10.99.0.2", 81);
    assert!(!ok && msg.contains("refused"), "{msg}");

    // A closed scope: members talk, nothing goes out: the guest has no
    // route out, and one it adds itself meets the host's refusal.
    assert_eq!(nc(&s, "g", "h", 80), (true, "hi-from-h".into()));
    let (ok, msg) = nc(&s, "g", "10.99.0.2", 80);
    assert!(!ok && msg.contains("unreachable"), "{msg}");
    let o = s.cli(&[
        "exec",
        "g",
        "--",
        "ip",
        "route",
        "add",
        "default",
        "via",
        "10.77.3.1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (ok, msg) = nc(&s, "g", "10.99.0.2", 80);
    assert!(!ok && msg.contains("refused"), "{msg}");

    // kill -9 of the appliance, and its rules lost: a restart re-adopts
    // the containers with the same addresses and the rules are back.
    let before: Vec<String> = ["a", "b", "d", "g"].iter().map(|c| ip_of(&s, c)).collect();
    s.kill9();
    ns.run_ok(&["nft", "delete", "table", "inet", "appliance"]);
    s.restart();
    let after: Vec<String> = ["a", "b", "d", "g"].iter().map(|c| ip_of(&s, c)).collect();
    assert_eq!(before, after);
    assert_eq!(tcp_get(&out, "10.99.0.1", 8080), "hi-from-d");
    let (ok, msg) = nc(&s, "g", "10.99.0.2", 80);
    assert!(!ok && msg.contains("refused"), "{msg}");
    // No address was handed out twice.
    let mut all: Vec<String> = ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .map(|c| ip_of(&s, c))
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 8, "{all:?}");

    // Removing everything leaves no tap, bridge or rule.
    let (links, tables) = links_and_tables(&ns);
    assert_eq!(links.len(), 8 + 4, "8 taps and 4 bridges: {links:?}");
    assert!(tables.contains("appliance"), "{tables}");
    let o = s.cli(&["rm", "-f", "a", "b", "c", "d", "e", "f", "g", "h"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for n in ["front", "other", "sealed"] {
        let o = s.cli(&["network", "rm", n]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let (links, tables) = links_and_tables(&ns);
    assert_eq!(links, Vec::<String>::new());
    assert!(!tables.contains("appliance"), "{tables}");
    let (_, body) = s.http("GET", "/diagnostics/stats", None);
    assert!(!body.is_empty());
}

/// The port-layer seed's `AddContainerToNetwork` over raw REST (get a
/// handle, join, bind, commit) gives the VM a working interface; and the
/// errors of exhausted ranges and taken host ports name what is at fault.
#[test]
fn add_container_to_network_over_rest_gives_a_working_interface_and_errors_name_the_element() {
    let ns = Netns::new("rest");
    let d = tempfile::tempdir().expect("tempdir");
    let s = Server::start_in(d.path(), &ns);
    post(
        &s,
        "/network/scopes",
        r#"{"name":"gibson_network","subnet":"10.77.8.0/24"}"#,
        201,
    );
    let created = post(
        &s,
        "/exec/containers",
        r#"{"name":"cookie_monster","image":"busybox","task":{"args":["sleep","1000"]}}"#,
        201,
    );
    post(
        &s,
        "/exec/commit",
        &format!(r#"{{"handle":{}}}"#, created["handle"]),
        200,
    );

    let (_, body) = s.http("GET", "/exec/containers/cookie_monster/handle", None);
    let h = json(&body)["handle"].clone();
    let h = post(
        &s,
        "/network/handles/join",
        &format!(r#"{{"handle":{h},"scope":"gibson_network"}}"#),
        200,
    )["handle"]
        .clone();
    let h = post(
        &s,
        "/network/handles/bind",
        &format!(r#"{{"handle":{h},"scope":"gibson_network"}}"#),
        200,
    )["handle"]
        .clone();
    let h = post(
        &s,
        "/exec/handles/state",
        &format!(r#"{{"handle":{h},"target":"running"}}"#),
        200,
    )["handle"]
        .clone();
    let r = post(&s, "/exec/commit", &format!(r#"{{"handle":{h}}}"#), 200);
    let id = created["id"].as_str().expect("id");
    assert_eq!(
        r["results"][format!("{id}/network/gibson_network")]["status"],
        "SUCCESS",
        "{r}"
    );
    let o = s.cli(&["exec", "cookie_monster", "--", "ip", "addr"]);
    assert!(stdout(&o).contains("inet 10.77.8.2/24"), "{}", stdout(&o));
    let o = s.cli(&[
        "exec",
        "cookie_monster",
        "--",
        "ping",
        "-c",
        "1",
        "-W",
        "5",
        "10.77.8.1",
    ]);
    assert!(
        o.status.success(),
        "the gateway answers: {}{}",
        stdout(&o),
        stderr(&o)
    );

    // An exhausted range names the scope; a taken host port names its
    // holder. (Created only: no VM needed.)
    let o = s.cli(&[
        "network",
        "create",
        "--subnet",
        "10.77.9.0/24",
        "--ip-range",
        "10.77.9.4/31",
        "tiny",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for n in ["t1", "t2"] {
        let o = s.cli(&[
            "create",
            "--name",
            n,
            "--network",
            "tiny",
            "busybox",
            "true",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = s.cli(&[
        "create",
        "--name",
        "t3",
        "--network",
        "tiny",
        "busybox",
        "true",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("tiny"), "{}", stderr(&o));
    let o = s.cli(&[
        "create",
        "--name",
        "p1",
        "--network",
        "bridge",
        "-p",
        "9090:80",
        "busybox",
        "true",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(&[
        "create",
        "--name",
        "p2",
        "--network",
        "bridge",
        "-p",
        "9090:80",
        "busybox",
        "true",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("p1"), "{}", stderr(&o));
    let o = s.cli(&["ps", "-a", "-q"]);
    let ids = stdout(&o);
    assert_eq!(
        ids.lines().count(),
        4,
        "refused creations leave nothing: {ids}"
    );
}
