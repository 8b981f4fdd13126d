//! Running out of disk, said once: the free bytes of the file system that
//! holds a path, and [`NoSpace`], the one error a full file system (ENOSPC,
//! or EDQUOT for a quota) anywhere in an error's chain is turned into, naming
//! the path and how much more was needed. Writers do not check for it at each
//! write: the stage that knows where it writes and how much wraps its error.

use std::error::Error as StdError;
use std::io;
use std::path::{Path, PathBuf};

/// How sure [`NoSpace`] is of the amount it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needed {
    /// A best estimate.
    About(u64),
    /// An upper bound (what compression saves is not known in advance).
    UpTo(u64),
    /// A lower bound (what is left of the writes under way; more may follow).
    AtLeast(u64),
}

/// A file system filled up (or would have): where, and by how much.
#[derive(Debug, Clone)]
pub struct NoSpace {
    /// The directory written to (or the file system's path a check named).
    pub path: PathBuf,
    pub needed: Needed,
    /// What was being written, and the figures behind `needed`.
    pub detail: String,
}

impl std::fmt::Display for NoSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (how, n) = match self.needed {
            Needed::About(n) => ("about ", n),
            Needed::UpTo(n) => ("up to ", n),
            Needed::AtLeast(n) => ("at least ", n),
        };
        write!(
            f,
            "no space left on {}, needed {how}{} more",
            self.path.display(),
            human(n)
        )?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

impl StdError for NoSpace {}

fn io_is_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(28 | 122))
}

fn chain_is_full(mut cur: Option<&(dyn StdError + 'static)>) -> bool {
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io_is_full(io) {
                return true;
            }
            // An error wrapped into an io::Error (a writer that reports an
            // anyhow error) hides itself from `source()`: look inside.
            if let Some(inner) = io.get_ref() {
                if chain_is_full(Some(inner)) {
                    return true;
                }
            }
        }
        cur = e.source();
    }
    false
}

/// Whether a full file system caused `err` (anywhere in its chain).
pub fn is_full(err: &anyhow::Error) -> bool {
    chain_is_full(Some(err.as_ref()))
}

/// Whether `err` already carries a [`NoSpace`] explanation.
pub fn explained(err: &anyhow::Error) -> bool {
    err.downcast_ref::<NoSpace>().is_some()
}

/// Puts `explain()` on top of `err` when a full file system caused it and
/// nothing below explained it yet; any other error is returned as is.
pub fn explain(err: anyhow::Error, explain: impl FnOnce() -> NoSpace) -> anyhow::Error {
    if is_full(&err) && !explained(&err) {
        err.context(explain())
    } else {
        err
    }
}

/// The nearest existing path at or above `path`.
pub fn existing_ancestor(path: &Path) -> Option<&Path> {
    let mut p = path;
    while std::fs::symlink_metadata(p).is_err() {
        p = p.parent()?;
    }
    Some(p)
}

/// Bytes an unprivileged writer may still use on the file system holding
/// `path` (or its nearest existing parent); `None` when it cannot be measured,
/// also when the file system reports no size at all (0 blocks: some FUSE
/// drivers, fusefat among them, leave statfs empty).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(existing_ancestor(path)?).ok()?;
    if st.f_blocks == 0 {
        return None;
    }
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The device of the file system holding `path` (or its nearest existing
/// parent), to tell which paths share one.
pub fn device(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Some(std::fs::metadata(existing_ancestor(path)?).ok()?.dev())
}

/// Bytes as a person reads them, rounded up: `512 bytes`, `37 KiB`,
/// `3.2 MiB`, `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if bytes < KIB {
        format!("{bytes} bytes")
    } else if bytes < MIB {
        format!("{} KiB", bytes.div_ceil(KIB))
    } else {
        let (unit, name) = if bytes < GIB {
            (MIB, "MiB")
        } else {
            (GIB, "GiB")
        };
        let tenths = (bytes as u128 * 10).div_ceil(unit as u128);
        format!("{}.{} {name}", tenths / 10, tenths % 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn finds_a_full_disk_anywhere_in_the_chain() {
        let full = || io::Error::from_raw_os_error(28);
        let err = anyhow::Error::from(full()).context("writing x");
        assert!(is_full(&err));
        // Wrapped into an io::Error, as a Write impl reports an anyhow error.
        let inner = anyhow::Error::from(full()).context("creating a part");
        let err = anyhow::Error::from(io::Error::other(inner)).context("writing");
        assert!(is_full(&err));
        let err = anyhow::Error::from(io::Error::from_raw_os_error(2));
        assert!(!is_full(&err));
        let explained = explain(Err::<(), _>(full()).context("w").unwrap_err(), || NoSpace {
            path: "/mnt/small".into(),
            needed: Needed::About(3 << 20),
            detail: "writing x".into(),
        });
        assert_eq!(
            format!("{explained:#}").split(": ").next().unwrap(),
            "no space left on /mnt/small, needed about 3.0 MiB more (writing x)"
        );
        // Explained once, at the lowest stage that knew.
        let again = explain(explained, || unreachable!());
        assert_eq!(format!("{again:#}").matches("no space left").count(), 1);
    }

    #[test]
    fn sizes_read_as_a_person_would() {
        assert_eq!(human(512), "512 bytes");
        assert_eq!(human(4097), "5 KiB");
        assert_eq!(human((3 << 20) + 1), "3.1 MiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert!(free_bytes(Path::new("/definitely/not/here")).is_some());
    }
}
