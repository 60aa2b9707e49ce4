//! End to end: the tether as PID 1 of a real microVM (QEMU TCG), driven over
//! its SSH channel exactly as the appliance does.

use std::time::Duration;

use appliance::backend::local::VmError;
use appliance::tether::{AttachEvent, ClientError};
use proto::v1::{SessionSpec, WindowSize, session_status::State};
use tests::*;

const T: Duration = Duration::from_secs(60);

/// Long-running primary so that execs have a running container.
fn idle() -> SessionSpec {
    session("main", &["sleep", "100000"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_arrive_separately_then_the_vm_powers_off() {
    let mut vm = boot(session(
        "main",
        &[
            "sh",
            "-c",
            "echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 3",
        ],
    ))
    .await;
    let out = vm
        .client
        .attach("main", (0, 0), false)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out1\nout2\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err1\nerr2\n");
    assert_eq!(out.exit_code, Some(3));
    // Everything was acknowledged by the attach: the tether powers off.
    assert!(
        vm.powered_off(T).await,
        "VM still running; console:\n{}",
        vm.console()
    );
    let console = vm.console();
    let starting = console
        .find("tether 0.1.0 starting")
        .expect("starting line");
    let ready = console.find("tether ready").expect("ready line");
    assert!(starting < ready, "{console}");
    assert!(
        console.contains("primary session exited with code 3"),
        "{console}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_are_exact() {
    let vm = boot(idle()).await;
    let cases: &[(&[&str], i32)] = &[
        (&["sh", "-c", "exit 0"], 0),
        (&["sh", "-c", "exit 3"], 3),
        (&["nosuchcommand"], 127),
        (&["/bin/nosuch"], 127),
        (&["/bin/notexec"], 126),
        (&["/etc"], 126),
        (&["sh", "-c", "kill -9 $$"], 137),
        (&["sh", "-c", "kill -TERM $$"], 143),
    ];
    for (i, (args, want)) in cases.iter().enumerate() {
        let id = format!("x{i}");
        vm.client.exec(session(&id, args)).await.unwrap();
        let st = vm.client.wait(&id).await.unwrap();
        assert_eq!(st.exit_code, *want, "{args:?}: {st:?}");
    }
    // A command that cannot start says why on stderr, like a shell.
    let out = vm
        .client
        .attach("x2", (0, 0), false)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nosuchcommand: executable file not found"),
        "{out:?}"
    );
    let st = vm.client.status("x4").await.unwrap().sessions.remove(0);
    assert_eq!(st.state, State::Failed as i32);
    assert!(st.error.contains("permission denied"), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_round_trip_and_close_gives_eof() {
    let vm = boot(idle()).await;
    let mut cat = session("cat", &["cat"]);
    cat.open_stdin = true;
    vm.client.exec(cat).await.unwrap();
    let mut a = vm.client.attach("cat", (0, 0), true).await.unwrap();
    a.write_stdin(b"hello ").await.unwrap();
    a.write_stdin(b"tether\n").await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"tether\n") {
        match a.next().await.unwrap() {
            Some(AttachEvent::Stdout(b)) => got.extend_from_slice(&b),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, b"hello tether\n");
    a.close_stdin().await.unwrap();
    let rest = a.collect().await.unwrap();
    assert_eq!(rest.exit_code, Some(0), "cat must end on EOF: {rest:?}");

    // Close-stdin over RPC works as well.
    let mut wc = session("wc", &["wc", "-c"]);
    wc.open_stdin = true;
    vm.client.exec(wc).await.unwrap();
    let a = vm.client.attach("wc", (0, 0), true).await.unwrap();
    a.write_stdin(&[b'x'; 100_000]).await.unwrap();
    // The data is queued on the channel; wait until wc has it all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    vm.client.close_stdin("wc").await.unwrap();
    let out = a.collect().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "100000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_without_output_carries_stdin_and_the_exit_code_only() {
    // Beside a followed log, the host attaches for input alone: the guest
    // must not send the output on it a second time.
    let vm = boot(idle()).await;
    let mut cat = session("cat", &["cat"]);
    cat.open_stdin = true;
    vm.client.exec(cat).await.unwrap();
    let reader = vm.client.attach("cat", (0, 0), false).await.unwrap();
    let input = vm.client.attach_without_output("cat", true).await.unwrap();
    input.write_stdin(b"hello once\n").await.unwrap();
    input.close_stdin().await.unwrap();
    let out = reader.collect().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello once\n");
    assert_eq!(out.exit_code, Some(0));
    let rest = input.collect().await.unwrap();
    assert!(
        rest.stdout.is_empty() && rest.stderr.is_empty(),
        "output on the input attach: {rest:?}"
    );
    assert_eq!(rest.exit_code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_session_sees_resize() {
    let vm = boot(idle()).await;
    let mut sh = session(
        "tty",
        &[
            "sh",
            "-c",
            "stty size; read x; stty size; test -t 0 && echo isatty",
        ],
    );
    sh.tty = true;
    sh.open_stdin = true;
    sh.window = Some(WindowSize { rows: 24, cols: 80 });
    vm.client.exec(sh).await.unwrap();
    let mut a = vm.client.attach("tty", (0, 0), true).await.unwrap();
    let mut text = String::new();
    while !text.contains("24 80") {
        match a.next().await.unwrap() {
            Some(AttachEvent::Stdout(b)) => text.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("unexpected {other:?} after {text:?}"),
        }
    }
    a.resize(40, 132).await.unwrap();
    // The resize travels on the channel before the newline does.
    a.write_stdin(b"\n").await.unwrap();
    let out = a.collect().await.unwrap();
    let text = format!("{text}{}", String::from_utf8_lossy(&out.stdout));
    assert!(text.contains("40 132"), "{text:?}");
    assert!(text.contains("isatty"), "{text:?}");
    assert!(out.stderr.is_empty(), "a tty session has one stream");
    assert_eq!(out.exit_code, Some(0));

    // Resize over RPC of a session without a terminal is refused.
    let err = vm.client.resize("main", 10, 10).await.unwrap_err();
    assert!(err.to_string().contains("no terminal"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_as_a_user_from_the_containers_passwd() {
    let vm = boot(idle()).await;
    let mut s = session("who", &["sh", "-c", "id -u; id -g; echo $HOME; id -G; pwd"]);
    s.user = "app".into();
    s.working_dir = "/tmp".into();
    vm.client.exec(s).await.unwrap();
    let out = vm
        .client
        .attach("who", (0, 0), false)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1000\n1000\n/home/app\n1000 100\n/tmp\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut s = session("ghost", &["true"]);
    s.user = "ghost".into();
    vm.client.exec(s).await.unwrap();
    let st = vm.client.wait("ghost").await.unwrap();
    assert_eq!(st.exit_code, 126);
    assert!(st.error.contains("\"ghost\" not found"), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_shares_the_running_container() {
    let vm = boot(session(
        "main",
        &["sh", "-c", "echo from-primary > /tmp/mark; sleep 100000"],
    ))
    .await;
    // Wait for the primary to write its mark, then read it from an exec.
    let mut seen = String::new();
    for i in 0..100 {
        let id = format!("cat{i}");
        vm.client
            .exec(session(&id, &["cat", "/tmp/mark"]))
            .await
            .unwrap();
        let out = vm
            .client
            .attach(&id, (0, 0), false)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        seen = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.exit_code == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, "from-primary\n");
    let hostname = vm.client.exec(session("h", &["hostname"])).await.unwrap();
    assert_eq!(hostname.state, State::Running as i32);
    let out = vm
        .client
        .attach("h", (0, 0), false)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "testvm\n");
    // Session ids are unique.
    let err = vm.client.exec(session("h", &["true"])).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Remote { ref element, .. } if element == "h"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_reach_the_process_and_stop_escalates() {
    let vm = boot(idle()).await;
    let trap = "trap 'echo got-usr1; exit 7' USR1; echo ready; while true; do sleep 0.1; done";
    vm.client
        .exec(session("sig", &["sh", "-c", trap]))
        .await
        .unwrap();
    let mut a = vm.client.attach("sig", (0, 0), false).await.unwrap();
    assert_eq!(
        a.next().await.unwrap(),
        Some(AttachEvent::Stdout("ready\n".into()))
    );
    vm.client.signal("sig", 10).await.unwrap();
    let out = a.collect().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got-usr1\n");
    assert_eq!(out.exit_code, Some(7));

    // A signal on the attach channel (SSH "signal" request).
    vm.client
        .exec(session("sig2", &["sh", "-c", trap]))
        .await
        .unwrap();
    let mut a = vm.client.attach("sig2", (0, 0), false).await.unwrap();
    assert_eq!(
        a.next().await.unwrap(),
        Some(AttachEvent::Stdout("ready\n".into()))
    );
    a.signal(russh::Sig::USR1).await.unwrap();
    assert_eq!(a.collect().await.unwrap().exit_code, Some(7));

    // Stop: the stop signal ends a cooperative process...
    vm.client
        .exec(session("sleepy", &["sleep", "1000"]))
        .await
        .unwrap();
    let st = vm
        .client
        .stop("sleepy", 0, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(st.exit_code, 128 + 15);
    // ...and one that ignores it is killed after the grace period.
    let stubborn = "trap '' TERM; echo ready; while true; do sleep 0.1; done";
    vm.client
        .exec(session("stubborn", &["sh", "-c", stubborn]))
        .await
        .unwrap();
    let mut a = vm.client.attach("stubborn", (0, 0), false).await.unwrap();
    assert_eq!(
        a.next().await.unwrap(),
        Some(AttachEvent::Stdout("ready\n".into()))
    );
    let t0 = std::time::Instant::now();
    let st = vm
        .client
        .stop("stubborn", 0, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(st.exit_code, 137);
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "SIGKILL came before the grace period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_is_kept_until_acknowledged() {
    let vm = boot(idle()).await;
    // 3 MB, far more than a pipe holds, written before anyone attaches.
    vm.client
        .exec(session(
            "big",
            &[
                "sh",
                "-c",
                "head -c 3000000 /dev/zero | tr '\\0' x; echo tail >&2",
            ],
        ))
        .await
        .unwrap();
    let st = vm.client.wait("big").await.unwrap();
    assert_eq!((st.stdout_offset, st.stdout_acked), (3_000_000, 0));
    // Read part, drop the attach without acknowledging, resume from there.
    let mut a = vm
        .client
        .attach("big", (0, 0), false)
        .await
        .unwrap()
        .manual_ack();
    let mut first = 0u64;
    while first < 100_000 {
        if let Some(AttachEvent::Stdout(b)) = a.next().await.unwrap() {
            first += b.len() as u64;
        }
    }
    drop(a);
    vm.client.ack("big", first, 0).await.unwrap();
    let err = vm
        .client
        .attach("big", (0, 0), false)
        .await
        .err()
        .expect("acknowledged output is gone");
    assert!(matches!(err, ClientError::ChannelRefused(_)), "{err}");
    let rest = vm
        .client
        .attach("big", (first, 0), false)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(first + rest.stdout.len() as u64, 3_000_000);
    assert!(rest.stdout.iter().all(|b| *b == b'x'));
    assert_eq!(rest.stderr, b"tail\n");
    let st = vm.client.status("big").await.unwrap().sessions.remove(0);
    assert_eq!((st.stdout_acked, st.stderr_acked), (3_000_000, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(&dir, idle());
    let (mut launched, right) = launch(&opts);
    let wrong = appliance::keys::generate().unwrap();
    let err = launched
        .connect(&wrong, BOOT_TIMEOUT)
        .await
        .err()
        .expect("wrong key must fail");
    assert!(
        matches!(&err, VmError::Connect { source, .. } if matches!(**source, ClientError::Refused)),
        "{err}"
    );
    // The tether keeps serving: the right key still gets in.
    let client = launched.connect(&right, BOOT_TIMEOUT).await.unwrap();
    assert_eq!(client.version().await.unwrap().protocol, "tether.v1");
    assert_eq!(client.ping(b"abc".to_vec()).await.unwrap(), b"abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_iso_boots_as_a_cdrom_under_q35() {
    let vm = boot_iso(session(
        "main",
        &["sh", "-c", "echo booted from the iso; cat /proc/cmdline"],
    ))
    .await;
    let out = vm
        .client
        .attach("main", (0, 0), false)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("booted from the iso\n"), "{text}");
    assert!(
        text.contains("initrd=/initrd.img"),
        "not booted through isolinux: {text}"
    );
    assert!(vm.console().contains("tether ready"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_config_prints_an_error_and_powers_off() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(&dir, idle());
    let (mut launched, _key) = launch(&opts);
    // Replace the spec with bytes that are not a ContainerSpec before the
    // guest reads it: QEMU reads the file at start, so restart it.
    launched.vm.kill().await.unwrap();
    std::fs::write(dir.path().join("spec.pb"), b"\xff\xff not a spec").unwrap();
    let mut vm =
        appliance::backend::local::qemu::Vm::spawn(launched.vm.config.clone(), false).unwrap();
    let exited = tokio::time::timeout(T, vm.wait()).await;
    let console = vm.console();
    assert!(exited.is_ok(), "VM did not power off; console:\n{console}");
    assert!(console.contains("tether 0.1.0 starting"), "{console}");
    assert!(
        console.contains("tether: error: Boot failed: Decoding the container spec"),
        "{console}"
    );
    assert!(!console.contains("tether ready"), "{console}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_boot_probe_answers_under_tcg() {
    let a = artifacts();
    let ok = appliance::backend::local::accel::probe(
        std::path::Path::new("qemu-system-x86_64"),
        appliance::backend::local::Accel::Tcg,
        &a.kernel,
        &a.initrd,
        BOOT_TIMEOUT,
    )
    .await;
    assert!(ok, "the tether did not answer the probe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_host_connection_resumes_output_where_the_last_one_stopped() {
    let vm = boot(idle()).await;
    let counter = "i=0; while [ $i -lt 400 ]; do echo line$i; i=$((i+1)); sleep 0.01; done";
    vm.client
        .exec(session("count", &["sh", "-c", counter]))
        .await
        .unwrap();
    let mut a = vm
        .client
        .attach("count", (0, 0), false)
        .await
        .unwrap()
        .manual_ack();
    let mut got = Vec::new();
    while got.len() < 200 {
        if let Some(AttachEvent::Stdout(b)) = a.next().await.unwrap() {
            got.extend_from_slice(&b);
        }
    }
    vm.client.ack("count", got.len() as u64, 0).await.unwrap();
    // The host goes away mid-stream (as an appliance restart does)...
    let TestVm {
        mut launched,
        client,
        key,
        dir: _dir,
    } = vm;
    drop(a);
    client.close().await;
    // ...and a new connection carries on from the acknowledged offset.
    let client = launched.connect(&key, BOOT_TIMEOUT).await.unwrap();
    let rest = client
        .attach("count", (got.len() as u64, 0), false)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    got.extend_from_slice(&rest.stdout);
    let want: String = (0..400).map(|i| format!("line{i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&got), want);
    assert_eq!(rest.exit_code, Some(0));
}

/// A host that got the exit status but did not say it stored it (it died
/// first) has not taken it: the finished VM stays up, and powers off once
/// a host acknowledges the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_vm_stays_until_its_exit_status_is_acknowledged() {
    let vm = boot(session("main", &["sh", "-c", "echo bye; exit 5"])).await;
    let mut a = vm
        .client
        .attach("main", (0, 0), false)
        .await
        .unwrap()
        .manual_ack();
    let (mut out, mut code) = (Vec::new(), None);
    while let Some(ev) = a.next().await.unwrap() {
        match ev {
            AttachEvent::Stdout(b) => out.extend_from_slice(&b),
            AttachEvent::Exit(c) => code = Some(c),
            AttachEvent::Stderr(_) => {}
        }
    }
    assert_eq!((out.as_slice(), code), (&b"bye\n"[..], Some(5)));
    // All output acknowledged, the exit status only received.
    vm.client.ack("main", out.len() as u64, 0).await.unwrap();
    let TestVm {
        mut launched,
        client,
        key,
        dir: _dir,
    } = vm;
    drop(a);
    client.close().await;
    let early = tokio::time::timeout(Duration::from_secs(6), launched.vm.wait()).await;
    assert!(
        early.is_err(),
        "the VM powered off with its exit status unacknowledged; console:\n{}",
        launched.vm.console()
    );

    // The next host finds it, stores it (here: holds it) and says so.
    let client = launched.connect(&key, BOOT_TIMEOUT).await.unwrap();
    let st = client.status("main").await.unwrap();
    assert_eq!(st.sessions[0].exit_code, 5);
    assert_eq!(st.sessions[0].stdout_acked, 4);
    client.ack_exit("main", 0, 0).await.unwrap();
    assert!(
        tokio::time::timeout(T, launched.vm.wait()).await.is_ok(),
        "the VM did not power off once everything was acknowledged"
    );
    let console = launched.vm.console();
    assert!(
        console.contains(
            "waiting up to 30s for a host to take: exit status 5 of session main unacknowledged"
        ),
        "{console}"
    );
    assert!(
        console.contains("a host took the output and the exit status"),
        "{console}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_through_qmp() {
    use appliance::backend::local::qmp::Qmp;
    let vm = boot(session(
        "main",
        &[
            "sh",
            "-c",
            "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.05; done",
        ],
    ))
    .await;
    let mut a = vm.client.attach("main", (0, 0), false).await.unwrap();
    assert!(matches!(
        a.next().await.unwrap(),
        Some(AttachEvent::Stdout(_))
    ));
    let qmp_path = vm.launched.vm.config.qmp_socket.clone().unwrap();
    let mut qmp = Qmp::connect(&qmp_path).await.unwrap();
    qmp.pause().await.unwrap();
    assert_eq!(qmp.status().await.unwrap().status, "paused");
    // Drain what was in flight, then nothing more may come while paused.
    while tokio::time::timeout(Duration::from_millis(500), a.next())
        .await
        .is_ok()
    {}
    assert!(
        tokio::time::timeout(Duration::from_secs(2), a.next())
            .await
            .is_err(),
        "output arrived from a paused VM"
    );
    qmp.resume().await.unwrap();
    assert!(qmp.status().await.unwrap().running);
    let ev = tokio::time::timeout(T, a.next())
        .await
        .expect("no output after resume")
        .unwrap();
    assert!(matches!(ev, Some(AttachEvent::Stdout(_))), "{ev:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_logs_hold_every_byte_once_across_a_host_crash() {
    use appliance::interaction::logs::{self, LogWriter, Stream};
    use appliance::interaction::persist;
    let n = 600;
    let counter = format!(
        "i=0; while [ $i -lt {n} ]; do echo line$i; echo err$i >&2; i=$((i+1)); sleep 0.005; done"
    );
    let vm = boot(session("main", &["sh", "-c", &counter])).await;
    let log_path = vm.dir.path().join("main.log");

    // The host follows the session and is killed mid-stream: no final
    // sync, no final acknowledgement.
    let mut w = LogWriter::open(&log_path).unwrap();
    let crashed = tokio::time::timeout(
        Duration::from_millis(1500),
        persist::follow(&vm.client, "main", &mut w),
    )
    .await;
    assert!(
        crashed.is_err(),
        "the session ended before the simulated crash"
    );
    drop(w);
    let TestVm {
        mut launched,
        client,
        key,
        dir: _dir,
    } = vm;
    client.close().await;

    // A new host process resumes from what its log holds.
    let client = launched.connect(&key, BOOT_TIMEOUT).await.unwrap();
    let mut w = LogWriter::open(&log_path).unwrap();
    assert!(w.ends().stdout > 0, "nothing was stored before the crash");
    let code = persist::follow(&client, "main", &mut w).await.unwrap();
    assert_eq!(code, Some(0));

    let records = logs::read(&log_path, &Default::default()).unwrap();
    let text = |s: Stream| -> String {
        records
            .iter()
            .filter(|r| r.stream == s)
            .map(|r| String::from_utf8_lossy(&r.data).into_owned())
            .collect()
    };
    let want = |p: &str| (0..n).map(|i| format!("{p}{i}\n")).collect::<String>();
    assert_eq!(text(Stream::Stdout), want("line"));
    assert_eq!(text(Stream::Stderr), want("err"));
    // The tether was told everything is stored, so the VM powers off.
    assert!(
        tokio::time::timeout(T, launched.vm.wait()).await.is_ok(),
        "VM did not power off after all output was acknowledged"
    );
}

/// A host connection whose answers are lost on the way (the tether got the
/// hello and answered, the host never saw it) is abandoned once the tether
/// is ready, and the next connection gets through. The proxy keeps one
/// connection to QEMU for both host connections, so the tether never sees
/// the first one go: it must answer the second hello, with its new nonce,
/// while still waiting for the first one's SSH line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_connection_is_abandoned_for_a_fresh_one() {
    use appliance::backend::local::vm::TetherAt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::net::{UnixListener, UnixStream};
    let vm = boot(idle()).await;
    let TestVm {
        launched,
        client,
        key,
        dir,
    } = vm;
    client.close().await;
    let upstream = UnixStream::connect(&launched.vm.config.channel_socket)
        .await
        .unwrap();
    let (mut up_r, mut up_w) = upstream.into_split();
    let proxy = dir.path().join("proxy.sock");
    let listener = UnixListener::bind(&proxy).unwrap();
    let accepted = Arc::new(AtomicU32::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((down, _)) = listener.accept().await else {
                return;
            };
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let (mut down_r, mut down_w) = down.into_split();
            let to_tether = tokio::io::copy(&mut down_r, &mut up_w);
            if n == 1 {
                // Everything the tether says on this one is lost.
                let mut sink = tokio::io::sink();
                let lost = tokio::io::copy(&mut up_r, &mut sink);
                tokio::select! { _ = to_tether => {}, _ = lost => {} }
            } else {
                let to_host = tokio::io::copy(&mut up_r, &mut down_w);
                tokio::select! { _ = to_tether => {}, _ = to_host => {} }
                return;
            }
        }
    });
    let to = TetherAt {
        socket: &proxy,
        console: &launched.vm.config.console_log,
        key: &key,
        host_key: &launched.host_key,
        stall: Duration::from_secs(2),
    };
    let first = UnixStream::connect(&proxy).await.unwrap();
    let client = to
        .connect(first, std::time::Instant::now() + T)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(
        client.ping(b"still there".to_vec()).await.unwrap(),
        b"still there"
    );
}
