use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::*;
use crate::testutil::{MTIME, Tar, chain, snapshot};
use crate::unpack::DevicePolicy;

/// tmp/root is the target, with some contents; tmp/outside a sentinel no case may change.
struct Sandbox {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    outside_before: Vec<String>,
}

fn sandbox() -> Sandbox {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/keep"), "kept").unwrap();
    fs::write(root.join("file"), "old").unwrap();
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::write(outside.join("secret"), "untouched").unwrap();
    let outside_before = snapshot(&outside);
    Sandbox {
        _tmp: tmp,
        root,
        outside,
        outside_before,
    }
}

impl Sandbox {
    fn assert_outside_untouched(&self) {
        assert_eq!(
            snapshot(&self.outside),
            self.outside_before,
            "the sentinel changed"
        );
    }
}

fn options() -> UnpackOptions {
    UnpackOptions {
        source: "archive".into(),
        whiteouts: false,
        same_owner: false,
        devices: DevicePolicy::Skip,
    }
}

fn apply(root: &Path, tar: &Tar) -> Result<UnpackReport, ArchiveError> {
    unpack_staged(&tar.bytes()[..], root, &options())
}

fn mtime(path: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.mtime(), m.mtime_nsec())
}

/// Applies `tar`, expects a refusal naming `entry`, and checks that nothing changed: the
/// target's listing (no stage left either) and times, and the sentinel.
fn refused(sandbox: &Sandbox, tar: &Tar, entry: &str) -> String {
    let before = snapshot(&sandbox.root);
    let times = mtime(&sandbox.root);
    let error = apply(&sandbox.root, tar).expect_err("the archive was accepted");
    let text = chain(&error);
    assert!(
        text.starts_with(&format!("Archive entry {entry:?}: ")),
        "{text}"
    );
    assert_eq!(
        snapshot(&sandbox.root),
        before,
        "the target changed: {text}"
    );
    assert_eq!(mtime(&sandbox.root), times, "the target's times changed");
    sandbox.assert_outside_untouched();
    text
}

#[test]
fn good_entries_then_an_escaping_one_change_nothing() {
    let sandbox = sandbox();
    let tar = Tar::new()
        .file("first", "1")
        .dir("dir/")
        .file("dir/second", "2")
        .file("file", "replaced?")
        .file("../escaped", "x");
    let text = refused(&sandbox, &tar, "../escaped");
    assert!(text.contains("path leaves the target"), "{text}");
    assert!(!sandbox.root.parent().unwrap().join("escaped").exists());
    assert_eq!(
        fs::read_to_string(sandbox.root.join("file")).unwrap(),
        "old"
    );
}

#[test]
fn a_planted_root_symlink_is_not_left_behind() {
    let sandbox = sandbox();
    let outside = sandbox.outside.to_str().unwrap().to_owned();
    let tar = Tar::new()
        .file("ok", "fine")
        .symlink("rootlink", "/")
        .symlink("outlink", &outside)
        .file("outlink/planted", "x");
    let text = refused(&sandbox, &tar, "outlink/planted");
    assert!(
        text.contains("Path goes through symlink \"outlink\""),
        "{text}"
    );
    assert!(!sandbox.root.join("rootlink").exists());
    assert!(fs::symlink_metadata(sandbox.root.join("rootlink")).is_err());

    let tar = Tar::new()
        .symlink("rootlink", "/")
        .file("rootlink/tmp/planted", "x");
    refused(&sandbox, &tar, "rootlink/tmp/planted");
}

#[test]
fn a_symlink_already_in_the_target_is_not_gone_through() {
    let sandbox = sandbox();
    symlink(&sandbox.outside, sandbox.root.join("link")).unwrap();
    let tar = Tar::new()
        .file("a-first", "1")
        .file("link/dir/planted", "x")
        .file("z-last", "2");
    let text = refused(&sandbox, &tar, "link/dir/planted");
    assert!(
        text.contains("Path goes through symlink \"link\""),
        "{text}"
    );
    assert!(!sandbox.root.join("a-first").exists());

    // Deeper, and named by the first entry that needed it.
    fs::create_dir(sandbox.root.join("etc/sub")).unwrap();
    symlink("/", sandbox.root.join("etc/sub/up")).unwrap();
    let tar = Tar::new()
        .file("etc/new", "n")
        .file("etc/sub/up/x", "x")
        .file("etc/sub/up/y", "y");
    let text = refused(&sandbox, &tar, "etc/sub/up/x");
    assert!(text.contains("\"etc/sub/up\""), "{text}");

    // A file where the archive needs a directory.
    let tar = Tar::new().file("file/inner", "x");
    let text = refused(&sandbox, &tar, "file/inner");
    assert!(text.contains("is not a directory"), "{text}");
}

#[test]
fn a_malformed_stream_after_good_entries_changes_nothing() {
    let sandbox = sandbox();
    let mut bytes = Tar::new()
        .file("first", "1")
        .file("etc/second", "2")
        .bytes();
    // Corrupt the second header's checksum.
    bytes[512 * 2 + 148] ^= 0x55;
    let before = snapshot(&sandbox.root);
    let error = unpack_staged(&bytes[..], &sandbox.root, &options()).unwrap_err();
    assert!(matches!(error, ArchiveError::Malformed { .. }), "{error}");
    assert_eq!(snapshot(&sandbox.root), before);
}

