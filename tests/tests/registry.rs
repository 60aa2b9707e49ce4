//! Pulling images from a real registry (distribution, on loopback) into a
//! blob store: manifests and configs, layers verified and cached, manifest
//! lists, platforms, tampered blobs, unknown tags and basic auth.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use appliance::storage::oci::{self, BlobStore, FetchedImage, OciError, Progress, PullOptions};
use tempfile::TempDir;
use tests::oci_image::{self, Config, Entry, ImageBuilder, IndexBuilder};
use tests::registry::Registry;

/// Three layers: a base, one with a whiteout and an opaque directory (and
/// a layer-local file), and an uncompressed one.
fn whiteout_image() -> ImageBuilder {
    ImageBuilder::new()
        .layer(vec![
            Entry::dir("/etc"),
            Entry::file("/etc/keep", "keep\n"),
            Entry::file("/etc/gone", "gone\n"),
            Entry::dir("/opq"),
            Entry::file("/opq/a", "a\n"),
            Entry::file("/opq/b", "b\n"),
            Entry::dir("/bin"),
            Entry::file_with("/bin/hello", "#!/bin/sh\necho hello\n", 0o755, 1000, 1000),
            Entry::symlink("/bin/link", "hello"),
            Entry::hardlink("/bin/hard", "/bin/hello"),
        ])
        .layer(vec![
            Entry::whiteout("/etc/gone"),
            Entry::opaque("/opq"),
            Entry::file("/opq/c", "c\n"),
        ])
        .layer_uncompressed(vec![Entry::file("/etc/new", "new\n")])
        .config(Config {
            env: vec!["PATH=/usr/bin:/bin".into(), "GREETING=hi".into()],
            cmd: vec!["/bin/hello".into()],
            working_dir: "/srv".into(),
            user: "1000:1000".into(),
            labels: BTreeMap::from([("org.example.test".into(), "whiteouts".into())]),
            stop_signal: "SIGINT".into(),
            ..Default::default()
        })
}

struct Store {
    _dir: TempDir,
    blobs: BlobStore,
}

fn store() -> Store {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = BlobStore::open(&dir.path().join("blobs")).expect("blob store");
    Store { _dir: dir, blobs }
}

async fn pull(
    reference: &str,
    opts: &PullOptions,
    blobs: &BlobStore,
) -> (Result<FetchedImage, OciError>, Vec<Progress>) {
    let events = Mutex::new(Vec::new());
    let result = oci::pull(reference, opts, blobs, &|p| {
        events.lock().expect("events").push(p)
    })
    .await;
    (result, events.into_inner().expect("events"))
}

/// Every blob file hashes to its name and nothing is left in tmp/.
fn assert_store_sound(blobs: &BlobStore) {
    for e in std::fs::read_dir(blobs.root().join("sha256")).expect("sha256 dir") {
        let e = e.expect("entry");
        let bytes = std::fs::read(e.path()).expect("blob");
        assert_eq!(
            oci_image::sha256(&bytes),
            format!("sha256:{}", e.file_name().to_string_lossy())
        );
    }
    let tmp = std::fs::read_dir(blobs.root().join("tmp"))
        .expect("tmp dir")
        .count();
    assert_eq!(tmp, 0, "temporary files left behind");
}

fn push_whiteouts(registry: &Registry, layout: &Path) -> oci_image::BuiltImage {
    let built = whiteout_image().write_layout(layout, "v1");
    registry.push_oci_layout(layout, "v1", "test/whiteouts:v1");
    built
}

