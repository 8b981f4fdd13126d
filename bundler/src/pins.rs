//! `images.lock`, cargo-style: how the lock compares with the wanted set (the
//! manifests' images, the pause/sandbox image and the k3s system images of
//! the chosen version), for `bundle build --locked` (every difference, found
//! before any image is pulled) and for `airgap bundle lock`, which resolves
//! each wanted tag to its current digest and per-platform manifests and
//! writes the lock, or with `--check` only reports the drift.
//!
//! k3s system images are ordinary lock entries, pinned per platform like the
//! manifests' images: the lock describes one k3s version, and building another
//! makes the old version's system images "no longer wanted".
//!
//! Resolving reads index and manifest documents (and, for an image without an
//! index, its small config) and never a layer; every digest recorded is one
//! computed here over the bytes received, never one a registry announced. It
//! goes through the puller's requests, with their retries and messages.
//!
//! A manifest image named by digest (`repo@sha256:…`, `repo:tag@sha256:…`) is
//! pinned by the manifest itself: it is checked at that digest (the registry
//! has it, for each platform), never re-resolved by its tag, and is not a lock
//! entry (a lock reference names no digest), so it never drifts.

use crate::auth::Credentials;
use crate::imageset::{self, Source, WantedImages};
use crate::net;
use crate::progress::NoProgress;
use crate::registry::{
    check_config_size, compatible, select, stored_config_platform, Puller, RegistryConfig,
};
use crate::release::{self, ReleaseSource};
use crate::store::BlobStore;
use airgap_bundle::atomic::write_whole;
use airgap_bundle::digest::Digest;
use airgap_bundle::images_lock::{ImagesLock, LockedImage, LOCK_NAME, LOCK_VERSION};
use airgap_bundle::oci::{AnyManifest, Descriptor, Platform};
use airgap_bundle::reference::ImageRef;
use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use tokio::runtime::Handle;

/// The checks `bundle build` runs before it downloads anything.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildChecks {
    /// Fail unless `images.lock` already pins exactly the wanted set.
    pub locked: bool,
    /// Report floating (`:latest`, untagged) images without
    /// `imagePullPolicy: IfNotPresent` as warnings instead of errors.
    pub allow_latest: bool,
    /// Follow manifests that are symbolic links (each is reported) instead
    /// of refusing them.
    pub follow_symlinks: bool,
}

/// One difference between the wanted set and the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Drift {
    /// Wanted, and not in the lock at all.
    Missing {
        reference: String,
        sources: Vec<String>,
    },
    /// In the lock without a digest.
    Unpinned { reference: String },
    /// Pinned, but not for a requested platform.
    MissingPlatform { reference: String, platform: String },
    /// In the lock and no longer wanted.
    Extra { reference: String },
    /// The tag now points at another manifest than the lock pins.
    Moved {
        reference: String,
        locked: Digest,
        current: Digest,
    },
    /// The same top digest, but another manifest for a platform.
    PlatformMoved {
        reference: String,
        platform: String,
        locked: Digest,
        current: Digest,
    },
    /// The pod sandbox image, not marked `"sandbox": true`.
    NotSandbox { reference: String },
    /// A release file whose hash is now another than the lock's pin.
    ReleaseMoved {
        version: String,
        asset: String,
        locked: Digest,
        current: Digest,
    },
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::Missing { reference, sources } => write!(
                f,
                "{reference} is wanted ({}) but not in {LOCK_NAME}",
                sources.join(", ")
            ),
            Drift::Unpinned { reference } => {
                write!(f, "{reference} is in {LOCK_NAME} without a digest")
            }
            Drift::MissingPlatform {
                reference,
                platform,
            } => write!(f, "{reference} is pinned without {platform}"),
            Drift::Extra { reference } => {
                write!(f, "{reference} is in {LOCK_NAME} but no longer wanted")
            }
            Drift::Moved {
                reference,
                locked,
                current,
            } => write!(
                f,
                "{reference} moved: the tag now points at {current}, {LOCK_NAME} pins {locked}"
            ),
            Drift::PlatformMoved {
                reference,
                platform,
                locked,
                current,
            } => write!(
                f,
                "{reference} for {platform} is now {current}, {LOCK_NAME} pins {locked}"
            ),
            Drift::ReleaseMoved {
                version,
                asset,
                locked,
                current,
            } => write!(
                f,
                "{asset} of k3s {version} is now {current}, {LOCK_NAME} pins {locked}"
            ),
            Drift::NotSandbox { reference } => write!(
                f,
                "{reference} is the pod sandbox image but {LOCK_NAME} does not mark it \"sandbox\": true"
            ),
        }
    }
}

