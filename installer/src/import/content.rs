//! Blobs in and out of containerd's content store.
//!
//! A write names the blob's digest and size up front; containerd hashes what
//! it receives and refuses the commit when either differs, so a wrong byte
//! never becomes content. Each message is answered before the next is sent
//! (containerd replies to every one), which keeps at most one chunk in
//! flight. A write whose connection broke (containerd restarted) is opened
//! again once containerd answers: containerd kept the ingest, says how much
//! of it it has, and the write goes on from there (the chunk in flight is
//! held until answered, so nothing needs reading twice). Manifests and
//! indexes get the garbage-collection reference labels
//! containerd's own pull sets, so the image record keeps everything below it.

use super::{grpc, is_lost_status, wait_for_containerd, ContainerdLost, Importer, RECONNECTS};
use airgap_bundle::digest::Digest;
use airgap_bundle::oci::{is_index, AnyManifest, Descriptor};
use anyhow::{anyhow, bail, Context as _, Result};
use containerd_client::services::v1::{
    content_client::ContentClient, AbortRequest, AddResourceRequest, Info, InfoRequest,
    ReadContentRequest, Resource, UpdateRequest, WriteAction, WriteContentRequest,
    WriteContentResponse,
};
use containerd_client::tonic::codec::Streaming;
use containerd_client::tonic::metadata::MetadataMap;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::mpsc;

/// Bytes per write message.
pub const CHUNK: usize = 1 << 20;

const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";

/// How a blob ended up in the content store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// This import wrote it.
    Written,
    /// It was there already (or another writer committed it first).
    Present,
}

/// The garbage-collection labels of a manifest or index, computed from its
/// bytes: `containerd.io/gc.ref.content.m.<i>` for an index's manifests,
/// `.config` and `.l.<i>` for an image manifest's config and layers.
pub fn gc_labels(media_type: Option<&str>, bytes: &[u8]) -> Result<HashMap<String, String>> {
    let parsed = AnyManifest::parse("manifest", media_type, bytes)?;
    let mut labels = HashMap::new();
    match parsed {
        AnyManifest::Index(index) => {
            let (mut manifests, mut others) = (0, 0);
            for child in &index.manifests {
                // Nested indexes get containerd's generic prefix, as its
                // pull labels them.
                let key = if is_index(&child.media_type) {
                    others += 1;
                    format!("{GC_REF_CONTENT}.{}", others - 1)
                } else {
                    manifests += 1;
                    format!("{GC_REF_CONTENT}.m.{}", manifests - 1)
                };
                labels.insert(key, child.digest.to_string());
            }
        }
        AnyManifest::Image(manifest) => {
            labels.insert(
                format!("{GC_REF_CONTENT}.config"),
                manifest.config.digest.to_string(),
            );
            for (i, layer) in manifest.layers.iter().enumerate() {
                labels.insert(format!("{GC_REF_CONTENT}.l.{i}"), layer.digest.to_string());
            }
        }
    }
    Ok(labels)
}

/// An open write of one blob. Nothing is content until [`BlobWriter::commit`].
pub struct BlobWriter {
    digest: Digest,
    size: u64,
    reference: String,
    offset: u64,
    tx: Option<mpsc::Sender<WriteContentRequest>>,
    rx: Streaming<WriteContentResponse>,
    content: ContentClient<Channel>,
    metadata: MetadataMap,
    /// To wait for containerd after a restart: its channel, socket and the
    /// import's patience.
    channel: Channel,
    socket: PathBuf,
    patience: Duration,
}

/// An open write stream: where to send, what comes back, and the offset
/// containerd holds for the ingest.
type Opened = (
    mpsc::Sender<WriteContentRequest>,
    Streaming<WriteContentResponse>,
    u64,
);

/// Opens a write of `digest` under `reference` (resuming the ingest when
/// containerd has one); `None` when containerd already has the blob.
async fn open_write(
    content: &mut ContentClient<Channel>,
    metadata: &MetadataMap,
    reference: &str,
    digest: &Digest,
    size: u64,
) -> std::result::Result<Option<Opened>, Status> {
    let (tx, mut rx) = mpsc::channel(1);
    // containerd answers (and sends headers) only once it has the first
    // message, so it must be queued before the call.
    tx.send(WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: reference.to_string(),
        total: size as i64,
        expected: digest.to_string(),
        ..Default::default()
    })
    .await
    .map_err(|_| Status::internal("internal error: write channel closed"))?;
    let requests = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut req = Request::new(requests);
    *req.metadata_mut() = metadata.clone();
    let mut responses = match content.write(req).await {
        Ok(resp) => resp.into_inner(),
        Err(s) if s.code() == Code::AlreadyExists => return Ok(None),
        Err(s) => return Err(s),
    };
    match responses.message().await {
        Ok(Some(stat)) => Ok(Some((tx, responses, stat.offset.max(0) as u64))),
        Ok(None) => Err(Status::aborted("containerd ended the write")),
        Err(s) if s.code() == Code::AlreadyExists => Ok(None),
        Err(s) => Err(s),
    }
}

