//! End to end through the Docker personality: the real docker CLI
//! (`/usr/local/bin/docker`, 28.2.2) against `appliance serve
//! --docker-socket`, with real container VMs (TCG).

use std::path::Path;

use tests::docker::Docker;
use tests::server::{stderr, stdout};

fn socket_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn docker_run_prints_output_exits_with_the_code_and_removes() {
    let d = Docker::start();
    assert_eq!(socket_mode(&d.socket), 0o600);
    let v = d.ok(&[
        "version",
        "--format",
        "{{.Server.APIVersion}} {{.Client.APIVersion}}",
    ]);
    assert_eq!(v.trim(), "1.45 1.45", "negotiated down to the server's");
    let v = d.ok(&["version"]);
    assert!(v.contains("Engine:"), "{v}");

    let o = d.run(&["run", "--rm", "busybox", "echo", "hi"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "hi\n");
    assert_eq!(d.ok(&["ps", "-a", "-q"]).trim(), "", "--rm removed it");

    let o = d.run(&["run", "--rm", "busybox", "sh", "-c", "echo err >&2; exit 3"]);
    assert_eq!(o.status.code(), Some(3), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "");
    assert!(stderr(&o).contains("err\n"), "{}", stderr(&o));

    let o = d.run_with_stdin(
        &["run", "-i", "--rm", "busybox", "cat"],
        Some(b"line one\nline two\n"),
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "line one\nline two\n");
    assert_eq!(d.ok(&["ps", "-a", "-q"]).trim(), "");

    let o = d.run(&["run", "--rm", "busybox", "nosuchcommand"]);
    assert_eq!(o.status.code(), Some(127), "stderr: {}", stderr(&o));

    // Without --rm it stays, exited, with its code.
    let o = d.run(&["run", "--name", "kept", "busybox", "sh", "-c", "exit 2"]);
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    let ps = d.ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
    assert_eq!(ps.trim(), "kept exited");
    let code = d.ok(&["inspect", "--format", "{{.State.ExitCode}}", "kept"]);
    assert_eq!(code.trim(), "2");
    assert_eq!(d.ok(&["rm", "kept"]).trim(), "kept");

    let o = d.ok(&[
        "run",
        "--rm",
        "--hostname",
        "h1",
        "-u",
        "1000",
        "--entrypoint",
        "sh",
        "busybox",
        "-c",
        "hostname; id -u",
    ]);
    assert_eq!(o, "h1\n1000\n");
    d.ok(&[
        "create", "--name", "m", "-m", "300m", "--cpus", "2", "busybox", "true",
    ]);
    let o = d.ok(&[
        "inspect",
        "--format",
        "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.State.Status}}",
        "m",
    ]);
    assert_eq!(o.trim(), "314572800 2000000000 created");
    assert_eq!(d.ok(&["rm", "m"]).trim(), "m");

    let info = d.ok(&[
        "info",
        "--format",
        "{{.OSType}} {{.Images}} {{.Containers}}",
    ]);
    assert_eq!(info.trim(), "linux 1 0");

    let env = d.ok(&[
        "run",
        "--rm",
        "-e",
        "GREETING=hello",
        "-w",
        "/tmp",
        "busybox",
        "sh",
        "-c",
        "echo $GREETING; pwd",
    ]);
    assert_eq!(env, "hello\n/tmp\n");
}

#[test]
fn detached_containers_log_stop_list_inspect_and_remove() {
    let d = Docker::start();
    let id = d.ok(&[
        "run",
        "-d",
        "--name",
        "x",
        "-e",
        "MARK=1",
        "busybox",
        "sh",
        "-c",
        "echo started; while true; do sleep 1; done",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 64, "{id}");

    // Its output is in the log (it may take the VM a moment to boot).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let o = d.run(&["logs", "x"]);
        if stdout(&o) == "started\n" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "logs: {:?} {:?}",
            stdout(&o),
            stderr(&o)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let ps = d.ok(&["ps", "--format", "{{.Names}} {{.State}}"]);
    assert_eq!(ps.trim(), "x running");

    // A second container by that name is Docker's conflict.
    let o = d.run(&["create", "--name", "x", "busybox", "true"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is already in use by container"),
        "{}",
        stderr(&o)
    );

    // Pause, unpause, rename, restart.
    assert_eq!(d.ok(&["pause", "x"]).trim(), "x");
    let state = |name: &str| d.ok(&["inspect", "--format", "{{.State.Status}}", name]);
    assert_eq!(state("x").trim(), "paused");
    assert_eq!(d.ok(&["unpause", "x"]).trim(), "x");
    assert_eq!(state("x").trim(), "running");
    d.ok(&["rename", "x", "x2"]);
    assert_eq!(d.ok(&["ps", "--format", "{{.Names}}"]).trim(), "x2");
    d.ok(&["rename", "x2", "x"]);
    assert_eq!(d.ok(&["restart", "x"]).trim(), "x");
    assert_eq!(state("x").trim(), "running");

    assert_eq!(d.ok(&["stop", "x"]).trim(), "x");
    let state = d.ok(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}} {{json .Config.Env}}",
        "x",
    ]);
    let (status, rest) = state.trim().split_once(' ').expect("status");
    assert_eq!(status, "exited");
    let (code, env) = rest.split_once(' ').expect("code");
    assert_ne!(code, "0", "stopped by a signal");
    let env: Vec<String> = serde_json::from_str(env).expect("env JSON");
    assert!(env.contains(&"MARK=1".to_string()), "{env:?}");

    let ps = d.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.trim().starts_with("x Exited ("), "{ps}");
    assert_eq!(d.ok(&["ps", "-q"]).trim(), "", "not running");
    assert_eq!(d.ok(&["rm", "x"]).trim(), "x");
    assert_eq!(d.ok(&["ps", "-a", "-q"]).trim(), "");

    for args in [
        &["logs", "x"][..],
        &["rm", "x"],
        &["stop", "x"],
        &["container", "inspect", "x"],
    ] {
        let o = d.run(args);
        assert_ne!(o.status.code(), Some(0), "{args:?}");
        assert!(
            stderr(&o).contains("No such container: x"),
            "{args:?}: {}",
            stderr(&o)
        );
    }

    // A running container goes with -f only.
    d.ok(&["run", "-d", "--name", "y", "busybox", "sleep", "600"]);
    let o = d.run(&["rm", "y"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("container is running"),
        "{}",
        stderr(&o)
    );
    assert_eq!(d.ok(&["rm", "-f", "y"]).trim(), "y");
    assert_eq!(d.ok(&["ps", "-a", "-q"]).trim(), "");

    let images = d.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert_eq!(images.trim(), "busybox:latest");
    let os = d.ok(&["image", "inspect", "--format", "{{.Os}}", "busybox"]);
    assert_eq!(os.trim(), "linux");
    drop(d.server);
}

