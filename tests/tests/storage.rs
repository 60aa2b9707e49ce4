//! End to end through the storage component: `appliance serve` as its own
//! process, driven by the CLI and raw HTTP, with real container VMs (TCG):
//! volumes that outlive containers, read-only mounts enforced in the
//! guest, deletions refused while in use, imports that run out of space,
//! archives with escaping entries.

use std::process::Command;

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
fn volumes_persist_across_containers_and_read_only_is_enforced_in_the_guest() {
    let (_d, s) = new_server();
    let o = s.cli(&["volume", "create", "-s", "64M", "-l", "tier=db", "data"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "data");
    let v = json(&s.http("GET", "/storage/volumes/data", None).1);
    assert_eq!(v["size_mib"], 64);
    assert_eq!(v["labels"]["tier"], "db");
    assert!(v["serial"].as_str().unwrap().len() <= 20);

    // A first container writes, as an unprivileged user: the fresh volume
    // is empty (no lost+found) and took the mount point's owner (the
    // image's /home/app is app's).
    let o = s.cli(&[
        "run",
        "--rm",
        "-u",
        "app",
        "-v",
        "data:/home/app",
        "busybox",
        "--",
        "sh",
        "-c",
        "ls -A /home/app; echo kept > /home/app/note && stat -c '%U %a' /home/app",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "app 750");

    // The next one reads it; mounted read-only, writes fail in the guest.
    let o = s.cli(&[
        "run",
        "--rm",
        "-v",
        "data:/data:ro",
        "busybox",
        "--",
        "sh",
        "-c",
        "cat /data/note; echo x > /data/other && echo wrote; grep ' /data ' /proc/mounts",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("kept\n"), "{out}");
    assert!(!out.contains("wrote"), "{out}");
    assert!(out.contains(" ro,") || out.contains(" ro "), "{out}");
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );

    // Through a handle: a read-only policy on the join.
    let o = s.cli(&[
        "create", "--name", "reader", "busybox", "--", "ls", "/mnt/d",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let h = json(&s.http("GET", "/exec/containers/reader/handle", None).1)["handle"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = s.http(
        "POST",
        "/storage/handles/volume-join",
        Some(
            &serde_json::json!({
                "handle": h, "volume": "data", "path": "/mnt/d",
                "policies": [{"constraint": "read-only", "filter": ""}],
            })
            .to_string(),
        ),
    );
    assert_eq!(code, 200, "{body}");
    let h = json(&body)["handle"].as_str().unwrap().to_string();
    let (code, body) = s.http(
        "POST",
        "/exec/commit",
        Some(&serde_json::json!({ "handle": h }).to_string()),
    );
    assert_eq!(code, 200, "{body}");
    let c = json(&s.http("GET", "/exec/containers/reader", None).1);
    assert_eq!(c["mounts"][0]["read_only"], true, "{c}");
    // A policy that makes no sense on a volume join is refused when given.
    let (code, body) = s.http(
        "POST",
        "/storage/handles/volume-join",
        Some(
            &serde_json::json!({
                "handle": h, "volume": "data", "path": "/mnt/e",
                "policies": [{"constraint": "affinity", "filter": "label.a=b"}],
            })
            .to_string(),
        ),
    );
    assert_eq!(code, 400, "{body}");

    // In use by "reader": neither the volume nor busybox can go, and the
    // error names the container.
    let o = s.cli(&["volume", "rm", "data"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("in use by container reader"),
        "{}",
        stderr(&o)
    );
    let (code, body) = s.http("DELETE", "/storage/images/busybox", None);
    assert_eq!(code, 409, "{body}");
    assert_eq!(json(&body)["code"], "IN_USE");
    assert!(
        json(&body)["message"].as_str().unwrap().contains("reader"),
        "{body}"
    );
    // Which containers use the image: exec's list answers.
    let img = json(&s.http("GET", "/storage/images/busybox", None).1);
    let id = img["id"].as_str().unwrap();
    let (_, users) = s.http(
        "GET",
        &format!("/exec/containers?filter=image_id={id}"),
        None,
    );
    let names: Vec<_> = json(&users)
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["reader"]);
    let (_, users) = s.http("GET", "/exec/containers?filter=volume=data", None);
    assert_eq!(json(&users).as_array().unwrap().len(), 1);

    // Once the user is gone, the volume goes too.
    assert!(s.cli(&["rm", "reader"]).status.success());
    let o = s.cli(&["volume", "rm", "data"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (code, _) = s.http("GET", "/storage/volumes/data", None);
    assert_eq!(code, 404);
}

#[test]
fn bad_volume_requests_say_what_is_wrong() {
    let (_d, s) = new_server();
    let o = s.cli(&["run", "--rm", "-v", "nope:/x", "busybox", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("Volume nope not found"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("`appliance volume create nope`"),
        "{}",
        stderr(&o)
    );
    let (code, body) = s.http(
        "POST",
        "/storage/volumes",
        Some(r#"{"name":"../evil","size_mib":64}"#),
    );
    assert_eq!(code, 400, "{body}");
    // The field is named, and the value shown in the message.
    assert_eq!(json(&body)["element"], "name");
    assert!(
        json(&body)["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("name: \"../evil\" is not a valid volume name")),
        "{body}"
    );
    let (code, body) = s.http(
        "POST",
        "/storage/volumes",
        Some(r#"{"name":"tiny","size_mib":1}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(json(&body)["element"], "size_mib", "{body}");
    assert!(
        s.cli(&["volume", "create", "-s", "32M", "v1"])
            .status
            .success()
    );
    let o = s.cli(&["volume", "create", "-s", "32M", "v1"]);
    assert!(
        stderr(&o).contains("Volume v1 already exists"),
        "{}",
        stderr(&o)
    );
    let o = s.cli(&["run", "--rm", "-v", "v1:/", "busybox", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("mount path"), "{}", stderr(&o));
    // The stores report what they hold.
    let stores = json(&s.http("GET", "/storage/volume-stores", None).1);
    assert_eq!(stores[0]["name"], "default");
    assert_eq!(stores[0]["items"], 1);
    let stores = json(&s.http("GET", "/storage/image-stores", None).1);
    assert_eq!(stores[0]["items"], 1, "{stores}");
    assert!(
        stores[0]["used_bytes"].as_u64().unwrap() > 1_000_000,
        "{stores}"
    );
}

/// A tmpfs of `mib` MiB mounted at a fresh directory, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn new(mib: u32) -> SmallFs {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount");
        assert!(
            o.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        SmallFs { dir }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn an_import_that_runs_out_of_space_fails_clearly_and_lists_nothing() {
    let (d, s) = new_server();
    let small = SmallFs::new(8);
    let (code, body) = s.http(
        "POST",
        "/storage/image-stores",
        Some(
            &serde_json::json!({"name": "small", "path": small.dir.path().join("images")})
                .to_string(),
        ),
    );
    assert_eq!(code, 201, "{body}");
    // An image bigger than the store: 12 MiB of incompressible data.
    let layout = d.path().join("big-layout");
    let mut noise = vec![0u8; 12 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    tests::oci_image::ImageBuilder::new()
        .layer(vec![tests::oci_image::Entry::file("big.bin", noise)])
        .write_layout(&layout, "big");
    let tar = d.path().join("big.tar");
    let o = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&layout)
        .arg(".")
        .output()
        .unwrap();
    assert!(o.status.success());
    let o = s.cli(&[
        "import",
        "--store",
        "small",
        "-t",
        "big:1",
        tar.to_str().unwrap(),
    ]);
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(err.contains("Store small is out of space"), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    let o = s.cli(&["images", "-q", "--filter", "store=small"]);
    assert_eq!(stdout(&o).trim(), "", "{}", stdout(&o));
    // Nothing half-made is left behind in the store either.
    let leftovers: Vec<_> = walk(small.dir.path())
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The same archive into the default store works.
    let o = s.cli(&["import", "-t", "big:1", tar.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(&["images", "--filter", "name=docker.io/library/big:1"]);
    assert!(stdout(&o).contains("big:1"), "{}", stdout(&o));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// A runnable image in three layers over busybox: a whiteout, an opaque
/// directory, a hardlink, a setuid file owned by 1000, an image config.
fn layered_image() -> tests::oci_image::ImageBuilder {
    use tests::oci_image::{Config, Entry, ImageBuilder};
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static");
    let mut base = vec![
        Entry::dir("/bin"),
        Entry::file_with("/bin/busybox", busybox, 0o755, 0, 0),
        Entry::dir("/etc"),
        Entry::file(
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/srv:/bin/sh\n",
        ),
        Entry::file("/etc/group", "root:x:0:\nweb:x:1000:\n"),
        Entry::file("/etc/keep", "keep\n"),
        Entry::file("/etc/gone", "gone\n"),
        Entry::dir("/opq"),
        Entry::file("/opq/a", "a\n"),
        Entry::dir("/srv"),
        Entry::dir("/tmp"),
    ];
    for applet in ["sh", "cat", "ls", "stat", "env", "pwd", "id", "echo"] {
        base.push(Entry::symlink(&format!("/bin/{applet}"), "busybox"));
    }
    ImageBuilder::new()
        .layer(base)
        .layer(vec![
            Entry::whiteout("/etc/gone"),
            Entry::opaque("/opq"),
            Entry::file("/opq/c", "c\n"),
            Entry::file_with("/srv/tool", "#!/bin/sh\necho tool\n", 0o4755, 1000, 1000),
            Entry::hardlink("/srv/tool2", "/srv/tool"),
        ])
        .layer_uncompressed(vec![Entry::file("/etc/new", "new\n")])
        .config(Config {
            env: vec!["PATH=/bin".into(), "GREETING=hi".into()],
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo $GREETING from $(pwd) as $(id -u)".into(),
            ],
            working_dir: "/srv".into(),
            user: "web".into(),
            ..Default::default()
        })
}

#[test]
fn an_image_pulled_from_a_registry_runs_with_its_layers_and_config() {
    let (d, s) = new_server();
    let registry = tests::registry::Registry::start();
    let layout = d.path().join("layout");
    layered_image().write_layout(&layout, "v1");
    registry.push_oci_layout(&layout, "v1", "team/app:v1");
    let reference = registry.reference("team/app:v1");

    let o = s.cli(&["pull", &reference]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    assert!(id.starts_with("sha256:"), "{id}");
    assert!(stderr(&o).contains("pulled"), "{}", stderr(&o));
    let img = json(
        &s.http("GET", &format!("/storage/images/{reference}"), None)
            .1,
    );
    assert_eq!(img["id"], id.as_str());
    assert_eq!(img["layers"].as_array().unwrap().len(), 3);
    assert_eq!(img["config"]["user"], "web");
    assert!(
        img["repo_digests"][0]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/team/app@sha256:", registry.addr())),
        "{img}"
    );

    // The image's own command, env, working dir and user.
    let o = s.cli(&["run", "--rm", &reference]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hi from /srv as 1000\n");

    // The layers, applied: whiteout, opaque dir, setuid, owner, hardlink.
    let check = "cat /etc/keep /etc/new; ls /etc/gone 2>&1; ls /opq; \
                 stat -c '%a %u:%g %h' /srv/tool /srv/tool2";
    let o = s.cli(&["run", "--rm", "-u", "0", &reference, "sh", "-c", check]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(
        out,
        "keep\nnew\nls: /etc/gone: No such file or directory\nc\n4755 1000:1000 2\n4755 1000:1000 2\n",
        "{out}"
    );

    // A second pull finds everything in place; tags and rmi as docker's.
    let o = s.cli(&["pull", "-q", &reference]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), id);
    assert!(s.cli(&["tag", &reference, "app:stable"]).status.success());
    let o = s.cli(&["images", "--filter", "name=docker.io/library/app:stable"]);
    assert!(stdout(&o).contains(&id[7..19]), "{}", stdout(&o));
    let o = s.cli(&["rmi", "app:stable"]);
    assert_eq!(stdout(&o).trim(), "Untagged: docker.io/library/app:stable");
    let o = s.cli(&["rmi", &reference]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("Deleted: {id}")),
        "{}",
        stdout(&o)
    );
    let (code, _) = s.http("GET", &format!("/storage/images/{reference}"), None);
    assert_eq!(code, 404);
    // Its blobs went with it: manifest, config and layers.
    let blobs = d.path().join("images/blobs/sha256");
    let mut digests = vec![&img["manifest_digest"], &img["id"]];
    digests.extend(
        img["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["digest"]),
    );
    for digest in digests {
        let hex = digest.as_str().unwrap().trim_start_matches("sha256:");
        assert!(!blobs.join(hex).exists(), "blob {digest} left behind");
    }

    // An unknown tag is a clear 404, and nothing is listed.
    let missing = registry.reference("team/app:nope");
    let o = s.cli(&["pull", &missing]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("Manifest unknown"), "{}", stderr(&o));
    let o = s.cli(&["images", "-q"]);
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
}

#[test]
fn docker_save_archives_import_and_escaping_archives_are_refused() {
    let (d, s) = new_server();
    let saved = d.path().join("saved.tar");
    layered_image().write_docker_save(&saved, &["saved/app:1"]);
    let o = s.cli(&["import", saved.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(&["run", "--rm", "saved/app:1"]);
    assert_eq!(stdout(&o), "hi from /srv as 1000\n", "{}", stderr(&o));

    // A layer with an entry that climbs out: refused, naming layer and
    // entry, nothing listed and nothing written outside.
    let evil_layer = raw_tar(b"../../../../../../tmp/escaped-by-layer", b"evil");
    let diff_id = tests::oci_image::sha256(&evil_layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    .to_string();
    let manifest = serde_json::json!([{
        "Config": "config.json", "RepoTags": ["evil:1"], "Layers": ["layer.tar"],
    }])
    .to_string();
    let evil = d.path().join("evil.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&evil).unwrap());
        for (name, bytes) in [
            ("manifest.json", manifest.as_bytes()),
            ("config.json", config.as_bytes()),
            ("layer.tar", &evil_layer[..]),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, bytes).unwrap();
        }
        b.finish().unwrap();
    }
    let _ = std::fs::remove_file("/tmp/escaped-by-layer");
    let o = s.cli(&["import", evil.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(err.contains(&format!("layer {diff_id}")), "{err}");
    assert!(
        err.contains("path leaves the target") || err.contains("\"..\""),
        "{err}"
    );
    assert!(!std::path::Path::new("/tmp/escaped-by-layer").exists());
    let o = s.cli(&["images", "-q", "--filter", "name=docker.io/library/evil:1"]);
    assert_eq!(stdout(&o).trim(), "");
}

/// A tar whose one entry is named `name` byte for byte (the `tar` crate
/// refuses to write `..` itself).
fn raw_tar(name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut t = h.as_bytes().to_vec();
    t.extend(data);
    t.resize(512 + data.len().div_ceil(512) * 512, 0);
    t.extend([0u8; 1024]);
    t
}

#[test]
fn cp_copies_into_and_out_of_stopped_and_running_containers() {
    use std::os::unix::fs::PermissionsExt;
    let (d, s) = new_server();
    // Into a container that has never run: its disks are booted for it.
    let o = s.cli(&[
        "create",
        "--name",
        "box",
        "busybox",
        "--",
        "sh",
        "-c",
        "cat /tmp/in/hello.txt; stat -c '%a' /tmp/in/tool",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let src = d.path().join("in");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::write(src.join("tool"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(src.join("tool"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let o = s.cli(&["cp", src.to_str().unwrap(), "box:/tmp"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(&["start", "-a", "box"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello from the host\n750\n");

    // Out of the stopped container: a file to a new name, a directory
    // into an existing one, and the raw tar on stdout.
    let got = d.path().join("passwd.copy");
    let o = s.cli(&["cp", "box:/etc/passwd", got.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        std::fs::read_to_string(&got)
            .unwrap()
            .starts_with("root:x:0:0:")
    );
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let o = s.cli(&["cp", "box:/tmp/in", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(out.join("in/hello.txt")).unwrap(),
        "hello from the host\n"
    );
    let o = s.cli(&["cp", "box:/etc/hostname", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut a = tar::Archive::new(&o.stdout[..]);
    let names: Vec<String> = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["hostname"]);
    // A path that is not there is named.
    let o = s.cli(&["cp", "box:/no/such", "-"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("/no/such"), "{}", stderr(&o));

    // Into a running container, from a tar on stdin; then an escaping
    // entry, refused by name, with nothing written outside the target.
    let o = s.cli(&[
        "run", "-d", "--name", "live", "busybox", "--", "sleep", "600",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli_with_stdin(
        &["cp", "-", "live:/tmp"],
        Some(&raw_tar(b"note.txt", b"via stdin\n")),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli_with_stdin(
        &["cp", "-", "live:/tmp"],
        Some(&raw_tar(b"../etc/evil", b"evil\n")),
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("../etc/evil"), "{}", stderr(&o));
    let o = s.cli(&[
        "exec",
        "live",
        "--",
        "sh",
        "-c",
        "cat /tmp/note.txt; ls /etc/evil",
    ]);
    assert_eq!(stdout(&o), "via stdin\n", "{}", stderr(&o));
    assert!(stderr(&o).contains("No such file"), "{}", stderr(&o));
    // The destination must be a directory.
    let o = s.cli_with_stdin(&["cp", "-", "live:/etc/passwd"], Some(&raw_tar(b"x", b"x")));
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("not a directory"), "{}", stderr(&o));
    let o = s.cli(&["rm", "-f", "live", "box"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
