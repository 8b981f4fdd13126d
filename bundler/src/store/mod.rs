//! The blob store: a content-addressed directory `<root>/blobs/sha256/<hex>`
//! whose blobs become the bundle's `images/` OCI layout. Opened on the cache
//! directory it persists between runs; interrupted downloads are kept in
//! `<root>/partial/<hex>` to be resumed.
//!
//! A blob reaches its final path only through [`BlobWriter::commit`], which
//! checks size and digest, fsyncs and renames a temporary file from the same
//! directory; so every file at a final path was verified when it was written.
//! A file found there from an earlier run (or another process) is hashed
//! again, once per run, before it is used ([`Lease::reuse`]), and removed if
//! it no longer matches. Within one process a digest is fetched
//! by one caller at a time ([`BlobStore::claim`]): the others wait and then
//! find it present, which is how images sharing a layer download it once.

mod writer;

pub use writer::BlobWriter;

use airgap_bundle::digest::Digest;
use anyhow::{Context as _, Result};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// A content-addressed blob directory. Cheap to clone; clones share the
/// in-flight state, so one store should serve a whole run.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Digests some caller is fetching now; the receiver closes when it stops.
    in_flight: HashMap<Digest, watch::Receiver<()>>,
    /// Digests already handed to a caller of this process as present.
    seen: HashSet<Digest>,
    /// Digests whose file this process wrote or hashed and found matching.
    verified: HashSet<Digest>,
}

/// What [`BlobStore::claim`] found.
pub enum Claim {
    /// The blob is in the store. `shared`: this process already stored or
    /// reported it for another caller, whose progress counted its bytes.
    Present { shared: bool },
    /// The caller must fetch the blob: write it through [`Lease::begin`],
    /// commit, then drop the lease. Others claiming it wait until then. A
    /// file of the right size may be there from an earlier run: call
    /// [`Lease::reuse`] first.
    Fetch(Lease),
    /// Another caller is fetching it: wait, then claim again (it is then
    /// present, or that fetch failed and the next claim may fetch it).
    Wait(Waiter),
}

/// Waits for another caller's fetch of a blob to end.
pub struct Waiter(watch::Receiver<()>);

impl Waiter {
    /// Returns once the fetching caller's lease is dropped, committed or not.
    pub async fn wait(mut self) {
        // No value is ever sent: `changed` fails when the sender goes.
        let _ = self.0.changed().await;
    }
}

/// The right to fetch one blob. Dropping it (committed or not) wakes the
/// callers waiting for the same digest.
pub struct Lease {
    store: BlobStore,
    digest: Digest,
    size: u64,
    _done: watch::Sender<()>,
}

impl BlobStore {
    /// Opens (creating if needed) the store rooted at `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let dir = root.join("blobs").join("sha256");
        for d in [&dir, &root.join("partial")] {
            std::fs::create_dir_all(d)
                .with_context(|| format!("creating blob store {}", d.display()))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                dir,
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// The directory the store was opened at (the OCI layout root).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where the blob `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.inner.dir.join(digest.hex())
    }

