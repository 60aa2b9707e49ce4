//! Writing artifacts into the output directory.
//!
//! Owns: creating the directory, writing each artifact atomically (a temp
//! file in the same directory, then rename) with mode 0644, and the scratch
//! directory the ISO is staged in. Readers of the output directory never
//! see a half-written artifact. It knows nothing of the artifacts' contents.

use std::fs::{File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Creating output directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub fn create_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
        path: dir.to_owned(),
        source,
    })
}

/// Writes `dir/name` atomically with `fill`, which gets the temp file.
pub fn write_atomic(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<PathBuf, Error> {
    let path = dir.join(name);
    let err = |source| Error::Write {
        path: path.clone(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)
        .map_err(err)?;
    fill(tmp.as_file_mut()).map_err(err)?;
    let file = tmp.as_file_mut();
    file.flush().map_err(err)?;
    file.set_permissions(Permissions::from_mode(0o644))
        .map_err(err)?;
    file.sync_all().map_err(err)?;
    tmp.persist(&path).map_err(|e| err(e.error))?;
    Ok(path)
}

/// Moves a finished file (in a scratch directory on the same filesystem)
/// to `dir/name` with mode 0644.
pub fn install(from: &Path, dir: &Path, name: &str) -> Result<PathBuf, Error> {
    let path = dir.join(name);
    let err = |source| Error::Write {
        path: path.clone(),
        source,
    };
    std::fs::set_permissions(from, Permissions::from_mode(0o644)).map_err(err)?;
    File::open(from).and_then(|f| f.sync_all()).map_err(err)?;
    std::fs::rename(from, &path).map_err(err)?;
    Ok(path)
}

/// A scratch directory inside `dir` (so a rename out of it is atomic),
/// removed when dropped.
pub fn scratch_dir(dir: &Path, name: &str) -> Result<tempfile::TempDir, Error> {
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempdir_in(dir)
        .map_err(|source| Error::Write {
            path: dir.join(name),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn atomic_write_leaves_only_the_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_atomic(dir.path(), "x.img", |f| f.write_all(b"hello")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);

        // A failing writer leaves the old artifact and no temp files behind.
        let err = write_atomic(dir.path(), "x.img", |f| {
            f.write_all(b"partial")?;
            Err(io::Error::other("boom"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("x.img"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.img"]);
    }
}
