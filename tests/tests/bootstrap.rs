//! End to end: the boot artifacts built from the real tether and kernel are
//! reproducible.

#[test]
fn building_twice_gives_identical_artifacts() {
    let tether = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/tether");
    assert!(
        tether.exists(),
        "{} missing: run `make tether`",
        tether.display()
    );
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for d in &dirs {
        let mut opts = bootstrap_iso::Options::new(d.path());
        opts.tether = tether.clone();
        bootstrap_iso::build(&opts, &mut |_| {}).unwrap();
        // Later builds run at a later time.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    for name in ["vmlinuz", "initrd.img", "bootstrap.iso"] {
        let a = std::fs::read(dirs[0].path().join(name)).unwrap();
        let b = std::fs::read(dirs[1].path().join(name)).unwrap();
        assert!(!a.is_empty(), "{name} is empty");
        assert!(a == b, "{name} differs between two builds");
    }
}