impl BlobWriter {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    async fn exchange(
        &mut self,
        req: WriteContentRequest,
    ) -> std::result::Result<WriteContentResponse, Status> {
        let sent = match &self.tx {
            Some(tx) => tx.send(req).await.is_ok(),
            None => false,
        };
        // When the send failed the stream is over: its status says why.
        match self.rx.message().await {
            Ok(Some(resp)) if sent => Ok(resp),
            Ok(_) => Err(Status::aborted("containerd ended the write")),
            Err(status) => Err(status),
        }
    }

    /// Appends `data`. When the connection breaks, waits for containerd to
    /// come back and goes on from what its ingest holds.
    pub async fn write(&mut self, data: Vec<u8>) -> Result<()> {
        let len = data.len() as u64;
        if self.offset + len > self.size {
            bail!(
                "blob {} is longer than the {} bytes expected",
                self.digest,
                self.size
            );
        }
        // Bytes of `data` containerd has.
        let mut from = 0u64;
        let mut tries = 0;
        while from < len {
            let result = self
                .exchange(WriteContentRequest {
                    action: WriteAction::Write as i32,
                    offset: (self.offset + from) as i64,
                    data: data[from as usize..].to_vec(),
                    ..Default::default()
                })
                .await;
            match result {
                Ok(resp) => {
                    if resp.offset as u64 != self.offset + len {
                        bail!(
                            "writing blob {}: containerd is at offset {}, expected {}",
                            self.digest,
                            resp.offset,
                            self.offset + len
                        );
                    }
                    break;
                }
                Err(status) if tries < RECONNECTS && is_lost_status(&status) => {
                    tries += 1;
                    let Some(at) = self.reopen(status).await? else {
                        return Err(self.lost(format!(
                            "writing blob {}: containerd came back with the blob already \
                             committed",
                            self.digest
                        )));
                    };
                    if at < self.offset || at > self.offset + len {
                        return Err(self.lost(format!(
                            "writing blob {}: containerd came back holding {at} bytes of it, \
                             not {}..={}",
                            self.digest,
                            self.offset,
                            self.offset + len
                        )));
                    }
                    from = at - self.offset;
                }
                Err(status) => {
                    return Err(grpc(status))
                        .with_context(|| format!("writing blob {} to containerd", self.digest))
                }
            }
        }
        self.offset += len;
        Ok(())
    }

    /// After the connection broke: waits for containerd and opens the write
    /// again; returns the offset its ingest holds, or `None` when containerd
    /// has the blob committed.
    async fn reopen(&mut self, status: Status) -> Result<Option<u64>> {
        tracing::warn!(
            blob = %self.digest,
            offset = self.offset,
            "lost containerd at {} ({}); waiting for it to answer again",
            self.socket.display(),
            grpc(status.clone())
        );
        if let Err(gone) = wait_for_containerd(&self.channel, &self.socket, self.patience).await {
            return Err(grpc(status).context(gone).context(self.lost_while()));
        }
        let opened = open_write(
            &mut self.content,
            &self.metadata,
            &self.reference,
            &self.digest,
            self.size,
        )
        .await
        .map_err(grpc)
        .with_context(|| format!("opening the write of blob {} again", self.digest))
        .map_err(|e| e.context(self.lost_while()))?;
        let Some((tx, rx, at)) = opened else {
            self.tx = None;
            return Ok(None);
        };
        self.tx = Some(tx);
        self.rx = rx;
        tracing::info!(blob = %self.digest, at, "write of the blob opened again");
        Ok(Some(at))
    }

    fn lost_while(&self) -> ContainerdLost {
        ContainerdLost {
            socket: self.socket.clone(),
            doing: format!(
                "writing blob {} ({} of {} bytes written)",
                self.digest, self.offset, self.size
            ),
        }
    }

    fn lost(&self, why: String) -> anyhow::Error {
        anyhow!(why).context(self.lost_while())
    }