/// `--locked` found differences; each is named.
#[derive(Debug, thiserror::Error)]
#[error(
    "{LOCK_NAME} does not match the wanted images (--locked), {} difference(s):\n  {}\nrun `airgap bundle lock` to update it",
    .0.len(),
    .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  ")
)]
pub struct LockMismatch(pub Vec<Drift>);

/// The lock's key for a platform (`linux/arm/v7`).
pub fn platform_key(platform: &Platform) -> String {
    platform.to_string()
}

/// Parses a lock platform key back (`linux/arm/v7`).
pub fn parse_platform_key(key: &str) -> Option<Platform> {
    let mut parts = key.split('/');
    let os = parts.next().filter(|s| !s.is_empty())?;
    let architecture = parts.next().filter(|s| !s.is_empty())?;
    let variant = parts.next().map(str::to_string);
    if parts.next().is_some() {
        return None;
    }
    Some(Platform {
        os: os.to_string(),
        architecture: architecture.to_string(),
        variant,
    })
}

fn source_names(sources: &[Source]) -> Vec<String> {
    sources.iter().map(|s| s.as_str().to_string()).collect()
}

/// Every difference between `lock` and what a build of `platforms` needs;
/// no network. Empty means the lock fits.
pub fn locked_diff(lock: &ImagesLock, wanted: &WantedImages, platforms: &[Platform]) -> Vec<Drift> {
    let mut drift = Vec::new();
    for (reference, sources) in wanted {
        if reference.digest.is_some() {
            // Pinned by the manifest that names it.
            continue;
        }
        let name = reference.to_string();
        let Some(entry) = lock.get(reference) else {
            drift.push(Drift::Missing {
                reference: name,
                sources: source_names(sources),
            });
            continue;
        };
        if entry.digest.is_none() {
            drift.push(Drift::Unpinned {
                reference: name.clone(),
            });
        } else {
            for platform in platforms {
                let key = platform_key(platform);
                if !entry.platforms.contains_key(&key) {
                    drift.push(Drift::MissingPlatform {
                        reference: name.clone(),
                        platform: key,
                    });
                }
            }
        }
        if sources.contains(&Source::Sandbox) && !entry.sandbox {
            drift.push(Drift::NotSandbox { reference: name });
        }
    }
    for entry in &lock.images {
        if !wanted.contains_key(&entry.reference) {
            drift.push(Drift::Extra {
                reference: entry.reference.to_string(),
            });
        }
    }
    drift
}

/// Fails with every difference unless `lock` pins exactly the wanted set.
pub fn check_locked(
    lock: &ImagesLock,
    wanted: &WantedImages,
    platforms: &[Platform],
) -> std::result::Result<(), LockMismatch> {
    let drift = locked_diff(lock, wanted, platforms);
    if drift.is_empty() {
        Ok(())
    } else {
        Err(LockMismatch(drift))
    }
}

/// The k3s system images of the full `version` (its `k3s-images.txt`,
/// checked against the release's `sha256sum-<arch>.txt` when that lists it),
/// without the binaries: all `--locked` and `bundle lock` need from the
/// release. Fetched as `bundle build` fetches them
/// (`release::fetch_image_list`), through `store`: what it holds (and
/// still hashes right) is not fetched again.
pub async fn fetch_k3s_images(
    client: &reqwest::Client,
    src: &ReleaseSource,
    version: &str,
    arch: &str,
    store: &BlobStore,
) -> Result<Vec<ImageRef>> {
    let list = release::fetch_image_list(client, src, version, arch, store, &NoProgress).await?;
    Ok(list.images)
}

/// The pins of `version`'s release files now: each requested
/// architecture's binary as its checksum listing gives it, and the sha256 of
/// `install.sh` as fetched (afresh, into `store`).
async fn release_pins(
    opts: &LockOptions,
    version: &str,
    client: &reqwest::Client,
    store: &BlobStore,
) -> Result<release::ReleasePins> {
    let mut pins = release::ReleasePins::new();
    let mut first_sums = None;
    for arch in &opts.arches {
        let list =
            release::fetch_image_list(client, &opts.release, version, arch, store, &NoProgress)
                .await
                .with_context(|| {
                    format!("fetching the checksum listing of k3s {version} for {arch}")
                })?;
        let binary = release::k3s_asset_name(arch)?;
        let listed = list.sums.get(binary).with_context(|| {
            format!(
                "{} from {} has no line for {binary}",
                release::checksums_name(arch),
                list.checksums.url
            )
        })?;
        pins.insert(binary.to_string(), *listed);
        first_sums.get_or_insert(list.sums);
    }
    let sums = first_sums.unwrap_or_default();
    let no_pins = release::ReleasePins::new();
    let install_sh = release::fetch_install_sh(
        client,
        &opts.release,
        version,
        &sums,
        &no_pins,
        store,
        &NoProgress,
    )
    .await
    .with_context(|| format!("fetching {} of k3s {version}", release::INSTALL_SH))?;
    pins.insert(release::INSTALL_SH.to_string(), install_sh.digest);
    Ok(pins)
}

