use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use super::*;
use crate::testutil::{chain, snapshot};
use crate::{DevicePolicy, UnpackOptions, unpack};

/// (path, type, link target, contents) of each entry.
fn entries(archive: &[u8]) -> Vec<(String, EntryType, String, Vec<u8>)> {
    let mut archive = tar::Archive::new(archive);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let kind = entry.header().entry_type();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push((path, kind, link, data));
    }
    out
}

fn names(archive: &[u8]) -> Vec<String> {
    entries(archive).into_iter().map(|e| e.0).collect()
}

fn packed(root: &Path, path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    pack(root, path, &mut out).unwrap_or_else(|e| panic!("{path}: {}", chain(&e)));
    out
}

/// root/etc/hosts, root/abs -> /etc, root/rel -> etc, root/up -> ../../../..
fn container() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir(root.join("etc")).unwrap();
    fs::write(root.join("etc/hosts"), "container hosts").unwrap();
    symlink("/etc", root.join("abs")).unwrap();
    symlink("etc", root.join("rel")).unwrap();
    symlink("../../../..", root.join("up")).unwrap();
    symlink("loop2", root.join("loop1")).unwrap();
    symlink("loop1", root.join("loop2")).unwrap();
    tmp
}

#[test]
fn single_file() {
    let tmp = container();
    let archive = packed(tmp.path(), "/etc/hosts");
    let entries = entries(&archive);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, "hosts");
    assert_eq!(entries[0].1, EntryType::Regular);
    assert_eq!(entries[0].3, b"container hosts");
}

#[test]
fn resolution_is_clamped_to_the_root() {
    let tmp = container();
    let root = tmp.path();
    for path in [
        "/abs/hosts",
        "abs/hosts",
        "/up/etc/hosts",
        "/up/../../abs/../etc/hosts",
        "/rel/hosts",
    ] {
        let entries = entries(&packed(root, path));
        assert_eq!(entries.len(), 1, "{path}");
        assert_eq!(entries[0].0, "hosts", "{path}");
        assert_eq!(
            entries[0].3, b"container hosts",
            "{path}: not the host's file"
        );
    }
    // A final symlink is the link itself, unless the path ends with "/" or "/.".
    let link = entries(&packed(root, "/abs"));
    assert_eq!(link.len(), 1);
    assert_eq!(
        (link[0].1, link[0].2.as_str()),
        (EntryType::Symlink, "/etc")
    );
    assert_eq!(names(&packed(root, "/abs/")), vec!["abs", "abs/hosts"]);
    assert_eq!(names(&packed(root, "/rel/.")), vec![".", "hosts"]);
    // Paths resolving to the root.
    assert_eq!(entries(&packed(root, "/up"))[0].2, "../../../..");
    let names_up = names(&packed(root, "/up/"));
    assert_eq!(names_up[0], "up");
    assert!(
        names_up.contains(&"up/etc/hosts".to_owned()),
        "{names_up:?}"
    );
    for path in ["/abs/..", "/up/.", "/rel/..", "/", ""] {
        let names = names(&packed(root, path));
        assert_eq!(names[0], ".", "{path}");
        assert!(names.contains(&"etc/hosts".to_owned()), "{path}: {names:?}");
    }
    fs::create_dir(root.join("etc/sub")).unwrap();
    assert_eq!(names(&packed(root, "/abs/sub/.."))[0], "etc");
    assert!(
        pack(root, "/etc/hosts/..", Vec::new()).is_err(),
        "a file is no directory"
    );

    let error = pack(root, "/loop1/x", Vec::new()).unwrap_err();
    assert!(
        chain(&error).contains("Too many levels of symbolic links"),
        "{}",
        chain(&error)
    );
    let error = pack(root, "/missing", Vec::new()).unwrap_err();
    assert!(
        chain(&error).starts_with("Cannot resolve \"/missing\" inside the root"),
        "{}",
        chain(&error)
    );
    let error = pack(root, "/etc/hosts/x", Vec::new()).unwrap_err();
    assert!(matches!(error, ArchiveError::Resolve { .. }));
}

