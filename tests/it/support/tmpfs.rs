//! Small file systems for the full-disk tests: a tmpfs of a given size
//! mounted on a directory (the test runs as root), unmounted when dropped,
//! also when the test panics, and a filler file that leaves only so many
//! bytes free on it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on `dir` until dropped.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes (rounded up to pages) on `dir`, an
    /// existing (empty) directory.
    #[track_caller]
    pub fn mount(dir: &Path, size: u64) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={}k,mode=0755", size.div_ceil(1024)))
            .arg("airgap-full-disk-test")
            .arg(dir)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mount -t tmpfs on {} failed",
            dir.display()
        );
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Bytes free on it now.
    pub fn free(&self) -> u64 {
        airgap_bundle::space::free_bytes(&self.dir).expect("statvfs of the tmpfs")
    }

    /// Writes `NAME` so that only `leave` bytes (rounded down to pages)
    /// stay free, or until the file system is full when another writer
    /// races it there; returns its path.
    #[track_caller]
    pub fn fill(&self, name: &str, leave: u64) -> PathBuf {
        use std::io::Write as _;
        let path = self.dir.join(name);
        let mut left = self.free().saturating_sub(leave);
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 << 10];
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            match file.write_all(&chunk[..n]) {
                Ok(()) => left -= n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy (a process the test started still holds a file): detach
            // it now; the kernel frees it when the last user goes.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
