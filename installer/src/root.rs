//! The host's file system as the installer may touch it: every host path goes
//! through [`HostRoot::path`], which joins it under `--root` (or `/`) and
//! refuses anything that is not a plain absolute path, so neither a bundle nor
//! a flag can make the installer write outside its root.
//!
//! [`Changes`] is the undo log of one run: directories it created, files it
//! staged. Until [`Changes::keep`] is called, dropping it removes them again,
//! so a failed install leaves the host as it found it. Files are staged
//! ([`stage_file`]) and space for the record is reserved ([`reserve_file`])
//! before anything is published, so a file system that fills up fails the
//! run while it can still be undone.

use airgap_bundle::atomic::AtomicFile;
use airgap_bundle::digest::{hash_file, Digest};
use anyhow::{bail, Context as _};
use std::io::{Seek as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

/// The root every host path is resolved under.
#[derive(Debug, Clone)]
pub struct HostRoot {
    root: PathBuf,
}

impl HostRoot {
    pub fn new(root: &Path) -> anyhow::Result<Self> {
        let root = if root.as_os_str().is_empty() {
            PathBuf::from("/")
        } else {
            root.to_path_buf()
        };
        if !root.is_absolute() {
            bail!("--root {} must be an absolute path", root.display());
        }
        Ok(Self { root })
    }

    pub fn is_host(&self) -> bool {
        self.root == Path::new("/")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `host_path` (absolute, as on the host: `/etc/rancher/k3s/config.yaml`)
    /// under the root. Panics on a relative path or `..`: host paths are the
    /// installer's own constants, never bundle input.
    pub fn path(&self, host_path: &str) -> PathBuf {
        let p = Path::new(host_path);
        assert!(p.is_absolute(), "host path {host_path} is not absolute");
        let mut out = self.root.clone();
        for c in p.components() {
            match c {
                Component::RootDir => {}
                Component::Normal(n) => out.push(n),
                _ => panic!("host path {host_path} is not plain"),
            }
        }
        out
    }

    /// A host path read back from a file the installer wrote (the install
    /// record, the journal), under the root; such files may have been
    /// edited, so unlike [`HostRoot::path`] this refuses, naming the path,
    /// anything but a plain absolute path, and a path through a symbolic
    /// link (any existing directory on the way below the root), so that
    /// no line can name a file or directory outside the root.
    pub fn resolve(&self, host_path: &str) -> anyhow::Result<PathBuf> {
        let p = Path::new(host_path);
        if !p.is_absolute() {
            bail!("{host_path:?} is not an absolute path");
        }
        let mut names = Vec::new();
        for c in p.components() {
            match c {
                Component::RootDir => {}
                Component::Normal(n) => names.push(n),
                _ => bail!("{host_path:?} is not a plain path"),
            }
        }
        let mut out = self.root.clone();
        // Every directory on the way; the entry itself may be a link
        // (kubectl): removing it never follows it. Below a missing
        // directory there is nothing left to check.
        let mut checking = true;
        for (i, n) in names.iter().enumerate() {
            out.push(n);
            if !checking || i + 1 == names.len() {
                continue;
            }
            match std::fs::symlink_metadata(&out) {
                Ok(m) if m.file_type().is_symlink() => bail!(
                    "{host_path:?} goes through a symbolic link ({})",
                    out.display()
                ),
                Ok(_) => {}
                Err(_) => checking = false,
            }
        }
        Ok(out)
    }

    /// The host path of a full path under the root (a journal line), or
    /// `None` when it is not under the root.
    pub fn host_path_of(&self, full: &Path) -> Option<String> {
        let rel = full.strip_prefix(&self.root).ok()?;
        Some(format!("/{}", rel.display()))
    }
}

/// What one run changed so far, to undo unless kept.
///
/// With a journal, each directory is written to the journal before it is
/// created, so the directories of a run that was killed are known to the
/// next run, which adopts them as its own.
#[derive(Debug, Default)]
pub struct Changes {
    created_dirs: Vec<PathBuf>,
    kept: bool,
    journal: Option<PathBuf>,
}

fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    missing.reverse();
    missing
}

impl Changes {
    pub fn new() -> Self {
        Self::default()
    }

    /// A change log journaled to `journal`, adopting the directories that
    /// a killed earlier run journaled and that still exist. A line that
    /// does not resolve inside `root` ([`HostRoot::resolve`]: outside it,
    /// not plain, through a symbolic link) was not written by a run: it is
    /// skipped with a warning, never adopted, so never removed.
    pub fn with_journal(root: &HostRoot, journal: &Path) -> anyhow::Result<Self> {
        let mut changes = Changes::new();
        if let Ok(text) = std::fs::read_to_string(journal) {
            for line in text.lines() {
                let resolved = root
                    .host_path_of(Path::new(line))
                    .ok_or_else(|| anyhow::anyhow!("not under {}", root.root().display()))
                    .and_then(|h| root.resolve(&h));
                let d = match resolved {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!("{}: ignoring the line {line:?}: {e:#}", journal.display());
                        continue;
                    }
                };
                if d.is_dir() && !changes.created_dirs.contains(&d) {
                    changes.created_dirs.push(d);
                }
            }
        }
        if let Some(parent) = journal.parent() {
            for d in missing_dirs(parent) {
                std::fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
                changes.created_dirs.push(d);
            }
        }
        let text: String = changes
            .created_dirs
            .iter()
            .map(|d| format!("{}\n", d.display()))
            .collect();
        changes.journal = Some(journal.to_path_buf());
        // On failure (a full disk), dropping `changes` removes the journal
        // and the directories made for it.
        std::fs::write(journal, text).with_context(|| format!("writing {}", journal.display()))?;
        Ok(changes)
    }

    fn journal_dir(&self, dir: &Path) -> anyhow::Result<()> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(journal)
            .with_context(|| format!("opening {}", journal.display()))?;
        writeln!(f, "{}", dir.display())?;
        f.sync_data()?;
        Ok(())
    }

    /// Creates `dir` and its missing parents, remembering each one created.
    pub fn create_dir_all(&mut self, dir: &Path) -> anyhow::Result<()> {
        for d in missing_dirs(dir) {
            self.journal_dir(&d)?;
            std::fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
            self.created_dirs.push(d);
        }
        Ok(())
    }

    /// Directories created by this run, parents first.
    pub fn created_dirs(&self) -> &[PathBuf] {
        &self.created_dirs
    }

    /// The run succeeded: keep everything.
    pub fn keep(mut self) -> Vec<PathBuf> {
        self.kept = true;
        std::mem::take(&mut self.created_dirs)
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if let Some(journal) = &self.journal {
            let _ = std::fs::remove_file(journal);
        }
        for d in self.created_dirs.iter().rev() {
            // Only empty directories: anything else in them is not ours.
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Whether `path` already holds exactly `digest` with `mode`: then writing it
/// again would change nothing, and it is left alone (same mtime).
pub fn file_matches(path: &Path, digest: &Digest, mode: u32) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    meta.is_file()
        && meta.permissions().mode() & 0o7777 == mode
        && hash_file(path).is_ok_and(|h| h.digest == *digest)
}

/// Writes a small generated file (config, unit, env file) atomically, unless
/// it already has this content and mode. Returns whether it was written.
pub fn write_file(
    changes: &mut Changes,
    path: &Path,
    content: &[u8],
    mode: u32,
) -> anyhow::Result<bool> {
    match stage_file(changes, path, content, mode)? {
        Some(f) => {
            f.commit()?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Writes `content` beside `path`, to be renamed into place by committing
/// it (dropping it removes it); `None` when `path` already holds exactly it.
pub fn stage_file(
    changes: &mut Changes,
    path: &Path,
    content: &[u8],
    mode: u32,
) -> anyhow::Result<Option<AtomicFile>> {
    AtomicFile::remove_stale(path)?;
    if file_matches(path, &Digest::of(content), mode) {
        return Ok(None);
    }
    if let Some(dir) = path.parent() {
        changes.create_dir_all(dir)?;
    }
    let mut f = AtomicFile::create(path)?;
    f.set_mode(mode)?;
    f.write_all(content)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(f))
}

/// Reserves `bytes` beside `path` for a file whose content is known only
/// later (the install record, once the images are named): written now, it
/// fails while the run can still be undone, and [`fill_reserved`] then
/// overwrites blocks already allocated. `path`'s directory must exist.
pub fn reserve_file(path: &Path, bytes: u64, mode: u32) -> anyhow::Result<AtomicFile> {
    AtomicFile::remove_stale(path)?;
    let mut f = AtomicFile::create(path)?;
    f.set_mode(mode)?;
    let zeros = vec![0u8; 64 << 10];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])
            .with_context(|| format!("reserving {bytes} bytes for {}", path.display()))?;
        left -= n as u64;
    }
    f.file()
        .sync_data()
        .with_context(|| format!("reserving space for {}", path.display()))?;
    Ok(f)
}

