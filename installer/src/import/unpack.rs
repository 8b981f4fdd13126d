//! Unpacking: the host platform's layers of an image into the snapshotter,
//! as containerd's own client does, so `ctr run` and the CRI plugin find the
//! image ready.
//!
//! Each layer's snapshot is named by its chain ID (from the config's
//! `rootfs.diff_ids`); one that exists is reused. A missing one is prepared on
//! its parent, the layer applied by containerd's diff service (which reports
//! the digest of the uncompressed tar: it must equal the config's diff ID),
//! and committed under the chain ID. The labels set afterwards are the ones
//! containerd's GC and `IsUnpacked` read: `containerd.io/uncompressed` on each
//! applied layer, `containerd.io/gc.ref.snapshot.<snapshotter>` on the config.

use super::{grpc, Importer};
use airgap_bundle::digest::Digest;
use airgap_bundle::meta::ImageMeta;
use airgap_bundle::oci::{AnyManifest, Descriptor, MAX_MANIFEST_BYTES};
use anyhow::{anyhow, bail, Context as _, Result};
use containerd_client::services::v1::snapshots::{
    snapshots_client::SnapshotsClient, CommitSnapshotRequest, Kind, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{diff_client::DiffClient, ApplyRequest};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Code;
use containerd_client::types;
use serde::Deserialize;
use std::collections::HashMap;

/// Largest image config read back for its diff IDs.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// The label naming a layer's uncompressed digest (its diff ID).
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";

/// What an unpack found and did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnpackOutcome {
    /// The manifest unpacked (the host platform's).
    pub manifest: Digest,
    /// The top snapshot: the image's root filesystem.
    pub chain_id: Digest,
    pub layers: usize,
    /// Layers applied now (the others' snapshots existed).
    pub applied: usize,
}

#[derive(Deserialize)]
struct Config {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<Digest>,
}

