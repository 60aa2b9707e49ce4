//! End to end through the port layer: `appliance serve` as its own process,
//! driven by the CLI and by raw HTTP, with real container VMs (TCG).

use std::time::Duration;

use tests::server::{Server, stderr, stdout};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn new_server() -> (tempfile::TempDir, Server) {
    let d = tempfile::tempdir().expect("tempdir");
    let s = Server::start(d.path());
    (d, s)
}

#[test]
fn run_streams_output_and_exits_with_the_containers_code() {
    let (_d, s) = new_server();
    let o = s.cli(&[
        "run",
        "--rm",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "out\n");
    assert!(stderr(&o).contains("err\n"), "{}", stderr(&o));
    // --rm removed it.
    let ps = s.cli(&["ps", "-a", "-q"]);
    assert_eq!(stdout(&ps).trim(), "", "{}", stdout(&ps));
    // stdin with -i.
    let o = s.cli_with_stdin(
        &["run", "--rm", "-i", "busybox", "--", "wc", "-c"],
        Some(&[b'x'; 5000]),
    );
    assert_eq!(stdout(&o).trim(), "5000", "stderr: {}", stderr(&o));
}

#[test]
fn lifecycle_noop_restart_exec_signals_pause_and_remove() {
    let (_d, s) = new_server();
    let trap = "trap 'echo got-usr1' USR1; while true; do sleep 0.1; done";
    let o = s.cli(&["create", "--name", "web", "busybox", "--", "sh", "-c", trap]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    let c = json(&s.http("GET", "/exec/containers/web", None).1);
    assert_eq!(c["state"], "created");

    assert!(s.cli(&["start", "web"]).status.success());
    // A second start, through a handle and commit, is a NOOP.
    let (_, h) = s.http("GET", "/exec/containers/web/handle", None);
    let h = json(&h)["handle"].as_str().unwrap().to_string();
    let (code, h2) = s.http(
        "POST",
        "/exec/handles/state",
        Some(&format!(r#"{{"handle":"{h}","target":"running"}}"#)),
    );
    assert_eq!(code, 200, "{h2}");
    let h2 = json(&h2)["handle"].as_str().unwrap().to_string();
    let (code, r) = s.http(
        "POST",
        "/exec/commit",
        Some(&format!(r#"{{"handle":"{h2}"}}"#)),
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(json(&r)["results"][&id]["status"], "NOOP", "{r}");

    // exec in the running container.
    let o = s.cli(&["exec", "web", "--", "sh", "-c", "hostname; exit 4"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    // A signal reaches the primary process.
    assert!(s.cli(&["kill", "-s", "USR1", "web"]).status.success());
    let mut logs = String::new();
    for _ in 0..100 {
        logs = stdout(&s.cli(&["logs", "web"]));
        if logs.contains("got-usr1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(logs.contains("got-usr1"), "{logs}");

    // Pause and resume through the state target.
    for (target, want) in [("paused", "paused"), ("running", "running")] {
        let (_, h) = s.http("GET", "/exec/containers/web/handle", None);
        let h = json(&h)["handle"].as_str().unwrap().to_string();
        let (_, h) = s.http(
            "POST",
            "/exec/handles/state",
            Some(&format!(r#"{{"handle":"{h}","target":"{target}"}}"#)),
        );
        let h = json(&h)["handle"].as_str().unwrap().to_string();
        let (code, r) = s.http(
            "POST",
            "/exec/commit",
            Some(&format!(r#"{{"handle":"{h}"}}"#)),
        );
        assert_eq!(code, 200, "{r}");
        assert_eq!(json(&r)["results"][&id]["status"], "SUCCESS", "{r}");
        assert_eq!(
            json(&s.http("GET", "/exec/containers/web", None).1)["state"],
            want
        );
    }

    // A running container is not removed without force.
    let o = s.cli(&["rm", "web"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("running"), "{}", stderr(&o));
    let o = s.cli(&["stop", "-t", "1", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = json(&s.http("GET", "/exec/containers/web", None).1);
    assert_eq!(c["state"], "exited", "{c}");
    // The shell ignores nothing but runs a loop: TERM ends it.
    assert_eq!(c["exit_code"], 143, "{c}");
    assert!(s.cli(&["rm", "web"]).status.success());
    assert_eq!(s.http("GET", "/exec/containers/web", None).0, 404);
}

#[test]
fn racing_commits_exactly_one_wins() {
    let (_d, s) = new_server();
    let o = s.cli(&["create", "--name", "race", "busybox", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, h) = s.http("GET", "/exec/containers/race/handle", None);
    let h = json(&h)["handle"].as_str().unwrap().to_string();
    let handles: Vec<String> = (0..8)
        .map(|i| {
            let (_, r) = s.http(
                "POST",
                "/exec/handles/rename",
                Some(&format!(r#"{{"handle":"{h}","name":"n{i}"}}"#)),
            );
            json(&r)["handle"].as_str().unwrap().to_string()
        })
        .collect();
    let codes: Vec<(u16, String)> = std::thread::scope(|sc| {
        let s = &s;
        let joins: Vec<_> = handles
            .iter()
            .map(|h| {
                sc.spawn(move || {
                    s.http(
                        "POST",
                        "/exec/commit",
                        Some(&format!(r#"{{"handle":"{h}"}}"#)),
                    )
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    });
    let wins = codes.iter().filter(|(c, _)| *c == 200).count();
    assert_eq!(wins, 1, "{codes:?}");
    for (c, body) in codes.iter().filter(|(c, _)| *c != 200) {
        assert_eq!(*c, 409, "{body}");
        let e = json(body);
        assert_eq!(e["code"], "CONFLICT");
        assert_eq!(e["current_version"], 2, "{body}");
    }
}

#[test]
fn bad_input_gets_a_4xx_naming_the_element() {
    let (_d, s) = new_server();
    let (code, body) = s.http("POST", "/exec/containers", Some("{not json"));
    assert_eq!(code, 400, "{body}");
    assert!(json(&body)["message"].as_str().unwrap().len() > 5);

    let (code, body) = s.http("GET", "/exec/containers/doesnotexist", None);
    assert_eq!(code, 404);
    assert_eq!(json(&body)["element"], "doesnotexist");

    let (code, body) = s.http(
        "POST",
        "/exec/commit",
        Some(r#"{"handle":"h1.eyJ4Ijoxfq.AAAA"}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(json(&body)["element"], "handle");

    let spec = r#"{"image":"busybox","task":{"args":["true"]},"policies":[{"filter":"","constraint":"sideways"}]}"#;
    let (code, body) = s.http("POST", "/exec/containers", Some(spec));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("sideways"), "{body}");
}

#[test]
fn handles_and_logs_survive_an_appliance_crash() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Server::start(d.path());
    let n = 400;
    let counter =
        format!("i=0; while [ $i -lt {n} ]; do echo line$i; i=$((i+1)); sleep 0.01; done");
    let o = s.cli(&[
        "run", "-d", "--name", "count", "busybox", "--", "sh", "-c", &counter,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A handle made before the crash...
    let (_, h) = s.http("GET", "/exec/containers/count/handle", None);
    let h = json(&h)["handle"].as_str().unwrap().to_string();
    let (_, h) = s.http(
        "POST",
        "/exec/handles/rename",
        Some(&format!(r#"{{"handle":"{h}","name":"counted"}}"#)),
    );
    let h = json(&h)["handle"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1500));
    s.kill9();
    // ...while the container keeps writing.
    std::thread::sleep(Duration::from_millis(1000));
    let s = Server::start(d.path());
    let (code, r) = s.http(
        "POST",
        "/exec/commit",
        Some(&format!(r#"{{"handle":"{h}"}}"#)),
    );
    assert_eq!(code, 200, "{r}");
    let (code, w) = s.http("POST", "/exec/containers/counted/wait", None);
    assert_eq!(code, 200, "{w}");
    assert_eq!(json(&w)["exit_code"], 0, "{w}");
    let logs = stdout(&s.cli(&["logs", "counted"]));
    let want: String = (0..n).map(|i| format!("line{i}\n")).collect();
    assert_eq!(logs, want);
}

#[test]
fn events_stream_is_filtered() {
    let (_d, s) = new_server();
    let sock = s.socket();
    let reader = std::thread::spawn(move || {
        std::process::Command::new("curl")
            .args(["-s", "-N", "-m", "20", "--unix-socket"])
            .arg(&sock)
            .arg("http://appliance/events?format=json&filter=kind=create")
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        s.cli(&["create", "--name", "ev1", "busybox", "--", "true"])
            .status
            .success()
    );
    assert!(s.cli(&["rm", "ev1"]).status.success());
    let out = reader.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let kinds: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| json(l)["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(kinds, ["create"], "{text}");
}

#[test]
fn a_start_in_progress_is_listed_and_can_be_cancelled() {
    let (_d, s) = new_server();
    let o = s.cli(&["create", "--name", "slow", "busybox", "--", "sleep", "1000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    let (_, h) = s.http("GET", "/exec/containers/slow/handle", None);
    let h = json(&h)["handle"].as_str().unwrap().to_string();
    let (_, h) = s.http(
        "POST",
        "/exec/handles/state",
        Some(&format!(r#"{{"handle":"{h}","target":"running"}}"#)),
    );
    let h = json(&h)["handle"].as_str().unwrap().to_string();
    std::thread::scope(|sc| {
        // The commit boots the VM: it is in progress for a while.
        let commit = sc.spawn(|| {
            s.http(
                "POST",
                "/exec/commit",
                Some(&format!(r#"{{"handle":"{h}"}}"#)),
            )
        });
        let mut op = None;
        for _ in 0..200 {
            let (_, list) = s.http("GET", "/diagnostics/operations?running=true", None);
            op = json(&list).as_array().and_then(|a| {
                a.iter()
                    .find(|o| o["kind"] == "start" && o["element"] == id.as_str())
                    .cloned()
            });
            if op.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let op = op.expect("the start never showed as an operation in progress");
        let op_id = op["id"].as_str().unwrap();
        let (code, body) = s.http("DELETE", &format!("/diagnostics/operations/{op_id}"), None);
        assert!(code == 202 || code == 200, "{code} {body}");
        let (code, r) = commit.join().unwrap();
        assert_eq!(code, 200, "{r}");
        let r = json(&r);
        assert_eq!(r["results"][&id]["status"], "ERROR", "{r}");
        assert!(
            r["results"][&id]["detail"]
                .as_str()
                .unwrap()
                .contains("cancelled"),
            "{r}"
        );
        let (_, op) = s.http("GET", &format!("/diagnostics/operations/{op_id}"), None);
        assert_eq!(json(&op)["state"], "cancelled", "{op}");
    });
    let c = json(&s.http("GET", "/exec/containers/slow", None).1);
    assert_eq!(c["state"], "exited", "{c}");
    assert!(c["error"].as_str().unwrap().contains("cancelled"), "{c}");
    // A VM was started for it (the cancel came while it booted) ...
    let dir = s.state.join("containers").join(&id[..12]);
    let pid_file = dir.join("qemu.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("no QEMU pid file {}: {e}", pid_file.display()));
    let pid: u32 = pid
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("QEMU pid file holds {pid:?}: {e}"));
    // ... and none was left running for it: the pid is gone, or (reused)
    // names another process than this container's QEMU.
    let dir = dir.to_string_lossy().into_owned();
    let ours = || {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&dir))
            .unwrap_or(false)
    };
    for _ in 0..100 {
        if !ours() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!ours(), "QEMU {pid} for {dir} still running");
}

#[test]
fn a_vm_that_dies_marks_its_container_exited_with_an_error_event() {
    let (_d, s) = new_server();
    let o = s.cli(&[
        "run", "-d", "--name", "victim", "busybox", "--", "sleep", "1000",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    let pid = std::fs::read_to_string(s.state.join("containers").join(&id[..12]).join("qemu.pid"))
        .unwrap();
    // QEMU dies under the container (it is ours: we started it).
    let st = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(st.success());
    let mut c = serde_json::Value::Null;
    for _ in 0..100 {
        c = json(&s.http("GET", "/exec/containers/victim", None).1);
        if c["state"] == "exited" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c["state"], "exited", "{c}");
    assert!(
        c["error"]
            .as_str()
            .unwrap()
            .contains("stopped unexpectedly"),
        "{c}"
    );
    let (_, errs) = s.http("GET", &format!("/diagnostics/errors?element={id}"), None);
    assert!(errs.contains("vm-crash"), "{errs}");
    let o = std::process::Command::new("curl")
        .args(["-s", "-m", "3", "--unix-socket"])
        .arg(s.socket())
        .arg("http://appliance/events?format=json&since=0&filter=kind=crash")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&id),
        "no crash event"
    );
    // Its resources go with rm.
    assert!(s.cli(&["rm", "victim"]).status.success());
    assert!(!s.state.join("containers").join(&id[..12]).exists());
}

/// Runs the CLI with `args` under `script`, which gives it a terminal of
/// its own sized `rows` x `cols` (without a terminal on its own stdin,
/// `script` makes it 0x0, whatever LINES and COLUMNS say).
fn cli_in_a_terminal(s: &Server, rows: u16, cols: u16, args: &str) -> std::process::Output {
    let cmd = format!(
        "stty rows {rows} cols {cols} && exec {} --state {} {args}",
        tests::server::appliance_bin().display(),
        s.state.display()
    );
    std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux)")
}

/// The output's lines, without the terminal's carriage returns.
fn terminal_lines(out: &str) -> Vec<&str> {
    out.lines().map(|l| l.trim_end_matches('\r')).collect()
}

#[test]
fn run_with_a_terminal() {
    let (_d, s) = new_server();
    // The CLI gives the task its terminal's size when it creates it, and the
    // guest opens the task's terminal at that size: the very first thing
    // the task runs already sees it, with no resize to wait for.
    let o = cli_in_a_terminal(
        &s,
        30,
        100,
        "run --rm -t busybox -- sh -c 'tty; stty size; exit 5'",
    );
    let out = stdout(&o);
    assert!(
        out.contains("/dev/pts/"),
        "not a terminal: {out:?} {}",
        stderr(&o)
    );
    assert_eq!(
        terminal_lines(&out).last().copied(),
        Some("30 100"),
        "guest terminal size: {out:?} {}",
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(5), "{out:?}");
}

/// An exec's terminal starts at the size given with the task: the CLI's
/// terminal's with `exec -t`, and any size over REST, where no resize ever
/// comes.
#[test]
fn exec_with_a_terminal_starts_at_the_given_size() {
    let (_d, s) = new_server();
    let o = s.cli(&[
        "run", "-d", "--name", "term", "busybox", "--", "sleep", "600",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = cli_in_a_terminal(&s, 40, 120, "exec -t term -- stty size");
    let out = stdout(&o);
    assert_eq!(
        terminal_lines(&out).last().copied(),
        Some("40 120"),
        "exec's terminal size: {out:?} {}",
        stderr(&o)
    );
    assert!(o.status.success(), "{out:?} {}", stderr(&o));

    let (_, h) = s.http("GET", "/exec/containers/term/handle", None);
    let task = r#"{"id": "sized", "args": ["stty", "size"], "tty": true, "tty_size": {"rows": 33, "cols": 77}}"#;
    let (code, h) = s.http(
        "POST",
        "/exec/handles/task-join",
        Some(&format!(
            r#"{{"handle": {}, "task": {task}}}"#,
            json(&h)["handle"]
        )),
    );
    assert_eq!(code, 200, "{h}");
    let (code, h) = s.http(
        "POST",
        "/exec/handles/task-bind",
        Some(&format!(
            r#"{{"handle": {}, "task": "sized"}}"#,
            json(&h)["handle"]
        )),
    );
    assert_eq!(code, 200, "{h}");
    let (code, r) = s.http(
        "POST",
        "/exec/commit",
        Some(&format!(r#"{{"handle": {}}}"#, json(&h)["handle"])),
    );
    assert_eq!(code, 200, "{r}");
    let (code, w) = s.http("POST", "/exec/containers/term/wait?task=sized", Some("{}"));
    assert_eq!(code, 200, "{w}");
    assert_eq!(json(&w)["exit_code"], 0, "{w}");
    let (code, log) = s.http("GET", "/interaction/containers/term/logs?task=sized", None);
    assert_eq!(code, 200, "{log}");
    assert_eq!(terminal_lines(&log), ["33 77"], "{log:?}");

    assert!(s.cli(&["rm", "-f", "term"]).status.success());
}

#[test]
fn the_appliance_log_is_queryable() {
    let (_d, s) = new_server();
    let o = s.cli(&["create", "--name", "logged", "busybox", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    let (code, text) = s.http("GET", &format!("/diagnostics/logs?grep={id}"), None);
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("commit") && text.contains(&id), "{text}");
}

/// A refused creation leaves no directory, and what a cut-short one left is
/// swept at the next start (never the directory of a container).
#[test]
fn failed_creations_leave_no_directories_and_orphans_are_swept_at_start() {
    let (d, mut s) = new_server();
    let o = s.cli(&["create", "--name", "only", "busybox", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    for _ in 0..3 {
        let o = s.cli(&["create", "--name", "only", "busybox", "true"]);
        assert!(!o.status.success(), "a duplicate name was accepted");
    }
    let containers = d.path().join("containers");
    let names = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&containers)
            .expect("containers dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(), vec![id[..12].to_string()]);

    // What an appliance killed half-way through a creation leaves.
    let orphan = containers.join("0123456789ab");
    std::fs::create_dir_all(orphan.join("logs")).expect("orphan");
    std::fs::write(orphan.join("root.qcow2"), b"half made").expect("orphan disk");
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::open(&orphan)
        .expect("open")
        .set_modified(old)
        .expect("mtime");
    s.kill9();
    let _s = Server::start(d.path());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while orphan.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the orphaned directory was not swept"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(names(), vec![id[..12].to_string()]);
}
