//! Output of any size, end to end: through `appliance serve`, the CLI and
//! real container VMs (TCG), every byte arrives in order (checked against
//! the checksum of the known stream), memory stays bounded, and a session
//! whose output nobody reads holds up nothing else.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tests::server::{Server, appliance_bin, stderr, stdout};

/// One block of the known stream: `seq 1 100000` (588,895 bytes).
fn block() -> Vec<u8> {
    (1..=100_000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect()
}
const BLOCK: u64 = 588_895;

/// A guest shell command writing `blocks` numbered blocks to stdout.
fn generator(blocks: u64) -> String {
    format!(
        "seq 1 100000 > /tmp/block; i=0; while [ $i -lt {blocks} ]; do \
         echo \"block $i\"; cat /tmp/block; i=$((i+1)); done"
    )
}

/// Length and SHA-256 of what `generator(blocks)` writes; with `crlf`, as a
/// terminal shows it (each `\n` becomes `\r\n`).
fn expected(blocks: u64, crlf: bool) -> (u64, String) {
    let b = block();
    let b = if crlf { to_crlf(&b) } else { b };
    let mut h = Sha256::new();
    let mut len = 0;
    for i in 0..blocks {
        let head = format!("block {i}\n").into_bytes();
        let head = if crlf { to_crlf(&head) } else { head };
        h.update(&head);
        h.update(&b);
        len += (head.len() + b.len()) as u64;
    }
    (len, format!("{:x}", h.finalize()))
}

fn to_crlf(b: &[u8]) -> Vec<u8> {
    b.iter()
        .flat_map(|&c| {
            if c == b'\n' {
                vec![b'\r', b'\n']
            } else {
                vec![c]
            }
        })
        .collect()
}

fn digest(b: &[u8]) -> (u64, String) {
    (b.len() as u64, format!("{:x}", Sha256::digest(b)))
}

fn new_server() -> (tempfile::TempDir, Server) {
    let d = tempfile::tempdir().expect("tempdir");
    let s = Server::start(d.path());
    (d, s)
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn run_delivers_256_mib_of_stdout_whole_and_in_order_with_bounded_memory() {
    let (_d, s) = new_server();
    let blocks = 456; // 268.6 MB
    let before = peak_rss_kib(s.pid());
    let o = s.cli(&[
        "run",
        "--rm",
        "busybox",
        "--",
        "sh",
        "-c",
        &generator(blocks),
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(digest(&o.stdout), expected(blocks, false));
    // The server holds a window per stream, not the output.
    let grown = peak_rss_kib(s.pid()).saturating_sub(before);
    assert!(
        grown < 96 << 10,
        "appliance serve grew by {grown} KiB while moving {} MiB",
        (blocks * BLOCK) >> 20
    );
}

#[test]
fn logs_of_a_detached_container_hold_64_mib_of_stderr() {
    let (_d, s) = new_server();
    let blocks = 114; // 67.1 MB
    let script = format!("({}) >&2", generator(blocks));
    let o = s.cli(&[
        "run", "-d", "--name", "loud", "busybox", "--", "sh", "-c", &script,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let w = s.cli(&["wait", "loud"]);
    assert_eq!(stdout(&w).trim(), "0", "{}", stderr(&w));
    let l = s.cli(&["logs", "loud"]);
    assert!(l.status.success(), "{}", stderr(&l));
    // (`logs` prints the task's stderr on its stderr.)
    assert_eq!(digest(&l.stderr), expected(blocks, false));
    assert!(l.stdout.is_empty());
    // The server stored it as stderr.
    let (code, out) = s.http(
        "GET",
        "/interaction/containers/loud/logs?stderr=false",
        None,
    );
    assert_eq!((code, out.as_str()), (200, ""));
    assert!(s.cli(&["rm", "loud"]).status.success());
}

#[test]
fn a_terminal_carries_64_mib() {
    let (_d, s) = new_server();
    let blocks = 114;
    let o = s.cli(&[
        "run",
        "--rm",
        "-t",
        "busybox",
        "--",
        "sh",
        "-c",
        &generator(blocks),
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(digest(&o.stdout), expected(blocks, true));
}

/// An attach over the API whose client never reads: its WebSocket, then
/// its share of the stream, stay full.
fn stalled_attach(s: &Server, id: &str) -> UnixStream {
    let mut c = UnixStream::connect(s.socket()).expect("connect");
    write!(
        c,
        "GET /interaction/containers/{id}/attach HTTP/1.1\r\nHost: appliance\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .expect("upgrade request");
    let mut head = [0u8; 12];
    c.read_exact(&mut head).expect("upgrade answer");
    assert_eq!(&head, b"HTTP/1.1 101", "{}", String::from_utf8_lossy(&head));
    c
}

#[test]
fn an_exec_gets_64_mib_while_the_primary_floods_and_a_stalled_attach_blocks_nothing() {
    let (_d, s) = new_server();
    // The primary floods forever; an attach that never reads hangs on it.
    let o = s.cli(&[
        "run",
        "-d",
        "--name",
        "flood",
        "busybox",
        "--",
        "sh",
        "-c",
        "yes flood",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    let _stalled = stalled_attach(&s, &id);
    std::thread::sleep(Duration::from_secs(3));

    // RPCs still answer.
    let t0 = Instant::now();
    let e = s.cli(&["exec", "flood", "--", "echo", "still here"]);
    assert_eq!(stdout(&e), "still here\n", "{}", stderr(&e));
    eprintln!(
        "exec answered in {:?} beside a stalled attach",
        t0.elapsed()
    );

    // An exec's own 64 MiB arrive whole.
    let blocks = 114;
    let e = s.cli(&["exec", "flood", "--", "sh", "-c", &generator(blocks)]);
    assert_eq!(e.status.code(), Some(0), "{}", stderr(&e));
    assert_eq!(digest(&e.stdout), expected(blocks, false));

    // The primary's output kept flowing into its log meanwhile.
    let l1 = log_size(&s, &id);
    std::thread::sleep(Duration::from_secs(2));
    assert!(log_size(&s, &id) > l1, "the primary's log stopped growing");

    // The tether's memory stayed bounded: a window per stream, not the
    // output (it keeps at most 16 MiB per stream unacknowledged).
    let st = s.cli(&["exec", "flood", "--", "grep", "VmHWM", "/proc/1/status"]);
    let kib: u64 = stdout(&st)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("VmHWM of the tether: {}", stdout(&st)));
    assert!(kib < 96 << 10, "the tether peaked at {kib} KiB");

    // And removing it answers at once.
    let t0 = Instant::now();
    let r = s.cli(&["rm", "-f", "flood"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "rm -f took {:?}",
        t0.elapsed()
    );
}

fn log_size(s: &Server, id: &str) -> u64 {
    let p = s
        .state
        .join("containers")
        .join(&id[..12])
        .join("logs")
        .join(format!("{id}.log"));
    std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0)
}

/// stdin a process does not read never holds up the connection, and EOF
/// still reaches it once it reads.
#[test]
fn unread_stdin_blocks_nothing_and_eof_follows_it() {
    let (_d, s) = new_server();
    // The process reads nothing for a while, then counts what it got.
    let mut c = Command::new(appliance_bin())
        .arg("--state")
        .arg(&s.state)
        .args([
            "run",
            "--rm",
            "-i",
            "--name",
            "slow",
            "busybox",
            "--",
            "sh",
            "-c",
            "while [ ! -e /tmp/go ]; do sleep 0.2; done; wc -c",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let mut input = c.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..16 {
            input.write_all(&chunk).expect("stdin");
        }
    });
    // Wait for the container to be running, then make sure RPCs answer
    // while 16 MiB of stdin wait for the process.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let e = s.cli(&["exec", "slow", "--", "echo", "ok"]);
        if stdout(&e) == "ok\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "exec never answered: {}",
            stderr(&e)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    let e = s.cli(&["exec", "slow", "--", "echo", "still ok"]);
    assert_eq!(stdout(&e), "still ok\n", "{}", stderr(&e));
    assert!(
        s.cli(&["exec", "slow", "--", "touch", "/tmp/go"])
            .status
            .success()
    );
    writer.join().expect("writer");
    let o = c.wait_with_output().expect("run");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), (16u64 << 20).to_string());
}

/// A `cp` out of a container whose client stops reading holds up only
/// itself: the container's RPCs and logs keep moving.
#[test]
fn a_stalled_copy_out_blocks_nothing() {
    let (_d, s) = new_server();
    let o = s.cli(&[
        "run", "-d", "--name", "files", "busybox", "--", "sh", "-c",
        "dd if=/dev/zero of=/big bs=1M count=64 2>/dev/null; echo made; while true; do echo tick; sleep 0.2; done",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stdout(&s.cli(&["logs", "files"])).contains("made") {
        assert!(Instant::now() < deadline, "the file was never made");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Ask for the 64 MiB tar and read only the start of the answer.
    let mut c = UnixStream::connect(s.socket()).expect("connect");
    write!(
        c,
        "GET /storage/archive/{id}?path=/big HTTP/1.1\r\nHost: appliance\r\n\r\n"
    )
    .expect("request");
    let mut head = [0u8; 12];
    c.read_exact(&mut head).expect("answer");
    assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
    std::thread::sleep(Duration::from_secs(3));

    let e = s.cli(&["exec", "files", "--", "echo", "still here"]);
    assert_eq!(stdout(&e), "still here\n", "{}", stderr(&e));
    let l1 = log_size(&s, &id);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        log_size(&s, &id) > l1,
        "the log stopped growing beside a stalled copy"
    );
    drop(c);
    assert!(s.cli(&["rm", "-f", "files"]).status.success());
}

/// Waits for a CLI started with `cli_spawn` for `bound` at most; `None` if
/// it has not ended by then (it is killed, by its PID).
fn wait_bounded(mut c: std::process::Child, bound: Duration) -> Option<std::process::Output> {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if c.try_wait().expect("try_wait").is_some() {
            return Some(c.wait_with_output().expect("output"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.kill();
    let _ = c.wait();
    None
}

/// A `cp` into a container whose unpacking cannot go on (its target file
/// system is frozen) holds up only itself: an exec in the same container
/// answers and the primary's output keeps flowing; once the file system
/// thaws, the copy completes, whole.
#[test]
fn a_stalled_copy_in_blocks_nothing() {
    let (_d, s) = new_server();
    let o = s.cli(&["volume", "create", "-s", "256M", "frozen"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(&[
        "run",
        "-d",
        "--name",
        "files",
        "-v",
        "frozen:/data",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo up; while true; do echo tick; sleep 0.2; done",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stdout(&s.cli(&["logs", "files"])).contains("up") {
        assert!(Instant::now() < deadline, "the container never came up");
        std::thread::sleep(Duration::from_millis(500));
    }
    // 48 MiB that do not compress, well past every buffer on the way
    // (the SSH window, the channel queues, the tether's upload window).
    let local = tempfile::tempdir().expect("tempdir");
    let big = local.path().join("big");
    let mut data = Vec::with_capacity(48 << 20);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while data.len() < 48 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&big, &data).expect("write the file to copy");
    let want = format!("{:x}", Sha256::digest(&data));
    drop(data);

    let o = s.cli(&["exec", "files", "--", "fsfreeze", "--freeze", "/data"]);
    assert!(o.status.success(), "fsfreeze: {}", stderr(&o));
    let mut cp = s.cli_spawn(&["cp", &big.to_string_lossy(), "files:/data"]);
    std::thread::sleep(Duration::from_secs(5));

    let e = wait_bounded(
        s.cli_spawn(&["exec", "files", "--", "echo", "still here"]),
        Duration::from_secs(60),
    )
    .expect("an exec beside a stalled copy-in did not answer within 60 s");
    assert_eq!(stdout(&e), "still here\n", "{}", stderr(&e));
    let l1 = log_size(&s, &id);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        log_size(&s, &id) > l1,
        "the log stopped growing beside a stalled copy-in"
    );
    // The file system really held the copy up.
    assert!(
        cp.try_wait().expect("try_wait").is_none(),
        "the copy ended while its target was frozen"
    );

    let thaw = wait_bounded(
        s.cli_spawn(&["exec", "files", "--", "fsfreeze", "--unfreeze", "/data"]),
        Duration::from_secs(60),
    )
    .expect("unfreezing did not answer within 60 s");
    assert!(thaw.status.success(), "unfreeze: {}", stderr(&thaw));
    let cp = wait_bounded(cp, Duration::from_secs(300)).expect("the copy never completed");
    assert!(cp.status.success(), "cp: {}", stderr(&cp));
    let sum = s.cli(&["exec", "files", "--", "sha256sum", "/data/big"]);
    assert_eq!(
        stdout(&sum).split_whitespace().next(),
        Some(want.as_str()),
        "{}",
        stderr(&sum)
    );
    assert!(s.cli(&["rm", "-f", "files"]).status.success());
}
