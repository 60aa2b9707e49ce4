//! Control always answers: kill, stop and rm -f end within a bound whatever
//! the tether is doing. The tether is wedged on purpose by freezing its VM
//! (QMP `stop`: no guest code runs, the channel stays open and silent).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tests::server::{Server, stderr, stdout};

fn new_server() -> (tempfile::TempDir, Server) {
    let d = tempfile::tempdir().expect("tempdir");
    let s = Server::start(d.path());
    (d, s)
}

/// Freezes a container's VM behind the appliance's back.
fn freeze(s: &Server, id: &str) {
    let sock = s.state.join("containers").join(&id[..12]).join("qmp.sock");
    let c = UnixStream::connect(&sock).expect("qmp socket");
    let mut r = BufReader::new(c.try_clone().expect("clone"));
    let mut w = c;
    let mut line = String::new();
    r.read_line(&mut line).expect("qmp greeting");
    for cmd in ["qmp_capabilities", "stop"] {
        writeln!(w, r#"{{"execute":"{cmd}"}}"#).expect("qmp");
        // Events may come before the answer.
        loop {
            line.clear();
            r.read_line(&mut line).expect("qmp answer");
            assert!(!line.is_empty() && !line.contains("error"), "{cmd}: {line}");
            if line.contains("return") {
                break;
            }
        }
    }
}

fn started(s: &Server, name: &str) -> String {
    let o = s.cli(&[
        "run", "-d", "--name", name, "busybox", "--", "sleep", "1000",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).trim().to_string()
}

fn state(s: &Server, name: &str) -> String {
    let (_, body) = s.http("GET", &format!("/exec/containers/{name}"), None);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["state"].as_str().unwrap_or_default().to_string()
}

#[test]
fn kill_stop_and_rm_f_answer_within_a_bound_when_the_tether_is_wedged() {
    let (_d, s) = new_server();
    let a = started(&s, "a");
    let b = started(&s, "b");
    freeze(&s, &a);
    freeze(&s, &b);

    // A signal fails, saying why, instead of hanging.
    let t0 = Instant::now();
    let k = s.cli(&["kill", "-s", "USR1", "a"]);
    let took = t0.elapsed();
    assert!(!k.status.success(), "a signal to a frozen tether succeeded");
    assert!(stderr(&k).contains("did not answer"), "{}", stderr(&k));
    assert!(took < Duration::from_secs(30), "kill took {took:?}");

    // A stop with a 2 s grace ends: the VM is killed past it.
    let t0 = Instant::now();
    let st = s.cli(&["stop", "-t", "2", "a"]);
    let took = t0.elapsed();
    assert!(st.status.success(), "{}", stderr(&st));
    assert!(took < Duration::from_secs(30), "stop -t 2 took {took:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while state(&s, "a") == "running" {
        assert!(Instant::now() < deadline, "a still running after its stop");
        std::thread::sleep(Duration::from_millis(200));
    }

    // rm -f of a wedged one: gone, VM and all, within the bound.
    let t0 = Instant::now();
    let r = s.cli(&["rm", "-f", "b"]);
    let took = t0.elapsed();
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(took < Duration::from_secs(30), "rm -f took {took:?}");
    let (code, _) = s.http("GET", "/exec/containers/b", None);
    assert_eq!(code, 404);
    assert!(
        !s.state.join("containers").join(&b[..12]).exists(),
        "rm -f left the container's directory"
    );
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains(&b[..12]),
        "the removed container's QEMU is still running"
    );
}

/// A stopping server answers what is in flight, cuts open streams after
/// its grace, and exits; the container VMs keep running and the next server
/// takes them back.
#[test]
fn sigterm_stops_the_server_within_a_bound_with_streams_open_and_vms_survive() {
    let (d, mut s) = new_server();
    let o = s.cli(&[
        "run",
        "-d",
        "--name",
        "ticker",
        "busybox",
        "--",
        "sh",
        "-c",
        "while true; do echo tick; sleep 0.2; done",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    let qemu_pid: i32 =
        std::fs::read_to_string(s.state.join("containers").join(&id[..12]).join("qemu.pid"))
            .expect("qemu.pid")
            .trim()
            .parse()
            .expect("pid");

    // Streams that never end on their own.
    let spawn = |args: &[&str]| {
        std::process::Command::new(tests::server::appliance_bin())
            .arg("--state")
            .arg(d.path())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn client")
    };
    let mut clients = [spawn(&["logs", "-f", "ticker"]), spawn(&["events"])];
    std::thread::sleep(Duration::from_secs(1));

    let status = s
        .terminate(Duration::from_secs(30))
        .expect("serve did not exit within 30 s of SIGTERM");
    assert!(status.success(), "serve exited with {status}");
    assert!(
        !d.path().join("appliance.sock").exists(),
        "the socket was left behind"
    );
    let log = std::fs::read_to_string(d.path().join("serve.log")).unwrap_or_default();
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
    // The VM outlived the server.
    assert!(
        std::path::Path::new(&format!("/proc/{qemu_pid}")).exists(),
        "the container VM died with the server"
    );
    for c in &mut clients {
        let _ = c.kill();
        let _ = c.wait();
    }

    let s = Server::start(d.path());
    let o = s.cli(&["exec", "ticker", "--", "echo", "still here"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "still here");
    assert_eq!(state(&s, "ticker"), "running");
    let o = s.cli(&["rm", "-f", "ticker"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// An exec client whose VM dies under it ends, saying so, and the task is
/// no longer running.
#[test]
fn an_exec_client_ends_when_the_vm_dies_under_it() {
    let (d, s) = new_server();
    let id = started(&s, "victim");
    let mut exec = std::process::Command::new(tests::server::appliance_bin())
        .arg("--state")
        .arg(d.path())
        .args(["exec", "victim", "--", "sleep", "1000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn exec");
    // The exec's task is running in the guest.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = s.http("GET", "/exec/containers/victim", None);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let running = v["tasks"].as_object().is_some_and(|t| {
            t.values()
                .any(|t| !t["primary"].as_bool().unwrap_or(true) && t["state"] == "running")
        });
        if running {
            break;
        }
        assert!(Instant::now() < deadline, "the exec never ran: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = std::fs::read_to_string(s.state.join("containers").join(&id[..12]).join("qemu.pid"))
        .expect("qemu.pid");
    let _ = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status();

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = exec.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = exec.kill();
            panic!("the exec client still runs 60 s after its VM died");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = exec.wait_with_output().expect("output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "exec exited 0 after its VM died");
    assert!(err.contains("VM died"), "{err}");
    let (_, body) = s.http("GET", "/exec/containers/victim", None);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["state"], "exited", "{body}");
    assert!(
        v["tasks"]
            .as_object()
            .is_some_and(|t| t.values().all(|t| t["state"] == "exited")),
        "{body}"
    );
}
