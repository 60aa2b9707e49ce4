use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::*;
use crate::testutil::{MTIME, Tar, chain, snapshot};

/// tmp/root is the target; tmp/outside a sentinel that no case may change.
struct Sandbox {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    before: Vec<String>,
}

fn sandbox() -> Sandbox {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir(&root).unwrap();
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::write(outside.join("secret"), "untouched").unwrap();
    fs::write(outside.join("dir/inner"), "untouched too").unwrap();
    let before = snapshot(tmp.path().join("outside").as_path());
    Sandbox {
        _tmp: tmp,
        root,
        outside,
        before,
    }
}

impl Sandbox {
    fn assert_outside_untouched(&self) {
        assert_eq!(snapshot(&self.outside), self.before, "the sentinel changed");
        let secret = fs::symlink_metadata(self.outside.join("secret")).unwrap();
        assert_eq!(secret.nlink(), 1, "the secret got a hardlink");
    }

    fn outside_str(&self) -> &str {
        self.outside.to_str().unwrap()
    }
}

fn options(whiteouts: bool) -> UnpackOptions {
    UnpackOptions {
        source: "layer sha256:0123abcd".into(),
        whiteouts,
        same_owner: true,
        devices: DevicePolicy::Skip,
    }
}

fn apply(
    root: &Path,
    tar: impl std::borrow::Borrow<Tar>,
    whiteouts: bool,
) -> Result<UnpackReport, ArchiveError> {
    unpack(&tar.borrow().bytes()[..], root, &options(whiteouts))
}

/// Unpacks and expects a refusal that names `entry`, with the sentinel untouched.
fn refused(
    sandbox: &Sandbox,
    tar: impl std::borrow::Borrow<Tar>,
    entry: &str,
    whiteouts: bool,
) -> ArchiveError {
    let error = apply(&sandbox.root, tar, whiteouts).expect_err("the archive was accepted");
    let text = chain(&error);
    assert!(
        text.starts_with(&format!("Layer sha256:0123abcd entry {entry:?}: ")),
        "{text}"
    );
    sandbox.assert_outside_untouched();
    error
}