/// What a tag resolves to now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The top manifest or index.
    pub digest: Digest,
    /// The image manifest per platform key.
    pub platforms: BTreeMap<String, Digest>,
}

/// Resolves tags to digests through the same mirrors, plain-HTTP hosts,
/// credentials, extra CAs, retries and messages as pulls.
pub struct Resolver {
    /// Its client, and the map from image registries to the hosts contacted.
    puller: Puller,
    credentials: Credentials,
    /// Where the configs of images without an index are fetched to.
    store: BlobStore,
    _scratch: tempfile::TempDir,
}

impl Resolver {
    pub fn new(config: RegistryConfig) -> Result<Resolver> {
        let scratch = tempfile::Builder::new()
            .prefix("airgap-lock-")
            .tempdir()
            .context("creating a scratch directory")?;
        // The puller's client already speaks to the mirrors, plain-HTTP hosts
        // and extra CAs of `config`: resolving uses the same one.
        Ok(Resolver {
            credentials: config.credentials.clone(),
            puller: Puller::new(config)?,
            store: BlobStore::open(scratch.path())?,
            _scratch: scratch,
        })
    }

    /// Resolves `image`'s tag (or checks its digest, when it names one) for
    /// each of `platforms`.
    pub async fn resolve(&self, image: &ImageRef, platforms: &[Platform]) -> Result<Resolved> {
        let host = self.puller.host_for(image);
        self.resolve_inner(image, platforms).await.with_context(|| {
            match self.credentials.describe(&host) {
                Some(who) => format!("resolving {image} at {host} ({who})"),
                None => format!("resolving {image} at {host}"),
            }
        })
    }

    async fn resolve_inner(&self, image: &ImageRef, platforms: &[Platform]) -> Result<Resolved> {
        let what = match (&image.digest, &image.tag) {
            (Some(d), _) => format!("manifest {d}"),
            (None, tag) => format!("manifest {}", tag.as_deref().unwrap_or("latest")),
        };
        // Size-bounded, and checked against the digest the image names.
        let bytes = self
            .puller
            .top_manifest(image, &self.store)
            .await
            .with_context(|| what.clone())?;
        let digest = Digest::of(&bytes);
        let mut resolved = Resolved {
            digest,
            platforms: BTreeMap::new(),
        };
        match AnyManifest::parse(&format!("manifest {digest}"), None, &bytes)? {
            AnyManifest::Index(index) => {
                for wanted in platforms {
                    let entry = select(&index.manifests, wanted)?;
                    resolved
                        .platforms
                        .insert(platform_key(wanted), entry.digest);
                }
            }
            AnyManifest::Image(manifest) => {
                let found = self.config_platform(image, &manifest.config).await?;
                for wanted in platforms {
                    if !compatible(wanted, &found) {
                        bail!("the image is for {found} only (it has no index), not {wanted}");
                    }
                    resolved.platforms.insert(platform_key(wanted), digest);
                }
            }
        }
        Ok(resolved)
    }

    /// The platform a lone manifest's config declares.
    async fn config_platform(&self, image: &ImageRef, config: &Descriptor) -> Result<Platform> {
        let what = || format!("config {}", config.digest);
        check_config_size(config).with_context(what)?;
        // Verified against its digest and size before it is kept.
        self.puller
            .fetch_blob(image, config, &self.store)
            .await
            .with_context(what)?;
        stored_config_platform(&self.store, config).with_context(what)
    }
}

/// Everything `airgap bundle lock` needs.
pub struct LockOptions {
    /// k3s version as the user wrote it.
    pub version: String,
    /// k3s architecture names; each lock entry is also refreshed for the
    /// platforms it already pins.
    pub arches: Vec<String>,
    pub release: ReleaseSource,
    pub registry: RegistryConfig,
    pub manifests_dir: PathBuf,
    pub lock_path: PathBuf,
    /// Report drift only; never write.
    pub check: bool,
    /// Tags resolved at once.
    pub jobs: usize,
}

/// What `airgap bundle lock` found and did.
#[derive(Debug, Clone, Serialize)]
pub struct LockReport {
    pub lock: PathBuf,
    pub k3s_version: String,
    /// Entries in the refreshed lock.
    pub images: usize,
    /// Every difference between the lock on disk and the registries now.
    pub changes: Vec<Drift>,
    /// Whether the lock file was rewritten.
    pub written: bool,
    pub check: bool,
}