#[test]
fn terminals_kills_waits_and_followed_logs() {
    let d = Docker::start();
    // The CLI gives its terminal's size at creation (ConsoleSize): the
    // task's terminal has it from the first instruction.
    let o = d.in_a_terminal(
        30,
        100,
        "run --rm -t busybox sh -c 'tty; stty size; exit 5'",
    );
    let out = stdout(&o);
    assert!(out.contains("/dev/pts/"), "not a terminal: {out:?}");
    let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert_eq!(lines.last().copied(), Some("30 100"), "{out:?}");
    assert_eq!(o.status.code(), Some(5), "{out:?}");

    d.ok(&["run", "-d", "--name", "k", "busybox", "sleep", "600"]);
    assert_eq!(d.ok(&["kill", "k"]).trim(), "k");
    assert_eq!(d.ok(&["wait", "k"]).trim(), "137");
    let o = d.run(&["kill", "k"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is not running"), "{}", stderr(&o));

    d.ok(&[
        "run",
        "-d",
        "--name",
        "f",
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3; do echo $i; sleep 1; done; echo done >&2",
    ]);
    let o = d.run(&["logs", "-f", "f"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "1\n2\n3\n");
    assert_eq!(stderr(&o), "done\n");
    assert_eq!(d.ok(&["wait", "f"]).trim(), "0");
    assert_eq!(d.ok(&["logs", "--tail", "1", "f"]), "3\n");
}

#[test]
fn exec_runs_commands_in_a_running_container() {
    let d = Docker::start();
    let id = d.ok(&[
        "run",
        "-d",
        "--name",
        "e",
        "-l",
        "role=sleeper",
        "busybox",
        "sleep",
        "600",
    ]);
    // Docker's filters are the port layer's filterspec.
    let listed = |filter: &str| d.ok(&["ps", "-a", "-q", "--no-trunc", "--filter", filter]);
    assert_eq!(listed("label=role=sleeper").trim(), id.trim());
    assert_eq!(listed("label=role").trim(), id.trim());
    assert_eq!(listed("label=role=other").trim(), "");
    assert_eq!(listed("status=running").trim(), id.trim());
    assert_eq!(listed("status=exited").trim(), "");
    assert_eq!(listed(&format!("id={}", &id[..8])).trim(), id.trim());
    let o = d.run(&["ps", "--filter", "ancestor=busybox"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("not supported"), "{}", stderr(&o));

    // What cannot be done yet is refused, and makes nothing.
    for args in [
        &["run", "-v", "/srv:/srv", "busybox", "true"][..],
        &["run", "-p", "8080:80", "busybox", "true"],
    ] {
        let o = d.run(args);
        assert_eq!(o.status.code(), Some(125), "{args:?}");
        assert!(stderr(&o).contains("not supported"), "{}", stderr(&o));
    }
    assert_eq!(d.ok(&["ps", "-a", "-q", "--no-trunc"]).trim(), id.trim());

    let o = d.run(&["exec", "e", "sh", "-c", "echo in; echo err >&2; exit 4"]);
    assert_eq!(o.status.code(), Some(4), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "in\n");
    assert_eq!(stderr(&o), "err\n");
    let o = d.run_with_stdin(&["exec", "-i", "e", "wc", "-c"], Some(&[b'x'; 3000]));
    assert_eq!(stdout(&o).trim(), "3000", "stderr: {}", stderr(&o));
    let o = d.in_a_terminal(20, 70, "exec -t e stty size");
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert_eq!(lines.last().copied(), Some("20 70"), "{out:?}");
    assert_eq!(o.status.code(), Some(0), "{out:?}");
    let o = d.run(&["exec", "nope", "true"]);
    assert!(
        stderr(&o).contains("No such container: nope"),
        "{}",
        stderr(&o)
    );
    assert_eq!(d.ok(&["rm", "-f", "e"]).trim(), "e");

    // Attached later to a running container: its input, and its output
    // from then on; the end of stdin ends it.
    d.ok(&[
        "run",
        "-d",
        "-i",
        "--name",
        "a",
        "busybox",
        "sh",
        "-c",
        "echo early; cat",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while stdout(&d.run(&["logs", "a"])) != "early\n" {
        assert!(std::time::Instant::now() < deadline, "never started");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let o = d.run_with_stdin(&["attach", "a"], Some(b"late\n"));
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "late\n", "only what came after the attach");
    assert_eq!(d.ok(&["wait", "a"]).trim(), "0");
    assert_eq!(d.ok(&["logs", "a"]), "early\nlate\n");
}

#[test]
fn rm_is_carried_out_by_a_restarted_server() {
    let mut d = Docker::start();
    d.ok(&["run", "-d", "--rm", "--name", "r", "busybox", "sleep", "3"]);
    d.server.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let left = d.ok(&["ps", "-a", "-q"]);
        if left.trim().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still there after the restart: {left}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Polls `docker logs NAME` until it holds `what`.
fn logs_hold(d: &Docker, name: &str, what: &str) {
    for _ in 0..600 {
        if d.ok(&["logs", name]).contains(what) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!(
        "{name}'s logs never held {what:?}: {:?}",
        d.ok(&["logs", name])
    );
}

#[test]
fn stop_and_restart_take_their_own_signal_and_timeout() {
    let d = Docker::start();
    // It ignores TERM and waits up to 600 s by its own settings: a stop
    // that used them would outlast the CLI's 300 s limit.
    let script = "trap '' TERM; trap 'echo got INT; exit 7' INT; echo ready; \
                  while :; do sleep 1; done";
    let run = |name: &str| {
        d.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--stop-timeout",
            "600",
            "busybox",
            "sh",
            "-c",
            script,
        ]);
        logs_hold(&d, name, "ready");
    };
    run("sig");
    assert_eq!(d.ok(&["stop", "-s", "SIGINT", "sig"]).trim(), "sig");
    assert_eq!(d.ok(&["wait", "sig"]).trim(), "7");
    assert!(d.ok(&["logs", "sig"]).contains("got INT"));

    run("deaf");
    // A signal that does not exist is refused before anything changes.
    let o = d.run(&["stop", "-s", "NOSUCH", "deaf"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("NOSUCH"), "{}", stderr(&o));
    let state = |name: &str| {
        d.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            name,
        ])
    };
    assert_eq!(state("deaf").trim(), "running 0");
    assert_eq!(d.ok(&["stop", "-t", "1", "deaf"]).trim(), "deaf");
    assert_eq!(state("deaf").trim(), "exited 137");

    // Restart: an exited one starts; a running one stops within -t first.
    assert_eq!(d.ok(&["restart", "-t", "1", "deaf"]).trim(), "deaf");
    assert_eq!(state("deaf").trim(), "running 0");
    logs_hold(&d, "deaf", "ready\nready");
    assert_eq!(d.ok(&["restart", "-t", "1", "deaf"]).trim(), "deaf");
    assert_eq!(state("deaf").trim(), "running 0");
    logs_hold(&d, "deaf", "ready\nready\nready");
    assert_eq!(
        d.ok(&["rm", "-f", "sig", "deaf"])
            .split_whitespace()
            .count(),
        2
    );
    drop(d.server);
}