/// The chain ID of a layer stack: the first diff ID, then
/// `sha256(parent + " " + diff_id)` for each next one.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => *diff_id,
            Some(parent) => Digest::of(format!("{parent} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}

impl Importer {
    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel())
    }

    /// Unpacks the host platform's manifest of `image`.
    pub async fn unpack(&self, image: &ImageMeta) -> Result<UnpackOutcome> {
        let platform = &self.options().platform;
        let found = image
            .platforms
            .iter()
            .find(|p| platform.matches(&p.platform))
            .ok_or_else(|| anyhow!("image {} has no {platform} manifest", image.reference))?;
        self.unpack_manifest(&found.digest)
            .await
            .with_context(|| format!("unpacking image {} ({platform})", image.reference))
    }

    /// Unpacks one image manifest whose blobs are all in the content store.
    pub async fn unpack_manifest(&self, manifest: &Digest) -> Result<UnpackOutcome> {
        self.require_lease()?;
        let bytes = self.read_blob(manifest, MAX_MANIFEST_BYTES).await?;
        let what = format!("manifest {manifest}");
        let AnyManifest::Image(parsed) = AnyManifest::parse(&what, None, &bytes)? else {
            bail!("{what} is an index, not an image manifest");
        };
        let config = self
            .read_blob(&parsed.config.digest, MAX_CONFIG_BYTES)
            .await?;
        let config: Config = serde_json::from_slice(&config)
            .with_context(|| format!("image config {}", parsed.config.digest))?;
        let diff_ids = config.rootfs.diff_ids;
        if diff_ids.len() != parsed.layers.len() {
            bail!(
                "{what} has {} layers but its config {} lists {} diff IDs",
                parsed.layers.len(),
                parsed.config.digest,
                diff_ids.len()
            );
        }
        if diff_ids.is_empty() {
            bail!("{what} has no layers");
        }
        let chain = chain_ids(&diff_ids);
        let mut applied = 0;
        for (i, (layer, chain_id)) in parsed.layers.iter().zip(&chain).enumerate() {
            if self.snapshot_committed(chain_id).await? {
                let kind = format!("snapshots/{}", self.options().snapshotter);
                self.lease_resource(&kind, &chain_id.to_string()).await?;
                continue;
            }
            let parent = i.checked_sub(1).map(|p| chain[p]);
            self.apply_layer(layer, &diff_ids[i], chain_id, parent.as_ref())
                .await
                .with_context(|| format!("layer {} ({})", i + 1, layer.digest))?;
            applied += 1;
            let label = HashMap::from([(LABEL_UNCOMPRESSED.to_string(), diff_ids[i].to_string())]);
            self.ensure_labels(&layer.digest, &label).await?;
        }
        let top = *chain.last().unwrap_or(&diff_ids[0]);
        let label = HashMap::from([(
            format!(
                "containerd.io/gc.ref.snapshot.{}",
                self.options().snapshotter
            ),
            top.to_string(),
        )]);
        self.ensure_labels(&parsed.config.digest, &label).await?;
        Ok(UnpackOutcome {
            manifest: *manifest,
            chain_id: top,
            layers: parsed.layers.len(),
            applied,
        })
    }

    /// Whether a committed snapshot named `chain_id` exists.
    async fn snapshot_committed(&self, chain_id: &Digest) -> Result<bool> {
        let resp = self
            .snapshots()
            .stat(self.request(StatSnapshotRequest {
                snapshotter: self.options().snapshotter.clone(),
                key: chain_id.to_string(),
            }))
            .await;
        match resp {
            Ok(r) => {
                let kind = r.into_inner().info.map(|i| i.kind).unwrap_or_default();
                if kind != Kind::Committed as i32 {
                    bail!("snapshot {chain_id} exists but is not committed");
                }
                Ok(true)
            }
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(grpc(s)).with_context(|| format!("looking up snapshot {chain_id}")),
        }
    }

    async fn apply_layer(
        &self,
        layer: &Descriptor,
        diff_id: &Digest,
        chain_id: &Digest,
        parent: Option<&Digest>,
    ) -> Result<()> {
        let snapshotter = self.options().snapshotter.clone();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        // containerd's own extraction keys look the same: unique, then the
        // chain ID it will be committed as.
        let key = format!("extract-{}-{nanos} {chain_id}", std::process::id());
        let mounts = self
            .snapshots()
            .prepare(self.request(PrepareSnapshotRequest {
                snapshotter: snapshotter.clone(),
                key: key.clone(),
                parent: parent.map(|p| p.to_string()).unwrap_or_default(),
                labels: HashMap::new(),
            }))
            .await
            .map_err(grpc)
            .with_context(|| format!("preparing snapshot {key:?}"))?
            .into_inner()
            .mounts;
        let result = self
            .apply_and_commit(layer, diff_id, chain_id, &key, mounts)
            .await;
        if result.is_err() {
            let removed = self
                .snapshots()
                .remove(self.request(RemoveSnapshotRequest {
                    snapshotter,
                    key: key.clone(),
                }))
                .await;
            if let Err(s) = removed {
                tracing::warn!(key, "removing a failed extraction snapshot: {}", grpc(s));
            }
        }
        result
    }

    async fn apply_and_commit(
        &self,
        layer: &Descriptor,
        diff_id: &Digest,
        chain_id: &Digest,
        key: &str,
        mounts: Vec<types::Mount>,
    ) -> Result<()> {
        let applied = DiffClient::new(self.channel())
            .apply(self.request(ApplyRequest {
                diff: Some(types::Descriptor {
                    media_type: layer.media_type.clone(),
                    digest: layer.digest.to_string(),
                    size: layer.size as i64,
                    annotations: HashMap::new(),
                }),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            }))
            .await
            .map_err(grpc)
            .context("applying the layer")?
            .into_inner()
            .applied
            .ok_or_else(|| anyhow!("containerd applied the layer but did not say what"))?;
        if applied.digest != diff_id.to_string() {
            bail!(
                "the layer unpacks to {}, but the image config says {diff_id}",
                applied.digest
            );
        }
        let committed = self
            .snapshots()
            .commit(self.request(CommitSnapshotRequest {
                snapshotter: self.options().snapshotter.clone(),
                name: chain_id.to_string(),
                key: key.to_string(),
                labels: HashMap::new(),
            }))
            .await;
        match committed {
            Ok(_) => Ok(()),
            // Another unpack committed the same chain first: the same bytes.
            Err(s) if s.code() == Code::AlreadyExists => {
                let _ = self
                    .snapshots()
                    .remove(self.request(RemoveSnapshotRequest {
                        snapshotter: self.options().snapshotter.clone(),
                        key: key.to_string(),
                    }))
                    .await;
                let kind = format!("snapshots/{}", self.options().snapshotter);
                self.lease_resource(&kind, &chain_id.to_string()).await
            }
            Err(s) => Err(grpc(s)).with_context(|| format!("committing snapshot {chain_id}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_chain_ids() {
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        let chain = chain_ids(&[a, b, c]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], Digest::of(format!("{a} {b}").as_bytes()));
        assert_eq!(chain[2], Digest::of(format!("{} {c}", chain[1]).as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }
}
