//! Importing images built by the test builder: OCI layouts as directories
//! and tars, multi-platform layouts, `docker save` archives old and new.

use std::path::Path;

use appliance::storage::oci::{self, BlobStore, FetchedImage, OciError, media_type};
use serde_json::json;
use tempfile::TempDir;
use tests::oci_image::{self, BuiltImage, Config, Entry, ImageBuilder, IndexBuilder};

fn image() -> ImageBuilder {
    ImageBuilder::new()
        .layer(vec![
            Entry::dir("/etc"),
            Entry::file("/etc/gone", "gone\n"),
            Entry::dir("/opq"),
            Entry::file("/opq/a", "a\n"),
        ])
        .layer(vec![Entry::whiteout("/etc/gone"), Entry::opaque("/opq")])
        .layer_uncompressed(vec![Entry::file_with("/etc/new", "new\n", 0o600, 1, 2)])
        .config(Config {
            env: vec!["A=1".into()],
            cmd: vec!["/bin/sh".into()],
            working_dir: "/".into(),
            user: "nobody".into(),
            ..Default::default()
        })
}

struct Env {
    dir: TempDir,
    blobs: BlobStore,
}

fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = BlobStore::open(&dir.path().join("blobs")).expect("blob store");
    Env { dir, blobs }
}

/// The blobs in the store (digests), and nothing in its tmp/.
fn stored(blobs: &BlobStore) -> Vec<String> {
    let tmp = std::fs::read_dir(blobs.root().join("tmp"))
        .expect("tmp")
        .count();
    assert_eq!(tmp, 0, "temporary files left behind");
    let mut v: Vec<String> = std::fs::read_dir(blobs.root().join("sha256"))
        .expect("sha256 dir")
        .map(|e| format!("sha256:{}", e.expect("entry").file_name().to_string_lossy()))
        .collect();
    v.sort();
    v
}

/// `image` is `built`, its blobs all stored.
fn assert_is(image: &FetchedImage, built: &BuiltImage, blobs: &BlobStore) {
    assert_eq!(image.manifest_digest, built.manifest.digest);
    assert_eq!(image.config_digest, built.config.digest);
    assert_eq!(image.config_raw, built.config.bytes);
    assert_eq!(image.diff_ids, built.diff_ids);
    let got: Vec<_> = image
        .layers
        .iter()
        .map(|l| (l.digest.as_str(), l.media_type.as_str(), l.size))
        .collect();
    let want: Vec<_> = built
        .layers
        .iter()
        .map(|l| {
            (
                l.digest.as_str(),
                l.media_type.as_str(),
                l.bytes.len() as u64,
            )
        })
        .collect();
    assert_eq!(got, want);
    let mut want_stored: Vec<String> = [&built.manifest, &built.config]
        .into_iter()
        .chain(&built.layers)
        .map(|b| b.digest.clone())
        .collect();
    want_stored.sort();
    assert_eq!(stored(blobs), want_stored);
}

/// Rewrites index.json's ref.name annotation.
fn set_ref_name(layout: &Path, name: &str) {
    let path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("index.json")).expect("json");
    index["manifests"][0]["annotations"][oci_image::REF_NAME] = json!(name);
    std::fs::write(&path, serde_json::to_vec(&index).expect("json")).expect("index.json");
}

#[test]
fn oci_layout_directory() {
    let e = env();
    let layout = e.dir.path().join("layout");
    let built = image().write_layout(&layout, "v1");
    let images = oci::import(&layout, &e.blobs).unwrap_or_else(|e| panic!("import: {e}"));
    assert_eq!(images.len(), 1);
    // A bare tag names no repository.
    assert_eq!(images[0].reference, None);
    assert_is(&images[0], &built, &e.blobs);
    let c = &images[0].config;
    assert_eq!(
        (c.env.as_slice(), c.cmd.as_slice()),
        (&["A=1".to_string()][..], &["/bin/sh".to_string()][..])
    );
    assert_eq!((c.working_dir.as_str(), c.user.as_str()), ("/", "nobody"));

    // Again: nothing new, nothing lost.
    let again = oci::import(&layout, &e.blobs).expect("second import");
    assert_eq!(again, images);
    assert_is(&again[0], &built, &e.blobs);
}

#[test]
fn oci_layout_tar() {
    let e = env();
    let layout = e.dir.path().join("layout");
    let built = image().write_layout(&layout, "v1");
    set_ref_name(&layout, "registry.example:5000/team/app:v2");
    let tar = e.dir.path().join("layout.tar");
    oci_image::tar_dir(&layout, &tar);
    let images = oci::import(&tar, &e.blobs).unwrap_or_else(|e| panic!("import: {e}"));
    assert_eq!(images.len(), 1);
    assert_eq!(
        images[0].reference.as_deref(),
        Some("registry.example:5000/team/app:v2")
    );
    assert_is(&images[0], &built, &e.blobs);

    // Streamed (as from an HTTP upload) into another store, the same.
    let other = env();
    let file = std::fs::File::open(&tar).expect("tar");
    let streamed = oci::import_reader(file, &other.blobs).expect("import_reader");
    assert_eq!(streamed, images);
}

