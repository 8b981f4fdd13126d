//! The bundle reader's side of the import: an [`EntrySink`] that streams
//! each `images/blobs/sha256/<hex>` entry into containerd as it goes by, and
//! commits it only when the reader says the entry matched `SHA256SUMS`.
//!
//! The reader is synchronous and runs on a blocking thread; the sink drives
//! the async client with [`Handle::block_on`], one chunk at a time, so a layer
//! is never held whole in memory (manifests and indexes, at most
//! [`MAX_MANIFEST_BYTES`], are: their labels are computed from them). Only
//! after the whole bundle has been read and verified does [`ImportSink::finish`]
//! unpack and name the images whose blobs all arrived.
//!
//! When containerd restarts midway, the blob writes carry on where its
//! ingest stopped and other calls are made again once it answers (see
//! [`Importer::retry_lost`]); when it does not come back, the error names
//! the socket, the blob and the image it belongs to.

use super::{content::CHUNK, BlobWriter, Committed, ImageOutcome, ImportOptions, Importer};
use super::{gc_labels, UnpackOutcome};
use airgap_bundle::digest::{Digest, Hashed};
use airgap_bundle::meta::ImageMeta;
use airgap_bundle::oci::{Descriptor, MAX_MANIFEST_BYTES};
use airgap_bundle::read::{read_bundle, EntrySink, Header, Trust};
use airgap_bundle::reference::ImageRef;
use anyhow::{anyhow, bail, Context as _, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use tokio::runtime::Handle;

/// Where the image layout's blobs are in a bundle.
pub const BLOB_PREFIX: &str = "images/blobs/sha256/";

/// One image named in containerd.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageReport {
    /// The record names (normally one: the full reference).
    pub names: Vec<String>,
    pub digest: Digest,
    /// What happened to the record(s); `unchanged` only when all were.
    pub outcome: ImageOutcome,
    pub unpacked: UnpackOutcome,
}

/// An image of the bundle not named, because nothing of it runs here.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SkippedImage {
    pub reference: String,
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportReport {
    pub images: Vec<ImageReport>,
    pub skipped: Vec<SkippedImage>,
    /// Blobs written to the content store, and their bytes.
    pub blobs_written: usize,
    pub bytes_written: u64,
    /// Blobs containerd already had.
    pub blobs_present: usize,
}

struct Pending {
    path: String,
    digest: Digest,
    labels: HashMap<String, String>,
    /// `None` when containerd already has the blob.
    writer: Option<BlobWriter>,
}

/// Imports a bundle's images while [`read_bundle`] streams it.
pub struct ImportSink {
    importer: Option<Importer>,
    handle: Handle,
    images: Vec<ImageMeta>,
    /// Manifests and indexes, with the media type `bundle.json` gives.
    documents: HashMap<Digest, Option<String>>,
    pending: Option<Pending>,
    /// Blobs committed (or present) whose entry the reader verified.
    done: HashSet<Digest>,
    /// The image each blob belongs to (the first, when shared), for errors.
    owners: HashMap<Digest, String>,
    report: ImportReport,
}

/// The containerd names of an image: its full reference; with a digest pin,
/// `name@digest` (how the CRI plugin looks such images up), and
/// `name:tag` too when the pin came with a tag.
pub fn image_names(reference: &ImageRef) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(tag) = &reference.tag {
        names.push(format!("{}:{tag}", reference.name()));
    }
    if let Some(digest) = &reference.digest {
        names.push(format!("{}@{digest}", reference.name()));
    }
    if names.is_empty() {
        names.push(reference.to_string());
    }
    names
}

fn ended() -> anyhow::Error {
    anyhow!("internal error: the import has already ended")
}

/// The digest a blob entry is named by, or `None` for other entries.
pub fn blob_digest(path: &str) -> Option<Result<Digest>> {
    let hex = path.strip_prefix(BLOB_PREFIX)?;
    Some(
        Digest::from_hex(hex)
            .map_err(|_| anyhow!("entry {path}: a blob must be named by its sha256 digest")),
    )
}

