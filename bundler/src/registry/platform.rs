//! Which manifest serves which platform: the entry of an index chosen for
//! a wanted platform, and whether a lone manifest (no index) fits one, by
//! what its config declares.
//!
//! Trusts the platforms an index or a config states; the documents were
//! verified against their digests before they are read here.

use crate::store::BlobStore;
use airgap_bundle::oci::{is_manifest, Descriptor, Platform};
use anyhow::{anyhow, bail, Context as _, Result};

/// Largest image config read to learn a single-platform image's platform.
pub(crate) const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The index entry for `wanted`: the first image manifest whose platform
/// matches (variants respected).
pub(crate) fn select<'a>(entries: &'a [Descriptor], wanted: &Platform) -> Result<&'a Descriptor> {
    entries
        .iter()
        .find(|d| {
            is_manifest(&d.media_type) && d.platform.as_ref().is_some_and(|p| wanted.matches(p))
        })
        .ok_or_else(|| {
            let have: Vec<String> = entries
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(ToString::to_string)
                .collect();
            anyhow!(
                "no manifest for platform {wanted} (the index has: {})",
                if have.is_empty() {
                    "none with a platform".to_string()
                } else {
                    have.join(", ")
                }
            )
        })
}

/// Whether a lone manifest whose config declares `found` serves `wanted`.
/// Configs often omit the variant, so an absent one is accepted.
pub(crate) fn compatible(wanted: &Platform, found: &Platform) -> bool {
    wanted.matches(found)
        || (found.variant.is_none()
            && wanted.os == found.os
            && wanted.architecture == found.architecture)
}

/// Refuses a config larger than [`MAX_CONFIG_BYTES`], before it is fetched.
pub(crate) fn check_config_size(config: &Descriptor) -> Result<()> {
    if config.size > MAX_CONFIG_BYTES {
        bail!(
            "{} bytes is more than the {MAX_CONFIG_BYTES} a config may have",
            config.size
        );
    }
    Ok(())
}

/// The platform the config `config`, already in `store`, declares.
pub(crate) fn stored_config_platform(store: &BlobStore, config: &Descriptor) -> Result<Platform> {
    check_config_size(config)?;
    let bytes = std::fs::read(store.path(&config.digest))?;
    serde_json::from_slice(&bytes).context("no os and architecture in the config")
}

#[cfg(test)]
mod tests {
    use super::*;
    use airgap_bundle::digest::Digest;
    use std::collections::BTreeMap;

    fn desc(media_type: &str, platform: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: Digest::of(platform.unwrap_or("").as_bytes()),
            size: 1,
            platform: platform.map(|p| {
                let mut parts = p.split('/');
                Platform {
                    os: parts.next().unwrap().into(),
                    architecture: parts.next().unwrap().into(),
                    variant: parts.next().map(Into::into),
                }
            }),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn selects_platforms_with_variants() {
        use airgap_bundle::oci::{DOCKER_MANIFEST, OCI_MANIFEST};
        let entries = vec![
            desc(OCI_MANIFEST, Some("linux/amd64")),
            desc(OCI_MANIFEST, Some("linux/arm/v6")),
            desc(DOCKER_MANIFEST, Some("linux/arm/v7")),
            desc(OCI_MANIFEST, Some("linux/arm64/v8")),
            desc(OCI_MANIFEST, Some("unknown/unknown")),
        ];
        let arm = Platform::for_arch("arm").unwrap();
        assert_eq!(select(&entries, &arm).unwrap(), &entries[2]);
        let arm64 = Platform::for_arch("arm64").unwrap();
        assert_eq!(select(&entries, &arm64).unwrap(), &entries[3]);
        let err = select(&entries[..2], &arm).unwrap_err().to_string();
        assert!(
            err.contains("no manifest for platform linux/arm/v7"),
            "{err}"
        );
        assert!(err.contains("linux/amd64, linux/arm/v6"), "{err}");
    }

    #[test]
    fn lone_manifests_match_by_config() {
        let arm = Platform::for_arch("arm").unwrap();
        let bare_arm = Platform {
            variant: None,
            ..arm.clone()
        };
        let v6 = Platform {
            variant: Some("v6".into()),
            ..arm.clone()
        };
        assert!(compatible(&arm, &bare_arm));
        assert!(!compatible(&arm, &v6));
        assert!(!compatible(
            &Platform::for_arch("amd64").unwrap(),
            &bare_arm
        ));
    }
}
