//! End to end through the Docker personality's image verbs: the real
//! docker CLI (`/usr/local/bin/docker`, 28.2.2) against `appliance serve
//! --docker-socket`, pulling from a real registry on loopback
//! (`tests::registry`), with real container VMs (TCG).

use std::path::Path;
use std::process::Command;

use tests::docker::Docker;
use tests::registry::Registry;
use tests::server::{stderr, stdout};

/// The offline busybox image pushed to `registry` under each of `names`.
fn push_busybox(registry: &Registry, names: &[&str]) {
    let layout = tempfile::tempdir().expect("tempdir");
    appliance::storage::busybox::write_layout(layout.path()).expect("busybox layout");
    for n in names {
        registry.push_oci_layout(layout.path(), "latest", n);
    }
}

/// `docker images` as `repo:tag id` lines, sorted.
fn images(d: &Docker) -> Vec<String> {
    let out = d.ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// A Docker API call with curl over the socket: status and body.
fn curl(socket: &Path, method: &str, path: &str) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-s", "-X", method, "--unix-socket"])
        .arg(socket)
        .args(["-w", "\n%{http_code}", &format!("http://docker{path}")])
        .output()
        .expect("curl");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_string())
}

fn fails_with(d: &Docker, args: &[&str], wanted: &str) {
    let o = d.run(args);
    assert_ne!(o.status.code(), Some(0), "docker {args:?} succeeded");
    assert!(
        stderr(&o).contains(wanted),
        "docker {args:?}: wanted {wanted:?} in stderr {:?}",
        stderr(&o)
    );
}

#[test]
fn pull_run_tag_and_rmi_through_a_registry() {
    let registry = Registry::start();
    push_busybox(&registry, &["busybox:latest", "team/bb:v2"]);
    let bb = registry.reference("busybox:latest");
    let team = registry.reference("team/bb:v2");
    let d = Docker::start();

    // The offline busybox goes first: one name, no container, so rmi
    // untags and deletes it (and its blobs: the pull below downloads).
    let out = d.ok(&["rmi", "busybox"]);
    assert!(out.contains("Untagged: busybox:latest"), "{out}");
    assert!(out.contains("Deleted: sha256:"), "{out}");
    assert_eq!(images(&d), Vec::<String>::new());

    let out = d.ok(&["pull", &bb]);
    assert!(out.contains("latest: Pulling from busybox"), "{out}");
    assert!(out.contains(": Pull complete"), "{out}");
    assert!(out.contains("Digest: sha256:"), "{out}");
    assert!(
        out.contains(&format!("Status: Downloaded newer image for {bb}")),
        "{out}"
    );
    let listed = images(&d);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].starts_with(&format!("{bb} ")), "{listed:?}");
    let id = listed[0].split(' ').nth(1).expect("id").to_string();
    assert_eq!(id.len(), 12, "{id}");

    let out = d.ok(&["pull", &bb]);
    assert!(
        out.contains(&format!("Status: Image is up to date for {bb}")),
        "{out}"
    );

    // run of an image it does not have: create says 404, the CLI pulls
    // and creates again.
    let o = d.run(&["run", "--rm", &team, "echo", "ran"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "ran\n");
    assert!(
        stderr(&o).contains(&format!("Unable to find image '{team}' locally")),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("v2: Pulling from team/bb"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        images(&d),
        [format!("{bb} {id}"), format!("{team} {id}")],
        "the same content: one image, two names"
    );

    // One of several names only untags.
    let out = d.ok(&["rmi", &team]);
    assert_eq!(out.trim(), format!("Untagged: {team}"));
    d.ok(&["tag", &bb, "mine:v1"]);
    assert_eq!(images(&d), [format!("{bb} {id}"), format!("mine:v1 {id}")]);
    assert_eq!(d.ok(&["rmi", "mine:v1"]).trim(), "Untagged: mine:v1");

    // In use by a container: refused in Docker's words, nothing changes.
    let c = d.ok(&["create", "--name", "user", &bb, "true"]);
    let c12 = &c.trim()[..12];
    fails_with(
        &d,
        &["rmi", &bb],
        &format!(
            "conflict: unable to remove repository reference \"{bb}\" (must force) - container {c12} is using its referenced image {id}"
        ),
    );
    fails_with(
        &d,
        &["rmi", &id],
        &format!(
            "conflict: unable to delete {id} (must be forced) - image is being used by stopped container {c12}"
        ),
    );
    assert_eq!(images(&d), [format!("{bb} {id}")]);
    fails_with(
        &d,
        &["rmi", "-f", &bb],
        &format!("image is being used by stopped container {c12}; remove the container first"),
    );
    assert_eq!(images(&d), [format!("{bb} {id}")]);
    d.ok(&["rm", "user"]);
    let out = d.ok(&["rmi", &bb]);
    assert!(out.contains(&format!("Untagged: {bb}")), "{out}");
    assert!(out.contains(&format!("Deleted: sha256:{id}")), "{out}");
    assert_eq!(images(&d), Vec::<String>::new());

    // Bad input: clear errors naming the element, nothing changes.
    fails_with(&d, &["tag", "nosuch", "x:y"], "No such image: nosuch");
    fails_with(&d, &["rmi", "nosuch"], "No such image: nosuch");
    fails_with(&d, &["image", "inspect", "nosuch"], "No such image: nosuch");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.tar");
    fails_with(
        &d,
        &["save", "-o", out.to_str().expect("utf-8"), "nosuch"],
        "No such image: nosuch",
    );
    let (status, body) = curl(
        &d.socket,
        "POST",
        "/v1.45/images/create?fromImage=Bad%20Ref&tag=latest",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Bad Ref"), "{body}");
    let (status, body) = curl(&d.socket, "POST", "/images/create?fromSrc=-");
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("docker load"), "{body}");
    let missing = registry.reference("nosuch:v1");
    let o = d.run(&["pull", &missing]);
    assert_ne!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stderr(&o).contains("nosuch"), "{}", stderr(&o));
    assert_eq!(images(&d), Vec::<String>::new());
}