impl ImportSink {
    /// `importer` must be connected; the lease is made when the bundle's
    /// header has been verified. `handle` is the runtime the importer runs
    /// on; the sink must be used from a thread outside it (a blocking one).
    pub fn new(importer: Importer, handle: Handle) -> ImportSink {
        ImportSink {
            importer: Some(importer),
            handle,
            images: Vec::new(),
            documents: HashMap::new(),
            pending: None,
            done: HashSet::new(),
            owners: HashMap::new(),
            report: ImportReport::default(),
        }
    }

    /// `writing blob sha256:… (of image …)`, for errors.
    fn doing(&self, what: &str, digest: &Digest) -> String {
        match self.owners.get(digest) {
            Some(image) => format!("{what} blob {digest} (of image {image})"),
            None => format!("{what} blob {digest}"),
        }
    }

    /// Unpacks and names every image whose host-platform blobs were all
    /// imported, then deletes the lease. Call after `read_bundle` succeeded.
    pub async fn finish(mut self) -> Result<ImportReport> {
        let importer = self.importer.take().ok_or_else(ended)?;
        if let Some(pending) = self.pending.take() {
            if let Some(writer) = pending.writer {
                writer.abort().await;
            }
            importer.abort().await?;
            bail!("internal error: entry {} was never verified", pending.path);
        }
        let mut failures = Vec::new();
        let images = std::mem::take(&mut self.images);
        for image in &images {
            let platform = &importer.options().platform;
            if !image
                .platforms
                .iter()
                .any(|p| platform.matches(&p.platform))
            {
                self.report.skipped.push(SkippedImage {
                    reference: image.reference.to_string(),
                    reason: format!("no {platform} manifest in the bundle"),
                });
                continue;
            }
            // Unpacking and naming can be done again (a failed extraction
            // snapshot is dropped, committed ones are kept).
            let finished = importer
                .retry_lost(|| self.finish_image(&importer, image))
                .await;
            match finished {
                Ok(report) => self.report.images.push(report),
                Err(e) => failures.push(importer.lost(e, || {
                    format!("unpacking and naming image {}", image.reference)
                })),
            }
        }
        let socket = importer.options().socket.clone();
        let ended = importer.commit().await.map_err(|e| {
            if super::is_connection_lost(&e) {
                e.context(super::ContainerdLost {
                    socket,
                    doing: "ending the import's lease".to_string(),
                })
            } else {
                e
            }
        });
        if !failures.is_empty() {
            let count = failures.len();
            let first = failures.remove(0);
            return Err(first.context(format!(
                "{count} of {} images could not be imported",
                images.len()
            )));
        }
        ended?;
        Ok(std::mem::take(&mut self.report))
    }

    async fn finish_image(&self, importer: &Importer, image: &ImageMeta) -> Result<ImageReport> {
        let reference = image.reference.to_string();
        let platform = &importer.options().platform;
        let Some(meta) = image
            .platforms
            .iter()
            .find(|p| platform.matches(&p.platform))
        else {
            bail!("image {reference} has no {platform} manifest");
        };
        let needed: Vec<Digest> = std::iter::once(image.digest)
            .chain(meta.blobs.iter().copied())
            .collect();
        for digest in &needed {
            if !self.done.contains(digest) {
                bail!("image {reference}: blob {digest} was not imported");
            }
            // The lease could have expired in a very long import.
            if !importer.has_blob(digest).await? {
                bail!(
                    "image {reference}: blob {digest} is no longer in containerd's content store"
                );
            }
        }
        let unpacked = importer.unpack(image).await?;
        let target = Descriptor {
            media_type: image.media_type.clone(),
            digest: image.digest,
            size: image.size,
            platform: None,
            annotations: BTreeMap::new(),
        };
        let sandbox = image.sources.iter().any(|s| s == "sandbox");
        let names = image_names(&image.reference);
        let mut outcome = ImageOutcome::Unchanged;
        for name in &names {
            let done = importer
                .create_image(name, &target, sandbox)
                .await
                .with_context(|| format!("image {reference}"))?;
            if done != ImageOutcome::Unchanged {
                outcome = done;
            }
        }
        tracing::info!(image = %reference, ?outcome, applied = unpacked.applied, "image imported");
        Ok(ImageReport {
            names,
            digest: image.digest,
            outcome,
            unpacked,
        })
    }

