//! `bundle.json`: what a bundle holds, written by the builder and read by the
//! installer and `inspect` before any image or binary arrives, so they can
//! plan (free disk, images to expect, files to place) from a verified document.

use crate::digest::Digest;
use crate::oci::Platform;
use crate::reference::ImageRef;
use serde::{Deserialize, Serialize};

pub const META_NAME: &str = "bundle.json";
pub const SCHEMA_VERSION: u32 = 1;
/// Largest `bundle.json` accepted.
pub const MAX_META_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleMeta {
    pub schema: u32,
    /// The full k3s version (`v1.20.6+k3s1`).
    pub k3s_version: String,
    /// k3s architecture names (`amd64`, `arm64`, `arm`).
    pub arches: Vec<String>,
    /// Seconds since the epoch (`SOURCE_DATE_EPOCH` when set).
    pub created: u64,
    /// `airgap <version>`.
    pub builder: String,
    pub images: Vec<ImageMeta>,
    pub files: Vec<FileMeta>,
    pub totals: Totals,
}

/// One image, as the installer will name it in containerd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageMeta {
    /// Full reference (`docker.io/kubeguide/redis-master:latest`).
    pub reference: ImageRef,
    /// Digest, media type and size of the top-level manifest or index.
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// The image manifest carried for each platform.
    pub platforms: Vec<PlatformMeta>,
    /// Why the image is in the bundle: `sandbox`, `k3s`, `manifest` or `lock`.
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformMeta {
    pub platform: Platform,
    pub digest: Digest,
    /// Bytes of the manifest, config and layers of this platform.
    pub size: u64,
    /// Every blob of this platform: manifest, config, layers.
    pub blobs: Vec<Digest>,
}

/// A file of the bundle other than the image layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMeta {
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub role: FileRole,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileRole {
    K3sBinary,
    Installer,
    InstallScript,
    Manifest,
    Lock,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    /// Distinct blobs in the image layout and their bytes.
    pub blobs: u64,
    pub blob_bytes: u64,
    /// What the images would take if each carried its own copy of every blob.
    pub image_bytes_undeduplicated: u64,
    /// Bytes of the non-image files.
    pub file_bytes: u64,
}

impl BundleMeta {
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        let meta: BundleMeta =
            serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("{META_NAME}: {e}"))?;
        if meta.schema != SCHEMA_VERSION {
            anyhow::bail!(
                "{META_NAME}: schema {} is not supported by this airgap (it reads schema {SCHEMA_VERSION})",
                meta.schema
            );
        }
        Ok(meta)
    }

    /// Bytes deduplication saved.
    pub fn dedup_saved(&self) -> u64 {
        self.totals
            .image_bytes_undeduplicated
            .saturating_sub(self.totals.blob_bytes)
    }

    /// Every distinct blob path the layout must hold.
    pub fn image(&self, reference: &str) -> Option<&ImageMeta> {
        self.images
            .iter()
            .find(|i| i.reference.to_string() == reference)
    }
}
