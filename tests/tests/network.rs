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