#[test]
fn multi_platform_layout_gives_amd64_and_keeps_nothing_else() {
    let e = env();
    let layout = e.dir.path().join("layout");
    let built = IndexBuilder::amd64_and_arm64(image()).write_layout(&layout, "multi");
    let tar = e.dir.path().join("layout.tar");
    oci_image::tar_dir(&layout, &tar);
    let images = oci::import(&tar, &e.blobs).unwrap_or_else(|e| panic!("import: {e}"));
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].config.architecture, "amd64");
    // Only the amd64 image's blobs are kept: not the arm64 ones, nor the index.
    assert_is(&images[0], &built.images[0], &e.blobs);

    let from_dir = oci::import(&layout, &e.blobs).expect("import dir");
    assert_eq!(from_dir, images);
}

#[test]
fn layout_without_amd64_is_refused() {
    let e = env();
    let layout = e.dir.path().join("layout");
    IndexBuilder::new()
        .image(ImageBuilder::dummy("arm64"))
        .write_layout(&layout, "arm");
    let err = oci::import(&layout, &e.blobs).expect_err("arm64 only");
    assert!(matches!(err, OciError::NoPlatform { .. }), "{err:?}");
    assert!(err.to_string().contains("(has: linux/arm64)"), "{err}");
    let tar = e.dir.path().join("layout.tar");
    oci_image::tar_dir(&layout, &tar);
    let err = oci::import(&tar, &e.blobs).expect_err("arm64 only");
    assert!(matches!(err, OciError::NoPlatform { .. }), "{err:?}");
    assert!(stored(&e.blobs).is_empty());
}

#[test]
fn corrupt_layout_blob_is_refused() {
    let e = env();
    let layout = e.dir.path().join("layout");
    let built = image().write_layout(&layout, "v1");
    let victim = &built.layers[0].digest;
    let path = layout.join("blobs/sha256").join(&victim["sha256:".len()..]);
    let mut bytes = std::fs::read(&path).expect("blob");
    bytes[0] ^= 0xff;
    std::fs::write(&path, &bytes).expect("corrupting");
    for source in [layout.clone(), e.dir.path().join("layout.tar")] {
        if source.extension().is_some() {
            oci_image::tar_dir(&layout, &source);
        }
        let err = oci::import(&source, &e.blobs).expect_err("corrupt blob");
        assert!(
            matches!(&err, OciError::Verification { expected, .. } if expected == victim),
            "{err:?}"
        );
        assert!(stored(&e.blobs).is_empty());
    }
}

#[test]
fn docker_save_archive() {
    let e = env();
    let path = e.dir.path().join("save.tar");
    let built = image().write_docker_save(&path, &["busybox:latest", "example.com/x/y:1"]);
    let images = oci::import(&path, &e.blobs).unwrap_or_else(|e| panic!("import: {e}"));
    let refs: Vec<_> = images.iter().map(|i| i.reference.as_deref()).collect();
    assert_eq!(
        refs,
        [
            Some("docker.io/library/busybox:latest"),
            Some("example.com/x/y:1")
        ]
    );
    let i = &images[0];
    assert_eq!(i.config_digest, built.config.digest);
    assert_eq!(i.diff_ids, built.diff_ids);
    for (l, tar) in i.layers.iter().zip(&built.tars) {
        assert_eq!(l.media_type, media_type::DOCKER_LAYER);
        assert_eq!(l.digest, oci_image::sha256(tar));
        assert_eq!(l.size, tar.len() as u64);
        assert_eq!(std::fs::read(e.blobs.path(&l.digest)).expect("layer"), *tar);
    }
    assert!(e.blobs.has(&i.manifest_digest));
    assert_eq!(stored(&e.blobs).len(), 3 + 2);
}

/// Docker 25+ saves an OCI layout plus a manifest.json whose RepoTags name
/// the image.
#[test]
fn newer_docker_save_archive() {
    let e = env();
    let layout = e.dir.path().join("layout");
    let built = image().write_layout(&layout, "latest");
    let hex = |d: &str| format!("blobs/sha256/{}", &d["sha256:".len()..]);
    let manifest = json!([{
        "Config": hex(&built.config.digest),
        "RepoTags": ["app:1"],
        "Layers": built.layers.iter().map(|l| hex(&l.digest)).collect::<Vec<_>>(),
    }]);
    std::fs::write(
        layout.join("manifest.json"),
        serde_json::to_vec(&manifest).expect("json"),
    )
    .expect("manifest.json");
    let tar = e.dir.path().join("save.tar");
    oci_image::tar_dir(&layout, &tar);
    let images = oci::import(&tar, &e.blobs).unwrap_or_else(|e| panic!("import: {e}"));
    assert_eq!(images.len(), 1);
    assert_eq!(
        images[0].reference.as_deref(),
        Some("docker.io/library/app:1")
    );
    assert_is(&images[0], &built, &e.blobs);
}