fn escape_reason(error: &ArchiveError) -> &EscapeReason {
    match error {
        ArchiveError::Escape { reason, .. } => reason,
        other => panic!("not an escape: {}", chain(other)),
    }
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

// The malicious corpus.

#[test]
fn refuses_dotdot() {
    let sb = sandbox();
    let error = refused(
        &sb,
        Tar::new().file("../outside/x", "evil"),
        "../outside/x",
        false,
    );
    assert!(matches!(escape_reason(&error), EscapeReason::DotDot));
    assert!(chain(&error).contains("path leaves the target: Path has a \"..\" component"));
}

#[test]
fn refuses_nested_dotdot() {
    let sb = sandbox();
    let error = refused(
        &sb,
        Tar::new().file("a/../../outside/x", "evil"),
        "a/../../outside/x",
        false,
    );
    assert!(matches!(escape_reason(&error), EscapeReason::DotDot));
    assert!(
        !exists(&sb.root.join("a")),
        "nothing is created before the check"
    );
}

#[test]
fn refuses_absolute() {
    let sb = sandbox();
    let path = format!("{}/x", sb.outside_str());
    let error = refused(&sb, Tar::new().file(&path, "evil"), &path, false);
    assert!(matches!(escape_reason(&error), EscapeReason::Absolute));
    let error = refused(&sb, Tar::new().file("/etc/x", "evil"), "/etc/x", false);
    assert!(matches!(escape_reason(&error), EscapeReason::Absolute));
}

#[test]
fn refuses_file_through_relative_symlink() {
    let sb = sandbox();
    let tar = Tar::new()
        .symlink("evil", "../outside")
        .file("evil/x", "evil")
        .bytes();
    let error = unpack(&tar[..], &sb.root, &options(false)).unwrap_err();
    assert!(chain(&error).starts_with("Layer sha256:0123abcd entry \"evil/x\""));
    assert!(matches!(escape_reason(&error), EscapeReason::Symlink(p) if p == "evil"));
    sb.assert_outside_untouched();
}

#[test]
fn refuses_file_through_absolute_symlink() {
    let sb = sandbox();
    let outside = sb.outside_str().to_owned();
    let error = refused(
        &sb,
        Tar::new().symlink("evil", &outside).file("evil/x", "evil"),
        "evil/x",
        false,
    );
    assert!(matches!(escape_reason(&error), EscapeReason::Symlink(p) if p == "evil"));
}

#[test]
fn refuses_symlink_chain() {
    let sb = sandbox();
    let tar = Tar::new()
        .symlink("a", "b")
        .symlink("b", "../outside")
        .file("a/x", "evil")
        .dir("b/sub/");
    let error = refused(&sb, &tar, "a/x", false);
    assert!(matches!(escape_reason(&error), EscapeReason::Symlink(p) if p == "a"));
}

#[test]
fn refuses_directory_symlink_and_fifo_through_symlink() {
    let sb = sandbox();
    for (path, kind) in [
        ("evil/sub/", EntryType::Directory),
        ("evil/link", EntryType::Symlink),
        ("evil/fifo", EntryType::Fifo),
        ("deep/evil/x", EntryType::Regular),
    ] {
        let mut case = Tar::new();
        case = case
            .symlink("evil", "../outside")
            .symlink("deep/evil", "../../outside");
        case = case.raw(path.as_bytes(), kind, b"target", b"", |_| {});
        let error = refused(&sb, &case, path, false);
        assert!(
            matches!(escape_reason(&error), EscapeReason::Symlink(_)),
            "{path}"
        );
    }
}

#[test]
fn refuses_hardlink_with_dotdot() {
    let sb = sandbox();
    let error = refused(
        &sb,
        Tar::new().hardlink("h", "../outside/secret"),
        "h",
        false,
    );
    assert!(matches!(
        escape_reason(&error),
        EscapeReason::LinkTarget { reason, .. } if matches!(**reason, EscapeReason::DotDot)
    ));
    assert!(!exists(&sb.root.join("h")));
}

#[test]
fn refuses_hardlink_via_symlinked_dir() {
    let sb = sandbox();
    let tar = Tar::new()
        .symlink("evil", "../outside")
        .hardlink("h", "evil/secret");
    let error = refused(&sb, tar, "h", false);
    assert!(matches!(
        escape_reason(&error),
        EscapeReason::LinkTarget { reason, .. } if matches!(&**reason, EscapeReason::Symlink(p) if p == "evil")
    ));
    assert!(!exists(&sb.root.join("h")));
}

#[test]
fn refuses_hardlink_to_absolute_path() {
    let sb = sandbox();
    let target = format!("{}/secret", sb.outside_str());
    let error = refused(&sb, Tar::new().hardlink("h", &target), "h", false);
    assert!(matches!(
        escape_reason(&error),
        EscapeReason::LinkTarget { reason, .. } if matches!(**reason, EscapeReason::Absolute)
    ));
}

#[test]
fn refuses_hardlink_placed_through_symlink() {
    let sb = sandbox();
    let tar = Tar::new()
        .file("a", "inside")
        .symlink("evil", "../outside")
        .hardlink("evil/h", "a");
    let error = refused(&sb, tar, "evil/h", false);
    assert!(matches!(escape_reason(&error), EscapeReason::Symlink(p) if p == "evil"));
}

#[test]
fn file_replaces_symlink_instead_of_writing_through_it() {
    let sb = sandbox();
    // One link from an earlier archive, one already on disk with an absolute target.
    symlink(sb.outside.join("secret"), sb.root.join("abs")).unwrap();
    symlink(&sb.outside, sb.root.join("absdir")).unwrap();
    let tar = Tar::new()
        .symlink("link", "../outside/secret")
        .file("link", "replaced")
        .file("abs", "replaced too")
        .hardlink("hard", "link")
        .symlink("hardover", "../outside/secret")
        .hardlink("hardover", "link")
        .dir("absdir/")
        .file("absdir/x", "inside");
    apply(&sb.root, tar, false).unwrap();
    sb.assert_outside_untouched();
    assert_eq!(
        fs::read_to_string(sb.root.join("link")).unwrap(),
        "replaced"
    );
    assert_eq!(
        fs::read_to_string(sb.root.join("abs")).unwrap(),
        "replaced too"
    );
    assert!(fs::symlink_metadata(sb.root.join("abs")).unwrap().is_file());
    assert_eq!(
        fs::read_to_string(sb.root.join("hardover")).unwrap(),
        "replaced"
    );
    assert!(
        fs::symlink_metadata(sb.root.join("absdir"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(
        fs::read_to_string(sb.root.join("absdir/x")).unwrap(),
        "inside"
    );
}

#[test]
fn refuses_whiteout_with_dotdot() {
    let sb = sandbox();
    let error = refused(
        &sb,
        Tar::new().file("../.wh.secret", ""),
        "../.wh.secret",
        true,
    );
    assert!(matches!(escape_reason(&error), EscapeReason::DotDot));
    let error = refused(
        &sb,
        Tar::new().file("../outside/.wh.secret", ""),
        "../outside/.wh.secret",
        true,
    );
    assert!(matches!(escape_reason(&error), EscapeReason::DotDot));
}

#[test]
fn refuses_whiteout_naming_dotdot_or_dot() {
    let sb = sandbox();
    fs::create_dir(sb.root.join("sub")).unwrap();
    for path in [".wh...", "sub/.wh...", ".wh..", "sub/.wh."] {
        let error = refused(&sb, Tar::new().file(path, ""), path, true);
        assert!(
            matches!(escape_reason(&error), EscapeReason::Whiteout(_)),
            "{path}"
        );
        assert!(exists(&sb.root.join("sub")), "{path}");
    }
}

#[test]
fn refuses_whiteout_through_symlink() {
    let sb = sandbox();
    let tar = Tar::new()
        .symlink("evil", "../outside")
        .file("evil/.wh.secret", "");
    let error = refused(&sb, tar, "evil/.wh.secret", true);
    assert!(matches!(escape_reason(&error), EscapeReason::Symlink(p) if p == "evil"));
    let tar = Tar::new()
        .symlink("evil", "../outside")
        .file("evil/.wh.dir", "");
    refused(&sb, tar, "evil/.wh.dir", true);
}

#[test]
fn refuses_opaque_through_symlink() {
    let sb = sandbox();
    let outside = sb.outside_str().to_owned();
    let tar = Tar::new()
        .symlink("evil", &outside)
        .file("evil/.wh..wh..opq", "");
    let error = refused(&sb, tar, "evil/.wh..wh..opq", true);
    assert!(matches!(escape_reason(&error), EscapeReason::Symlink(p) if p == "evil"));
}

#[test]
fn whiteout_of_a_symlink_removes_the_link_only() {
    let sb = sandbox();
    apply(
        &sb.root,
        Tar::new()
            .symlink("evil", "../outside")
            .symlink("evil2", "../outside/secret"),
        true,
    )
    .unwrap();
    apply(
        &sb.root,
        Tar::new().file(".wh.evil", "").file(".wh.evil2", ""),
        true,
    )
    .unwrap();
    assert!(!exists(&sb.root.join("evil")));
    assert!(!exists(&sb.root.join("evil2")));
    sb.assert_outside_untouched();
}

#[test]
fn devices_are_skipped_and_reported() {
    let sb = sandbox();
    let tar = Tar::new()
        .device("dev/null", EntryType::Char, 1, 3)
        .device("dev/sda", EntryType::Block, 8, 0)
        .device("dev/fifo", EntryType::Fifo, 0, 0);
    let report = apply(&sb.root, tar, false).unwrap();
    assert_eq!(report.entries, 3);
    assert_eq!(report.skipped.len(), 2, "{:?}", report.skipped);
    assert!(
        report.skipped[0].contains("\"dev/null\": character device 1:3"),
        "{:?}",
        report.skipped
    );
    assert!(
        report.skipped[1].contains("\"dev/sda\": block device 8:0"),
        "{:?}",
        report.skipped
    );
    assert!(!exists(&sb.root.join("dev/null")));
    assert!(!exists(&sb.root.join("dev/sda")));
    assert!(
        fs::symlink_metadata(sb.root.join("dev/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    sb.assert_outside_untouched();
}

#[test]
fn refuses_gnu_long_name_with_dotdot() {
    let sb = sandbox();
    let path = format!("{}/../../../outside/x", "a".repeat(120));
    let mut tar = Tar::new();
    tar = tar.raw(path.as_bytes(), EntryType::Regular, b"", b"evil", |_| {});
    let error = refused(&sb, &tar, &path, false);
    assert!(matches!(escape_reason(&error), EscapeReason::DotDot));
    let long_link = format!("{}/../../outside/secret", "b".repeat(120));
    let mut tar = Tar::new();
    tar = tar.raw(b"h", EntryType::Link, long_link.as_bytes(), b"", |_| {});
    refused(&sb, &tar, "h", false);
}

#[test]
fn refuses_pax_path_with_dotdot() {
    let sb = sandbox();
    let mut tar = Tar::new();
    tar = tar
        .pax(&[("path", b"../outside/x")])
        .file("harmless", "evil");
    let error = refused(&sb, &tar, "../outside/x", false);
    assert!(matches!(escape_reason(&error), EscapeReason::DotDot));
    assert!(!exists(&sb.root.join("harmless")));
}

#[test]
fn cached_directories_are_dropped_when_replaced() {
    let sb = sandbox();
    // "a" and "a/b" are cached for f1; "a" then becomes a symlink to the outside.
    let tar = Tar::new()
        .file("a/b/f1", "one")
        .symlink("a", "../outside")
        .file("a/b/f2", "two");
    let error = refused(&sb, tar, "a/b/f2", false);
    assert!(matches!(escape_reason(&error), EscapeReason::Symlink(p) if p == "a"));
    assert!(!exists(&sb.outside.join("b")));

    let sb = sandbox();
    let tar = Tar::new()
        .file("a/b/f1", "one")
        .file("a", "file")
        .dir("a/")
        .file("a/b/f2", "two");
    apply(&sb.root, tar, false).unwrap();
    assert!(!exists(&sb.root.join("a/b/f1")));
    assert_eq!(fs::read_to_string(sb.root.join("a/b/f2")).unwrap(), "two");
}

#[test]
fn hardlink_to_a_symlink_links_the_symlink() {
    let sb = sandbox();
    let tar = Tar::new()
        .symlink("s", "../outside/secret")
        .hardlink("h", "s");
    apply(&sb.root, tar, false).unwrap();
    let meta = fs::symlink_metadata(sb.root.join("h")).unwrap();
    assert!(meta.file_type().is_symlink());
    assert_eq!(
        meta.ino(),
        fs::symlink_metadata(sb.root.join("s")).unwrap().ino()
    );
    sb.assert_outside_untouched();
}

// Whiteouts.

fn lower_layer(root: &Path) {
    let tar = Tar::new()
        .dir("etc/")
        .file("etc/keep", "keep")
        .file("etc/gone", "gone")
        .dir("var/")
        .dir("var/cache/")
        .file("var/cache/a", "a")
        .dir("var/cache/sub/")
        .file("var/cache/sub/b", "b")
        .symlink("var/cache/link", "/etc")
        .dir("d/")
        .file("d/old", "old")
        .dir("d/sub/")
        .file("d/sub/old2", "old2")
        .dir("other/")
        .file("other/keep", "keep");
    apply(root, tar, true).unwrap();
}

fn no_whiteout_files(root: &Path) {
    for line in snapshot(root) {
        assert!(!line.contains(".wh."), "{line}");
    }
}

#[test]
fn whiteout_removes_file_and_tree() {
    let sb = sandbox();
    lower_layer(&sb.root);
    let tar = Tar::new()
        .file("etc/.wh.gone", "")
        .file("./.wh.var", "")
        .file("etc/.wh.never-existed", "")
        .file("nowhere/.wh.x", "")
        .file(".wh..wh.plnk", "");
    let report = apply(&sb.root, tar, true).unwrap();
    assert_eq!(report.entries, 5);
    assert!(exists(&sb.root.join("etc/keep")));
    assert!(!exists(&sb.root.join("etc/gone")));
    assert!(!exists(&sb.root.join("var")));
    assert!(
        !exists(&sb.root.join("nowhere")),
        "whiteouts create no directories"
    );
    no_whiteout_files(&sb.root);
}

#[test]
fn whiteouts_are_plain_files_without_the_option() {
    let sb = sandbox();
    lower_layer(&sb.root);
    apply(&sb.root, Tar::new().file("etc/.wh.gone", "x"), false).unwrap();
    assert!(exists(&sb.root.join("etc/gone")));
    assert_eq!(
        fs::read_to_string(sb.root.join("etc/.wh.gone")).unwrap(),
        "x"
    );
}

#[test]
fn opaque_dir_keeps_only_this_layer_whatever_the_order() {
    let opaque_first = Tar::new()
        .dir("d/")
        .file("d/.wh..wh..opq", "")
        .file("d/new", "new")
        .file("d/sub/new2", "new2");
    let opaque_last = Tar::new()
        .file("d/new", "new")
        .dir("d/sub/")
        .file("d/sub/new2", "new2")
        .file("d/.wh..wh..opq", "");
    for (order, tar) in [("first", opaque_first), ("last", opaque_last)] {
        let sb = sandbox();
        lower_layer(&sb.root);
        apply(&sb.root, &tar, true).unwrap();
        let d = sb.root.join("d");
        assert_eq!(fs::read_to_string(d.join("new")).unwrap(), "new", "{order}");
        assert_eq!(
            fs::read_to_string(d.join("sub/new2")).unwrap(),
            "new2",
            "{order}"
        );
        assert!(!exists(&d.join("old")), "{order}");
        assert!(!exists(&d.join("sub/old2")), "{order}");
        assert!(exists(&sb.root.join("other/keep")), "{order}");
        no_whiteout_files(&sb.root);
    }
}

#[test]
fn opaque_at_the_top_and_on_a_missing_dir() {
    let sb = sandbox();
    lower_layer(&sb.root);
    let tar = Tar::new()
        .file("other/keep", "again")
        .file(".wh..wh..opq", "")
        .file("missing/.wh..wh..opq", "");
    apply(&sb.root, tar, true).unwrap();
    assert_eq!(
        snapshot(&sb.root),
        vec!["other/ 755", "other/keep 644 \"again\""]
    );
}

#[test]
fn whiteout_does_not_hide_this_layers_own_file() {
    let sb = sandbox();
    apply(
        &sb.root,
        Tar::new().file("a", "mine").file(".wh.a", ""),
        true,
    )
    .unwrap();
    assert_eq!(fs::read_to_string(sb.root.join("a")).unwrap(), "mine");
}

// Entries and metadata.

#[test]
fn hardlinks_inside_share_the_inode() {
    let sb = sandbox();
    let tar = Tar::new()
        .file("a/f", "data")
        .hardlink("b/g", "a/f")
        .hardlink("./c", "./a/f")
        .hardlink("a/f", "a/f");
    apply(&sb.root, tar, false).unwrap();
    let ino = |p: &str| fs::metadata(sb.root.join(p)).unwrap().ino();
    assert_eq!(ino("a/f"), ino("b/g"));
    assert_eq!(ino("a/f"), ino("c"));
    assert_eq!(fs::metadata(sb.root.join("a/f")).unwrap().nlink(), 3);
}

#[test]
fn hardlink_to_directory_or_missing_target_is_invalid() {
    let sb = sandbox();
    let error = apply(&sb.root, Tar::new().dir("d/").hardlink("h", "d"), false).unwrap_err();
    assert!(
        matches!(
            error,
            ArchiveError::Invalid {
                problem: "hardlink target is a directory",
                ..
            }
        ),
        "{}",
        chain(&error)
    );
    let error = apply(&sb.root, Tar::new().hardlink("h", "nothing/here"), false).unwrap_err();
    assert!(
        matches!(
            error,
            ArchiveError::Invalid {
                problem: "hardlink target does not exist",
                ..
            }
        ),
        "{}",
        chain(&error)
    );
}

#[test]
fn setuid_setgid_and_sticky_bits_are_kept() {
    let sb = sandbox();
    let mut tar = Tar::new();
    tar = tar.raw(b"bin/su", EntryType::Regular, b"", b"#!", |h| {
        h.set_mode(0o4755);
        h.set_uid(1000);
        h.set_gid(1000);
    });
    tar = tar.raw(b"shared/", EntryType::Directory, b"", b"", |h| {
        h.set_mode(0o2775)
    });
    tar = tar.raw(b"tmp/", EntryType::Directory, b"", b"", |h| {
        h.set_mode(0o1777)
    });
    apply(&sb.root, &tar, false).unwrap();
    let mode = |p: &str| fs::symlink_metadata(sb.root.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("bin/su"), 0o4755);
    assert_eq!(mode("shared"), 0o2775);
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("bin"), 0o755, "missing parents are 0755");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn ownership_is_kept_with_same_owner() {
    if !is_root() {
        eprintln!("skipped: needs root for chown");
        return;
    }
    let sb = sandbox();
    let mut tar = Tar::new();
    tar = tar.raw(b"f", EntryType::Regular, b"", b"x", |h| {
        h.set_uid(1234);
        h.set_gid(5678);
    });
    tar = tar.raw(b"d/", EntryType::Directory, b"", b"", |h| {
        h.set_uid(1235);
        h.set_gid(5679);
    });
    tar = tar.raw(b"l", EntryType::Symlink, b"/nowhere", b"", |h| {
        h.set_uid(1236);
        h.set_gid(5680);
    });
    tar = tar.raw(b"p", EntryType::Fifo, b"", b"", |h| {
        h.set_uid(1237);
        h.set_gid(5681);
    });
    // Ids beyond the octal fields travel in PAX records.
    tar = tar.pax(&[("uid", b"3000000"), ("gid", b"3000001")]);
    tar = tar.file("big", "x");
    apply(&sb.root, &tar, false).unwrap();
    let owner = |p: &str| {
        let meta = fs::symlink_metadata(sb.root.join(p)).unwrap();
        (meta.uid(), meta.gid())
    };
    assert_eq!(owner("f"), (1234, 5678));
    assert_eq!(owner("d"), (1235, 5679));
    assert_eq!(owner("l"), (1236, 5680));
    assert_eq!(owner("p"), (1237, 5681));
    assert_eq!(owner("big"), (3_000_000, 3_000_001));

    let other = tempfile::tempdir().unwrap();
    let mut opts = options(false);
    opts.same_owner = false;
    unpack(&tar.bytes()[..], other.path(), &opts).unwrap();
    let meta = fs::symlink_metadata(other.path().join("f")).unwrap();
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    assert_eq!(meta.gid(), nix::unistd::getegid().as_raw());
}

#[test]
fn mtimes_are_set_on_files_dirs_and_symlinks() {
    let sb = sandbox();
    let mut tar = Tar::new();
    tar = tar.raw(b"d/", EntryType::Directory, b"", b"", |h| {
        h.set_mtime(1_400_000_000)
    });
    tar = tar.raw(b"d/f", EntryType::Regular, b"", b"x", |h| {
        h.set_mtime(1_500_000_000)
    });
    tar = tar.raw(b"d/l", EntryType::Symlink, b"f", b"", |h| {
        h.set_mtime(1_300_000_000)
    });
    tar = tar.raw(b"d/sub/", EntryType::Directory, b"", b"", |h| {
        h.set_mtime(1_200_000_000)
    });
    tar = tar.pax(&[("mtime", b"1100000000.25")]);
    tar = tar.file("d/sub/precise", "y");
    apply(&sb.root, &tar, false).unwrap();
    let mtime = |p: &str| {
        let meta = fs::symlink_metadata(sb.root.join(p)).unwrap();
        (meta.mtime(), meta.mtime_nsec())
    };
    assert_eq!(
        mtime("d"),
        (1_400_000_000, 0),
        "dir mtime survives its contents"
    );
    assert_eq!(mtime("d/f"), (1_500_000_000, 0));
    assert_eq!(mtime("d/l"), (1_300_000_000, 0));
    assert_eq!(mtime("d/sub"), (1_200_000_000, 0));
    assert_eq!(mtime("d/sub/precise"), (1_100_000_000, 250_000_000));
}

#[test]
fn pax_times_parse() {
    let t = parse_pax_time(b"-1.25").unwrap();
    assert_eq!((t.tv_sec(), t.tv_nsec()), (-2, 750_000_000));
    let t = parse_pax_time(b"12").unwrap();
    assert_eq!((t.tv_sec(), t.tv_nsec()), (12, 0));
    let t = parse_pax_time(b"1.1234567891").unwrap();
    assert_eq!((t.tv_sec(), t.tv_nsec()), (1, 123_456_789));
    assert!(parse_pax_time(b"x").is_none());
}

#[test]
fn symlink_targets_are_verbatim() {
    let sb = sandbox();
    let tar = Tar::new()
        .symlink("bin/sh", "/bin/busybox")
        .symlink("odd", "../../x/./y//z/")
        .symlink("up", "../../../../etc/passwd");
    apply(&sb.root, tar, false).unwrap();
    let link = |p: &str| fs::read_link(sb.root.join(p)).unwrap();
    assert_eq!(link("bin/sh"), Path::new("/bin/busybox"));
    assert_eq!(link("odd").as_os_str(), "../../x/./y//z/");
    assert_eq!(link("up"), Path::new("../../../../etc/passwd"));
}

#[test]
fn overwrite_file_with_dir_and_dir_with_file() {
    let sb = sandbox();
    apply(
        &sb.root,
        Tar::new()
            .file("a", "file")
            .dir("b/")
            .file("b/c", "c")
            .dir("b/d/"),
        false,
    )
    .unwrap();
    apply(
        &sb.root,
        Tar::new()
            .dir("a/")
            .file("a/x", "x")
            .file("b", "now a file"),
        false,
    )
    .unwrap();
    assert_eq!(fs::read_to_string(sb.root.join("a/x")).unwrap(), "x");
    assert_eq!(fs::read_to_string(sb.root.join("b")).unwrap(), "now a file");
    // Within one archive too, and a later entry under the replaced name.
    apply(
        &sb.root,
        Tar::new().file("a", "again").dir("b/").file("b/y", "y"),
        false,
    )
    .unwrap();
    assert_eq!(fs::read_to_string(sb.root.join("a")).unwrap(), "again");
    assert_eq!(fs::read_to_string(sb.root.join("b/y")).unwrap(), "y");
}

#[test]
fn dir_over_dir_keeps_contents_and_updates_metadata() {
    let sb = sandbox();
    apply(&sb.root, Tar::new().dir("d/").file("d/x", "x"), false).unwrap();
    let mut tar = Tar::new();
    tar = tar.raw(b"d/", EntryType::Directory, b"", b"", |h| h.set_mode(0o700));
    apply(&sb.root, &tar, false).unwrap();
    assert!(exists(&sb.root.join("d/x")));
    assert_eq!(
        fs::metadata(sb.root.join("d"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o700
    );
}

#[test]
fn root_entry_sets_target_metadata_except_for_layers() {
    let sb = sandbox();
    fs::set_permissions(&sb.root, fs::Permissions::from_mode(0o755)).unwrap();
    let mut tar = Tar::new();
    tar = tar.raw(b"./", EntryType::Directory, b"", b"", |h| h.set_mode(0o750));
    tar = tar.file("./f", "x");
    apply(&sb.root, &tar, true).unwrap();
    assert_eq!(fs::metadata(&sb.root).unwrap().mode() & 0o7777, 0o755);
    apply(&sb.root, &tar, false).unwrap();
    let meta = fs::metadata(&sb.root).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o750);
    assert_eq!(meta.mtime(), MTIME as i64);

    let error = apply(&sb.root, Tar::new().symlink(".", "/"), false).unwrap_err();
    assert!(
        matches!(error, ArchiveError::Invalid { .. }),
        "{}",
        chain(&error)
    );
}

#[test]
fn devices_are_created_when_asked() {
    if !is_root() {
        eprintln!("skipped: needs root for mknod");
        return;
    }
    let sb = sandbox();
    let tar = Tar::new().device("dev/null", EntryType::Char, 1, 3).bytes();
    let opts = UnpackOptions {
        devices: DevicePolicy::Create,
        ..options(false)
    };
    let report = unpack(&tar[..], &sb.root, &opts).unwrap();
    assert!(report.skipped.is_empty());
    let meta = fs::symlink_metadata(sb.root.join("dev/null")).unwrap();
    assert!(meta.file_type().is_char_device());
    assert_eq!(meta.rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!(meta.mode() & 0o7777, 0o644);
}

#[test]
fn long_names_and_report() {
    let sb = sandbox();
    let long = format!("{}/{}", "d".repeat(150), "f".repeat(120));
    let target = format!("/{}", "t".repeat(200));
    let mut tar = Tar::new();
    tar = tar.file(&long, "hello");
    tar = tar.symlink("long-link", &target);
    let pax_path = format!("{}/{}", "p".repeat(100), "q".repeat(200));
    tar = tar.pax(&[("path", pax_path.as_bytes())]);
    tar = tar.file("short", "pax");
    let report = apply(&sb.root, &tar, false).unwrap();
    assert_eq!(report.entries, 3);
    assert_eq!(report.bytes, 8);
    assert_eq!(fs::read_to_string(sb.root.join(&long)).unwrap(), "hello");
    assert_eq!(
        fs::read_link(sb.root.join("long-link")).unwrap(),
        Path::new(&target)
    );
    assert_eq!(fs::read_to_string(sb.root.join(&pax_path)).unwrap(), "pax");
}

#[test]
fn malformed_and_truncated_streams_are_errors() {
    let sb = sandbox();
    let error = unpack(&[0xffu8; 1024][..], &sb.root, &options(false)).unwrap_err();
    assert!(
        chain(&error).starts_with(
            "Layer sha256:0123abcd: unreadable or malformed tar before the first entry"
        ),
        "{}",
        chain(&error)
    );

    let mut bytes = Tar::new().file("ok", "fine").bytes();
    bytes.truncate(1024);
    let mut tar = Tar::new();
    tar = tar.file("ok", "fine");
    tar = tar.raw(b"cut", EntryType::Regular, b"", b"", |h| {
        h.set_size(100_000)
    });
    let mut cut = tar.bytes();
    cut.truncate(cut.len() - 1024);
    cut.extend([7u8; 10]);
    let error = unpack(&cut[..], &sb.root, &options(false)).unwrap_err();
    assert!(
        chain(&error).contains("malformed tar at entry \"cut\""),
        "{}",
        chain(&error)
    );
}

#[test]
fn unsupported_entry_types_are_errors() {
    let sb = sandbox();
    let mut tar = Tar::new();
    tar = tar.raw(b"vol", EntryType::new(b'V'), b"", b"", |_| {});
    let error = apply(&sb.root, &tar, false).unwrap_err();
    assert!(
        matches!(&error, ArchiveError::Unsupported { kind, .. } if kind == "'V'"),
        "{}",
        chain(&error)
    );
    assert_eq!(
        error.to_string(),
        "Layer sha256:0123abcd entry \"vol\": unsupported entry type 'V'"
    );
}

#[test]
fn missing_target_is_an_error() {
    let sb = sandbox();
    let error = apply(&sb.root.join("nope"), Tar::new(), false).unwrap_err();
    assert!(
        matches!(error, ArchiveError::Target { .. }),
        "{}",
        chain(&error)
    );
}
