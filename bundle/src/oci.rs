//! The parts of the OCI image spec (and Docker's schema 2, which shares its
//! shape) that the bundle needs: descriptors, platforms, image indexes and
//! manifests, and the walk from a manifest to the blobs it needs.
//!
//! Manifests are always kept as the exact bytes that were pulled: their digest
//! is what users pin. These types only read them; nothing here re-serialises a
//! manifest that is stored.

use crate::digest::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every manifest media type the bundle accepts, for a registry's Accept header.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Annotation naming an image in an OCI layout's index.json.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd's importer reads for the full image name.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Largest manifest or index accepted, from a registry or a bundle.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The k3s architecture name of this machine (`amd64`, `arm64`, `arm`).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "arm" => "arm",
        _ => "amd64",
    }
}

/// An OS/architecture/variant triple, as in an image index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform for a k3s architecture name: `amd64`, `arm64`, `arm`
    /// (k3s's armhf, which is `linux/arm/v7`).
    pub fn for_arch(arch: &str) -> Option<Platform> {
        let (architecture, variant) = match arch {
            "amd64" => ("amd64", None),
            "arm64" => ("arm64", None),
            "arm" | "armhf" => ("arm", Some("v7")),
            _ => return None,
        };
        Some(Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_string),
        })
    }

    /// This machine's platform.
    pub fn host() -> Platform {
        Platform::for_arch(host_arch()).unwrap_or(Platform {
            os: "linux".into(),
            architecture: std::env::consts::ARCH.into(),
            variant: None,
        })
    }

    /// Whether an index entry's platform satisfies this wanted one. arm64's
    /// `v8` variant is optional in the wild, so it matches an absent variant.
    pub fn matches(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        match (&self.variant, &candidate.variant) {
            (None, None) => true,
            (Some(a), Some(b)) => a == b,
            (None, Some(v)) | (Some(v), None) => self.architecture == "arm64" && v == "v8",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl Manifest {
    /// The config and layers, in the order a puller fetches them.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }
}

/// A manifest of either kind, parsed from its exact bytes.
#[derive(Debug, Clone)]
pub enum AnyManifest {
    Index(Index),
    Image(Manifest),
}

/// A manifest document that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{what}: not a valid manifest: {source}")]
    Parse {
        what: String,
        source: serde_json::Error,
    },
    #[error("{what}: unsupported media type {media_type:?}")]
    MediaType { what: String, media_type: String },
    #[error("{what}: schema version {0} is not supported", .version)]
    Schema { what: String, version: u32 },
}

/// The small header every manifest kind shares.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Versioned {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

impl AnyManifest {
    /// Parses `bytes` as the manifest kind `media_type` says (the descriptor's
    /// or the registry's Content-Type), falling back to the document's own
    /// `mediaType` and shape.
    pub fn parse(
        what: &str,
        media_type: Option<&str>,
        bytes: &[u8],
    ) -> Result<Self, ManifestError> {
        let parse_err = |source| ManifestError::Parse {
            what: what.to_string(),
            source,
        };
        let head: Versioned = serde_json::from_slice(bytes).map_err(parse_err)?;
        if head.schema_version != 2 {
            return Err(ManifestError::Schema {
                what: what.to_string(),
                version: head.schema_version,
            });
        }
        let kind = media_type
            .filter(|m| is_index(m) || is_manifest(m))
            .map(str::to_string)
            .or(head.media_type)
            .unwrap_or_else(|| {
                if head.manifests.is_some() {
                    OCI_INDEX.to_string()
                } else {
                    OCI_MANIFEST.to_string()
                }
            });
        if is_index(&kind) {
            Ok(AnyManifest::Index(
                serde_json::from_slice(bytes).map_err(parse_err)?,
            ))
        } else if is_manifest(&kind) {
            Ok(AnyManifest::Image(
                serde_json::from_slice(bytes).map_err(parse_err)?,
            ))
        } else {
            Err(ManifestError::MediaType {
                what: what.to_string(),
                media_type: kind,
            })
        }
    }

    /// The media type to record in a descriptor pointing at this document.
    pub fn media_type(&self) -> &str {
        match self {
            AnyManifest::Index(i) => i.media_type.as_deref().unwrap_or(OCI_INDEX),
            AnyManifest::Image(m) => m.media_type.as_deref().unwrap_or(OCI_MANIFEST),
        }
    }
}

/// The `oci-layout` file of an image layout.
pub const OCI_LAYOUT_FILE: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";

/// The top-level `index.json` of the bundle's image layout: one entry per
/// image, named by its full reference.
pub fn layout_index(images: &[(String, Descriptor)]) -> Index {
    let manifests = images
        .iter()
        .map(|(reference, desc)| {
            let mut d = desc.clone();
            d.platform = None;
            d.annotations
                .insert(ANNOTATION_REF_NAME.to_string(), reference.clone());
            d.annotations
                .insert(ANNOTATION_CONTAINERD_NAME.to_string(), reference.clone());
            d
        })
        .collect();
    Index {
        schema_version: 2,
        media_type: Some(OCI_INDEX.to_string()),
        manifests,
        annotations: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_matching_respects_variant() {
        let arm = Platform::for_arch("arm").unwrap();
        assert_eq!(arm.to_string(), "linux/arm/v7");
        let v6 = Platform {
            variant: Some("v6".into()),
            ..arm.clone()
        };
        assert!(!arm.matches(&v6));
        assert!(arm.matches(&arm.clone()));
        let arm64 = Platform::for_arch("arm64").unwrap();
        let arm64v8 = Platform {
            variant: Some("v8".into()),
            ..arm64.clone()
        };
        assert!(arm64.matches(&arm64v8));
        assert!(!Platform::for_arch("amd64").unwrap().matches(&arm64));
    }

    #[test]
    fn parses_docker_and_oci() {
        let d = Digest::of(b"x");
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{d}","size":1}},"layers":[]}}"#
        );
        let parsed = AnyManifest::parse("m", None, m.as_bytes()).unwrap();
        assert_eq!(parsed.media_type(), DOCKER_MANIFEST);
        let i = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            AnyManifest::parse("i", None, i.as_bytes()).unwrap(),
            AnyManifest::Index(_)
        ));
        assert!(AnyManifest::parse("bad", None, b"{\"schemaVersion\":1}").is_err());
    }
}