    /// Has containerd check size and digest and store the blob with
    /// `labels`. On refusal the ingest is aborted and the error names the
    /// blob.
    pub async fn commit(mut self, labels: HashMap<String, String>) -> Result<Committed> {
        let mut tries = 0;
        let result = loop {
            let result = self
                .exchange(WriteContentRequest {
                    action: WriteAction::Commit as i32,
                    offset: self.offset as i64,
                    total: self.size as i64,
                    expected: self.digest.to_string(),
                    labels: labels.clone(),
                    ..Default::default()
                })
                .await;
            match result {
                Err(status) if tries < RECONNECTS && is_lost_status(&status) => {
                    tries += 1;
                    // Committed before the connection broke, or not: opening
                    // the write again says which.
                    match self.reopen(status).await? {
                        Some(at) if at == self.offset => continue,
                        Some(at) => {
                            return Err(self.lost(format!(
                                "committing blob {}: containerd came back holding {at} of \
                                 its {} bytes",
                                self.digest, self.offset
                            )))
                        }
                        // Committed just before the connection broke.
                        None => return Ok(Committed::Present),
                    }
                }
                other => break other,
            }
        };
        match result {
            Ok(resp) => {
                if resp.digest != self.digest.to_string() {
                    let err = anyhow!(
                        "containerd committed blob {} as {}",
                        self.digest,
                        resp.digest
                    );
                    self.abort().await;
                    return Err(err);
                }
                self.close().await;
                Ok(Committed::Written)
            }
            Err(status) => {
                let digest = self.digest;
                self.abort().await;
                if status.code() == Code::AlreadyExists {
                    return Ok(Committed::Present);
                }
                Err(grpc(status).context(format!("containerd refused blob {digest}")))
            }
        }
    }

    /// Ends the stream cleanly (containerd sends a last message on EOF).
    async fn close(&mut self) {
        self.tx = None;
        while let Ok(Some(_)) = self.rx.message().await {}
    }

    /// Drops what was written so far.
    pub async fn abort(mut self) {
        self.close().await;
        let mut req = Request::new(AbortRequest {
            r#ref: self.reference.clone(),
        });
        *req.metadata_mut() = self.metadata.clone();
        match self.content.abort(req).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => tracing::warn!(blob = %self.digest, "aborting the write: {}", grpc(s)),
        }
    }
}