    /// Drops what was written and is not otherwise referenced: the ingest in
    /// progress, then the lease (containerd collects before returning).
    pub async fn abort(mut self) -> Result<()> {
        if let Some(writer) = self.pending.take().and_then(|p| p.writer) {
            writer.abort().await;
        }
        match self.importer.take() {
            Some(importer) => importer.abort().await,
            None => Ok(()),
        }
    }

    fn write_entry(
        &mut self,
        path: &str,
        digest: Digest,
        size: u64,
        body: &mut dyn Read,
    ) -> Result<()> {
        let mut labels = HashMap::new();
        let mut document = None;
        if let Some(media_type) = self.documents.get(&digest) {
            if size > MAX_MANIFEST_BYTES {
                bail!(
                    "manifest {digest} is {size} bytes, more than the {MAX_MANIFEST_BYTES} allowed"
                );
            }
            let mut bytes = Vec::with_capacity(size as usize);
            body.take(size)
                .read_to_end(&mut bytes)
                .with_context(|| format!("reading {path}"))?;
            labels = gc_labels(media_type.as_deref(), &bytes)
                .with_context(|| format!("manifest {digest}"))?;
            document = Some(bytes);
        }
        let importer = self.importer.as_ref().ok_or_else(ended)?;
        let handle = &self.handle;
        let writer = handle
            .block_on(importer.retry_lost(|| async {
                if importer.has_blob(&digest).await? {
                    Ok(None)
                } else {
                    importer.open_blob(&digest, size).await
                }
            }))
            .map_err(|e| importer.lost(e, || self.doing("opening a write of", &digest)))?;
        let Some(mut writer) = writer else {
            self.pending = Some(Pending {
                path: path.to_string(),
                digest,
                labels,
                writer: None,
            });
            return Ok(());
        };
        let streamed = match &document {
            Some(bytes) => bytes
                .chunks(CHUNK)
                .try_for_each(|chunk| handle.block_on(writer.write(chunk.to_vec()))),
            None => stream_chunks(body, |chunk| handle.block_on(writer.write(chunk))),
        };
        if let Err(e) = streamed {
            handle.block_on(writer.abort());
            let e = importer.lost(e, || self.doing("writing", &digest));
            return Err(e.context(self.doing("importing", &digest)));
        }
        self.pending = Some(Pending {
            path: path.to_string(),
            digest,
            labels,
            writer: Some(writer),
        });
        Ok(())
    }
}

/// Reads `body` in [`CHUNK`]-sized pieces, handing each to `write`.
fn stream_chunks(body: &mut dyn Read, mut write: impl FnMut(Vec<u8>) -> Result<()>) -> Result<()> {
    loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        let n = body.take(CHUNK as u64).read_to_end(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        write(chunk)?;
    }
}

impl EntrySink for ImportSink {
    fn begin(&mut self, header: &Header) -> Result<()> {
        self.images = header.meta.images.clone();
        for image in &self.images {
            self.documents
                .insert(image.digest, Some(image.media_type.clone()));
            for platform in &image.platforms {
                self.documents.entry(platform.digest).or_insert(None);
            }
        }
        for image in &self.images {
            let name = image.reference.to_string();
            let blobs = image
                .platforms
                .iter()
                .flat_map(|p| std::iter::once(p.digest).chain(p.blobs.iter().copied()));
            for digest in std::iter::once(image.digest).chain(blobs) {
                self.owners.entry(digest).or_insert_with(|| name.clone());
            }
        }
        let importer = self.importer.as_mut().ok_or_else(ended)?;
        let begun = self.handle.block_on(importer.begin());
        begun.map_err(|e| importer.lost(e, || "creating the import's lease".to_string()))
    }

