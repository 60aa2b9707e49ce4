//! End to end: archive transfers (`docker cp`) with the tether of a real
//! microVM (QEMU TCG), in a running container and in maintenance mode.
//! Checks are grouped so that the whole file boots four VMs (one through
//! `appliance serve`, for copies out to the host).

use std::io::Read;
use std::time::Duration;

use appliance::tether::{ArchiveDownload, Client, ClientError};
use proto::v1::error::Code;
use tests::*;

const T: Duration = Duration::from_secs(60);

/// One entry of a tar: (path without a trailing "/", header, contents).
type Entry = (String, tar::Header, Vec<u8>);

fn entries(tar: &[u8]) -> Vec<Entry> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    for entry in archive.entries().expect("tar") {
        let mut entry = entry.expect("tar entry");
        let path = String::from_utf8_lossy(&entry.path_bytes())
            .trim_end_matches('/')
            .to_owned();
        let header = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("tar data");
        out.push((path, header, data));
    }
    out
}

fn find<'a>(entries: &'a [Entry], path: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.0 == path)
        .unwrap_or_else(|| panic!("no {path} in {:?}", names(entries)))
}

fn names(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.0.as_str()).collect()
}

async fn get(client: &Client, path: &str) -> Vec<Entry> {
    let download: ArchiveDownload = client
        .archive_get(path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let (tar, result) = download
        .read_all()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let entries = entries(&tar);
    assert_eq!(result.entries, entries.len() as u64, "GET {path}");
    entries
}

/// The tether's error for a transfer: (code, element, message).
fn remote(e: ClientError) -> (i32, String, String) {
    match e {
        ClientError::Remote {
            code,
            element,
            message,
        } => (code, element, message),
        other => panic!("expected an error from the tether, got: {other}"),
    }
}

/// A tar entry with the given name, mode, owner and contents.
fn append(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, owner: u64, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    if path.ends_with('/') {
        h.set_entry_type(tar::EntryType::Directory);
    }
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(owner);
    h.set_gid(owner);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, path, data).expect("tar append");
}

/// Runs `args` in the container and returns its stdout, asserting success.
async fn run(client: &Client, id: &str, args: &[&str]) -> String {
    client.exec(session(id, args)).await.expect("exec");
    let out = client
        .attach(id, (0, 0), false)
        .await
        .expect("attach")
        .collect()
        .await
        .expect("output");
    assert_eq!(
        out.exit_code,
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tar source that fails after its first `n` bytes.
struct FailingAfter {
    data: Vec<u8>,
    n: usize,
}

impl tokio::io::AsyncRead for FailingAfter {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.n == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("disk on fire")));
        }
        let k = self.n.min(buf.remaining()).min(self.data.len());
        let chunk: Vec<u8> = self.data.drain(..k).collect();
        buf.put_slice(&chunk);
        self.n -= k;
        std::task::Poll::Ready(Ok(()))
    }
}

/// A tar entry named `name` byte for byte (the `tar` crate's Builder
/// refuses `..`), appended to `tar` before its end blocks are added.
fn raw_entry(tar: &mut Vec<u8>, name: &[u8], data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    tar.extend_from_slice(h.as_bytes());
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
}

/// Good entries (a file replacing one that is there, a new directory), then
/// whatever `more` appends, then the end blocks.
fn good_then(more: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, "first", 0o644, 0, b"1\n");
    append(&mut b, "file", 0o644, 0, b"replaced\n");
    append(&mut b, "newdir/", 0o755, 0, b"");
    append(&mut b, "newdir/inner", 0o644, 0, b"inner\n");
    more(&mut b);
    b.into_inner().expect("tar")
}

fn symlink_entry(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    b.append_link(&mut h, path, target).expect("tar symlink");
}