#[tokio::test]
async fn pulls_a_three_layer_image_then_finds_it_cached() {
    let registry = Registry::start();
    let layout = tempfile::tempdir().expect("tempdir");
    let built = push_whiteouts(&registry, layout.path());
    let s = store();
    let reference = registry.reference("test/whiteouts:v1");

    let (image, events) = pull(&reference, &PullOptions::default(), &s.blobs).await;
    let image = image.unwrap_or_else(|e| panic!("pull: {e}"));
    assert_eq!(image.reference.as_deref(), Some(reference.as_str()));
    assert_eq!(image.manifest_digest, built.manifest.digest);
    assert_eq!(image.config_digest, built.config.digest);
    assert_eq!(image.config_raw, built.config.bytes);
    assert_eq!(image.diff_ids, built.diff_ids);
    let layers: Vec<_> = image
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.media_type.clone(), l.size))
        .collect();
    let want: Vec<_> = built
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.media_type.clone(), l.bytes.len() as u64))
        .collect();
    assert_eq!(layers, want);
    for l in &built.layers {
        assert!(s.blobs.has(&l.digest));
        assert_eq!(
            std::fs::read(s.blobs.path(&l.digest)).expect("layer"),
            l.bytes
        );
    }
    assert!(s.blobs.has(&image.manifest_digest) && s.blobs.has(&image.config_digest));
    assert_store_sound(&s.blobs);

    let c = &image.config;
    assert_eq!(c.env, ["PATH=/usr/bin:/bin", "GREETING=hi"]);
    assert_eq!(c.cmd, ["/bin/hello"]);
    assert!(c.entrypoint.is_empty());
    assert_eq!(c.working_dir, "/srv");
    assert_eq!(c.user, "1000:1000");
    assert_eq!(c.stop_signal, "SIGINT");
    assert_eq!(
        c.labels.get("org.example.test").map(String::as_str),
        Some("whiteouts")
    );
    assert_eq!((c.os.as_str(), c.architecture.as_str()), ("linux", "amd64"));

    // Progress: resolved first, then every layer done (not cached), with
    // byte counts that end at each layer's size.
    match events.first() {
        Some(Progress::Resolved {
            reference: r,
            manifest_digest,
            layers,
        }) => {
            assert_eq!(r, &reference);
            assert_eq!(manifest_digest, &built.manifest.digest);
            assert_eq!(layers.len(), 3);
        }
        other => panic!("first event {other:?}"),
    }
    for l in &built.layers {
        assert!(events.contains(&Progress::LayerDone {
            digest: l.digest.clone(),
            cached: false
        }));
        let last = events.iter().rev().find_map(|e| match e {
            Progress::Layer {
                digest,
                done,
                total,
            } if *digest == l.digest => Some((*done, *total)),
            _ => None,
        });
        let n = l.bytes.len() as u64;
        assert_eq!(last, Some((n, n)), "progress of {}", l.digest);
    }

    // Again: the same image, every layer cached.
    let (again, events) = pull(&reference, &PullOptions::default(), &s.blobs).await;
    assert_eq!(again.expect("second pull"), image);
    let done: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Progress::LayerDone { cached, .. } => Some(*cached),
            _ => None,
        })
        .collect();
    assert_eq!(done, [true, true, true]);
    assert!(!events.iter().any(|e| matches!(e, Progress::Layer { .. })));

    // By digest, too.
    let by_digest = format!(
        "{}/test/whiteouts@{}",
        registry.addr(),
        built.manifest.digest
    );
    let (by_digest, _) = pull(&by_digest, &PullOptions::default(), &s.blobs).await;
    assert_eq!(
        by_digest.expect("pull by digest").config_digest,
        built.config.digest
    );
}

