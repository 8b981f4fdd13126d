//! `import`: a bundle's images into containerd over its gRPC API, ready for
//! Kubernetes — what `ctr -n k8s.io images import` plus an unpack does, but
//! streamed straight from the bundle and checked at every step.
//!
//! Every write happens under one lease (which expires by itself if the
//! installer dies), blobs are written with their expected digest and size so
//! containerd refuses anything else at commit, image records are created only
//! once every blob they need is committed and the host platform's layers are
//! unpacked into the snapshotter, and the lease is deleted last. It trusts the
//! bundle's digests (checked by the reader and again by containerd) and
//! containerd itself; nothing here touches the host's files.
//!
//! containerd may restart under an import (a crash, a package upgrade): a
//! call that finds the connection broken waits, up to
//! [`ImportOptions::reconnect`], for containerd to answer again and carries
//! on, a blob write from the offset containerd kept in its ingest (the lease
//! and the ingest survive the restart). When it does not come back, or
//! comes back without what was written, the error is a [`ContainerdLost`]
//! naming the socket and what the import was doing.
//!
//! Stages, one file each: [`content`] (blobs in and out of the content store),
//! [`unpack`] (layers into snapshots), [`sink`] (the bundle reader's side).

pub mod content;
pub mod sink;
pub mod unpack;

pub use content::{gc_labels, BlobWriter, Committed};
pub use sink::{import_bundle, ImageReport, ImportReport, ImportSink, SkippedImage};
pub use unpack::UnpackOutcome;

use airgap_bundle::digest::Digest;
use airgap_bundle::oci::{Descriptor, Platform};
use anyhow::{anyhow, bail, Context as _, Result};
use containerd_client::services::v1::{
    images_client::ImagesClient, introspection_client::IntrospectionClient,
    leases_client::LeasesClient, version_client::VersionClient, CreateImageRequest, CreateRequest,
    DeleteImageRequest, DeleteRequest, GetImageRequest, Image, ListImagesRequest, ListRequest,
    PluginsRequest, UpdateImageRequest,
};
use containerd_client::tonic::metadata::AsciiMetadataValue;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};
use containerd_client::types;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Import leases are `airgap-import-<pid>-<time>`.
const LEASE_PREFIX: &str = "airgap-import-";

/// The process id in an import lease's id.
fn lease_pid(id: &str) -> Option<u32> {
    id.strip_prefix(LEASE_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// The namespace the CRI plugin (and so Kubernetes) reads images from.
pub const DEFAULT_NAMESPACE: &str = "k8s.io";
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

/// Marks an image as one the CRI plugin manages (lists, garbage-collects).
pub const LABEL_CRI_IMAGE: &str = "io.cri-containerd.image";
/// Keeps the CRI plugin's image GC away from an image (the sandbox image).
pub const LABEL_CRI_PINNED: &str = "io.cri-containerd.pinned";
/// When a lease stops protecting what was written under it.
pub const LABEL_GC_EXPIRE: &str = "containerd.io/gc.expire";

const NAMESPACE_HEADER: &str = "containerd-namespace";
const LEASE_HEADER: &str = "containerd-lease";
const SNAPSHOTTER_PLUGIN: &str = "io.containerd.snapshotter.v1";

/// Where and how to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// containerd's gRPC socket.
    pub socket: PathBuf,
    /// containerd namespace (`k8s.io` for Kubernetes).
    pub namespace: String,
    /// Snapshotter the host platform's layers are unpacked into.
    pub snapshotter: String,
    /// The host's platform: only its manifest of each image is unpacked and
    /// named; other platforms' blobs are imported as content.
    pub platform: Platform,
    /// How long containerd may take to accept the connection and answer.
    pub timeout: Duration,
    /// How long the import's lease protects unreferenced content if the
    /// installer dies before deleting it. A longer import is still safe: the
    /// blobs an image needs are checked again before it is named.
    pub lease_expiry: Duration,
    /// How long to wait for containerd to answer again after the connection
    /// broke mid-import (it restarted).
    pub reconnect: Duration,
}

impl ImportOptions {
    /// `k8s.io`, `overlayfs`, this host's platform, 10 s, 1 h, 30 s.
    pub fn new(socket: impl Into<PathBuf>) -> ImportOptions {
        ImportOptions {
            socket: socket.into(),
            namespace: DEFAULT_NAMESPACE.to_string(),
            snapshotter: DEFAULT_SNAPSHOTTER.to_string(),
            platform: host_platform(),
            timeout: Duration::from_secs(10),
            lease_expiry: Duration::from_secs(3600),
            reconnect: Duration::from_secs(30),
        }
    }
}

/// The platform of the machine this runs on.
pub fn host_platform() -> Platform {
    Platform::host()
}

/// containerd cannot be reached: nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("containerd is not running at {}: {reason}", socket.display())]
pub struct NotRunning {
    pub socket: PathBuf,
    pub reason: String,
}

/// What [`Importer::create_image`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageOutcome {
    Created,
    /// The name pointed elsewhere, or lacked the CRI labels.
    Updated,
    Unchanged,
}

