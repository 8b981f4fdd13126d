//! Publish-after-verify for files: write to a temporary file in the target's
//! own directory, and only when the caller says the content is good, fsync it
//! and rename it into place. Dropping an uncommitted file removes the
//! temporary, so a failure or a crash never leaves a half-written final path.
//! Files for a stick may be made where the file system keeps no modes (FAT):
//! [`ModeSupport::IfKept`].

use anyhow::Context as _;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub struct AtomicFile {
    target: PathBuf,
    temp: tempfile::NamedTempFile,
    modes: ModeSupport,
    /// The mode the target gets. The temporary file is created 0600 and
    /// never made wider before it is committed, so a secret's temp file is
    /// never readable by others, not even for a moment.
    mode: AtomicU32,
}

/// Whether the target's file system must keep file modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeSupport {
    /// A mode that cannot be set is an error.
    Required,
    /// FAT keeps no modes and refuses `chmod` (EPERM, or ENOSYS through
    /// FUSE): the mode is set where the file system keeps modes and skipped
    /// where it refuses. For files a stick carries (bundle parts); never for
    /// the host's files.
    IfKept,
}

impl AtomicFile {
    /// Starts a file that will become `target`; its directory must exist.
    /// It gets the mode of the file it replaces, or 0644, unless the caller
    /// sets one.
    pub fn create(target: &Path) -> anyhow::Result<Self> {
        let mode = std::fs::metadata(target)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
            .unwrap_or(0o644);
        Self::create_with_mode(target, mode, ModeSupport::Required)
    }

    /// Starts a file that will become `target` with `mode`.
    pub fn create_with_mode(target: &Path, mode: u32, modes: ModeSupport) -> anyhow::Result<Self> {
        let dir = parent_dir(target);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        let file = Self {
            target: target.to_path_buf(),
            temp,
            modes,
            mode: AtomicU32::new(0o600),
        };
        // Temporary files are created 0600.
        file.set_mode(mode)
            .with_context(|| format!("setting the mode of {}", file.temp_path().display()))?;
        Ok(file)
    }

    /// Removes temporary files a killed writer of `target` left beside it.
    /// Only for callers that hold a lock making them the one writer.
    pub fn remove_stale(target: &Path) -> anyhow::Result<()> {
        let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
            return Ok(());
        };
        let prefix = format!(".{}.", name.to_string_lossy());
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let n = entry.file_name();
            let n = n.to_string_lossy();
            if n.starts_with(&prefix) && n.ends_with(".partial") {
                std::fs::remove_file(entry.path())
                    .with_context(|| format!("removing stale {}", entry.path().display()))?;
            }
        }
        Ok(())
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    pub fn temp_path(&self) -> &Path {
        self.temp.path()
    }

    pub fn file(&mut self) -> &mut File {
        self.temp.as_file_mut()
    }

    /// Sets the mode the file will have (see [`ModeSupport`]): at once when
    /// it is no wider than the temporary file's 0600, else when committed.
    pub fn set_mode(&self, mode: u32) -> io::Result<()> {
        self.mode.store(mode, Ordering::Relaxed);
        if mode & !0o600 == 0 {
            self.apply_mode(mode)
        } else {
            Ok(())
        }
    }

    fn apply_mode(&self, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        match self
            .temp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
        {
            // EPERM from the kernel's vfat, ENOSYS from FUSE drivers such as
            // fusefat, EOPNOTSUPP from others.
            Err(e)
                if self.modes == ModeSupport::IfKept
                    && matches!(e.raw_os_error(), Some(1 | 38 | 95)) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// fsyncs the content, renames it over the target and fsyncs the directory.
    pub fn commit(self) -> anyhow::Result<PathBuf> {
        self.apply_mode(self.mode.load(Ordering::Relaxed))
            .with_context(|| format!("setting the mode of {}", self.target.display()))?;
        self.temp
            .as_file()
            .sync_all()
            .with_context(|| format!("syncing {}", self.target.display()))?;
        let target = self.target;
        self.temp
            .persist(&target)
            .map_err(|e| e.error)
            .with_context(|| format!("renaming into {}", target.display()))?;
        sync_dir(parent_dir(&target))?;
        Ok(target)
    }
}

/// Writes a small file whole, published by rename: with `mode`, or the mode
/// of the file it replaces (else 0644) when `None`. A link at `path` is
/// replaced, not followed.
pub fn write_whole(path: &Path, bytes: &[u8], mode: Option<u32>) -> anyhow::Result<()> {
    let written = || -> anyhow::Result<()> {
        let mut f = match mode {
            Some(mode) => AtomicFile::create_with_mode(path, mode, ModeSupport::Required)?,
            None => AtomicFile::create(path)?,
        };
        f.write_all(bytes)?;
        f.commit()?;
        Ok(())
    };
    written().with_context(|| format!("writing {}", path.display()))
}

/// Writes a secret (a token, a secret key): the temporary file is created
/// 0600 and stays so, and it replaces whatever is at `path` by rename, so an
/// existing file's wider mode is not kept and a link there is not followed.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_whole(path, bytes, Some(0o600))
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.temp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.temp.flush()
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsyncs a directory so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_or_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        {
            let mut f = AtomicFile::create(&target).unwrap();
            f.write_all(b"half").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let stale = AtomicFile::create(&target).unwrap();
        let stale_path = stale.temp_path().to_path_buf();
        std::mem::forget(stale); // as a killed writer leaves it
        assert!(stale_path.exists());
        AtomicFile::remove_stale(&target).unwrap();
        assert!(!stale_path.exists());
        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"whole").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// Watches the temporary file's mode while it is written: a file bound
    /// for 0600 is never wider (it used to be 0644 between create and
    /// chmod), and a 0644 one is no wider than 0600 until it is committed.
    #[test]
    fn temporary_files_are_never_wider_than_0600() {
        let dir = tempfile::tempdir().unwrap();
        for (final_mode, widest_seen) in [(0o600, 0o600), (0o400, 0o600), (0o644, 0o600)] {
            let target = dir.path().join(format!("out-{final_mode:o}"));
            let mut f = AtomicFile::create(&target).unwrap();
            assert_eq!(mode_of(f.temp_path()) & !widest_seen, 0, "{final_mode:o}");
            f.set_mode(final_mode).unwrap();
            let temp = mode_of(f.temp_path());
            assert_eq!(temp & !widest_seen, 0, "{final_mode:o}: temp {temp:o}");
            if final_mode & !0o600 == 0 {
                assert_eq!(temp, final_mode, "a stricter mode is set at once");
            }
            f.write_all(b"secret").unwrap();
            assert_eq!(mode_of(f.temp_path()) & !widest_seen, 0);
            f.commit().unwrap();
            assert_eq!(mode_of(&target), final_mode);
        }
    }

    #[test]
    fn write_private_replaces_a_wider_file_and_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        std::fs::write(&t, "old").unwrap();
        std::fs::set_permissions(&t, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        write_private(&t, b"token").unwrap();
        assert_eq!(mode_of(&t), 0o600);
        assert_eq!(std::fs::read(&t).unwrap(), b"token");
        // A link at the destination is replaced, not followed.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "untouched").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        write_private(&link, b"token").unwrap();
        assert!(!std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"untouched");
    }
}