impl fmt::Display for LockReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lock = self.lock.display();
        for change in &self.changes {
            writeln!(f, "  {change}")?;
        }
        match (self.changes.is_empty(), self.check, self.written) {
            (true, _, _) => write!(
                f,
                "{lock} is up to date: {} images for k3s {}",
                self.images, self.k3s_version
            ),
            (false, true, _) => write!(
                f,
                "{lock} has drifted: {} difference(s); not written (--check)",
                self.changes.len()
            ),
            (false, false, _) => write!(
                f,
                "updated {lock}: {} images for k3s {}, {} change(s)",
                self.images,
                self.k3s_version,
                self.changes.len()
            ),
        }
    }
}

/// The differences between the lock on disk and the freshly resolved one.
fn refresh_diff(old: &ImagesLock, new: &ImagesLock, wanted: &WantedImages) -> Vec<Drift> {
    let mut drift = Vec::new();
    // A release file the lock pins whose hash changed; one it does not pin
    // yet (a lock from before the pins) is not drift, just written.
    for (version, pins) in &new.release {
        let before = old.release.get(version);
        for (asset, current) in pins {
            if let Some(locked) = before.and_then(|b| b.get(asset)) {
                if locked != current {
                    drift.push(Drift::ReleaseMoved {
                        version: version.clone(),
                        asset: asset.clone(),
                        locked: *locked,
                        current: *current,
                    });
                }
            }
        }
    }
    for entry in &new.images {
        let reference = entry.reference.to_string();
        let Some(before) = old.get(&entry.reference) else {
            drift.push(Drift::Missing {
                reference,
                sources: wanted
                    .get(&entry.reference)
                    .map(|s| source_names(s))
                    .unwrap_or_default(),
            });
            continue;
        };
        let (Some(current), Some(locked)) = (entry.digest, before.digest) else {
            drift.push(Drift::Unpinned { reference });
            continue;
        };
        if current != locked {
            drift.push(Drift::Moved {
                reference,
                locked,
                current,
            });
            continue;
        }
        for (platform, digest) in &entry.platforms {
            match before.platforms.get(platform) {
                None => drift.push(Drift::MissingPlatform {
                    reference: reference.clone(),
                    platform: platform.clone(),
                }),
                Some(pinned) if pinned != digest => drift.push(Drift::PlatformMoved {
                    reference: reference.clone(),
                    platform: platform.clone(),
                    locked: *pinned,
                    current: *digest,
                }),
                Some(_) => {}
            }
        }
        if entry.sandbox && !before.sandbox {
            drift.push(Drift::NotSandbox { reference });
        }
    }
    for entry in &old.images {
        if new.get(&entry.reference).is_none() {
            drift.push(Drift::Extra {
                reference: entry.reference.to_string(),
            });
        }
    }
    drift
}

fn read_lock(path: &Path) -> Result<(ImagesLock, Option<String>)> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lock =
                ImagesLock::parse(&text).with_context(|| format!("in {}", path.display()))?;
            Ok((lock, Some(text)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((
            ImagesLock {
                version: LOCK_VERSION,
                ..ImagesLock::default()
            },
            None,
        )),
        Err(e) => Err(anyhow!("reading {}: {e}", path.display())),
    }
}