#[test]
fn save_then_load_round_trips_and_lists_filter() {
    let d = Docker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let one = dir.path().join("busybox.tar");
    let one_s = one.to_str().expect("utf-8");
    let before = images(&d);
    assert_eq!(before.len(), 1, "{before:?}");
    let id = before[0].split(' ').nth(1).expect("id").to_string();

    d.ok(&["tag", "busybox", "two:v1"]);
    // Filters: reference (globs), dangling.
    let names = |filter: &str| {
        d.ok(&[
            "images",
            "--filter",
            filter,
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ])
    };
    assert_eq!(names("reference=two*").trim(), "two:v1");
    assert_eq!(names("reference=busybox").trim(), "busybox:latest");
    assert_eq!(names("dangling=true").trim(), "");
    assert_eq!(names("dangling=false").lines().count(), 2);
    fails_with(&d, &["images", "--filter", "before=busybox"], "before");

    d.ok(&["save", "-o", one_s, "busybox", "two:v1"]);
    let listing = Command::new("tar")
        .args(["-tf", one_s])
        .output()
        .expect("tar");
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    for member in ["manifest.json", "index.json", "oci-layout", "blobs/sha256/"] {
        assert!(listing.contains(member), "{member} missing: {listing}");
    }
    let out = d.ok(&["rmi", "busybox", "two:v1"]);
    assert!(out.contains("Deleted: sha256:"), "{out}");
    assert_eq!(images(&d), Vec::<String>::new());

    let out = d.ok(&["load", "-i", one_s]);
    assert!(out.contains("Loaded image: busybox:latest"), "{out}");
    assert!(out.contains("Loaded image: two:v1"), "{out}");
    assert_eq!(
        images(&d),
        [format!("busybox:latest {id}"), format!("two:v1 {id}")]
    );
    let o = d.run(&["run", "--rm", "two:v1", "echo", "loaded"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "loaded\n");

    // docker save to stdout, piped into load (the stream, not a file).
    let o = d.run(&["save", "two:v1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    d.ok(&["rmi", "two:v1"]);
    let l = d.run_with_stdin(&["load"], Some(&o.stdout));
    assert_eq!(l.status.code(), Some(0), "{}", stderr(&l));
    assert!(
        stdout(&l).contains("Loaded image: two:v1"),
        "{}",
        stdout(&l)
    );

    // History: one entry per layer, the top one with the image's id.
    let h = d.ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.ID}} {{.CreatedBy}}",
        "two:v1",
    ]);
    assert_eq!(h.lines().count(), 1, "{h}");
    assert!(h.starts_with(&format!("sha256:{id}")), "{h}");
    assert!(h.contains(" layer sha256:"), "{h}");
    fails_with(&d, &["history", "nosuch"], "No such image: nosuch");

    // By id with two names: must be forced; forced, both go.
    d.ok(&["tag", "two:v1", "three:v1"]);
    fails_with(
        &d,
        &["rmi", &id],
        &format!(
            "conflict: unable to delete {id} (must be forced) - image is referenced in multiple repositories"
        ),
    );
    assert_eq!(images(&d).len(), 3);
    let out = d.ok(&["rmi", "-f", &id]);
    assert!(out.contains("Untagged: three:v1"), "{out}");
    assert!(out.contains("Untagged: two:v1"), "{out}");
    assert!(out.contains("Untagged: busybox:latest"), "{out}");
    assert!(out.contains(&format!("Deleted: sha256:{id}")), "{out}");
    assert_eq!(images(&d), Vec::<String>::new());

    // A bad archive: a clear error, nothing loaded.
    let bad = d.run_with_stdin(&["load"], Some(b"this is not a tar archive at all"));
    assert_ne!(bad.status.code(), Some(0));
    assert!(
        stderr(&bad).contains("Loading the image archive"),
        "{}",
        stderr(&bad)
    );
    assert_eq!(images(&d), Vec::<String>::new());
}