/// An image record as containerd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub name: String,
    pub target: Digest,
    pub media_type: String,
    pub labels: HashMap<String, String>,
}

struct Lease {
    id: String,
    header: AsciiMetadataValue,
}

/// A connection to containerd, and the lease an import writes under.
pub struct Importer {
    channel: Channel,
    opts: ImportOptions,
    namespace: AsciiMetadataValue,
    lease: Option<Lease>,
}

/// The import lost its connection to containerd and could not carry on:
/// containerd did not answer again in time, or came back without what had
/// been written. Nothing of the import is named in containerd.
#[derive(Debug, thiserror::Error)]
#[error("lost the connection to containerd at {} while {doing}", socket.display())]
pub struct ContainerdLost {
    pub socket: PathBuf,
    /// What the import was doing: `writing blob sha256:… (image …)`.
    pub doing: String,
}

/// A gRPC failure, shown as `containerd said NotFound: ...`.
#[derive(Debug, thiserror::Error)]
#[error("containerd said {code:?}: {message}")]
pub struct GrpcError {
    pub code: Code,
    pub message: String,
}

impl GrpcError {
    /// Whether the connection broke (containerd stopped or restarted)
    /// rather than containerd refusing the call.
    pub fn connection_lost(&self) -> bool {
        status_lost(self.code, &self.message)
    }
}

fn status_lost(code: Code, message: &str) -> bool {
    let message = message.to_lowercase();
    match code {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled | Code::Aborted => [
            "connection",
            "transport",
            "broken pipe",
            "h2 protocol",
            "stream closed",
            "ended the write",
        ]
        .iter()
        .any(|w| message.contains(w)),
        _ => false,
    }
}

/// Whether a status says the connection to containerd broke.
pub(crate) fn is_lost_status(status: &Status) -> bool {
    status_lost(status.code(), status.message())
}

/// Whether `e` came from a broken connection to containerd.
pub fn is_connection_lost(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<GrpcError>()
            .is_some_and(GrpcError::connection_lost)
    })
}

/// A gRPC failure as a short message: `containerd said NotFound: ...`.
pub(crate) fn grpc(status: Status) -> anyhow::Error {
    GrpcError {
        code: status.code(),
        message: status.message().to_string(),
    }
    .into()
}

/// How many times one call goes on after containerd came back.
pub(crate) const RECONNECTS: u32 = 3;