    /// Where an interrupted download of `digest` is kept.
    pub fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.inner.root.join("partial").join(digest.hex())
    }

    /// Whether the blob is stored with the expected size (not whether its
    /// content still matches: see [`verify_present`](Self::verify_present)).
    pub fn contains(&self, digest: &Digest, size: u64) -> bool {
        std::fs::metadata(self.path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a pair of sets updated in single steps; a panic
        // elsewhere cannot leave it half-changed.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that this process wrote or hashed the blob `digest` and found
    /// it matching.
    fn mark_verified(&self, digest: Digest) {
        self.state().verified.insert(digest);
    }

    /// Starts writing the blob `digest` of `size` bytes, without the
    /// in-flight bookkeeping of [`claim`](Self::claim).
    pub fn begin(&self, digest: &Digest, size: u64) -> Result<BlobWriter> {
        Ok(BlobWriter::create(
            &self.path(digest),
            digest.blob_path(),
            Some(*digest),
            Some(size),
        )?
        .for_store(self))
    }

    /// Finds the blob present, or makes the caller its one fetcher, or
    /// (without waiting) says that another caller is fetching it.
    pub fn try_claim(&self, digest: &Digest, size: u64) -> Claim {
        let mut state = self.state();
        if let Some(rx) = state.in_flight.get(digest) {
            return Claim::Wait(Waiter(rx.clone()));
        }
        if self.contains(digest, size) && state.verified.contains(digest) {
            let shared = !state.seen.insert(*digest);
            return Claim::Present { shared };
        }
        let (tx, rx) = watch::channel(());
        state.in_flight.insert(*digest, rx);
        Claim::Fetch(Lease {
            store: self.clone(),
            digest: *digest,
            size,
            _done: tx,
        })
    }

    /// Whether the blob `digest` is stored and still hashes to its digest
    /// (checked once per run); returns its size. A file that no longer
    /// matches is removed, so that it is fetched again.
    pub async fn verify_present(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.path(digest);
        let Ok(meta) = std::fs::metadata(&path) else {
            return Ok(None);
        };
        if !meta.is_file() {
            return Ok(None);
        }
        if self.state().verified.contains(digest) {
            return Ok(Some(meta.len()));
        }
        let p = path.clone();
        let hashed = tokio::task::spawn_blocking(move || airgap_bundle::digest::hash_file(&p))
            .await
            .context("hashing a cached blob")?;
        match hashed {
            Ok(h) if h.digest == *digest => {
                self.state().verified.insert(*digest);
                Ok(Some(h.size))
            }
            Ok(h) => {
                tracing::warn!(
                    "cached {} hashes to {}; fetching it again",
                    path.display(),
                    h.digest
                );
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok(None),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Like [`try_claim`](Self::try_claim), but waits out another caller's
    /// fetch: the answer is `Present` or `Fetch`, never `Wait`.
    pub async fn claim(&self, digest: &Digest, size: u64) -> Result<Claim> {
        loop {
            match self.try_claim(digest, size) {
                Claim::Wait(waiter) => waiter.wait().await,
                claim => return Ok(claim),
            }
        }
    }

    /// Stores a small blob held in memory (a manifest), verifying it against
    /// `digest`. Returns whether it was already stored for another caller of
    /// this process (see [`Claim::Present`]).
    pub async fn put_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<bool> {
        let size = bytes.len() as u64;
        match self.claim(digest, size).await? {
            Claim::Present { shared } => Ok(shared),
            Claim::Wait(_) => unreachable!("claim waits"),
            Claim::Fetch(lease) => {
                if lease.reuse().await? {
                    return Ok(false);
                }
                let mut writer = lease.begin()?;
                writer.write(bytes).await?;
                writer.commit().await?;
                drop(lease);
                Ok(false)
            }
        }
    }
}

impl Lease {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Starts the blob's writer.
    pub fn begin(&self) -> Result<BlobWriter> {
        self.store.begin(&self.digest, self.size)
    }

    /// Whether the blob is already stored (from an earlier run, or by
    /// another process) with its size and digest; the caller then uses it
    /// instead of fetching. A mismatching file is removed.
    pub async fn reuse(&self) -> Result<bool> {
        if !self.store.contains(&self.digest, self.size) {
            return Ok(false);
        }
        Ok(self.store.verify_present(&self.digest).await? == Some(self.size))
    }

    /// Starts or resumes the blob's download in its partial file, which
    /// stays when the writer is dropped uncommitted. The bytes already
    /// there are hashed first; [`BlobWriter::written`] says how many.
    pub async fn resume(&self) -> Result<BlobWriter> {
        BlobWriter::resume(
            &self.store.partial_path(&self.digest),
            &self.store.path(&self.digest),
            self.digest.blob_path(),
            self.digest,
            self.size,
        )
        .await
        .map(|w| w.for_store(&self.store))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let present = self.store.contains(&self.digest, self.size);
        let mut state = self.store.state();
        state.in_flight.remove(&self.digest);
        if present && state.verified.contains(&self.digest) {
            state.seen.insert(self.digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_bytes_verifies_and_reports_shared() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let m = br#"{"schemaVersion":2}"#;
        let d = Digest::of(m);
        assert!(!store.put_bytes(&d, m).await.unwrap());
        assert!(store.put_bytes(&d, m).await.unwrap());
        let err = store.put_bytes(&Digest::of(b"x"), m).await.unwrap_err();
        assert!(err.to_string().contains("hash mismatch"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn try_claim_reports_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of(b"abc");
        let Claim::Fetch(lease) = store.try_claim(&d, 3) else {
            panic!("nothing stored yet");
        };
        let Claim::Wait(waiter) = store.try_claim(&d, 3) else {
            panic!("in flight");
        };
        let mut w = lease.begin().unwrap();
        w.write(b"abc").await.unwrap();
        w.commit().await.unwrap();
        drop(lease);
        waiter.wait().await;
        assert!(matches!(
            store.try_claim(&d, 3),
            Claim::Present { shared: true }
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_claims_fetch_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data = vec![7u8; 100_000];
        let d = Digest::of(&data);
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (store, data, fetches) = (store.clone(), data.clone(), fetches.clone());
                tokio::spawn(async move {
                    match store.claim(&d, data.len() as u64).await.unwrap() {
                        Claim::Present { shared } => shared,
                        Claim::Wait(_) => unreachable!("claim waits"),
                        Claim::Fetch(lease) => {
                            fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let mut w = lease.begin().unwrap();
                            for chunk in data.chunks(1000) {
                                w.write(chunk).await.unwrap();
                                tokio::task::yield_now().await;
                            }
                            w.commit().await.unwrap();
                            false
                        }
                    }
                })
            })
            .collect();
        let mut shared = 0;
        for t in tasks {
            shared += usize::from(t.await.unwrap());
        }
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(shared, 7);
    }

    #[tokio::test]
    async fn failed_fetch_hands_the_lease_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of(b"data");
        let Claim::Fetch(first) = store.claim(&d, 4).await.unwrap() else {
            panic!("nothing stored yet");
        };
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { matches!(store.claim(&d, 4).await.unwrap(), Claim::Fetch(_)) }
        });
        tokio::task::yield_now().await;
        let mut w = first.begin().unwrap();
        w.write(b"bad!").await.unwrap();
        assert!(w.commit().await.is_err());
        drop(first);
        assert!(waiter.await.unwrap(), "the waiter becomes the fetcher");
    }

    #[tokio::test]
    async fn cached_blobs_are_rehashed_and_bad_ones_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"good");
        {
            let store = BlobStore::open(dir.path()).unwrap();
            assert!(!store.put_bytes(&d, b"good").await.unwrap());
        }
        // A later run: present, but hashed before it is reported.
        let store = BlobStore::open(dir.path()).unwrap();
        let Claim::Fetch(lease) = store.try_claim(&d, 4) else {
            panic!("a cached blob is checked first");
        };
        assert!(lease.reuse().await.unwrap());
        drop(lease);
        assert!(matches!(
            store.try_claim(&d, 4),
            Claim::Present { shared: true }
        ));

        // Changed on disk (same size): removed and fetched again.
        std::fs::write(store.path(&d), b"evil").unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let Claim::Fetch(lease) = store.try_claim(&d, 4) else {
            panic!("not verified yet");
        };
        assert!(!lease.reuse().await.unwrap());
        assert!(!store.path(&d).exists());
        assert_eq!(store.verify_present(&d).await.unwrap(), None);
    }

    #[tokio::test]
    async fn partial_downloads_are_kept_and_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data = b"0123456789";
        let d = Digest::of(data);
        let Claim::Fetch(lease) = store.try_claim(&d, 10) else {
            panic!("empty store");
        };
        let mut w = lease.resume().await.unwrap();
        w.write(&data[..4]).await.unwrap();
        drop(w);
        assert_eq!(std::fs::read(store.partial_path(&d)).unwrap(), &data[..4]);
        let mut w = lease.resume().await.unwrap();
        assert_eq!(w.written(), 4);
        w.write(&data[4..]).await.unwrap();
        w.commit().await.unwrap();
        drop(lease);
        assert!(!store.partial_path(&d).exists());
        assert!(matches!(
            store.try_claim(&d, 10),
            Claim::Present { shared: true }
        ));

        // A partial whose whole does not match is not kept.
        let bad = Digest::of(b"abcdefghij");
        let Claim::Fetch(lease) = store.try_claim(&bad, 10) else {
            panic!("not stored");
        };
        let mut w = lease.resume().await.unwrap();
        w.write(data).await.unwrap();
        assert!(w.commit().await.is_err());
        assert!(!store.partial_path(&bad).exists());
        // Another holder of the partial file's lock: a scratch file instead.
        let mut first = lease.resume().await.unwrap();
        first.write(b"ab").await.unwrap();
        let mut second = lease.resume().await.unwrap();
        assert_eq!(second.written(), 0);
        second.write(b"abcdefghij").await.unwrap();
        drop(first);
        assert_eq!(std::fs::read(store.partial_path(&bad)).unwrap(), b"ab");
        second.commit().await.unwrap();
        std::fs::remove_file(store.path(&bad)).unwrap();
        // A restart forgets what was there.
        let mut w = lease.resume().await.unwrap();
        assert_eq!(w.written(), 2);
        w.write(b"xy").await.unwrap();
        w.restart().await.unwrap();
        w.write(b"abcdefghij").await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(std::fs::read(store.path(&bad)).unwrap(), b"abcdefghij");
    }
}
