//! [`BlobWriter`]: a file streamed into place, verified. Bytes go to a
//! temporary file in the target's own directory (or to a kept partial
//! download) while they are hashed and counted; [`BlobWriter::commit`]
//! checks size and digest, fsyncs and renames, so nothing reaches its final
//! path unverified.
//!
//! Trusts nothing it is given but the expected digest and size; a partial
//! file from an earlier run is hashed again before it is appended to.

use super::BlobStore;
use airgap_bundle::digest::{Digest, DigestMismatch, Hashed, Hasher};
use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt as _;

/// Streams a file into place: bytes go to a temporary file in the target's
/// directory while they are hashed and counted; [`commit`](Self::commit)
/// verifies, fsyncs and renames. Dropped uncommitted, it removes the
/// temporary file, unless it is a kept partial download
/// ([`BlobWriter::resume`]).
pub struct BlobWriter {
    what: String,
    dest: PathBuf,
    digest: Option<Digest>,
    size: Option<u64>,
    mode: u32,
    file: tokio::fs::File,
    temp: Temp,
    hasher: Hasher,
    /// The store to tell about a committed blob (it then needs no rehash).
    store: Option<BlobStore>,
}

/// Where a [`BlobWriter`]'s bytes go until commit.
enum Temp {
    /// Removed when dropped.
    Scratch(tempfile::TempPath),
    /// Kept when dropped, to be resumed; removed when it cannot be right.
    Kept(PathBuf),
}

impl Temp {
    fn display(&self) -> std::path::Display<'_> {
        match self {
            Temp::Scratch(t) => t.display(),
            Temp::Kept(p) => p.display(),
        }
    }

    fn discard(&self) {
        if let Temp::Kept(p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl BlobWriter {
    /// Starts a file that becomes `dest` once it checks out against `digest`
    /// and `size` (each when given). `what` names it in errors.
    pub fn create(
        dest: &Path,
        what: impl Into<String>,
        digest: Option<Digest>,
        size: Option<u64>,
    ) -> Result<Self> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        let temp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        let (file, temp) = temp.into_parts();
        Ok(Self {
            what: what.into(),
            dest: dest.to_path_buf(),
            digest,
            size,
            mode: 0o644,
            file: tokio::fs::File::from_std(file),
            temp: Temp::Scratch(temp),
            hasher: Hasher::new(),
            store: None,
        })
    }

    /// Starts, or continues, a download of `digest` in the kept file
    /// `partial` (its bytes so far are hashed first); it becomes `dest` once
    /// the whole checks out. A partial file that is already too long is
    /// started over, and one whose whole does not match is removed. While
    /// another process (sharing the cache) holds the partial file's lock,
    /// this download goes to a scratch file instead.
    pub async fn resume(
        partial: &Path,
        dest: &Path,
        what: impl Into<String>,
        digest: Digest,
        size: u64,
    ) -> Result<Self> {
        let what = what.into();
        let path = partial.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || -> Result<_> {
            use std::io::Read as _;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            // Held until the writer is dropped or committed.
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()))
                }
            }
            let mut hasher = Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file
                    .read(&mut buf)
                    .with_context(|| format!("reading {}", path.display()))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            if hasher.len() > size {
                file.set_len(0)?;
                return Ok(Some((file, Hasher::new())));
            }
            Ok(Some((file, hasher)))
        })
        .await
        .context("opening a partial download")??;
        let Some((file, hasher)) = opened else {
            return Self::create(dest, what, Some(digest), Some(size));
        };
        Ok(Self {
            what,
            dest: dest.to_path_buf(),
            digest: Some(digest),
            size: Some(size),
            mode: 0o644,
            file: tokio::fs::File::from_std(file),
            temp: Temp::Kept(partial.to_path_buf()),
            hasher,
            store: None,
        })
    }

    /// Tells `store` about the blob once committed, so it is not hashed again
    /// this run.
    pub fn for_store(mut self, store: &BlobStore) -> Self {
        self.store = Some(store.clone());
        self
    }

    /// The permissions the published file gets (default `0o644`).
    pub fn with_mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.hasher.len()
    }

    /// Forgets what was written (a server that ignored a Range request
    /// sends the whole again).
    pub async fn restart(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .await
            .with_context(|| format!("truncating {}", self.temp.display()))?;
        tokio::io::AsyncSeekExt::seek(&mut self.file, std::io::SeekFrom::Start(0)).await?;
        self.hasher = Hasher::new();
        Ok(())
    }

    /// Appends `bytes`. Fails at once, with a [`DigestMismatch::Size`], when
    /// they would take the file past its expected size.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let after = self.hasher.len() + bytes.len() as u64;
        if let Some(size) = self.size.filter(|&size| after > size) {
            self.temp.discard();
            return Err(DigestMismatch::Size {
                what: self.what.clone(),
                expected: size,
                found: after,
            }
            .into());
        }
        self.file
            .write_all(bytes)
            .await
            .with_context(|| format!("writing {}", self.temp.display()))?;
        if matches!(self.temp, Temp::Kept(_)) {
            // tokio writes in the background; a kept file must hold every
            // byte counted when the writer is dropped.
            self.file.flush().await?;
        }
        self.hasher.update(bytes);
        Ok(())
    }

    /// Verifies what was written (a typed [`DigestMismatch`] naming the
    /// file otherwise), fsyncs it and renames it to its final path.
    pub async fn commit(mut self) -> Result<Hashed> {
        let hashed = self.hasher.clone().finish();
        if let Some(size) = self.size {
            if size != hashed.size {
                self.temp.discard();
                return Err(DigestMismatch::Size {
                    what: self.what,
                    expected: size,
                    found: hashed.size,
                }
                .into());
            }
        }
        if let Some(digest) = self.digest {
            if let Err(e) = hashed.verify(&self.what, &digest, None) {
                self.temp.discard();
                return Err(e.into());
            }
        }
        self.file.flush().await?;
        self.file
            .sync_all()
            .await
            .with_context(|| format!("syncing {}", self.temp.display()))?;
        let file = self.file.into_std().await;
        let (temp, dest, mode) = (self.temp, self.dest, self.mode);
        tokio::task::spawn_blocking(move || publish(file, temp, &dest, mode))
            .await
            .context("publishing a verified file")??;
        if let (Some(store), Some(digest)) = (&self.store, self.digest) {
            store.mark_verified(digest);
        }
        Ok(hashed)
    }
}