/// Copies in that are refused leave the destination as it was: its
/// listing, with types, modes, sizes and times, the directory's own
/// included, is the same before and after. Then a destination that is
/// itself a symlink is refused, not followed.
async fn refused_copies_change_nothing(c: &Client) {
    run(
        c,
        "atomic-setup",
        &[
            "sh",
            "-c",
            "mkdir /tmp/atomic && echo old > /tmp/atomic/file",
        ],
    )
    .await;
    let listing = async |tag: &str| {
        let script = "cd /tmp/atomic && find . | sort | while read f; do \
                      stat -c '%n %F %a %s %Y' \"$f\"; done; cat file";
        run(c, &format!("atomic-ls-{tag}"), &["sh", "-c", script]).await
    };
    let before = listing("before").await;
    assert!(before.contains("./file regular file 644 4 "), "{before}");

    // Good entries, then one that climbs out.
    let mut tar = good_then(|_| {});
    tar.truncate(tar.len() - 1024);
    raw_entry(&mut tar, b"../escaped", b"x");
    tar.resize(tar.len() + 1024, 0);
    let (code, element, message) = remote(
        c.archive_put("/tmp/atomic", tar.as_slice())
            .await
            .expect_err("the copy was taken"),
    );
    assert_eq!(
        (code, element.as_str()),
        (Code::InvalidArgument as i32, "../escaped")
    );
    assert!(message.contains("path leaves the target"), "{message}");
    assert_eq!(
        listing("escape").await,
        before,
        "the refused copy changed the target"
    );
    let (code, ..) = remote(
        c.archive_stat("/tmp/escaped")
            .await
            .expect_err("written outside"),
    );
    assert_eq!(code, Code::NotFound as i32);

    // A planted `rootlink -> /`, then an entry through it.
    let tar = good_then(|b| {
        symlink_entry(b, "rootlink", "/");
        append(b, "rootlink/tmp/planted", 0o644, 0, b"x");
    });
    let (code, element, message) = remote(
        c.archive_put("/tmp/atomic", tar.as_slice())
            .await
            .expect_err("the copy was taken"),
    );
    assert_eq!(
        (code, element.as_str()),
        (Code::InvalidArgument as i32, "rootlink/tmp/planted")
    );
    assert!(
        message.contains("Path goes through symlink \"rootlink\""),
        "{message}"
    );
    assert_eq!(
        listing("rootlink").await,
        before,
        "the planted link was left"
    );
    let (code, ..) = remote(
        c.archive_stat("/tmp/planted")
            .await
            .expect_err("written through the link"),
    );
    assert_eq!(code, Code::NotFound as i32);

    // A symlink already in the container, gone through by a later entry.
    run(c, "atomic-link", &["ln", "-s", "/", "/tmp/atomic/link"]).await;
    let before = listing("with-link").await;
    let tar = good_then(|b| append(b, "link/tmp/planted", 0o644, 0, b"x"));
    let (_, element, message) = remote(
        c.archive_put("/tmp/atomic", tar.as_slice())
            .await
            .expect_err("the copy was taken"),
    );
    assert_eq!(element, "link/tmp/planted");
    assert!(
        message.contains("Path goes through symlink \"link\""),
        "{message}"
    );
    assert_eq!(listing("link").await, before);

    // The destination itself a symlink: not followed, with or without "/".
    run(
        c,
        "atomic-dest",
        &["ln", "-s", "/tmp/atomic", "/tmp/to-atomic"],
    )
    .await;
    let good = good_then(|_| {});
    for dest in ["/tmp/to-atomic", "/tmp/to-atomic/"] {
        let (code, element, message) = remote(
            c.archive_put(dest, good.as_slice())
                .await
                .expect_err("the copy was taken"),
        );
        assert_eq!(
            (code, element.as_str()),
            (Code::InvalidArgument as i32, dest)
        );
        assert_eq!(
            message,
            format!(
                "{dest:?} is a symlink (to \"/tmp/atomic\"), which a copy does not follow: \
                 give the directory itself"
            )
        );
    }
    assert_eq!(listing("dest").await, before);

    // The same good entries alone go in, and leave no stage behind.
    let result = c
        .archive_put("/tmp/atomic", good.as_slice())
        .await
        .expect("the good entries alone");
    assert_eq!(result.entries, 4);
    let after = run(c, "atomic-after", &["ls", "-a", "/tmp/atomic"]).await;
    let names: Vec<&str> = after.lines().collect();
    assert_eq!(
        names,
        [".", "..", "file", "first", "link", "newdir"],
        "{after}"
    );
    assert_eq!(
        run(
            c,
            "atomic-cat",
            &["cat", "/tmp/atomic/file", "/tmp/atomic/newdir/inner"]
        )
        .await,
        "replaced\ninner\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_out_of_and_into_a_running_container() {
    let vm = boot(session("main", &["sleep", "100000"])).await;
    let c = &vm.client;

    // GET a directory: the top entry is named after it.
    let etc = get(c, "/etc").await;
    assert_eq!(etc[0].0, "etc");
    assert!(etc[0].1.entry_type().is_dir());
    let passwd = find(&etc, "etc/passwd");
    assert!(
        String::from_utf8_lossy(&passwd.2)
            .contains("app:x:1000:1000:Application user:/home/app:/bin/sh\n"),
        "{:?}",
        String::from_utf8_lossy(&passwd.2)
    );
    assert_eq!(passwd.1.mode().unwrap() & 0o7777, 0o644);

    // GET a single file, with its stat up front.
    let download = c.archive_get("/etc/passwd").await.unwrap();
    let stat = download.stat().clone();
    assert_eq!(stat.name, "passwd");
    assert_eq!(stat.mode & 0o170000, 0o100000, "a regular file");
    let (tar, _) = download.read_all().await.unwrap();
    let single = entries(&tar);
    assert_eq!(names(&single), ["passwd"]);
    assert_eq!(single[0].2, passwd.2);
    assert_eq!(stat.size, passwd.2.len() as i64);
    let stat = c.archive_stat("/etc").await.unwrap();
    assert_eq!(
        (stat.name.as_str(), stat.mode & 0o170000),
        ("etc", 0o040000)
    );

    // A missing path, and one inside a kernel file system, are refused
    // before any byte of tar.
    let (code, element, message) = remote(c.archive_get("/nope/x").await.unwrap_err());
    assert_eq!((code, element.as_str()), (Code::NotFound as i32, "/nope/x"));
    assert_eq!(message, "\"/nope/x\" does not exist in the container");
    let (code, _, message) = remote(c.archive_get("/proc/1/environ").await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument as i32);
    assert!(message.contains("inside /proc"), "{message}");

    // The whole root: the kernel file systems are empty directories, as in
    // the image, and the stream (megabytes) arrives whole.
    let root = get(c, "/").await;
    assert_eq!(root[0].0, ".");
    let bb = find(&root, "bin/busybox");
    assert!(bb.2.len() > 500_000, "busybox is {} bytes", bb.2.len());
    for hidden in ["proc", "sys", "dev"] {
        assert!(find(&root, hidden).1.entry_type().is_dir());
        let inside: Vec<&str> = names(&root)
            .into_iter()
            .filter(|n| n.starts_with(&format!("{hidden}/")))
            .collect();
        assert!(
            inside.is_empty(),
            "{hidden} leaked into the copy: {inside:?}"
        );
    }

    // PUT a file, a directory and a setuid file owned by 1000:1000.
    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, "hello.txt", 0o644, 0, b"hello from the host\n");
    append(&mut b, "dir/", 0o750, 1000, b"");
    append(
        &mut b,
        "dir/suid",
        0o4755,
        1000,
        b"#!/bin/sh\necho suid ran\n",
    );
    let tar = b.into_inner().unwrap();
    let result = c.archive_put("/tmp", tar.as_slice()).await.unwrap();
    assert_eq!((result.entries, result.bytes), (3, 20 + 24));
    assert!(result.skipped.is_empty(), "{:?}", result.skipped);
    assert_eq!(
        run(c, "cat", &["cat", "/tmp/hello.txt"]).await,
        "hello from the host\n"
    );
    let ls = run(c, "ls", &["ls", "-lnd", "/tmp/dir", "/tmp/dir/suid"]).await;
    let fields: Vec<Vec<&str>> = ls.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(fields.len(), 2, "{ls}");
    assert_eq!(&fields[0][..1], ["drwxr-x---"], "{ls}");
    assert_eq!(&fields[1][..1], ["-rwsr-xr-x"], "{ls}");
    for f in &fields {
        assert_eq!(&f[2..4], ["1000", "1000"], "{ls}");
    }
    assert_eq!(run(c, "suid", &["/tmp/dir/suid"]).await, "suid ran\n");
    // ...and GET it back with owner and mode intact.
    let back = get(c, "/tmp/dir").await;
    assert_eq!(names(&back), ["dir", "dir/suid"]);
    let suid = find(&back, "dir/suid");
    assert_eq!(suid.1.mode().unwrap() & 0o7777, 0o4755);
    assert_eq!((suid.1.uid().unwrap(), suid.1.gid().unwrap()), (1000, 1000));
    assert_eq!(suid.2, b"#!/bin/sh\necho suid ran\n");

    // A tar entry that climbs out of the destination is refused, named.
    let mut evil = Vec::new();
    let mut h = tar::Header::new_gnu();
    let name = b"../../etc/evil";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(5);
    h.set_mode(0o644);
    h.set_cksum();
    evil.extend_from_slice(h.as_bytes());
    evil.extend_from_slice(b"evil\n");
    evil.resize(evil.len() + 507 + 1024, 0);
    let (code, element, message) =
        remote(c.archive_put("/tmp", evil.as_slice()).await.unwrap_err());
    assert_eq!(
        (code, element.as_str()),
        (Code::InvalidArgument as i32, "../../etc/evil")
    );
    assert!(
        message.starts_with("Archive entry \"../../etc/evil\": path leaves the target"),
        "{message}"
    );
    let (code, ..) = remote(c.archive_stat("/etc/evil").await.unwrap_err());
    assert_eq!(code, Code::NotFound as i32, "/etc/evil was written");

    refused_copies_change_nothing(c).await;

    // The destination must be an existing directory outside /proc, /sys and
    // /dev.
    let (code, element, message) = remote(
        c.archive_put("/etc/passwd", tar.as_slice())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, element.as_str()),
        (Code::InvalidArgument as i32, "/etc/passwd")
    );
    assert_eq!(message, "\"/etc/passwd\" is not a directory");
    let (code, _, message) = remote(c.archive_put("/nope", tar.as_slice()).await.unwrap_err());
    assert_eq!(code, Code::NotFound as i32);
    assert_eq!(message, "\"/nope\" does not exist in the container");
    let (code, _, message) = remote(
        c.archive_put("/proc/sys", tar.as_slice())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::InvalidArgument as i32);
    assert!(message.contains("inside /proc"), "{message}");

    // A source that fails half way cancels the transfer: the tether does
    // not take the part it got for the whole archive.
    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, "first", 0o644, 0, b"1");
    append(&mut b, "second", 0o644, 0, &[b'2'; 4096]);
    let two = b.into_inner().unwrap();
    let err = c
        .archive_put("/tmp", FailingAfter { data: two, n: 1024 })
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::ArchiveSource(_)), "{err}");

    // Nothing of this disturbed the connection, nor the container's own
    // kernel file systems (the transfers hid them in a namespace of their
    // own).
    assert_eq!(c.ping(b"still here".to_vec()).await.unwrap(), b"still here");
    let check = "test -e /proc/self/status && test -c /dev/null && test -d /sys/kernel && echo ok";
    assert_eq!(run(c, "mounts", &["sh", "-c", check]).await, "ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_vm_serves_copies_and_powers_off_when_told_or_left() {
    // The primary would leave a mark; in maintenance mode it never runs.
    let primary = session(
        "main",
        &["sh", "-c", "echo ran > /primary-ran; sleep 100000"],
    );
    let mut vm = boot_maintenance(primary).await;
    let status = vm.client.status("").await.unwrap();
    assert!(status.maintenance, "{status:?}");
    assert!(status.sessions.is_empty(), "{status:?}");

    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, "copied-while-stopped", 0o600, 1000, b"kept\n");
    let tar = b.into_inner().unwrap();
    let result = vm
        .client
        .archive_put("/root", tar.as_slice())
        .await
        .unwrap();
    assert_eq!(result.entries, 1);
    let back = get(&vm.client, "/root/copied-while-stopped").await;
    assert_eq!(back[0].2, b"kept\n");

    // PowerOff: answered, then the VM goes.
    vm.client.power_off().await.unwrap();
    assert!(
        vm.powered_off(T).await,
        "VM still running; console:\n{}",
        vm.console()
    );
    let console = vm.console();
    assert!(console.contains("maintenance mode"), "{console}");
    assert!(console.contains("the host asked to power off"), "{console}");

    // Again on the same disks: what was copied in is there (the power-off
    // flushed it), the primary never ran, and a host that goes away for
    // longer than the linger time makes the VM power off by itself.
    let TestVm {
        launched, key, dir, ..
    } = vm;
    let vm = restart_with(launched, key, dir, |spec| spec.linger_seconds = 5).await;
    let back = get(&vm.client, "/root/copied-while-stopped").await;
    assert_eq!(back[0].2, b"kept\n");
    assert_eq!(
        (back[0].1.mode().unwrap() & 0o7777, back[0].1.uid().unwrap()),
        (0o600, 1000)
    );
    let (code, ..) = remote(vm.client.archive_stat("/primary-ran").await.unwrap_err());
    assert_eq!(code, Code::NotFound as i32, "the primary ran");
    let TestVm {
        mut launched,
        client,
        dir: _dir,
        ..
    } = vm;
    client.close().await;
    let gone = tokio::time::timeout(T, launched.vm.wait()).await;
    let console = launched.vm.console();
    assert!(gone.is_ok(), "VM still running; console:\n{console}");
    assert!(console.contains("no host connected for 5s"), "{console}");
}