/// Puts `content` into a file [`reserve_file`] made and renames it into
/// place, unless the target already holds exactly it (then the reservation
/// is dropped). Returns whether it was written.
pub fn fill_reserved(mut f: AtomicFile, content: &[u8], mode: u32) -> anyhow::Result<bool> {
    if file_matches(f.target(), &Digest::of(content), mode) {
        return Ok(false);
    }
    let target = f.target().to_path_buf();
    let file = f.file();
    file.rewind()?;
    file.write_all(content)
        .and_then(|()| file.set_len(content.len() as u64))
        .with_context(|| format!("writing {}", target.display()))?;
    f.commit()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        let r = HostRoot::new(Path::new("/tmp/x")).unwrap();
        assert_eq!(
            r.path("/etc/rancher/k3s/config.yaml"),
            Path::new("/tmp/x/etc/rancher/k3s/config.yaml")
        );
        assert!(HostRoot::new(Path::new("rel")).is_err());
        assert!(std::panic::catch_unwind(|| r.path("/etc/../x")).is_err());
    }

    #[test]
    fn read_back_paths_stay_under_the_root() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("etc")).unwrap();
        let r = HostRoot::new(t.path()).unwrap();
        assert_eq!(r.resolve("/usr/x/y").unwrap(), t.path().join("usr/x/y"));
        // The entry itself may be a link (kubectl); a directory on the way not.
        assert_eq!(r.resolve("/etc").unwrap(), t.path().join("etc"));
        for bad in ["/etc/passwd", "/usr/../../x", "usr/x", ""] {
            let e = r.resolve(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad:?}: {e}");
        }
        assert_eq!(
            r.host_path_of(&t.path().join("a/b")).as_deref(),
            Some("/a/b")
        );
        assert_eq!(r.host_path_of(outside.path()), None);
    }

    #[test]
    fn a_journal_line_outside_the_root_is_not_adopted() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("empty");
        std::fs::create_dir(&victim).unwrap();
        let journal = t.path().join("journal");
        std::fs::write(&journal, format!("{}\n", victim.display())).unwrap();
        let c = Changes::with_journal(&HostRoot::new(t.path()).unwrap(), &journal).unwrap();
        assert!(c.created_dirs().is_empty(), "{:?}", c.created_dirs());
        drop(c);
        assert!(victim.is_dir());
    }

    #[test]
    fn changes_undo_created_dirs() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/c");
        {
            let mut c = Changes::new();
            c.create_dir_all(&deep).unwrap();
            assert!(deep.is_dir());
        }
        assert!(!t.path().join("a").exists());
        let mut c = Changes::new();
        c.create_dir_all(&deep).unwrap();
        c.keep();
        assert!(deep.is_dir());
    }

    #[test]
    fn journal_hands_a_killed_runs_dirs_to_the_next() {
        let t = tempfile::tempdir().unwrap();
        let root = HostRoot::new(t.path()).unwrap();
        let journal = t.path().join("state/journal");
        let deep = t.path().join("x/y");
        {
            let mut c = Changes::with_journal(&root, &journal).unwrap();
            c.create_dir_all(&deep).unwrap();
            std::mem::forget(c); // killed: no undo ran
        }
        let c = Changes::with_journal(&root, &journal).unwrap();
        let dirs = c.created_dirs().to_vec();
        assert!(dirs.contains(&t.path().join("state")), "{dirs:?}");
        assert!(dirs.contains(&t.path().join("x")), "{dirs:?}");
        drop(c);
        assert!(!t.path().join("x").exists());
        assert!(!t.path().join("state").exists());
    }

    #[test]
    fn reserved_files_take_their_content_later() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("record.json");
        let f = reserve_file(&p, 100_000, 0o600).unwrap();
        assert_eq!(std::fs::metadata(f.temp_path()).unwrap().len(), 100_000);
        assert!(fill_reserved(f, b"{}", 0o600).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"{}");
        let f = reserve_file(&p, 10, 0o600).unwrap();
        assert!(!fill_reserved(f, b"{}", 0o600).unwrap());
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_file_skips_identical_content() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("etc/f");
        let mut c = Changes::new();
        assert!(write_file(&mut c, &p, b"x", 0o600).unwrap());
        assert!(!write_file(&mut c, &p, b"x", 0o600).unwrap());
        assert!(write_file(&mut c, &p, b"x", 0o644).unwrap());
        c.keep();
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
    }
}