/// Gives a verified, synced temporary file its mode (tempfile creates it
/// private, and an OCI layout is read by other tools), renames it over
/// `dest` and syncs the directory so the rename survives a crash.
fn publish(file: std::fs::File, temp: Temp, dest: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", temp.display()))?;
    drop(file);
    match temp {
        Temp::Scratch(temp) => temp.persist(dest).map_err(|e| e.error),
        Temp::Kept(path) => std::fs::rename(&path, dest),
    }
    .with_context(|| format!("renaming into {}", dest.display()))?;
    if let Some(dir) = dest.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing directory {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_files(store: &BlobStore) -> Vec<String> {
        std::fs::read_dir(store.path(&Digest::of(b"")).parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    #[tokio::test]
    async fn commit_publishes_verified_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data = b"layer bytes";
        let d = Digest::of(data);
        assert!(!store.contains(&d, data.len() as u64));
        let mut w = store.begin(&d, data.len() as u64).unwrap();
        w.write(&data[..5]).await.unwrap();
        w.write(&data[5..]).await.unwrap();
        assert!(!store.path(&d).exists(), "never written at the final path");
        let hashed = w.commit().await.unwrap();
        assert_eq!(hashed.digest, d);
        assert!(store.contains(&d, data.len() as u64));
        assert_eq!(std::fs::read(store.path(&d)).unwrap(), data);
        assert!(dir.path().join(d.blob_path()).is_file());
        assert!(temp_files(&store).is_empty());
    }

    #[tokio::test]
    async fn mismatch_is_typed_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of(b"expected");
        let mut w = store.begin(&d, 8).unwrap();
        w.write(b"tampered").await.unwrap();
        let err = w.commit().await.unwrap_err();
        match err.downcast_ref::<DigestMismatch>() {
            Some(DigestMismatch::Hash { what, expected, .. }) => {
                assert_eq!(what, &d.blob_path());
                assert_eq!(expected, &d);
            }
            other => panic!("expected a hash mismatch, got {other:?}"),
        }
        assert!(err.to_string().contains("hash mismatch for blobs/sha256/"));
        assert!(!store.path(&d).exists());
        assert!(temp_files(&store).is_empty());

        // Too many bytes fail at the write that overflows.
        let mut w = store.begin(&d, 4).unwrap();
        let err = w.write(b"12345").await.unwrap_err();
        assert!(matches!(
            err.downcast_ref::<DigestMismatch>(),
            Some(DigestMismatch::Size { expected: 4, .. })
        ));
        drop(w);
        // Too few fail at commit.
        let mut w = store.begin(&d, 9).unwrap();
        w.write(b"expected").await.unwrap();
        assert!(w
            .commit()
            .await
            .unwrap_err()
            .to_string()
            .contains("size mismatch"));
        assert!(temp_files(&store).is_empty());
    }

    #[tokio::test]
    async fn dropped_writer_removes_its_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of(b"abc");
        let mut w = store.begin(&d, 3).unwrap();
        w.write(b"ab").await.unwrap();
        assert_eq!(temp_files(&store).len(), 1);
        drop(w);
        assert!(temp_files(&store).is_empty());
        assert!(!store.path(&d).exists());
    }

    #[tokio::test]
    async fn writes_plain_files_outside_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("k3s");
        let mut w = BlobWriter::create(&dest, "k3s", None, None)
            .unwrap()
            .with_mode(0o755);
        w.write(b"binary").await.unwrap();
        let hashed = w.commit().await.unwrap();
        assert_eq!(hashed.digest, Digest::of(b"binary"));
        assert_eq!(std::fs::read(&dest).unwrap(), b"binary");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
