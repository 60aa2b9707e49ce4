//! A container that finishes while no appliance is there: `appliance serve`
//! is killed (SIGKILL) just before the container writes a known stream
//! (200,000 lines, about 1.3 MB) and exits, and stays down for a while. The
//! container's VM keeps the output and the exit code until a host has taken
//! them, so the restarted server gets all of it, up to the linger bound
//! (`serve --linger`, 24 h by default); a bound shorter than the outage (as
//! the old fixed 60 s linger was) loses them, and the tether says so.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tests::server::{Server, stderr, stdout};

const LINES: u32 = 200_000;
const CODE: i32 = 7;

/// Waits for `/tmp/go`, gives the test 2 s to kill the server, then writes
/// the stream and exits with CODE.
fn script() -> String {
    format!(
        "while [ ! -e /tmp/go ]; do sleep 0.1; done; sleep 2; \
         seq 1 {LINES}; echo 'stderr too' >&2; exit {CODE}"
    )
}

fn expected() -> String {
    (1..=LINES).map(|i| format!("{i}\n")).collect()
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Starts the container, lets it go and kills the server under it; returns
/// when the server is gone.
fn finish_while_the_server_is_down(s: &mut Server, name: &str) {
    let o = s.cli(&[
        "run",
        "-d",
        "--name",
        name,
        "busybox",
        "--",
        "sh",
        "-c",
        &script(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(&["exec", name, "--", "touch", "/tmp/go"]);
    assert!(o.status.success(), "{}", stderr(&o));
    s.kill9();
}

/// The container's record as `inspect` gives it.
fn inspect(s: &Server, name: &str) -> serde_json::Value {
    let o = s.cli(&["inspect", name]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("inspect JSON");
    v[0].clone()
}

/// Waits (bounded) until the restarted server has recorded the end.
fn wait_exited(s: &Server, name: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let c = inspect(s, name);
        if c["state"] == "exited" {
            return c;
        }
        assert!(Instant::now() < deadline, "{name} did not end: {c:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn console(s: &Server, id: &str) -> String {
    std::fs::read_to_string(
        s.state
            .join("containers")
            .join(&id[..12])
            .join("console.log"),
    )
    .unwrap_or_default()
}

#[test]
fn output_and_exit_code_outlive_an_appliance_outage() {
    let d = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start(d.path());
    finish_while_the_server_is_down(&mut s, "kept");
    // Longer than the old fixed linger (60 s), after which the VM used to
    // power off with whatever was not taken yet.
    std::thread::sleep(Duration::from_secs(65));
    s.restart();

    let o = s.cli(&["wait", "kept"]);
    assert_eq!(stdout(&o).trim(), CODE.to_string(), "{}", stderr(&o));
    let c = wait_exited(&s, "kept");
    assert_eq!(c["exit_code"], CODE, "{c:#}");
    assert_eq!(c["error"], "", "{c:#}");
    let o = s.cli(&["logs", "kept"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = expected();
    assert_eq!(o.stdout.len(), want.len(), "bytes of stdout");
    assert_eq!(
        sha256(&o.stdout),
        sha256(want.as_bytes()),
        "stdout's checksum"
    );
    assert_eq!(stderr(&o), "stderr too\n");
    // The tether said what it was waiting for, and when it was taken.
    let id = c["id"].as_str().expect("id");
    let console = console(&s, id);
    assert!(
        console.contains("waiting up to 86400s for a host to take:"),
        "{console}"
    );
    assert!(
        console.contains("a host took the output and the exit status"),
        "{console}"
    );
    assert!(s.cli(&["rm", "kept"]).status.success());
}

#[test]
fn a_linger_bound_shorter_than_the_outage_is_reached_and_said() {
    let d = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start_with(d.path(), &["--linger", "3s"]);
    finish_while_the_server_is_down(&mut s, "bounded");
    std::thread::sleep(Duration::from_secs(12));
    s.restart();

    // The VM powered off at the bound: the exit code and the stream are
    // lost, and the container's error carries the tether's word for it.
    let c = wait_exited(&s, "bounded");
    assert_eq!(c["exit_code"], serde_json::Value::Null, "{c:#}");
    let error = c["error"].as_str().expect("error");
    assert!(
        error.contains("linger limit of 3s reached: powering off with what no host took:"),
        "{error}"
    );
    assert!(
        error.contains(&format!("exit status {CODE} of session")),
        "{error}"
    );
    let o = s.cli(&["logs", "bounded"]);
    assert!(
        o.stdout.len() < expected().len(),
        "the stream was taken whole"
    );
    assert!(s.cli(&["rm", "bounded"]).status.success());
}
