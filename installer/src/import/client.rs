//! The connection to containerd and the lease an import writes under:
//! connecting (containerd answers, the snapshotter exists), the lease's
//! life (begin, commit, abort, stale leases of dead imports), waiting for a
//! containerd that restarted, and image records (create, list, delete).

use super::error::{grpc, is_connection_lost, ContainerdLost, NotRunning};
use super::{
    ImageOutcome, ImageRecord, ImportOptions, LABEL_CRI_IMAGE, LABEL_CRI_PINNED, LABEL_GC_EXPIRE,
    LEASE_HEADER, NAMESPACE_HEADER, SNAPSHOTTER_PLUGIN,
};
use airgap_bundle::digest::Digest;
use airgap_bundle::oci::Descriptor;
use anyhow::{anyhow, bail, Context as _, Result};
use containerd_client::services::v1::{
    images_client::ImagesClient, introspection_client::IntrospectionClient,
    leases_client::LeasesClient, version_client::VersionClient, CreateImageRequest, CreateRequest,
    DeleteImageRequest, DeleteRequest, GetImageRequest, Image, ListImagesRequest, ListRequest,
    PluginsRequest, UpdateImageRequest,
};
use containerd_client::tonic::metadata::AsciiMetadataValue;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request};
use containerd_client::types;
use std::collections::HashMap;
use std::path::Path;
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
    /// The runtime it was connected on, to delete a dropped import's lease
    /// from a caller's thread outside it.
    runtime: Option<tokio::runtime::Handle>,
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
            runtime: tokio::runtime::Handle::try_current().ok(),
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
        let Some(handle) = self
            .runtime
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok())
        else {
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
}