/// `airgap bundle lock`: resolves every wanted image's tag now and writes
/// the lock (entries no longer wanted dropped), or with `check` reports the
/// differences and leaves the file alone. The requests run on `handle`'s
/// runtime, which must be multi-threaded (it drives their IO); call this
/// from outside it.
pub fn lock(opts: &LockOptions, handle: &Handle) -> Result<LockReport> {
    let version = release::resolve_version(&opts.version)?;
    let first_arch = opts.arches.first().context("no architecture given")?;
    let requested: Vec<Platform> = opts
        .arches
        .iter()
        .map(|a| {
            Platform::for_arch(a).with_context(|| {
                format!("unknown architecture {a:?} (expected amd64, arm64 or arm)")
            })
        })
        .collect::<Result<_>>()?;
    let (old, old_text) = read_lock(&opts.lock_path)?;
    let (files, _) = imageset::manifest_files(&opts.manifests_dir, imageset::Symlinks::Refuse)?;
    let manifest_images = imageset::scan_manifests(&files)?;
    let client = net::http_client()?;
    let resolver = Resolver::new(opts.registry.clone())?;
    // The release's listings are fetched afresh: into the resolver's
    // scratch store, not a cache.
    let k3s_images = handle
        .block_on(fetch_k3s_images(
            &client,
            &opts.release,
            &version,
            first_arch,
            &resolver.store,
        ))
        .with_context(|| format!("fetching the system image list of k3s {version}"))?;
    let wanted = imageset::wanted_images(&old, &manifest_images, &k3s_images)?;

    let jobs: Vec<(ImageRef, Vec<Platform>)> = wanted
        .keys()
        .map(|reference| {
            let mut platforms = requested.clone();
            let pinned = old.get(reference).map(|e| &e.platforms);
            for key in pinned.into_iter().flat_map(BTreeMap::keys) {
                if let Some(p) = parse_platform_key(key) {
                    if !platforms.contains(&p) {
                        platforms.push(p);
                    }
                }
            }
            (reference.clone(), platforms)
        })
        .collect();
    let resolved: Vec<(ImageRef, Resolved)> = handle.block_on(
        stream::iter(jobs.into_iter().map(|(r, p)| {
            let resolver = &resolver;
            async move {
                let found = resolver.resolve(&r, &p).await?;
                anyhow::Ok((r, found))
            }
        }))
        .buffered(opts.jobs.max(1))
        .try_collect(),
    )?;

    let mut new = ImagesLock {
        version: LOCK_VERSION,
        images: Vec::new(),
        release: BTreeMap::from([(
            version.clone(),
            handle.block_on(release_pins(opts, &version, &client, &resolver.store))?,
        )]),
    };
    for (reference, found) in resolved {
        if reference.digest.is_some() {
            // Checked at its digest above; the manifest naming it pins it.
            continue;
        }
        let sandbox = wanted[&reference].contains(&Source::Sandbox);
        new.images.push(LockedImage {
            reference,
            digest: Some(found.digest),
            platforms: found.platforms,
            sandbox,
        });
    }
    let changes = refresh_diff(&old, &new, &wanted);
    let text = new.render();
    let written = !opts.check && old_text.as_deref() != Some(text.as_str());
    if written {
        write_whole(&opts.lock_path, text.as_bytes(), None)?;
    }
    Ok(LockReport {
        lock: opts.lock_path.clone(),
        k3s_version: version,
        images: new.images.len(),
        changes,
        written,
        check: opts.check,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(s: &str) -> ImageRef {
        s.parse().unwrap()
    }

    #[test]
    fn locked_diff_names_every_difference() {
        let d = Digest::of(b"top");
        let amd64 = Platform::for_arch("amd64").unwrap();
        let arm = Platform::for_arch("arm").unwrap();
        let lock = ImagesLock::parse(&format!(
            r#"{{"version":1,"images":[
              {{"reference":"docker.io/rancher/pause:3.1","digest":"{d}","platforms":{{"linux/amd64":"{d}"}}}},
              {{"reference":"docker.io/library/unpinned:1"}},
              {{"reference":"docker.io/old/gone:1","digest":"{d}"}}]}}"#
        ))
        .unwrap();
        let mut wanted = WantedImages::new();
        wanted.insert(
            reference("rancher/pause:3.1"),
            vec![Source::Sandbox, Source::K3s],
        );
        wanted.insert(reference("unpinned:1"), vec![Source::Manifest]);
        wanted.insert(reference("new/app:2"), vec![Source::Manifest]);
        // Named by digest in a manifest: pinned there, no entry needed.
        wanted.insert(
            reference(&format!("pinned/app@{d}")),
            vec![Source::Manifest],
        );
        let drift = locked_diff(&lock, &wanted, &[amd64.clone(), arm]);
        let text: Vec<String> = drift.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "docker.io/library/unpinned:1 is in images.lock without a digest",
                "docker.io/new/app:2 is wanted (manifest) but not in images.lock",
                "docker.io/rancher/pause:3.1 is pinned without linux/arm/v7",
                "docker.io/rancher/pause:3.1 is the pod sandbox image but images.lock does not mark it \"sandbox\": true",
                "docker.io/old/gone:1 is in images.lock but no longer wanted",
            ]
        );
        assert!(check_locked(&lock, &wanted, &[amd64]).is_err());
    }

    #[test]
    fn platform_keys_round_trip() {
        for arch in ["amd64", "arm64", "arm"] {
            let p = Platform::for_arch(arch).unwrap();
            assert_eq!(parse_platform_key(&platform_key(&p)), Some(p));
        }
        assert_eq!(
            platform_key(&Platform::for_arch("arm").unwrap()),
            "linux/arm/v7"
        );
        assert!(parse_platform_key("linux").is_none());
        assert!(parse_platform_key("a/b/c/d").is_none());
    }
}