/// Waits, up to `patience`, until containerd answers on `channel` again
/// (tonic reconnects the channel by itself).
pub(crate) async fn wait_for_containerd(
    channel: &Channel,
    socket: &std::path::Path,
    patience: Duration,
) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            VersionClient::new(channel.clone()).version(()),
        )
        .await;
        let reason = match answer {
            Ok(Ok(_)) => {
                tracing::info!(socket = %socket.display(), after = ?started.elapsed(), "containerd answers again");
                return Ok(());
            }
            Ok(Err(status)) => grpc(status).to_string(),
            Err(_) => "no answer within 2s".to_string(),
        };
        if started.elapsed() >= patience {
            bail!("it did not answer again within {patience:?} (last: {reason})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// containerd's rule for namespace names and other identifiers.
fn check_identifier(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 76
        && name
            .split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !ok {
        bail!("{what} {name:?} is not a valid containerd identifier (letters and digits, single . _ - between them)");
    }
    Ok(())
}

impl Importer {
    /// Connects and checks that containerd answers and has the snapshotter.
    /// Writes nothing.
    pub async fn connect(opts: ImportOptions) -> Result<Importer> {
        check_identifier("namespace", &opts.namespace)?;
        let not_running = |reason: String| -> anyhow::Error {
            NotRunning {
                socket: opts.socket.clone(),
                reason,
            }
            .into()
        };
        match std::fs::metadata(&opts.socket) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(not_running("no socket there".into()))
            }
            Err(e) => return Err(not_running(e.to_string())),
            Ok(m) => {
                use std::os::unix::fs::FileTypeExt as _;
                if !m.file_type().is_socket() {
                    return Err(not_running("not a unix socket".into()));
                }
            }
        }
        let channel = match tokio::time::timeout(
            opts.timeout,
            containerd_client::connect(&opts.socket),
        )
        .await
        {
            Err(_) => {
                return Err(not_running(format!(
                    "no connection within {:?}",
                    opts.timeout
                )))
            }
            Ok(Err(e)) => return Err(not_running(airgap_bundle::error::chain(&e))),
            Ok(Ok(channel)) => channel,
        };
        let version = match tokio::time::timeout(
            opts.timeout,
            VersionClient::new(channel.clone()).version(()),
        )
        .await
        {
            Err(_) => {
                return Err(not_running(format!(
                    "it did not answer within {:?}",
                    opts.timeout
                )))
            }
            Ok(Err(status)) => return Err(not_running(grpc(status).to_string())),
            Ok(Ok(v)) => v.into_inner(),
        };
        tracing::debug!(
            socket = %opts.socket.display(),
            version = %version.version,
            "connected to containerd"
        );
        let namespace = AsciiMetadataValue::try_from(opts.namespace.as_str())
            .context("namespace as a gRPC header")?;
        let importer = Importer {
            channel,
            opts,
            namespace,
            lease: None,
        };
        importer.check_snapshotter().await?;
        Ok(importer)
    }

    pub fn options(&self) -> &ImportOptions {
        &self.opts
    }

    /// The lease writes happen under, once [`Importer::begin`] made it.
    pub fn lease_id(&self) -> Option<&str> {
        self.lease.as_ref().map(|l| l.id.as_str())
    }

    async fn check_snapshotter(&self) -> Result<()> {
        let plugins = IntrospectionClient::new(self.channel.clone())
            .plugins(PluginsRequest { filters: vec![] })
            .await
            .map_err(grpc)
            .with_context(|| {
                format!(
                    "listing the plugins of containerd at {}",
                    self.opts.socket.display()
                )
            })?
            .into_inner()
            .plugins;
        let snapshotters: Vec<_> = plugins
            .iter()
            .filter(|p| p.r#type == SNAPSHOTTER_PLUGIN)
            .collect();
        let Some(found) = snapshotters.iter().find(|p| p.id == self.opts.snapshotter) else {
            let names: Vec<&str> = snapshotters
                .iter()
                .filter(|p| p.init_err.is_none())
                .map(|p| p.id.as_str())
                .collect();
            bail!(
                "containerd at {} has no snapshotter {:?} (it has: {})",
                self.opts.socket.display(),
                self.opts.snapshotter,
                names.join(", ")
            );
        };
        if let Some(err) = &found.init_err {
            bail!(
                "snapshotter {:?} of containerd at {} failed to load: {}",
                self.opts.snapshotter,
                self.opts.socket.display(),
                err.message
            );
        }
        Ok(())
    }

    /// A request in this import's namespace, under its lease when there is one.
    pub(crate) fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut()
            .insert(NAMESPACE_HEADER, self.namespace.clone());
        if let Some(lease) = &self.lease {
            req.metadata_mut()
                .insert(LEASE_HEADER, lease.header.clone());
        }
        req
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Waits for containerd to answer again after the connection broke.
    pub(crate) async fn wait_back(&self) -> Result<()> {
        wait_for_containerd(&self.channel, &self.opts.socket, self.opts.reconnect).await
    }

    /// Runs `op`; when it fails because the connection to containerd broke,
    /// waits for containerd to come back and runs it again (at most
    /// [`RECONNECTS`] times). `op` must be safe to repeat.
    pub(crate) async fn retry_lost<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut tries = 0;
        loop {
            match op().await {
                Err(e) if tries < RECONNECTS && is_connection_lost(&e) => {
                    tries += 1;
                    tracing::warn!(
                        "lost containerd at {} ({e:#}); waiting for it to answer again",
                        self.opts.socket.display()
                    );
                    if let Err(gone) = self.wait_back().await {
                        return Err(e.context(gone));
                    }
                }
                other => return other,
            }
        }
    }

    /// `e` with a [`ContainerdLost`] naming the socket and `doing` on top
    /// when the connection to containerd broke.
    pub fn lost(&self, e: anyhow::Error, doing: impl FnOnce() -> String) -> anyhow::Error {
        if is_connection_lost(&e) && e.downcast_ref::<ContainerdLost>().is_none() {
            e.context(ContainerdLost {
                socket: self.opts.socket.clone(),
                doing: doing(),
            })
        } else {
            e
        }
    }

    pub(crate) fn require_lease(&self) -> Result<&str> {
        self.lease_id().ok_or_else(|| {
            anyhow!("internal error: containerd writes need a lease (call begin first)")
        })
    }

    /// Creates the lease every later write happens under. It expires after
    /// [`ImportOptions::lease_expiry`], so a crashed import's content is
    /// collected.
    pub async fn begin(&mut self) -> Result<()> {
        if self.lease.is_some() {
            return Ok(());
        }
        self.remove_stale_leases().await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let id = format!(
            "{LEASE_PREFIX}{}-{}{:09}",
            std::process::id(),
            now.as_secs(),
            now.subsec_nanos()
        );
        let expire = airgap_bundle::time::rfc3339_utc((now + self.opts.lease_expiry).as_secs());
        let labels = HashMap::from([(LABEL_GC_EXPIRE.to_string(), expire)]);
        LeasesClient::new(self.channel())
            .create(self.request(CreateRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(grpc)
            .context("creating the import's lease in containerd")?;
        let header = AsciiMetadataValue::try_from(id.as_str()).context("lease id as a header")?;
        tracing::debug!(lease = %id, "lease created");
        self.lease = Some(Lease { id, header });
        Ok(())
    }

    /// Deletes the leases of imports whose process is gone (an install that
    /// was killed), and has containerd collect what only they held, before
    /// this import looks at what the content store has: a rerun then ends as
    /// a clean install does, without waiting for the old lease to expire. A
    /// lease whose process still exists (or whose id is not airgap's) is left
    /// alone. Returns the ids deleted.
    pub async fn remove_stale_leases(&self) -> Result<Vec<String>> {
        let leases = LeasesClient::new(self.channel())
            .list(self.request(ListRequest { filters: vec![] }))
            .await
            .map_err(grpc)
            .context("listing containerd's leases")?
            .into_inner()
            .leases;
        let mut removed = Vec::new();
        for lease in leases {
            let Some(pid) = lease_pid(&lease.id) else {
                continue;
            };
            if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            LeasesClient::new(self.channel())
                .delete(self.request(DeleteRequest {
                    id: lease.id.clone(),
                    sync: true,
                }))
                .await
                .map_err(grpc)
                .with_context(|| format!("deleting lease {} of a killed import", lease.id))?;
            tracing::info!(
                lease = %lease.id,
                "deleted the lease of an import whose process ({pid}) is gone"
            );
            removed.push(lease.id);
        }
        Ok(removed)
    }

    /// Whether the blob is in the content store (of this namespace).
    pub async fn has_blob(&self, digest: &Digest) -> Result<bool> {
        Ok(self.blob_labels(digest).await?.is_some())
    }

    /// Names `target` `name` with the CRI labels (and the pinned label for
    /// the sandbox image). Call only once every blob of the image is
    /// committed. An existing record with the same target and labels is left
    /// alone.
    pub async fn create_image(
        &self,
        name: &str,
        target: &Descriptor,
        sandbox: bool,
    ) -> Result<ImageOutcome> {
        let mut labels = HashMap::from([(LABEL_CRI_IMAGE.to_string(), "managed".to_string())]);
        if sandbox {
            labels.insert(LABEL_CRI_PINNED.to_string(), "pinned".to_string());
        }
        let wanted = types::Descriptor {
            media_type: target.media_type.clone(),
            digest: target.digest.to_string(),
            size: target.size as i64,
            annotations: HashMap::new(),
        };
        let mut images = ImagesClient::new(self.channel());
        let context = || format!("naming image {name} ({})", target.digest);
        let existing = match images
            .get(self.request(GetImageRequest {
                name: name.to_string(),
            }))
            .await
        {
            Ok(resp) => resp.into_inner().image,
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => return Err(grpc(s)).with_context(context),
        };
        let Some(existing) = existing else {
            let image = Image {
                name: name.to_string(),
                labels,
                target: Some(wanted),
                created_at: None,
                updated_at: None,
            };
            images
                .create(self.request(CreateImageRequest {
                    image: Some(image),
                    source_date_epoch: None,
                }))
                .await
                .map_err(grpc)
                .with_context(context)?;
            return Ok(ImageOutcome::Created);
        };
        let same_target = existing.target.as_ref().is_some_and(|t| {
            t.digest == wanted.digest && t.media_type == wanted.media_type && t.size == wanted.size
        });
        let mut paths: Vec<String> = labels
            .iter()
            .filter(|(k, v)| existing.labels.get(*k) != Some(v))
            .map(|(k, _)| format!("labels.{k}"))
            .collect();
        if same_target && paths.is_empty() {
            return Ok(ImageOutcome::Unchanged);
        }
        if !same_target {
            paths.push("target".to_string());
        }
        paths.sort();
        let image = Image {
            name: name.to_string(),
            labels,
            target: Some(wanted),
            created_at: None,
            updated_at: None,
        };
        images
            .update(self.request(UpdateImageRequest {
                image: Some(image),
                update_mask: Some(prost_types::FieldMask { paths }),
                source_date_epoch: None,
            }))
            .await
            .map_err(grpc)
            .with_context(context)?;
        Ok(ImageOutcome::Updated)
    }

    /// Every image record in the namespace.
    pub async fn images(&self) -> Result<Vec<ImageRecord>> {
        let list = ImagesClient::new(self.channel())
            .list(self.request(ListImagesRequest { filters: vec![] }))
            .await
            .map_err(grpc)
            .context("listing containerd's images")?
            .into_inner()
            .images;
        list.into_iter()
            .map(|image| {
                let target = image
                    .target
                    .ok_or_else(|| anyhow!("image {} has no target", image.name))?;
                Ok(ImageRecord {
                    target: target
                        .digest
                        .parse()
                        .with_context(|| format!("image {}", image.name))?,
                    media_type: target.media_type,
                    name: image.name,
                    labels: image.labels,
                })
            })
            .collect()
    }

    /// Removes an image record (uninstall `--purge-images`); containerd
    /// collects its content and snapshots once nothing else holds them. A
    /// record already gone is not an error.
    pub async fn delete_image(&self, name: &str) -> Result<()> {
        let result = ImagesClient::new(self.channel())
            .delete(self.request(DeleteImageRequest {
                name: name.to_string(),
                sync: true,
                target: None,
            }))
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(grpc(status)).with_context(|| format!("deleting image {name}")),
        }
    }

    /// Deletes the lease: the image records now hold what they need.
    pub async fn commit(mut self) -> Result<()> {
        self.end_lease(false).await
    }

    /// Deletes the lease and has containerd collect what nothing else holds
    /// (before returning), so a failed import leaves nothing behind.
    pub async fn abort(mut self) -> Result<()> {
        self.end_lease(true).await
    }

    async fn end_lease(&mut self, sync: bool) -> Result<()> {
        let Some(lease) = self.lease.take() else {
            return Ok(());
        };
        let mut req = Request::new(DeleteRequest {
            id: lease.id.clone(),
            sync,
        });
        req.metadata_mut()
            .insert(NAMESPACE_HEADER, self.namespace.clone());
        LeasesClient::new(self.channel())
            .delete(req)
            .await
            .map_err(grpc)
            .with_context(|| format!("deleting lease {} in containerd", lease.id))?;
        tracing::debug!(lease = %lease.id, sync, "lease deleted");
        Ok(())
    }
}

impl Drop for Importer {
    /// Neither committed nor aborted (an error or a panic on the way): delete
    /// the lease in the background when a runtime is at hand; otherwise its
    /// expiry label lets containerd collect it.
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut req = Request::new(DeleteRequest {
            id: lease.id,
            sync: false,
        });
        req.metadata_mut()
            .insert(NAMESPACE_HEADER, self.namespace.clone());
        let mut leases = LeasesClient::new(self.channel());
        handle.spawn(async move {
            let _ = leases.delete(req).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_identifiers() {
        assert!(check_identifier("namespace", "k8s.io").is_ok());
        assert!(check_identifier("namespace", "default").is_ok());
        for bad in ["", "k8s..io", ".k8s", "a/b", "k8s.io-", "ü"] {
            assert!(check_identifier("namespace", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lease_ids_name_their_process() {
        assert_eq!(
            lease_pid("airgap-import-4242-1700000000123456789"),
            Some(4242)
        );
        assert_eq!(lease_pid("airgap-import-x-1"), None);
        assert_eq!(lease_pid("k3s-lease-4242"), None);
    }

    #[test]
    fn tells_a_lost_connection_from_a_refusal() {
        assert!(status_lost(
            Code::Unavailable,
            "Connection refused (os error 111)"
        ));
        assert!(status_lost(
            Code::Unknown,
            "error reading a body from connection"
        ));
        assert!(status_lost(Code::Unknown, "h2 protocol error: broken pipe"));
        assert!(!status_lost(Code::NotFound, "connection"));
        assert!(!status_lost(
            Code::FailedPrecondition,
            "unexpected commit digest"
        ));
        let e = grpc(Status::unavailable("transport error")).context("writing");
        assert!(is_connection_lost(&e));
        assert!(!is_connection_lost(&grpc(Status::not_found("blob"))));
    }

    #[test]
    fn host_platform_is_known() {
        let p = host_platform();
        assert_eq!(p.os, "linux");
        assert!(Platform::for_arch("amd64").unwrap().matches(&p) || p.architecture != "amd64");
    }
}
