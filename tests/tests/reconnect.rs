//! Clients that outlive their appliance: `appliance serve` is killed
//! (SIGKILL) while a foreground `run` and a `logs -f` stream a container's
//! output, and started again a few seconds later on the same state. The
//! VMs run on, the new server re-adopts them, and each client reconnects and
//! prints the whole output, in order, once, with the right exit code.

use std::io::Read;
use std::process::{Child, ChildStderr, ChildStdout};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tests::server::{Server, stderr};

/// Lines before the gate (printed before the server is killed), and in all.
const BEFORE: u32 = 20;
const LINES: u32 = 200;
/// The container's exit code.
const CODE: i32 = 3;

/// Prints `out N` on stdout and `err N` on stderr for N = 1..=BEFORE, waits
/// for `/tmp/go`, then prints the rest over about 18 s (a tenth of a second
/// a line), and exits with CODE.
fn script() -> String {
    format!(
        "i=1; while [ $i -le {BEFORE} ]; do echo out $i; echo err $i >&2; i=$((i+1)); done; \
         while [ ! -e /tmp/go ]; do sleep 0.1; done; \
         while [ $i -le {LINES} ]; do echo out $i; echo err $i >&2; i=$((i+1)); sleep 0.1; done; \
         exit {CODE}"
    )
}

fn expected(stream: &str) -> String {
    (1..=LINES).map(|i| format!("{stream} {i}\n")).collect()
}

/// A running client whose stdout and stderr are collected as they come.
struct Client {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().expect("buffer").extend_from_slice(&buf[..n]);
        }
    })
}

impl Client {
    fn start(s: &Server, args: &[&str]) -> Client {
        let mut child = s.cli_spawn(args);
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let stderr: ChildStderr = child.stderr.take().expect("stderr");
        let readers = vec![collect(stdout, out.clone()), collect(stderr, err.clone())];
        Client {
            child,
            out,
            err,
            readers,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().expect("buffer")).into_owned()
    }

    /// Waits (bounded) until the client has printed `line` on stdout.
    fn wait_for(&mut self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !self.stdout().contains(line) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the client ended ({status}) before printing {line:?}; stdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    String::from_utf8_lossy(&self.err.lock().expect("buffer"))
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} within 300 s; stdout so far:\n{}",
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the end: (exit code, stdout, stderr).
    fn finish(mut self) -> (Option<i32>, String, String) {
        let status = self.child.wait().expect("client status");
        for r in self.readers.drain(..) {
            r.join().expect("reader");
        }
        let out = self.stdout();
        let err = String::from_utf8_lossy(&self.err.lock().expect("buffer")).into_owned();
        (status.code(), out, err)
    }
}

/// What the client printed on stderr, without its own messages.
fn task_stderr(err: &str) -> String {
    err.lines()
        .filter(|l| !l.starts_with("appliance:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn run_and_logs_follow_survive_a_killed_appliance() {
    let d = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start(d.path());
    let script = script();
    let o = s.cli(&[
        "run", "-d", "--name", "bg", "busybox", "--", "sh", "-c", &script,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut logs = Client::start(&s, &["logs", "-f", "bg"]);
    let mut run = Client::start(
        &s,
        &[
            "run", "--rm", "--name", "fg", "busybox", "--", "sh", "-c", &script,
        ],
    );
    let gate = format!("out {BEFORE}\n");
    run.wait_for(&gate);
    logs.wait_for(&gate);
    // Both containers now print the rest, for about 18 s.
    for c in ["fg", "bg"] {
        let o = s.cli(&["exec", c, "--", "touch", "/tmp/go"]);
        assert!(o.status.success(), "exec in {c}: {}", stderr(&o));
    }
    s.kill9();
    // Output goes on while no appliance listens; the tethers keep it.
    std::thread::sleep(Duration::from_secs(3));
    s.restart();

    let (code, out, err) = run.finish();
    assert_eq!(code, Some(CODE), "run's stderr:\n{err}");
    assert!(out == expected("out"), "run's stdout:\n{out}");
    assert!(task_stderr(&err) == expected("err"), "run's stderr:\n{err}");
    assert_eq!(
        err.matches("reconnecting").count(),
        1,
        "one line says it: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let (code, out, err) = logs.finish();
    assert_eq!(code, Some(0), "logs' stderr:\n{err}");
    assert!(out == expected("out"), "logs' stdout:\n{out}");
    assert!(task_stderr(&err) == expected("err"), "logs' stderr:\n{err}");
    assert!(err.contains("reconnecting"), "{err}");

    // `--rm` still removed the foreground container.
    let (code, _) = s.http("GET", "/exec/containers/fg", None);
    assert_eq!(code, 404);
    assert!(s.cli(&["rm", "-f", "bg"]).status.success());
}
