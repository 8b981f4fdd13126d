//! One install at a time per root: a second `airgap install` (or
//! `uninstall`) on the same root waits for the first rather than
//! interleaving with it. The lock file lives outside the root (in
//! `/run/lock`), so taking it leaves nothing behind in the root.

use airgap_bundle::digest::Digest;
use anyhow::Context as _;
use std::fs::{File, OpenOptions};
use std::path::PathBuf;

pub struct InstallLock {
    _file: File,
    pub path: PathBuf,
}

impl InstallLock {
    /// Takes the lock for `root`, waiting while another install holds it.
    pub fn acquire(root: &crate::root::HostRoot) -> anyhow::Result<Self> {
        let dir = if std::path::Path::new("/run/lock").is_dir() {
            PathBuf::from("/run/lock")
        } else {
            std::env::temp_dir()
        };
        let key = Digest::of(root.root().as_os_str().as_encoded_bytes()).hex();
        let path = dir.join(format!("airgap-install-{}.lock", &key[..16]));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        if file.try_lock().is_err() {
            eprintln!(
                "another airgap install is running on {}; waiting for it (lock {})",
                root.root().display(),
                path.display()
            );
            file.lock()
                .with_context(|| format!("waiting for lock {}", path.display()))?;
        }
        Ok(Self { _file: file, path })
    }
}
