//! A full disk during `bundle build`, said once: [`SpaceWatch`] passes the
//! fetch stage's progress on while it tallies what the downloads under way
//! still need, and the build tells it which stage writes where and how much.
//! Any error a full file system caused then becomes one
//! `no space left on <dir>, needed N more` naming the directory and the file.
//!
//! A full download cache fails the build (it does not fall back to no cache,
//! which would need the same space again, in the output's directory): the
//! message names the cache and says to free space there, pass `--cache DIR`
//! on a larger file system, or `--no-cache`.

use crate::progress::Progress;
use airgap_bundle::digest::Digest;
use airgap_bundle::reference::ImageRef;
use airgap_bundle::space::{self, human, Needed, NoSpace};
use airgap_bundle::write::Compression;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A file system block: the least a write that failed still needed.
const BLOCK: u64 = 4096;

#[derive(Debug, Clone)]
enum Stage {
    /// Before any download: nothing to explain beyond the error itself.
    Preparing,
    Fetching {
        dir: PathBuf,
        /// `--cache DIR` (or the default one) rather than the build's own
        /// staging directory (`--no-cache`).
        persistent: bool,
        free: Option<u64>,
    },
    Writing {
        file: PathBuf,
        /// The bundle's size: exact for a tar, an upper bound compressed.
        size: u64,
        exact: bool,
        free: Option<u64>,
    },
    Recording {
        file: PathBuf,
        size: u64,
    },
}

#[derive(Debug)]
struct State {
    stage: Stage,
    /// Bytes of the downloads started, and of those that arrived.
    started: u64,
    arrived: u64,
}

/// The build's [`Progress`], watching where it writes.
pub struct SpaceWatch<'a> {
    inner: &'a dyn Progress,
    state: Mutex<State>,
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl<'a> SpaceWatch<'a> {
    pub fn new(inner: &'a dyn Progress) -> Self {
        Self {
            inner,
            state: Mutex::new(State {
                stage: Stage::Preparing,
                started: 0,
                arrived: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Downloads go into `dir` from now on.
    pub fn fetching(&self, dir: &Path, persistent: bool) {
        self.state().stage = Stage::Fetching {
            dir: dir.to_path_buf(),
            persistent,
            free: space::free_bytes(dir),
        };
    }

    /// The bundle, of `tar_size` bytes before compression, is written to
    /// `file` (or its parts) from now on.
    pub fn writing(&self, file: &Path, tar_size: u64, compression: Compression) {
        let (size, exact) = match compression {
            Compression::None => (tar_size, true),
            // What zstd adds to data it cannot shrink, at most.
            Compression::Zstd { .. } => (tar_size + tar_size / 128 + (128 << 10), false),
        };
        self.state().stage = Stage::Writing {
            file: file.to_path_buf(),
            size,
            exact,
            free: space::free_bytes(&dir_of(file)),
        };
    }

    /// `file` (the lock), of `size` bytes, is written from now on.
    pub fn recording(&self, file: &Path, size: u64) {
        self.state().stage = Stage::Recording {
            file: file.to_path_buf(),
            size,
        };
    }

    /// `err` with "no space left on …" on top when a full file system
    /// caused it; any other error as it is.
    pub fn explain(&self, err: anyhow::Error) -> anyhow::Error {
        let state = self.state();
        if matches!(state.stage, Stage::Preparing) {
            return err;
        }
        space::explain(err, || match &state.stage {
            Stage::Preparing => unreachable!("returned above"),
            Stage::Fetching {
                dir,
                persistent,
                free,
            } => {
                let left = state.started.saturating_sub(state.arrived).max(BLOCK);
                let free = free
                    .map(human)
                    .unwrap_or_else(|| "an unknown amount".into());
                let detail = if *persistent {
                    format!(
                        "downloading into the cache {}, which had {free} free; the rest of the \
                         download is not known before every manifest is read; free space there, \
                         or pass --cache DIR on a larger file system, or --no-cache",
                        dir.display()
                    )
                } else {
                    format!(
                        "downloading into the build's staging directory (--no-cache), which had \
                         {free} free; the bundle then needs about as much again there"
                    )
                };
                NoSpace {
                    path: if *persistent {
                        dir.clone()
                    } else {
                        dir_of(dir.parent().unwrap_or(dir))
                    },
                    needed: Needed::AtLeast(left),
                    detail,
                }
            }
            Stage::Writing {
                file,
                size,
                exact,
                free,
            } => {
                let how = if *exact { "" } else { "up to " };
                let (needed, free_text) = match free {
                    Some(f) if f < size => (
                        if *exact {
                            Needed::About(size - f)
                        } else {
                            Needed::UpTo(size - f)
                        },
                        human(*f),
                    ),
                    // Something else took the space while the bundle was written.
                    Some(f) => (Needed::AtLeast(BLOCK), human(*f)),
                    None => (Needed::UpTo(*size), "an unknown amount".into()),
                };
                NoSpace {
                    path: dir_of(file),
                    needed,
                    detail: format!(
                        "writing {}: the bundle takes {how}{} and {free_text} was free; \
                         nothing was written",
                        file.display(),
                        human(*size)
                    ),
                }
            }
            Stage::Recording { file, size } => NoSpace {
                path: dir_of(file),
                needed: Needed::About(*size),
                detail: format!(
                    "writing {}; the bundle was written, the lock is unchanged",
                    file.display()
                ),
            },
        })
    }
}

impl Progress for SpaceWatch<'_> {
    fn image_started(&self, image: &ImageRef) {
        self.inner.image_started(image)
    }
    fn image_done(&self, image: &ImageRef, blobs: usize, bytes: u64) {
        self.inner.image_done(image, blobs, bytes)
    }
    fn image_failed(&self, image: &ImageRef) {
        self.inner.image_failed(image)
    }
    fn blob_started(&self, image: &ImageRef, digest: &Digest, size: u64, shared: bool) {
        if !shared {
            self.state().started += size;
        }
        self.inner.blob_started(image, digest, size, shared)
    }
    fn blob_advanced(&self, image: &ImageRef, bytes: u64) {
        self.state().arrived += bytes;
        self.inner.blob_advanced(image, bytes)
    }
    fn blob_done(&self, image: &ImageRef, digest: &Digest, size: u64, shared: bool) {
        self.inner.blob_done(image, digest, size, shared)
    }
    fn asset_started(&self, name: &str, size: Option<u64>) {
        self.state().started += size.unwrap_or(0);
        self.inner.asset_started(name, size)
    }
    fn asset_advanced(&self, name: &str, bytes: u64) {
        self.state().arrived += bytes;
        self.inner.asset_advanced(name, bytes)
    }
    fn asset_done(&self, name: &str, size: u64) {
        self.inner.asset_done(name, size)
    }
    fn writing_started(&self, total: u64) {
        self.inner.writing_started(total)
    }
    fn writing_advanced(&self, bytes: u64) {
        self.inner.writing_advanced(bytes)
    }
    fn writing_done(&self) {
        self.inner.writing_done()
    }
}