#[test]
fn symlinks_inside_are_not_followed() {
    let tmp = container();
    let root = tmp.path();
    fs::create_dir(root.join("d")).unwrap();
    symlink("/etc", root.join("d/l")).unwrap();
    let entries = entries(&packed(root, "/d"));
    let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, vec!["d", "d/l"]);
    assert_eq!(entries[1].1, EntryType::Symlink);
}

/// A tree with every kind of entry and awkward metadata.
fn build_tree(dir: &Path) {
    fs::create_dir_all(dir.join("tree/empty")).unwrap();
    fs::create_dir_all(dir.join("tree/a/b/c")).unwrap();
    fs::write(dir.join("tree/a/file"), "contents").unwrap();
    fs::write(dir.join("tree/a/b/c/deep"), vec![7u8; 70_000]).unwrap();
    fs::write(dir.join("tree/suid"), "#!/bin/sh").unwrap();
    fs::set_permissions(dir.join("tree/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(dir.join("tree/empty"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::hard_link(dir.join("tree/a/file"), dir.join("tree/hard")).unwrap();
    symlink("/bin/busybox", dir.join("tree/sh")).unwrap();
    symlink("a/../a/file", dir.join("tree/rel")).unwrap();
    let long = "n".repeat(140);
    fs::write(dir.join("tree").join(&long), "long").unwrap();
    symlink(format!("/{}", "t".repeat(150)), dir.join("tree/longlink")).unwrap();
    nix::unistd::mkfifo(
        &dir.join("tree/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    fs::set_permissions(dir.join("tree/fifo"), fs::Permissions::from_mode(0o640)).unwrap();
    for (i, path) in [
        "tree/a/file",
        "tree/a/b/c/deep",
        "tree/a/b",
        "tree/a",
        "tree",
    ]
    .iter()
    .enumerate()
    {
        let time = nix::sys::time::TimeSpec::new(1_500_000_000 + i as i64, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &dir.join(path),
            &time,
            &time,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
}

#[test]
fn round_trip() {
    let src = tempfile::tempdir().unwrap();
    build_tree(src.path());
    let mut archive = Vec::new();
    let report = pack(src.path(), "/tree", &mut archive).unwrap();
    assert_eq!(report.entries, 14);
    assert_eq!(report.bytes, 8 + 70_000 + 9 + 4);

    let dst = tempfile::tempdir().unwrap();
    let opts = UnpackOptions {
        source: "archive".into(),
        whiteouts: false,
        same_owner: true,
        devices: DevicePolicy::Skip,
    };
    let unpacked = unpack(&archive[..], dst.path(), &opts).unwrap();
    assert_eq!(unpacked.entries, report.entries);
    assert_eq!(unpacked.bytes, report.bytes);
    assert_eq!(snapshot(src.path()), snapshot(dst.path()));

    let meta = |root: &Path, p: &str| fs::symlink_metadata(root.join(p)).unwrap();
    for path in [
        "tree",
        "tree/a",
        "tree/a/b",
        "tree/a/b/c/deep",
        "tree/a/file",
        "tree/sh",
    ] {
        let (a, b) = (meta(src.path(), path), meta(dst.path(), path));
        assert_eq!(a.mtime(), b.mtime(), "{path}");
        assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "{path}");
    }
    assert_eq!(
        meta(dst.path(), "tree/hard").ino(),
        meta(dst.path(), "tree/a/file").ino()
    );
}

#[test]
fn directory_contents_with_trailing_dot() {
    let tmp = container();
    let archive = packed(tmp.path(), "/etc/.");
    let dst = tempfile::tempdir().unwrap();
    let opts = UnpackOptions {
        source: "archive".into(),
        whiteouts: false,
        same_owner: false,
        devices: DevicePolicy::Skip,
    };
    unpack(&archive[..], dst.path(), &opts).unwrap();
    assert_eq!(
        fs::read_to_string(dst.path().join("hosts")).unwrap(),
        "container hosts"
    );
}

#[test]
fn write_errors_name_the_entry() {
    struct Full;
    impl std::io::Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        }
    }
    let tmp = container();
    let error = pack(tmp.path(), "/etc", Full).unwrap_err();
    assert!(error.is_no_space(), "{}", chain(&error));
    assert!(
        chain(&error).contains("No space left on device"),
        "{}",
        chain(&error)
    );
}