impl Importer {
    fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel())
    }

    /// The blob's labels, or `None` when it is not in the content store.
    pub(crate) async fn blob_labels(
        &self,
        digest: &Digest,
    ) -> Result<Option<HashMap<String, String>>> {
        match self
            .content()
            .info(self.request(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(resp) => Ok(Some(
                resp.into_inner().info.map(|i| i.labels).unwrap_or_default(),
            )),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(grpc(s)).with_context(|| format!("looking up blob {digest}")),
        }
    }

    /// Opens a write of `digest`; `None` when containerd already has it.
    /// An ingest left by an earlier run (an import that died) is started
    /// over: the first write, at offset 0, truncates it.
    pub async fn open_blob(&self, digest: &Digest, size: u64) -> Result<Option<BlobWriter>> {
        self.require_lease()?;
        let reference = format!("airgap-import-{digest}");
        let mut content = self.content();
        let metadata = self.request(()).metadata().clone();
        let context = || format!("opening a write of blob {digest} in containerd");
        let Some((tx, rx, _)) = open_write(&mut content, &metadata, &reference, digest, size)
            .await
            .map_err(grpc)
            .with_context(context)?
        else {
            return Ok(None);
        };
        Ok(Some(BlobWriter {
            digest: *digest,
            size,
            reference,
            offset: 0,
            tx: Some(tx),
            rx,
            content,
            metadata,
            channel: self.channel(),
            socket: self.options().socket.clone(),
            patience: self.options().reconnect,
        }))
    }

    /// Streams one blob into the content store and commits it with `labels`
    /// (see [`gc_labels`]). A blob already there is left as it is, but gets
    /// the labels it lacks and is held by the lease until the import ends.
    pub async fn write_blob(
        &self,
        desc: &Descriptor,
        labels: HashMap<String, String>,
        mut body: impl AsyncRead + Unpin,
    ) -> Result<Committed> {
        let digest = desc.digest;
        if self.has_blob(&digest).await? {
            self.keep_present_blob(&digest, &labels).await?;
            return Ok(Committed::Present);
        }
        let Some(mut writer) = self.open_blob(&digest, desc.size).await? else {
            self.keep_present_blob(&digest, &labels).await?;
            return Ok(Committed::Present);
        };
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            let read = (&mut body)
                .take(CHUNK as u64)
                .read_to_end(&mut chunk)
                .await
                .with_context(|| format!("reading blob {digest}"));
            match read {
                Ok(0) => break,
                Ok(_) => {
                    if let Err(e) = writer.write(chunk).await {
                        writer.abort().await;
                        return Err(e);
                    }
                }
                Err(e) => {
                    writer.abort().await;
                    return Err(e);
                }
            }
        }
        let committed = writer.commit(labels.clone()).await?;
        if committed == Committed::Present {
            self.keep_present_blob(&digest, &labels).await?;
        }
        Ok(committed)
    }

    /// A blob that was already in the store: add the labels it lacks and hold
    /// it with the lease (nothing may collect it before the image names it).
    pub async fn keep_present_blob(
        &self,
        digest: &Digest,
        labels: &HashMap<String, String>,
    ) -> Result<()> {
        self.ensure_labels(digest, labels).await?;
        self.lease_resource("content", &digest.to_string()).await
    }

    /// Adds `labels` to a blob where they differ; `true` when it changed.
    pub async fn ensure_labels(
        &self,
        digest: &Digest,
        labels: &HashMap<String, String>,
    ) -> Result<bool> {
        if labels.is_empty() {
            return Ok(false);
        }
        let existing = self
            .blob_labels(digest)
            .await?
            .ok_or_else(|| anyhow!("blob {digest} is not in containerd's content store"))?;
        let missing: HashMap<String, String> = labels
            .iter()
            .filter(|(k, v)| existing.get(*k) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if missing.is_empty() {
            return Ok(false);
        }
        let mut paths: Vec<String> = missing.keys().map(|k| format!("labels.{k}")).collect();
        paths.sort();
        self.content()
            .update(self.request(UpdateRequest {
                info: Some(Info {
                    digest: digest.to_string(),
                    labels: missing,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(grpc)
            .with_context(|| format!("labelling blob {digest}"))?;
        Ok(true)
    }

    /// Holds a resource (`content` or `snapshots/<snapshotter>`) with the lease.
    pub(crate) async fn lease_resource(&self, kind: &str, id: &str) -> Result<()> {
        let lease = self.require_lease()?.to_string();
        containerd_client::services::v1::leases_client::LeasesClient::new(self.channel())
            .add_resource(self.request(AddResourceRequest {
                id: lease,
                resource: Some(Resource {
                    id: id.to_string(),
                    r#type: kind.to_string(),
                }),
            }))
            .await
            .map_err(grpc)
            .with_context(|| format!("adding {kind} {id} to the import's lease"))?;
        Ok(())
    }

    /// Reads a whole (small) blob back, refusing one larger than `limit`.
    pub async fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let mut content = self.content();
        let info = content
            .info(self.request(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
            .map_err(grpc)
            .with_context(|| format!("looking up blob {digest}"))?
            .into_inner()
            .info
            .unwrap_or_default();
        if info.size < 0 || info.size as u64 > limit {
            bail!(
                "blob {digest} is {} bytes, more than the {limit} expected",
                info.size
            );
        }
        let mut stream = content
            .read(self.request(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(grpc)
            .with_context(|| format!("reading blob {digest}"))?
            .into_inner();
        let mut bytes = Vec::with_capacity(info.size as usize);
        while let Some(msg) = stream
            .message()
            .await
            .map_err(grpc)
            .with_context(|| format!("reading blob {digest}"))?
        {
            if msg.offset as u64 != bytes.len() as u64
                || bytes.len() + msg.data.len() > limit as usize
            {
                bail!("reading blob {digest}: containerd sent an unexpected chunk");
            }
            bytes.extend_from_slice(&msg.data);
        }
        let found = Digest::of(&bytes);
        if found != *digest {
            bail!("blob {digest} read back from containerd hashes to {found}");
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airgap_bundle::oci::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

    #[test]
    fn labels_an_image_manifest() {
        let (c, l0, l1) = (Digest::of(b"c"), Digest::of(b"0"), Digest::of(b"1"));
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"x","digest":"{c}","size":1}},
            "layers":[{{"mediaType":"y","digest":"{l0}","size":1}},{{"mediaType":"y","digest":"{l1}","size":1}}]}}"#
        );
        let labels = gc_labels(None, m.as_bytes()).unwrap();
        assert_eq!(labels.len(), 3);
        assert_eq!(labels["containerd.io/gc.ref.content.config"], c.to_string());
        assert_eq!(labels["containerd.io/gc.ref.content.l.0"], l0.to_string());
        assert_eq!(labels["containerd.io/gc.ref.content.l.1"], l1.to_string());
    }

    #[test]
    fn labels_an_index() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let i = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{a}","size":1}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{b}","size":1}},
            {{"mediaType":"{OCI_INDEX}","digest":"{a}","size":1}}]}}"#
        );
        let labels = gc_labels(Some(DOCKER_LIST), i.as_bytes()).unwrap();
        assert_eq!(labels["containerd.io/gc.ref.content.m.0"], a.to_string());
        assert_eq!(labels["containerd.io/gc.ref.content.m.1"], b.to_string());
        assert_eq!(labels["containerd.io/gc.ref.content.0"], a.to_string());
        assert!(gc_labels(None, b"not json").is_err());
    }
}