#[test]
fn a_target_that_is_a_symlink_is_not_followed() {
    let sandbox = sandbox();
    let link = sandbox.root.join("to-outside");
    symlink(&sandbox.outside, &link).unwrap();
    let error = apply(&link, &Tar::new().file("planted", "x")).unwrap_err();
    assert!(
        matches!(error, ArchiveError::TargetSymlink { .. }),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "Archive: the target {:?} is a symlink, which is not followed",
            link.display().to_string()
        )
    );
    sandbox.assert_outside_untouched();
    // A trailing slash asks the kernel to follow it: still refused.
    let slashed = PathBuf::from(format!("{}/", link.display()));
    assert!(apply(&slashed, &Tar::new().file("planted", "x")).is_err());
    sandbox.assert_outside_untouched();
}

#[test]
fn an_accepted_archive_merges_replaces_and_leaves_no_stage() {
    let sandbox = sandbox();
    let root = &sandbox.root;
    fs::create_dir_all(root.join("was-dir/inner")).unwrap();
    fs::write(root.join("was-file"), "f").unwrap();
    symlink(&sandbox.outside, root.join("was-link")).unwrap();
    let tar = Tar::new()
        .file("etc/new", "new")
        .file("file", "replaced")
        .file("was-dir", "now a file")
        .dir("was-file/")
        .file("was-file/inside", "i")
        // Named by the archive itself: the symlink is replaced, not gone through.
        .dir("was-link/")
        .file("was-link/inside", "i")
        .raw(b"private/", tar::EntryType::Directory, b"", b"", |h| {
            h.set_mode(0o750)
        })
        .file("private/data", "d")
        .symlink("rootlink", "/")
        .hardlink("hard", "file");
    let report = apply(root, &tar).unwrap();
    assert_eq!(report.entries, 11);
    assert_eq!(
        snapshot(root),
        [
            "etc/ 755",
            "etc/keep 644 \"kept\"",
            "etc/new 644 \"new\"",
            "file 644 \"replaced\"",
            "hard 644 \"replaced\"",
            "private/ 750",
            "private/data 644 \"d\"",
            "rootlink -> /",
            "was-dir 644 \"now a file\"",
            "was-file/ 755",
            "was-file/inside 644 \"i\"",
            "was-link/ 755",
            "was-link/inside 644 \"i\"",
        ]
    );
    let private = fs::metadata(root.join("private")).unwrap();
    assert_eq!(
        private.mtime(),
        MTIME as i64,
        "directory times are applied last"
    );
    assert_eq!(
        fs::metadata(root.join("hard")).unwrap().ino(),
        fs::metadata(root.join("file")).unwrap().ino()
    );
    sandbox.assert_outside_untouched();
}

#[test]
fn a_hardlink_may_name_a_file_already_in_the_target() {
    let sandbox = sandbox();
    apply(&sandbox.root, &Tar::new().hardlink("etc/again", "etc/keep")).unwrap();
    let ino = |p: &str| fs::metadata(sandbox.root.join(p)).unwrap().ino();
    assert_eq!(ino("etc/again"), ino("etc/keep"));
    // ...but not through a symlink of the target.
    symlink(&sandbox.outside, sandbox.root.join("link")).unwrap();
    let text = refused(
        &sandbox,
        &Tar::new().hardlink("stolen", "link/secret"),
        "stolen",
    );
    assert!(text.contains("Hardlink target \"link/secret\""), "{text}");
}

#[test]
fn the_target_itself_takes_the_metadata_of_its_entry() {
    let sandbox = sandbox();
    let tar = Tar::new()
        .raw(b"./", tar::EntryType::Directory, b"", b"", |h| {
            h.set_mode(0o711)
        })
        .file("x", "x");
    apply(&sandbox.root, &tar).unwrap();
    let meta = fs::metadata(&sandbox.root).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o711);
    assert_eq!(meta.mtime(), MTIME as i64);
}

#[test]
fn staged_trees_can_be_copied_where_they_cannot_be_renamed() {
    // The copy used across file systems, exercised on one.
    let tmp = tempfile::tempdir().unwrap();
    let from = tmp.path().join("from");
    let to = tmp.path().join("to");
    fs::create_dir_all(from.join("tree/sub")).unwrap();
    fs::write(from.join("tree/sub/file"), "contents").unwrap();
    fs::set_permissions(
        from.join("tree/sub/file"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    symlink("/", from.join("tree/rootlink")).unwrap();
    fs::create_dir(&to).unwrap();
    fs::write(to.join("tree"), "a file in the way").unwrap();
    let open = |p: &Path| open(p, READ_DIR, Mode::empty()).unwrap();
    let (from_fd, to_fd) = (open(&from), open(&to));
    let opts = options();
    let mut mover = Mover {
        opts: &opts,
        buffer: Vec::new(),
    };
    mover
        .copy(from_fd.as_fd(), b"tree", to_fd.as_fd())
        .unwrap_or_else(|f| panic!("{}", chain(&entry_error("archive", f, "tree"))));
    assert_eq!(
        snapshot(&to),
        [
            "tree/ 755",
            "tree/rootlink -> /",
            "tree/sub/ 755",
            "tree/sub/file 4755 \"contents\"",
        ]
    );
}
