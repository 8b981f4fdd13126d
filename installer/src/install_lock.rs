//! One install at a time per root: a second `airgap install` (or
//! `uninstall`) on the same root waits for the first rather than
//! interleaving with it, and gives up after [`WAIT`] naming the holder's
//! pid. The lock files live in `/run/airgap/` (a 0700 directory owned by
//! the user airgap runs as, refused otherwise), never in a world-writable
//! directory such as `/run/lock`, where any local user could hold a
//! predictable lock forever or plant a link in its place; the file itself
//! is opened without following links. They stay outside the root, so
//! taking the lock leaves nothing behind in it.

use airgap_bundle::digest::Digest;
use anyhow::{bail, Context as _};
use rustix::fs::OFlags;
use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The directory of the lock files, when airgap runs as root.
pub const LOCK_DIR: &str = "/run/airgap";
/// How long a second install waits for the first.
pub const WAIT: Duration = Duration::from_secs(30 * 60);

pub struct InstallLock {
    _file: File,
    pub path: PathBuf,
}

impl InstallLock {
    /// Takes the lock for `root`, waiting while another install holds it.
    pub fn acquire(root: &crate::root::HostRoot) -> anyhow::Result<Self> {
        let key = Digest::of(root.root().as_os_str().as_encoded_bytes()).hex();
        Self::acquire_in(
            &lock_dir(),
            &key[..16],
            &root.root().display().to_string(),
            WAIT,
        )
    }

    /// Takes lock `name` in `dir` (made 0700 when missing, refused unless it
    /// is a directory of ours that only we can write); `what` names the
    /// root in messages.
    pub fn acquire_in(dir: &Path, name: &str, what: &str, wait: Duration) -> anyhow::Result<Self> {
        private_dir(dir)?;
        let path = dir.join(format!("install-{name}.lock"));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags((OFlags::NOFOLLOW | OFlags::CLOEXEC).bits() as i32)
            .open(&path)
            .with_context(|| {
                format!(
                    "opening lock file {} (it must not be a link)",
                    path.display()
                )
            })?;
        if file.try_lock().is_err() {
            let holder = holder(&mut file);
            eprintln!(
                "another airgap install is running on {what}{holder}; waiting for it (lock {})",
                path.display()
            );
            let start = Instant::now();
            while file.try_lock().is_err() {
                if start.elapsed() >= wait {
                    bail!(
                        "another airgap install has held the lock on {what}{} for {} s; gave up waiting (lock {})",
                        holder_or(&mut file, holder),
                        wait.as_secs(),
                        path.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        // Say who holds it, for those who wait.
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(Self { _file: file, path })
    }
}

/// `/run/airgap` as root; otherwise a directory of the user's own.
fn lock_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from(LOCK_DIR);
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("airgap"),
        None => {
            std::env::temp_dir().join(format!("airgap-{}", rustix::process::geteuid().as_raw()))
        }
    }
}

/// Makes `dir` 0700 when missing; refuses one that is a link, not ours, or
/// writable by others.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e).with_context(|| format!("creating lock directory {}", dir.display()))
        }
    }
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("reading lock directory {}", dir.display()))?;
    let uid = rustix::process::geteuid().as_raw();
    if !meta.file_type().is_dir() {
        bail!(
            "lock directory {} is not a directory (a link?); refusing to use it",
            dir.display()
        );
    }
    if meta.uid() != uid {
        bail!(
            "lock directory {} belongs to uid {}, not to uid {uid}; refusing to use it",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "lock directory {} is writable by others (mode {:o}); refusing to use it",
            dir.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// ` (pid N)` from the lock file, when its holder wrote it.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    match text.trim().parse::<u32>() {
        Ok(pid) => format!(" (pid {pid})"),
        Err(_) => String::new(),
    }
}

fn holder_or(file: &mut File, before: String) -> String {
    let now = holder(file);
    if now.is_empty() {
        before
    } else {
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_in_place_of_the_lock_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&locks)
            .unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(&target, locks.join("install-k.lock")).unwrap();
        let err = InstallLock::acquire_in(&locks, "k", "/", WAIT)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("must not be a link"), "{err:#}");
    }

    #[test]
    fn a_lock_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        std::fs::DirBuilder::new()
            .mode(0o777)
            .create(&locks)
            .unwrap();
        std::fs::set_permissions(&locks, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let err = InstallLock::acquire_in(&locks, "k", "/", WAIT)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("writable by others"), "{err:#}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let err = InstallLock::acquire_in(&link, "k", "/", WAIT)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("not a directory"), "{err:#}");
    }

    #[test]
    fn a_held_lock_times_out_naming_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        let first = InstallLock::acquire_in(&locks, "k", "/r", WAIT).unwrap();
        let err = InstallLock::acquire_in(&locks, "k", "/r", Duration::from_millis(300))
            .err()
            .unwrap();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("/r"), "{msg}");
        drop(first);
        InstallLock::acquire_in(&locks, "k", "/r", Duration::from_millis(300)).unwrap();
    }
}
