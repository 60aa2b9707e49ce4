//! Kernel module resolution through `<modules-dir>/modules.dep`.
//!
//! Owns: reading `modules.dep` and `modules.builtin`, matching requested
//! names to module files (`-` and `_` are equal), and ordering the closure
//! so that every module comes after all its dependencies. It only reads the
//! index files; module contents are read by the initrd builder.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};

/// Suffixes of module files that depmod lists; only `.ko` can be packed.
const COMPRESSED_SUFFIXES: &[&str] = &[".ko.xz", ".ko.zst", ".ko.gz"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Malformed line {line} in {path}")]
    Malformed { path: PathBuf, line: usize },
    #[error("Module {module} is neither in {dep} nor built into the kernel")]
    NotFound { module: String, dep: PathBuf },
    #[error("Module {module} is compressed ({path}); only uncompressed .ko modules are supported")]
    Compressed { module: String, path: String },
    #[error("Modules {first} and {second} would both be stored as {file_name}")]
    SameFileName {
        first: String,
        second: String,
        file_name: String,
    },
    #[error("Dependency cycle through module {module} in {dep}")]
    Cycle { module: String, dep: PathBuf },
}

/// One loadable module file to put into the initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Normalised name: file name without suffix, `-` replaced by `_`.
    pub name: String,
    /// Absolute path of the `.ko` file.
    pub path: PathBuf,
    /// The file's basename, e.g. `virtio-rng.ko`; stored flat in the initrd.
    pub file_name: String,
}

/// The outcome of resolving a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// Every module to load, each after all its dependencies.
    pub modules: Vec<Module>,
    /// Requested names that are built into the kernel (nothing to load).
    pub builtin: Vec<String>,
}

/// The parsed `modules.dep` + `modules.builtin` of one kernel.
#[derive(Debug)]
pub struct Index {
    dir: PathBuf,
    /// Relative path in modules.dep -> its dependencies, as listed.
    deps: HashMap<String, Vec<String>>,
    /// Normalised name -> relative path (first listed wins).
    by_name: HashMap<String, String>,
    builtin: BTreeSet<String>,
}

impl Index {
    /// Reads the index of the modules directory `dir`
    /// (e.g. `/lib/modules/6.1.0-56-cloud-amd64`). A missing
    /// `modules.builtin` means nothing is built in.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let dep_path = dir.join("modules.dep");
        let dep_text = std::fs::read_to_string(&dep_path).map_err(|source| Error::Read {
            path: dep_path.clone(),
            source,
        })?;
        let builtin_path = dir.join("modules.builtin");
        let builtin_text = match std::fs::read_to_string(&builtin_path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(Error::Read {
                    path: builtin_path,
                    source,
                });
            }
        };
        Self::parse(dir, &dep_text, &builtin_text)
    }

    fn parse(dir: &Path, dep_text: &str, builtin_text: &str) -> Result<Self, Error> {
        let mut deps = HashMap::new();
        let mut by_name = HashMap::new();
        for (i, line) in dep_text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = || Error::Malformed {
                path: dir.join("modules.dep"),
                line: i + 1,
            };
            let (module, rest) = line.split_once(':').ok_or_else(malformed)?;
            let module = module.trim();
            let name = module_name(module).ok_or_else(malformed)?;
            by_name.entry(name).or_insert_with(|| module.to_owned());
            let list = rest.split_whitespace().map(str::to_owned).collect();
            deps.insert(module.to_owned(), list);
        }
        let builtin = builtin_text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .filter_map(module_name)
            .collect();
        Ok(Self {
            dir: dir.to_owned(),
            deps,
            by_name,
            builtin,
        })
    }

    /// Resolves `requested` names and all their dependencies.
    ///
    /// Names are matched by basename with `-` and `_` equal. A name found in
    /// `modules.dep` is loaded; otherwise, if built in, it is skipped;
    /// otherwise it is an error. The order is a depth-first post-order over
    /// the request order, visiting each module's dependency list from its
    /// end (the order modprobe loads them in), so the same input always
    /// gives the same order.
    pub fn resolve<S: AsRef<str>>(&self, requested: &[S]) -> Result<Resolution, Error> {
        let mut walk = Walk {
            index: self,
            done: BTreeSet::new(),
            visiting: BTreeSet::new(),
            order: Vec::new(),
        };
        let mut builtin = Vec::new();
        for name in requested {
            let name = normalize(name.as_ref());
            match self.by_name.get(&name) {
                Some(rel) => walk.visit(rel)?,
                None if self.builtin.contains(&name) => {
                    if !builtin.contains(&name) {
                        builtin.push(name);
                    }
                }
                None => {
                    return Err(Error::NotFound {
                        module: name,
                        dep: self.dir.join("modules.dep"),
                    });
                }
            }
        }

        let mut modules: Vec<Module> = Vec::with_capacity(walk.order.len());
        for rel in walk.order {
            let name = module_name(&rel).unwrap_or_else(|| rel.clone());
            if COMPRESSED_SUFFIXES.iter().any(|s| rel.ends_with(s)) {
                return Err(Error::Compressed {
                    module: name,
                    path: rel,
                });
            }
            let file_name = rel.rsplit('/').next().unwrap_or(&rel).to_owned();
            if let Some(other) = modules.iter().find(|m| m.file_name == file_name) {
                return Err(Error::SameFileName {
                    first: other.path.display().to_string(),
                    second: self.dir.join(&rel).display().to_string(),
                    file_name,
                });
            }
            modules.push(Module {
                name,
                path: self.dir.join(&rel),
                file_name,
            });
        }
        Ok(Resolution { modules, builtin })
    }
}

