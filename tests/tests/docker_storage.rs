//! End to end through the Docker personality's volumes and `docker cp`:
//! the real docker CLI (`/usr/local/bin/docker`, 28.2.2) against
//! `appliance serve --docker-socket`, with real container VMs (TCG).

use std::io::Read;

use tests::docker::Docker;
use tests::server::{stderr, stdout};

fn lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn named_volumes_keep_data_across_containers_and_are_refused_while_in_use() {
    let d = Docker::start();
    assert_eq!(d.ok(&["volume", "create", "v1"]).trim(), "v1");
    // An existing name is that volume again, as Docker does.
    assert_eq!(d.ok(&["volume", "create", "v1"]).trim(), "v1");
    assert_eq!(
        d.ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"])
            .trim(),
        "local v1"
    );
    let i = d.ok(&[
        "volume",
        "inspect",
        "--format",
        "{{.Name}} {{.Driver}} {{.Scope}}",
        "v1",
    ]);
    assert_eq!(i.trim(), "v1 local local");
    let mp = d.ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", "v1"]);
    assert!(mp.trim().starts_with('/'), "{mp}");
    let o = d.run(&["volume", "inspect", "nope"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("get nope: no such volume"),
        "{}",
        stderr(&o)
    );

    let o = d.run(&[
        "run",
        "--rm",
        "-v",
        "v1:/data",
        "busybox",
        "sh",
        "-c",
        "echo hello > /data/f",
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let o = d.run(&[
        "run",
        "--rm",
        "-v",
        "v1:/data:ro",
        "busybox",
        "cat",
        "/data/f",
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "hello\n");
    // Read-only: a write fails.
    let o = d.run(&[
        "run",
        "--rm",
        "--mount",
        "type=volume,source=v1,target=/data,readonly",
        "busybox",
        "sh",
        "-c",
        "echo x > /data/g",
    ]);
    assert_ne!(o.status.code(), Some(0), "a read-only mount took a write");

    // In use by a container (created, not started): refused, nothing changed.
    let id = d.ok(&["create", "--name", "holder", "-v", "v1:/data", "busybox"]);
    let id = id.trim();
    let o = d.run(&["volume", "rm", "v1"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains(&format!("remove v1: volume is in use - [{id}]")),
        "{}",
        stderr(&o)
    );
    assert_eq!(d.ok(&["volume", "ls", "-q"]).trim(), "v1");
    let m = d.ok(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}} {{.Driver}} {{.RW}}{{end}} {{.HostConfig.Binds}}",
        "holder",
    ]);
    assert_eq!(m.trim(), "volume v1 /data local true [v1:/data]");
    // Named volumes are not pruned by default, nor while in use.
    let o = d.ok(&["volume", "prune", "-f", "--all"]);
    assert!(!o.contains("v1"), "{o}");
    d.ok(&["rm", "holder"]);
    let o = d.ok(&["volume", "prune", "-f"]);
    assert!(!o.contains("v1"), "named, kept without --all: {o}");
    assert_eq!(d.ok(&["volume", "ls", "-q"]).trim(), "v1");

    d.ok(&["volume", "create", "v2"]);
    d.ok(&["volume", "create", "--label", "app=web", "v3"]);
    let ls = d.ok(&["volume", "ls", "-q", "--filter", "label=app=web"]);
    assert_eq!(ls.trim(), "v3");
    assert_eq!(d.ok(&["volume", "rm", "v2"]).trim(), "v2");
    let o = d.run(&["volume", "rm", "v2"]);
    assert_ne!(o.status.code(), Some(0), "removed twice");
    let o = d.ok(&["volume", "prune", "-f", "--all"]);
    assert!(o.contains("v1") && o.contains("v3"), "{o}");
    assert_eq!(d.ok(&["volume", "ls", "-q"]).trim(), "");
}

#[test]
fn anonymous_volumes_go_with_rm_v_and_host_binds_are_refused() {
    let d = Docker::start();
    d.ok(&["create", "--name", "a", "-v", "/data", "busybox"]);
    let name = d.ok(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Name}}{{end}}",
        "a",
    ]);
    let name = name.trim().to_string();
    assert!(!name.is_empty());
    let vols = d.ok(&["inspect", "--format", "{{json .Config.Volumes}}", "a"]);
    assert_eq!(vols.trim(), r#"{"/data":{}}"#);
    assert_eq!(d.ok(&["volume", "ls", "-q"]).trim(), name);
    let anon = d.ok(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        "label=com.docker.volume.anonymous",
    ]);
    assert_eq!(anon.trim(), name);
    d.ok(&["rm", "-v", "a"]);
    assert_eq!(d.ok(&["volume", "ls", "-q"]).trim(), "");

    // Without -v it stays; prune removes it then.
    d.ok(&["create", "--name", "b", "-v", "/data", "busybox"]);
    d.ok(&["rm", "b"]);
    assert_eq!(lines(&d.ok(&["volume", "ls", "-q"])).len(), 1);
    let o = d.ok(&["volume", "prune", "-f"]);
    assert!(o.contains("Total reclaimed space"), "{o}");
    assert_eq!(d.ok(&["volume", "ls", "-q"]).trim(), "");

    // A host directory cannot go into a VM: refused, naming the bind,
    // and nothing is made.
    let o = d.run(&["run", "-v", "/tmp:/x", "busybox", "true"]);
    assert_ne!(o.status.code(), Some(0));
    let e = stderr(&o);
    assert!(
        e.contains("\"/tmp:/x\"") && e.contains("named volume"),
        "{e}"
    );
    let o = d.run(&[
        "create",
        "-v",
        "keep:/k",
        "--mount",
        "type=bind,source=/tmp,target=/y",
        "busybox",
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("host directory"), "{}", stderr(&o));
    let o = d.run(&["create", "--tmpfs", "/t", "busybox"]);
    assert_ne!(o.status.code(), Some(0), "tmpfs is not silently dropped");
    assert_eq!(d.ok(&["ps", "-a", "-q"]).trim(), "");
    assert_eq!(d.ok(&["volume", "ls", "-q"]).trim(), "", "nothing was made");
}

