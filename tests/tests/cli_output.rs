//! What the CLI prints, and where, end to end: a reader that closes its
//! pipe early ends any command quietly (status 141, no panic, nothing on
//! stderr), and `logs` prints a task's stdout and stderr apart, as `docker
//! logs` does.

use std::io::Read;
use std::process::{Command, Output, Stdio};

use tests::server::{Server, appliance_bin, stderr, stdout};

/// The status of a command whose reader went away (128 + SIGPIPE).
const CLOSED: i32 = 141;

fn new_server() -> (tempfile::TempDir, Server) {
    let d = tempfile::tempdir().expect("tempdir");
    let s = Server::start(d.path());
    (d, s)
}

fn command(s: &Server, args: &[&str]) -> Command {
    let mut c = Command::new("timeout");
    c.arg("600")
        .arg(appliance_bin())
        .arg("--state")
        .arg(&s.state)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Runs the CLI with a stdout whose reader has gone before it starts.
fn with_closed_stdout(s: &Server, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    command(s, args)
        .stdout(writer)
        .output()
        .expect("run appliance")
}

/// Runs the CLI into a reader that takes `n` bytes and closes.
fn into_short_reader(s: &Server, args: &[&str], n: usize) -> (Output, Vec<u8>) {
    let mut child = command(s, args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn appliance");
    let mut head = vec![0u8; n];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut head)
        .expect("the first bytes");
    // The pipe's read end is closed here.
    (child.wait_with_output().expect("appliance output"), head)
}

fn assert_quiet(args: &[&str], o: &Output) {
    let err = stderr(o);
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert_eq!(o.status.code(), Some(CLOSED), "{args:?}: {err}");
    assert_eq!(err, "", "{args:?}");
}

#[test]
fn a_reader_that_closes_early_ends_every_command_quietly() {
    let (_d, s) = new_server();
    let o = s.cli(&[
        "run",
        "-d",
        "--name",
        "loud",
        "busybox",
        "--",
        "sh",
        "-c",
        "seq 1 200000; seq 1 200000 >&2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let w = s.cli(&["wait", "loud"]);
    assert_eq!(stdout(&w).trim(), "0", "{}", stderr(&w));
    let o = s.cli(&["volume", "create", "-s", "16M", "data"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Every command that prints, with its stdout gone from the start.
    let many: Vec<&str> = std::iter::once("inspect")
        .chain(std::iter::repeat_n("loud", 500))
        .collect();
    for args in [
        &["inspect", "loud"][..],
        &many,
        &["ps", "-a"],
        &["ps", "-a", "-q"],
        &["images"],
        &["images", "--stores"],
        &["volume", "ls"],
        &["volume", "inspect", "data"],
        &["wait", "loud"],
        &["logs", "loud"],
        &["logs", "-f", "--tail", "5", "loud"],
        &["events", "--since", "0"],
        &["create", "busybox", "true"],
        &["cp", "loud:/etc/hostname", "-"],
        &["run", "--rm", "busybox", "--", "seq", "1", "100000"],
    ] {
        assert_quiet(args, &with_closed_stdout(&s, args));
    }
    // A stop of several that cannot print still acts on each.
    let o = s.cli(&["create", "--name", "a", "busybox", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(&["create", "--name", "b", "busybox", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let args = ["rm", "a", "b"];
    assert_quiet(&args, &with_closed_stdout(&s, &args));
    let (code, _) = s.http("GET", "/exec/containers/b", None);
    assert_eq!(code, 404, "b was removed too");

    // Readers that take the start of a lot of output.
    for args in [&many[..], &["logs", "loud"]] {
        let (o, head) = into_short_reader(&s, args, 100);
        assert_eq!(head.len(), 100);
        assert_quiet(args, &o);
    }
    let args = ["run", "--rm", "busybox", "--", "seq", "1", "1000000"];
    let (o, head) = into_short_reader(&s, &args, 4);
    assert_eq!(head, b"1\n2\n");
    assert_quiet(&args, &o);
    assert!(s.cli(&["rm", "loud"]).status.success());
}

/// `logs` and `logs -f`: the task's stdout on stdout, its stderr on
/// stderr, each whole and in order.
#[test]
fn logs_print_stdout_and_stderr_apart() {
    let (_d, s) = new_server();
    let o = s.cli(&[
        "run",
        "-d",
        "--name",
        "two",
        "busybox",
        "--",
        "sh",
        "-c",
        "i=1; while [ $i -le 2000 ]; do echo out $i; echo err $i >&2; i=$((i+1)); done; exit 4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = |stream: &str| -> String { (1..=2000).map(|i| format!("{stream} {i}\n")).collect() };
    // Followed from while it runs, and read once it has exited.
    let f = s.cli(&["logs", "-f", "two"]);
    let w = s.cli(&["wait", "two"]);
    assert_eq!(stdout(&w).trim(), "4", "{}", stderr(&w));
    let l = s.cli(&["logs", "two"]);
    for (what, o) in [("logs -f", &f), ("logs", &l)] {
        assert!(o.status.success(), "{what}: {}", stderr(o));
        assert!(stdout(o) == want("out"), "{what} stdout:\n{}", stdout(o));
        assert!(stderr(o) == want("err"), "{what} stderr:\n{}", stderr(o));
    }
    let t = s.cli(&["logs", "--tail", "2", "two"]);
    assert_eq!(stdout(&t), "out 1999\nout 2000\n", "{}", stderr(&t));
    assert_eq!(stderr(&t), "err 1999\nerr 2000\n");
    assert!(s.cli(&["rm", "two"]).status.success());
}

#[test]
fn a_container_started_again_appends_to_its_log_and_start_a_prints_the_new_run() {
    let (_d, s) = new_server();
    let o = s.cli(&[
        "create",
        "--name",
        "again",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo run $(cat /proc/sys/kernel/random/uuid); echo err >&2; exit 3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut runs = Vec::new();
    for _ in 0..2 {
        let o = s.cli(&["start", "-a", "again"]);
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        let out = stdout(&o);
        assert_eq!(out.lines().count(), 1, "only this run's output: {out:?}");
        assert!(out.starts_with("run "), "{out:?}");
        assert_eq!(stderr(&o), "err\n");
        runs.push(out);
    }
    assert_ne!(runs[0], runs[1], "two runs, two ids");
    // The log holds both runs, in order, each byte once.
    let l = s.cli(&["logs", "again"]);
    assert_eq!(stdout(&l), runs.concat(), "{}", stderr(&l));
    assert_eq!(stderr(&l), "err\nerr\n");
    assert!(s.cli(&["rm", "again"]).status.success());
}