/// Copying out to the host with `appliance cp`: the container's symlinks,
/// absolute ones included, arrive as symlinks pointing where they point, and
/// the copy follows none of them; a host destination that is a symlink is
/// refused; a host symlink where the copy brings a directory of the same
/// name is replaced, not written through.
#[test]
fn copies_out_to_the_host_follow_no_symlink() {
    use std::path::Path;
    use tests::server::{Server, stderr};

    let d = tempfile::tempdir().expect("tempdir");
    let state = d.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let s = Server::start(&state);
    let setup = "mkdir -p /out/sub && echo hi > /out/sub/f && ln -s / /out/rootlink \
                 && ln -s /etc/passwd /out/abs && touch /ready && sleep 600";
    let o = s.cli(&[
        "run", "-d", "--name", "src", "busybox", "--", "sh", "-c", setup,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let o = s.cli(&["exec", "src", "--", "test", "-e", "/ready"]);
        if o.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the container did not set up: {}",
            stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let cp = |dst: &Path| s.cli(&["cp", "src:/out", dst.to_str().unwrap()]);
    let link = |p: &Path| std::fs::read_link(p).map(|t| t.display().to_string());

    // Into a host directory, twice (the second time over what the first
    // left): the links are links, never followed.
    let host = d.path().join("host");
    std::fs::create_dir(&host).unwrap();
    for round in 0..2 {
        let o = cp(&host);
        assert!(o.status.success(), "round {round}: {}", stderr(&o));
        assert_eq!(link(&host.join("out/rootlink")).unwrap(), "/");
        assert_eq!(link(&host.join("out/abs")).unwrap(), "/etc/passwd");
        assert_eq!(
            std::fs::read_to_string(host.join("out/sub/f")).unwrap(),
            "hi\n"
        );
    }
    let names: Vec<_> = std::fs::read_dir(&host)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["out"], "a stage was left behind");

    // A destination that is a symlink is refused, with or without "/".
    let real = d.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let to_real = d.path().join("to-real");
    std::os::unix::fs::symlink(&real, &to_real).unwrap();
    for dst in [
        to_real.clone(),
        Path::new(&format!("{}/", to_real.display())).to_path_buf(),
    ] {
        let o = cp(&dst);
        assert_ne!(o.status.code(), Some(0));
        assert!(stderr(&o).contains("is a symlink"), "{}", stderr(&o));
    }
    assert_eq!(
        std::fs::read_dir(&real).unwrap().count(),
        0,
        "the symlink was followed"
    );

    // A host symlink named like the copy's top directory is replaced.
    let dest = d.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let sentinel = d.path().join("sentinel");
    std::fs::create_dir(&sentinel).unwrap();
    std::os::unix::fs::symlink(&sentinel, dest.join("out")).unwrap();
    let o = cp(&dest);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        std::fs::symlink_metadata(dest.join("out"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("out/sub/f")).unwrap(),
        "hi\n"
    );
    assert_eq!(
        std::fs::read_dir(&sentinel).unwrap().count(),
        0,
        "written through"
    );
    assert!(s.cli(&["rm", "-f", "src"]).status.success());
}