/// The entries of a tar: (path, contents).
fn entries(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(tar);
    let mut out = Vec::new();
    for e in a.entries().expect("tar") {
        let mut e = e.expect("entry");
        let path = e.path().expect("path").to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("data");
        out.push((path, data));
    }
    out
}

#[test]
fn docker_cp_copies_files_and_directories_in_and_out() {
    let d = Docker::start();
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("file.bin");
    let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &data).expect("write");
    let dir = work.path().join("tree");
    std::fs::create_dir_all(dir.join("sub")).expect("dir");
    std::fs::write(dir.join("a.txt"), b"alpha\n").expect("a");
    std::fs::write(dir.join("sub/b.txt"), b"beta\n").expect("b");

    d.ok(&["run", "-d", "--name", "c", "busybox", "sleep", "600"]);
    let f = file.to_str().expect("utf-8");
    d.ok(&["cp", f, "c:/tmp/"]);
    d.ok(&["cp", f, "c:/tmp/renamed.bin"]);
    d.ok(&["cp", dir.to_str().expect("utf-8"), "c:/srv"]);
    let o = d.ok(&[
        "exec",
        "c",
        "sh",
        "-c",
        "md5sum /tmp/file.bin /tmp/renamed.bin; cat /srv/a.txt /srv/sub/b.txt",
    ]);
    let md5 = o
        .lines()
        .map(|l| l.split(' ').next().unwrap_or_default())
        .collect::<Vec<_>>();
    assert_eq!(md5[0], md5[1], "{o}");
    assert!(o.ends_with("alpha\nbeta\n"), "{o}");

    // Out: to stdout as a tar, and to a host file, byte for byte.
    let o = d.run(&["cp", "c:/tmp/file.bin", "-"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let got = entries(&o.stdout);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "file.bin");
    assert!(got[0].1 == data, "the tar's file differs from what went in");
    let o = d.run(&["cp", "c:/srv", "-"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let mut got: Vec<(String, Vec<u8>)> = entries(&o.stdout)
        .into_iter()
        .filter(|(_, data)| !data.is_empty())
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("srv/a.txt".to_string(), b"alpha\n".to_vec()),
            ("srv/sub/b.txt".to_string(), b"beta\n".to_vec()),
        ]
    );
    let back = work.path().join("back.bin");
    d.ok(&["cp", "c:/tmp/renamed.bin", back.to_str().expect("utf-8")]);
    assert!(std::fs::read(&back).expect("back") == data);
    let out_dir = work.path().join("out");
    d.ok(&["cp", "c:/srv", out_dir.to_str().expect("utf-8")]);
    assert_eq!(
        std::fs::read(out_dir.join("sub/b.txt")).expect("b"),
        b"beta\n"
    );
    let hn = work.path().join("x");
    d.ok(&["cp", "c:/etc/hostname", hn.to_str().expect("utf-8")]);
    let want = d.ok(&["exec", "c", "cat", "/etc/hostname"]);
    assert_eq!(std::fs::read_to_string(&hn).expect("x"), want);

    // A missing path: Docker's words.
    let o = d.run(&["cp", "c:/nope", work.path().to_str().expect("utf-8")]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("Could not find the file /nope in container c"),
        "{}",
        stderr(&o)
    );
    let o = d.run(&["cp", f, "c:/nodir/sub/"]);
    assert_ne!(o.status.code(), Some(0), "copied into a missing directory");

    // A stopped container: still copies, both ways.
    d.ok(&["kill", "c"]);
    d.ok(&["wait", "c"]);
    d.ok(&["cp", dir.join("a.txt").to_str().expect("utf-8"), "c:/tmp/"]);
    let o = d.run(&["cp", "c:/tmp/a.txt", "-"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(
        entries(&o.stdout),
        [("a.txt".to_string(), b"alpha\n".to_vec())]
    );
    d.ok(&["rm", "c"]);
}