#[tokio::test]
async fn pulls_docker_v2_schema2_manifests() {
    let registry = Registry::start();
    let layout = tempfile::tempdir().expect("tempdir");
    let built = whiteout_image().write_layout(layout.path(), "v1");
    registry.push_docker_v2s2(layout.path(), "v1", "test/docker:v1");
    let s = store();
    let (image, _) = pull(
        &registry.reference("test/docker:v1"),
        &PullOptions::default(),
        &s.blobs,
    )
    .await;
    let image = image.unwrap_or_else(|e| panic!("pull: {e}"));
    assert_ne!(image.manifest_digest, built.manifest.digest, "converted");
    let manifest = std::fs::read(s.blobs.path(&image.manifest_digest)).expect("manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("manifest json");
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(image.layers.len(), 3);
    assert!(
        image.layers.iter().all(|l| l
            .media_type
            .starts_with("application/vnd.docker.image.rootfs.diff.tar")),
        "{:?}",
        image.layers
    );
    assert_eq!(image.diff_ids, built.diff_ids);
    assert_eq!(image.config.cmd, ["/bin/hello"]);
    assert_store_sound(&s.blobs);
}

#[tokio::test]
async fn resolves_a_multi_platform_index_to_amd64() {
    let registry = Registry::start();
    let layout = tempfile::tempdir().expect("tempdir");
    let built =
        IndexBuilder::amd64_and_arm64(whiteout_image()).write_layout(layout.path(), "multi");
    registry.push_oci_layout_all(layout.path(), "multi", "test/multi:v1");
    let (amd64, arm64) = (&built.images[0], &built.images[1]);
    let s = store();
    let (image, _) = pull(
        &registry.reference("test/multi:v1"),
        &PullOptions::default(),
        &s.blobs,
    )
    .await;
    let image = image.unwrap_or_else(|e| panic!("pull: {e}"));
    assert_eq!(image.manifest_digest, amd64.manifest.digest);
    assert_eq!(image.config_digest, amd64.config.digest);
    assert_eq!(image.config.architecture, "amd64");
    assert!(!s.blobs.has(&arm64.layers[0].digest));
    assert!(!s.blobs.has(&arm64.config.digest));

    // Asking for arm64 gets the other one.
    let opts = PullOptions {
        platform_arch: "arm64".into(),
        ..Default::default()
    };
    let (image, _) = pull(&registry.reference("test/multi:v1"), &opts, &s.blobs).await;
    assert_eq!(
        image.expect("arm64 pull").config_digest,
        arm64.config.digest
    );
}

#[tokio::test]
async fn an_image_without_amd64_is_refused_naming_its_platforms() {
    let registry = Registry::start();
    let layout = tempfile::tempdir().expect("tempdir");
    IndexBuilder::new()
        .image(ImageBuilder::dummy("arm64"))
        .image(ImageBuilder::dummy("s390x"))
        .write_layout(layout.path(), "arm");
    registry.push_oci_layout_all(layout.path(), "arm", "test/arm:index");
    let single = tempfile::tempdir().expect("tempdir");
    let arm = ImageBuilder::dummy("arm64").write_layout(single.path(), "arm");
    registry.push_oci_layout(single.path(), "arm", "test/arm:single");

    let s = store();
    let reference = registry.reference("test/arm:index");
    let (e, _) = pull(&reference, &PullOptions::default(), &s.blobs).await;
    let e = e.expect_err("no amd64");
    assert!(matches!(e, OciError::NoPlatform { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("Image {reference} has no linux/amd64 variant (has: linux/arm64, linux/s390x)")
    );

    let reference = registry.reference("test/arm:single");
    let (e, _) = pull(&reference, &PullOptions::default(), &s.blobs).await;
    let e = e.expect_err("no amd64");
    assert_eq!(
        e.to_string(),
        format!("Image {reference} has no linux/amd64 variant (has: linux/arm64)")
    );
    // Its config was read, but no layer of it fetched.
    assert!(!s.blobs.has(&arm.layers[0].digest));
    assert_store_sound(&s.blobs);
}

#[tokio::test]
async fn a_tampered_blob_is_refused_and_not_kept() {
    let registry = Registry::start();
    let layout = tempfile::tempdir().expect("tempdir");
    let built = push_whiteouts(&registry, layout.path());
    let victim = &built.layers[1].digest;
    let data = registry.blob_data_path(victim);
    let mut bytes = std::fs::read(&data).expect("registry blob");
    for b in bytes.iter_mut() {
        *b = !*b;
    }
    std::fs::write(&data, &bytes).expect("tampering");

    let s = store();
    let (e, _) = pull(
        &registry.reference("test/whiteouts:v1"),
        &PullOptions::default(),
        &s.blobs,
    )
    .await;
    let e = e.expect_err("tampered blob");
    let actual = oci_image::sha256(&bytes);
    assert!(
        matches!(&e, OciError::Verification { expected, actual: a } if expected == victim && *a == actual),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!("Blob {victim} failed verification: expected {victim}, got {actual}")
    );
    assert!(!s.blobs.has(victim));
    assert_store_sound(&s.blobs);
}

#[tokio::test]
async fn an_unknown_tag_or_repository_is_a_clear_error() {
    let registry = Registry::start();
    let layout = tempfile::tempdir().expect("tempdir");
    push_whiteouts(&registry, layout.path());
    let s = store();
    for name in ["test/whiteouts:nope", "test/nothing:v1"] {
        let reference = registry.reference(name);
        let (e, _) = pull(&reference, &PullOptions::default(), &s.blobs).await;
        let e = e.expect_err("unknown");
        assert!(matches!(e, OciError::ManifestUnknown { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with(&format!("Manifest unknown: {reference}")),
            "{e}"
        );
    }
}

#[tokio::test]
async fn basic_auth() {
    let registry = Registry::start_with_htpasswd("tester", "s3cret");
    let layout = tempfile::tempdir().expect("tempdir");
    let built = push_whiteouts(&registry, layout.path());
    let s = store();
    let reference = registry.reference("test/whiteouts:v1");

    let (e, _) = pull(&reference, &PullOptions::default(), &s.blobs).await;
    let e = e.expect_err("anonymous");
    assert!(matches!(e, OciError::AuthRequired { .. }), "{e:?}");

    let wrong = PullOptions {
        username: Some("tester".into()),
        password: Some("wrong".into()),
        ..Default::default()
    };
    let (e, _) = pull(&reference, &wrong, &s.blobs).await;
    let e = e.expect_err("wrong password");
    assert!(matches!(e, OciError::AuthFailed { .. }), "{e:?}");
    assert!(
        e.to_string().contains("check the username and password"),
        "{e}"
    );

    let right = PullOptions {
        username: Some("tester".into()),
        password: Some("s3cret".into()),
        ..Default::default()
    };
    let (image, _) = pull(&reference, &right, &s.blobs).await;
    assert_eq!(
        image.expect("authenticated pull").manifest_digest,
        built.manifest.digest
    );
    assert_store_sound(&s.blobs);
}