struct Walk<'a> {
    index: &'a Index,
    done: BTreeSet<String>,
    visiting: BTreeSet<String>,
    order: Vec<String>,
}

impl Walk<'_> {
    fn visit(&mut self, rel: &str) -> Result<(), Error> {
        if self.done.contains(rel) {
            return Ok(());
        }
        if !self.visiting.insert(rel.to_owned()) {
            return Err(Error::Cycle {
                module: module_name(rel).unwrap_or_else(|| rel.to_owned()),
                dep: self.index.dir.join("modules.dep"),
            });
        }
        // depmod writes the full closure; a dependency without its own line
        // is taken to have no further dependencies.
        let deps = self.index.deps.get(rel).cloned().unwrap_or_default();
        for dep in deps.iter().rev() {
            self.visit(dep)?;
        }
        self.visiting.remove(rel);
        self.done.insert(rel.to_owned());
        self.order.push(rel.to_owned());
        Ok(())
    }
}

/// `-` and `_` are interchangeable in module names.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/drivers/char/hw_random/virtio-rng.ko` -> `virtio_rng`.
fn module_name(path: &str) -> Option<String> {
    let base = path.rsplit('/').next()?;
    let stem = [".ko"]
        .iter()
        .chain(COMPRESSED_SUFFIXES)
        .find_map(|suffix| base.strip_suffix(suffix))?;
    (!stem.is_empty()).then(|| normalize(stem))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake modules dir: `c` needs `b` and `a`, `b` needs `a`; `d-e` has a
    /// dash; `ext4` and `crc32c_generic` are built in.
    fn fake_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/x/c.ko: kernel/x/a.ko kernel/y/b.ko\n\
             kernel/y/b.ko: kernel/x/a.ko\n\
             kernel/x/a.ko:\n\
             kernel/z/d-e.ko: kernel/x/a.ko\n\
             kernel/z/packed.ko.zst: kernel/x/a.ko\n\
             kernel/z/loop1.ko: kernel/z/loop2.ko\n\
             kernel/z/loop2.ko: kernel/z/loop1.ko\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/fs/ext4/ext4.ko\nkernel/crypto/crc32c_generic.ko\n",
        )
        .unwrap();
        dir
    }

    fn file_names(r: &Resolution) -> Vec<&str> {
        r.modules.iter().map(|m| m.file_name.as_str()).collect()
    }

    #[test]
    fn orders_dependencies_first() {
        let dir = fake_dir();
        let index = Index::load(dir.path()).unwrap();
        // The dep list of c puts a before b although b needs a: the walk
        // must still load a first.
        let r = index.resolve(&["c"]).unwrap();
        assert_eq!(file_names(&r), ["a.ko", "b.ko", "c.ko"]);
        assert_eq!(r.modules[1].path, dir.path().join("kernel/y/b.ko"));
        assert_eq!(r.modules[1].name, "b");

        // Asking for a dependency again does not duplicate it.
        let r = index.resolve(&["b", "c", "a"]).unwrap();
        assert_eq!(file_names(&r), ["a.ko", "b.ko", "c.ko"]);
    }

    #[test]
    fn dash_and_underscore_match() {
        let index = Index::load(fake_dir().path()).unwrap();
        let r = index.resolve(&["d_e"]).unwrap();
        assert_eq!(file_names(&r), ["a.ko", "d-e.ko"]);
        assert_eq!(r.modules[1].name, "d_e");
    }

    #[test]
    fn skips_builtin_modules() {
        let index = Index::load(fake_dir().path()).unwrap();
        let r = index.resolve(&["ext4", "b", "crc32c-generic"]).unwrap();
        assert_eq!(file_names(&r), ["a.ko", "b.ko"]);
        assert_eq!(r.builtin, ["ext4", "crc32c_generic"]);
    }

    #[test]
    fn unknown_module_is_an_error_naming_it() {
        let dir = fake_dir();
        let index = Index::load(dir.path()).unwrap();
        let err = index.resolve(&["b", "nosuch_mod"]).unwrap_err();
        assert!(
            matches!(&err, Error::NotFound { module, .. } if module == "nosuch_mod"),
            "{err:?}"
        );
        assert!(err.to_string().contains("nosuch_mod"), "{err}");
    }

    #[test]
    fn compressed_module_is_an_error_naming_it() {
        let index = Index::load(fake_dir().path()).unwrap();
        let err = index.resolve(&["packed"]).unwrap_err();
        assert!(err.to_string().contains("packed"), "{err}");
        assert!(matches!(err, Error::Compressed { .. }), "{err:?}");
    }

    #[test]
    fn cycle_is_an_error() {
        let index = Index::load(fake_dir().path()).unwrap();
        let err = index.resolve(&["loop1"]).unwrap_err();
        assert!(matches!(err, Error::Cycle { .. }), "{err:?}");
    }

    #[test]
    fn missing_modules_dep_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = Index::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("modules.dep"), "{err}");
    }

    #[test]
    fn malformed_line_is_reported_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/a.ko:\nnot a module line\n",
        )
        .unwrap();
        let err = Index::load(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Malformed { line: 2, .. }), "{err:?}");
    }

    /// Against the host's real index, when there is one: the default list
    /// must resolve, with every module after its dependencies.
    #[test]
    fn default_modules_resolve_on_the_host_kernel() {
        let Ok(kernel) = crate::kernel::Kernel::find_default(Path::new("/boot")) else {
            eprintln!("skipping: no /boot/vmlinuz-*-cloud-amd64 on this host");
            return;
        };
        let Ok(dir) = kernel.default_modules_dir() else {
            eprintln!(
                "skipping: no modules directory for {}",
                kernel.path.display()
            );
            return;
        };
        let index = Index::load(&dir).unwrap();
        let r = index.resolve(crate::DEFAULT_MODULES).unwrap();
        for (i, m) in r.modules.iter().enumerate() {
            let rel = m.path.strip_prefix(&dir).unwrap().to_str().unwrap();
            for dep in &index.deps[rel] {
                let pos = r
                    .modules
                    .iter()
                    .position(|o| o.path == dir.join(dep))
                    .unwrap();
                assert!(pos < i, "{} loads before its dependency {dep}", m.name);
            }
        }
        let names: Vec<_> = r.modules.iter().map(|m| m.name.as_str()).collect();
        for wanted in [
            "virtio_ring",
            "virtio",
            "virtio_blk",
            "vsock",
            "qemu_fw_cfg",
        ] {
            assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
        }
    }
}
