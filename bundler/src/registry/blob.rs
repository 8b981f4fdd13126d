//! One blob into the store, verified: claimed so that images sharing it
//! fetch it once, reused when the cache has it (hashed again first), else
//! streamed through a [`BlobWriter`] that checks size and digest before it
//! publishes. A download that breaks off is kept in the store's partial
//! file and resumed with a Range request; broken connections, stalls longer
//! than the read timeout, 5xx and 429 are tried again with backoff.
//!
//! Trusts no length or digest the registry states: only the descriptor the
//! parent manifest gave.

use super::classify::{is_read_timeout, retryable};
use super::{Job, ATTEMPTS};
use crate::store::{BlobWriter, Claim};
use airgap_bundle::digest::DigestMismatch;
use airgap_bundle::error;
use airgap_bundle::oci::Descriptor;
use anyhow::{anyhow, Context as _, Result};
use futures_util::StreamExt as _;
use oci_client::client::{BlobResponse, SizedStream};
use oci_client::errors::{DigestError, OciDistributionError};

/// Why one try of a download failed.
pub(super) enum Failed {
    /// A broken connection, 5xx or 429: worth another try.
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

impl Job<'_> {
    /// Streams one blob into the store unless it is there (or another image
    /// is fetching it, in which case this waits for that).
    pub(super) async fn fetch_blob(&self, desc: &Descriptor) -> Result<()> {
        self.fetch_blob_inner(desc)
            .await
            .with_context(|| format!("blob {}", desc.digest.short()))
    }

    async fn fetch_blob_inner(&self, desc: &Descriptor) -> Result<()> {
        let p = self.progress;
        let mut waited = false;
        let lease = loop {
            match self.store.try_claim(&desc.digest, desc.size) {
                Claim::Present { shared } if !waited => {
                    self.report_present(desc, shared);
                    return Ok(());
                }
                Claim::Present { .. } => {
                    p.blob_done(self.image, &desc.digest, desc.size, true);
                    return Ok(());
                }
                Claim::Wait(waiter) => {
                    // Shown as shared while another image fetches it.
                    if !waited {
                        p.blob_started(self.image, &desc.digest, desc.size, true);
                        waited = true;
                    }
                    waiter.wait().await;
                }
                Claim::Fetch(lease) => break lease,
            }
        };
        if lease.reuse().await? {
            // In the cache from an earlier run, and still matching.
            drop(lease);
            self.report_present(desc, false);
            return Ok(());
        }
        let _permit = self.puller.permits.acquire().await?;
        // After a failed fetch by another image this one takes over, and
        // its image bar counts the blob twice; the run is failing anyway.
        p.blob_started(self.image, &desc.digest, desc.size, false);
        let mut writer = lease.resume().await?;
        p.blob_advanced(self.image, writer.written());
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.download(desc, &mut writer).await {
                Ok(()) => break,
                Err(Failed::Retry(e)) if attempt < ATTEMPTS => self.backoff(attempt, &e).await,
                Err(Failed::Retry(e)) => return Err(self.give_up(attempt, e)),
                Err(Failed::Fatal(e)) => return Err(e),
            }
        }
        writer.commit().await?;
        drop(lease);
        p.blob_done(self.image, &desc.digest, desc.size, false);
        Ok(())
    }

    /// One request for the rest of a blob: from where `writer` stands, with
    /// a Range request when it already holds some.
    async fn download(&self, desc: &Descriptor, writer: &mut BlobWriter) -> Result<(), Failed> {
        let p = self.progress;
        let digest = desc.digest.to_string();
        let offset = writer.written();
        let client = &self.puller.client;
        let fail = |e: OciDistributionError| {
            if retryable(&e) {
                Failed::Retry(self.describe(e))
            } else {
                Failed::Fatal(self.describe(e))
            }
        };
        let mut stream: SizedStream = if offset == 0 || offset >= desc.size {
            if offset > 0 {
                writer.restart().await.map_err(Failed::Fatal)?;
            }
            client
                .pull_blob_stream(&self.source, digest.as_str())
                .await
                .map_err(fail)?
        } else {
            match client
                .pull_blob_stream_partial(&self.source, digest.as_str(), offset, None)
                .await
                .map_err(fail)?
            {
                BlobResponse::Partial(stream) => stream,
                BlobResponse::Full(stream) => {
                    // The registry ignored the range: start over.
                    writer.restart().await.map_err(Failed::Fatal)?;
                    stream
                }
            }
        };
        let expected = desc.size - writer.written();
        if let Some(length) = stream.content_length.filter(|&l| l != expected) {
            return Err(Failed::Fatal(
                DigestMismatch::Size {
                    what: desc.digest.blob_path(),
                    expected: desc.size,
                    found: length + writer.written(),
                }
                .into(),
            ));
        }
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    writer.write(&bytes).await.map_err(Failed::Fatal)?;
                    p.blob_advanced(self.image, bytes.len() as u64);
                }
                // oci-client's own check at the end of a whole stream: the
                // writer has seen every byte and gives the typed error.
                Err(e) if e.get_ref().is_some_and(|inner| inner.is::<DigestError>()) => break,
                Err(e) if is_read_timeout(&e) => {
                    return Err(Failed::Retry(anyhow!(
                        "{} sent nothing for {:?} (the read timeout, --registry-timeout) \
                         after {} of {} bytes",
                        self.host,
                        self.puller.read_timeout,
                        writer.written(),
                        desc.size,
                    )))
                }
                Err(e) => {
                    return Err(Failed::Retry(anyhow!(
                        "reading from {} after {} of {} bytes: {}",
                        self.host,
                        writer.written(),
                        desc.size,
                        error::chain(&e)
                    )))
                }
            }
        }
        Ok(())
    }
}