    fn entry(&mut self, path: &str, size: u64, body: &mut dyn Read) -> Result<()> {
        let Some(digest) = blob_digest(path) else {
            return Ok(());
        };
        let digest = digest?;
        if let Some(stale) = self.pending.take() {
            // The reader verifies each entry before the next: never reached.
            if let Some(writer) = stale.writer {
                self.handle.block_on(writer.abort());
            }
            bail!("internal error: entry {} was never verified", stale.path);
        }
        self.write_entry(path, digest, size, body)
    }

    fn verified(&mut self, path: &str, hashed: Hashed) -> Result<()> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        if pending.path != path {
            bail!(
                "internal error: verified {path} while {} was pending",
                pending.path
            );
        }
        let digest = pending.digest;
        if hashed.digest != digest {
            if let Some(writer) = pending.writer {
                self.handle.block_on(writer.abort());
            }
            bail!(
                "entry {path} hashes to {}, not to the digest it is named by",
                hashed.digest
            );
        }
        let importer = self.importer.as_ref().ok_or_else(ended)?;
        let committed = match pending.writer {
            Some(writer) => self
                .handle
                .block_on(writer.commit(pending.labels.clone()))
                .map_err(|e| {
                    let e = importer.lost(e, || self.doing("committing", &digest));
                    e.context(self.doing("importing", &digest))
                })?,
            None => Committed::Present,
        };
        match committed {
            Committed::Written => {
                self.report.blobs_written += 1;
                self.report.bytes_written += hashed.size;
            }
            Committed::Present => {
                self.handle
                    .block_on(
                        importer
                            .retry_lost(|| importer.keep_present_blob(&digest, &pending.labels)),
                    )
                    .map_err(|e| importer.lost(e, || self.doing("keeping", &digest)))?;
                self.report.blobs_present += 1;
            }
        }
        self.done.insert(digest);
        Ok(())
    }
}

impl Drop for ImportSink {
    /// Dropped unfinished (an error on the way): end the lease in the
    /// background; its expiry covers the rest.
    fn drop(&mut self) {
        if let Some(importer) = self.importer.take() {
            let _guard = self.handle.enter();
            drop(self.pending.take());
            drop(importer);
        }
    }
}

/// Reads a whole bundle from `input` and imports its images: connect, stream
/// every blob in under a lease, then unpack and name the images. On any
/// error what was written is dropped again.
pub async fn import_bundle(
    input: impl Read + Send + 'static,
    trust: Trust,
    opts: ImportOptions,
) -> Result<ImportReport> {
    let importer = Importer::connect(opts).await?;
    let mut sink = ImportSink::new(importer, Handle::current());
    let (sink, read) = tokio::task::spawn_blocking(move || {
        let read = read_bundle(input, &trust, &mut sink);
        (sink, read)
    })
    .await
    .context("the bundle reader panicked")?;
    match read {
        Ok(_) => sink.finish().await,
        Err(e) => {
            if let Err(abort) = sink.abort().await {
                tracing::warn!("dropping the failed import's content: {abort:#}");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_images() {
        let r: ImageRef = "docker.io/rancher/pause:3.1".parse().unwrap();
        assert_eq!(image_names(&r), ["docker.io/rancher/pause:3.1"]);
        let d = Digest::of(b"x");
        let pinned = r.with_digest(d);
        assert_eq!(
            image_names(&pinned),
            [
                "docker.io/rancher/pause:3.1".to_string(),
                format!("docker.io/rancher/pause@{d}")
            ]
        );
        let only = format!("docker.io/rancher/pause@{d}")
            .parse::<ImageRef>()
            .unwrap();
        assert_eq!(image_names(&only), [format!("docker.io/rancher/pause@{d}")]);
    }

    #[test]
    fn recognises_blob_entries() {
        let d = Digest::of(b"x");
        let path = format!("images/{}", d.blob_path());
        assert_eq!(blob_digest(&path).unwrap().unwrap(), d);
        assert!(blob_digest("images/index.json").is_none());
        assert!(blob_digest("images/blobs/sha256/xyz").unwrap().is_err());
    }
}
