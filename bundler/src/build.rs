//! `airgap bundle build`: the whole connected-side pipeline, stage by stage.
//!
//! resolve (version, wanted images) -> fetch (release assets, images into a
//! content-addressed staging store, every digest verified) -> assemble
//! (bundle.json, the OCI layout's index.json, SHA256SUMS, signature:
//! `assemble`) -> write (one tar stream to a temporary file beside
//! the output, renamed only when complete and signed) -> record (pins
//! written back to images.lock).
//!
//! Only the fetch stage is async: it runs under the caller's runtime
//! (`handle.block_on`); every other stage, the tar writing included, runs
//! on the caller's thread.

use crate::assemble::{assemble, AssembleInputs};
use crate::fresh;
use crate::imageset::{self, Source, WantedImages};
use crate::lint::{self, LintOptions, Severity};
use crate::net;
use crate::pins::{self, BuildChecks};
use crate::progress::Progress;
use crate::registry::{PulledImage, Puller, RegistryConfig};
use crate::release::{self, ReleaseAssets, ReleaseSource};
use crate::space::SpaceWatch;
use crate::store::BlobStore;
use crate::summary::{BuildSummary, ImageSummary};
use airgap_bundle::atomic::{write_whole, AtomicFile};
use airgap_bundle::digest::{Digest, HashingWriter};
use airgap_bundle::images_lock::{ImagesLock, LockedImage, LOCK_NAME};
use airgap_bundle::meta::SCHEMA_VERSION;
use airgap_bundle::oci::Platform;
use airgap_bundle::reference::ImageRef;
use airgap_bundle::sign;
use airgap_bundle::split::SplitWriter;
use airgap_bundle::write::{tar_size, write_bundle, Compression, StagedEntry, TarStamp};
use anyhow::{bail, Context as _};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use std::path::{Path, PathBuf};
use tokio::runtime::Handle;

/// Everything `bundle build` needs to know.
pub struct BuildOptions {
    /// k3s version as the user wrote it (`v1.20.6` or `v1.20.6+k3s1`).
    pub version: String,
    /// k3s architecture names.
    pub arches: Vec<String>,
    /// Output file; `None` means the default name in the current directory.
    pub output: Option<PathBuf>,
    /// Write the bundle as parts of at most this many bytes
    /// (`<output>.part000`, …, and the list `<output>.parts`).
    pub split: Option<u64>,
    pub sign_key: PathBuf,
    pub key_password: Option<String>,
    pub release: ReleaseSource,
    pub registry: RegistryConfig,
    pub compression: Compression,
    /// Parallel downloads.
    pub jobs: usize,
    /// Directory of the auto-deploy manifests.
    pub manifests_dir: PathBuf,
    /// The lock file to read and write back.
    pub lock_path: PathBuf,
    /// Fixed build time (`SOURCE_DATE_EPOCH`) for reproducible bundles.
    pub source_date_epoch: Option<u64>,
    /// The download cache ([`crate::cache`]); `None`: a fresh one in the
    /// staging directory, dropped with it.
    pub cache: Option<PathBuf>,
    /// Write the bundle even when the output is up to date ([`crate::fresh`]).
    pub rebuild: bool,
}

/// The default bundle name for a version and its architectures.
pub fn default_output(full_version: &str, arches: &[String]) -> PathBuf {
    PathBuf::from(format!(
        "k3s-{full_version}-linux-{}.airgap.tar.zst",
        arches.join("-")
    ))
}

/// The fixed build time `SOURCE_DATE_EPOCH` sets, if it is set; an error
/// when it is not a number of seconds.
pub fn source_date_epoch_from_env() -> anyhow::Result<Option<u64>> {
    parse_source_date_epoch(std::env::var("SOURCE_DATE_EPOCH").ok())
}

fn parse_source_date_epoch(value: Option<String>) -> anyhow::Result<Option<u64>> {
    value
        .map(|v| {
            v.parse::<u64>()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number"))
        })
        .transpose()
}

fn build_time(source_date_epoch: Option<u64>) -> u64 {
    source_date_epoch.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    })
}

/// Runs the whole build, with the offline-readiness lint and `--locked` as
/// `checks` say; both run before anything is downloaded (but
/// `k3s-images.txt`). The downloads run on `handle`'s runtime, which must
/// be multi-threaded (it drives their IO); call this from outside it. On any
/// error nothing is left at the output path and the lock file is unchanged.
/// A full file system fails it with `no space left on <dir>, needed N more`
/// ([`crate::space`]).
pub fn build(
    opts: &BuildOptions,
    checks: &BuildChecks,
    progress: &dyn Progress,
    handle: &Handle,
) -> anyhow::Result<BuildSummary> {
    let watch = SpaceWatch::new(progress);
    build_stages(opts, checks, &watch, handle).map_err(|e| watch.explain(e))
}

fn build_stages(
    opts: &BuildOptions,
    checks: &BuildChecks,
    progress: &SpaceWatch<'_>,
    handle: &Handle,
) -> anyhow::Result<BuildSummary> {
    // Resolve: version, platforms, key (a wrong password should fail before
    // any download), lock and manifests.
    let version = release::resolve_version(&opts.version)?;
    if opts.arches.is_empty() {
        bail!("no architecture given");
    }
    let platforms: Vec<Platform> = opts
        .arches
        .iter()
        .map(|a| {
            Platform::for_arch(a).with_context(|| {
                format!("unknown architecture {a:?} (expected amd64, arm64 or arm)")
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let secret_key = sign::load_secret_key(&opts.sign_key, opts.key_password.clone())?;
    let lock_text = std::fs::read_to_string(&opts.lock_path)
        .with_context(|| format!("reading {}", opts.lock_path.display()))?;
    let mut lock = ImagesLock::parse(&lock_text)
        .with_context(|| format!("in {}", opts.lock_path.display()))?;
    let symlinks = if checks.follow_symlinks {
        imageset::Symlinks::Follow
    } else {
        imageset::Symlinks::Refuse
    };
    let (manifest_files, followed) = imageset::manifest_files(&opts.manifests_dir, symlinks)?;
    for link in &followed {
        tracing::warn!("{link}");
    }
    let manifest_images = imageset::scan_manifests(&manifest_files)?;
    let lint_options = LintOptions {
        allow_latest: checks.allow_latest,
        not_in_lock: (!checks.locked).then_some(Severity::Warning),
    };
    let findings = lint::lint(&manifest_images, &lock, &lint_options);
    for warning in findings.of(Severity::Warning) {
        tracing::warn!("{warning}");
    }
    findings.check()?;
    if checks.locked {
        check_locked(opts, &version, &platforms, &lock, &manifest_images, handle)?;
    }

    let output = match &opts.output {
        Some(p) => p.clone(),
        None => default_output(&version, &opts.arches),
    };
    let out_dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".airgap-build.")
        .tempdir_in(&out_dir)
        .with_context(|| format!("creating a staging directory in {}", out_dir.display()))?;
    let staging_root = staging.path();
    let cache_dir = match &opts.cache {
        Some(dir) => dir.clone(),
        None => staging_root.join("cache"),
    };
    progress.fetching(&cache_dir, opts.cache.is_some());
    let store = crate::cache::open(&cache_dir)?;

    // A build with the inputs of the build that wrote the output keeps it.
    let fresh_inputs = |lock_text: &str| -> anyhow::Result<Option<Digest>> {
        let Some(release) = fresh::release_inputs(&store, &opts.release, &version, &opts.arches)
        else {
            return Ok(None);
        };
        Ok(Some(
            fresh::Inputs {
                airgap_version: env!("CARGO_PKG_VERSION"),
                schema_version: SCHEMA_VERSION,
                k3s_version: &version,
                arches: &opts.arches,
                compression: fresh::compression_key(opts.compression),
                split: opts.split,
                source_date_epoch: opts.source_date_epoch,
                key_id: sign::secret_key_id(&secret_key),
                lock_sha256: Digest::of(lock_text.as_bytes()),
                manifests: fresh::manifest_inputs(&opts.manifests_dir, &manifest_files)?,
                release,
            }
            .fingerprint(),
        ))
    };
    if let (Some(dir), false) = (&opts.cache, opts.rebuild) {
        if let Some(fingerprint) = fresh_inputs(&lock_text)? {
            if let Some(mut kept) = fresh::check(dir, &output, &fingerprint) {
                kept.up_to_date = true;
                kept.lock_updated = false;
                kept.lock_path = opts.lock_path.clone();
                return Ok(kept);
            }
        }
    }

    // Fetch: the release assets of every architecture, then every wanted
    // image, pinned ones by digest.
    let client = net::http_client()?;
    let puller = Puller::new(opts.registry.clone())?;
    let fetched = handle.block_on(fetch(FetchInputs {
        opts,
        version: &version,
        platforms: &platforms,
        lock: &lock,
        manifest_images: &manifest_images,
        client: &client,
        puller: &puller,
        store: &store,
        progress,
    }))?;
    let Fetched {
        binaries,
        install_sh,
        wanted,
        pulled,
    } = fetched;

    // Entries no longer wanted leave the lock, as cargo drops unused crates.
    let locked_entries = lock.images.len();
    lock.images.retain(|i| wanted.contains_key(&i.reference));
    let mut lock_updated = lock.images.len() != locked_entries;

    // The release files are pinned as images are: what is missing is
    // written back (a pin that disagreed failed the fetch); pins of other
    // versions leave.
    let release_before = lock.release.clone();
    lock.release.retain(|v, _| v == &version);
    let pins = lock.release.entry(version.clone()).or_default();
    for (_, assets) in &binaries {
        pins.entry(assets.binary.name.clone())
            .or_insert(assets.binary.digest);
        pins.entry(release::INSTALL_SH.to_string())
            .or_insert(assets.install_sh.digest);
    }
    lock_updated |= lock.release != release_before;

    // Assemble: pins, bundle.json, the image layout, the file list.
    for image in &pulled {
        // An image the manifests name by digest is pinned there: the lock
        // holds no entry for it (as `bundle lock` and lint see it).
        if image.reference.digest.is_some() {
            continue;
        }
        let entry = lock.entry(&image.reference);
        let before = entry.clone();
        pin(entry, image);
        if wanted[&image.reference].contains(&Source::Sandbox) && !entry.sandbox {
            entry.sandbox = true;
        }
        lock_updated |= *entry != before;
    }
    if checks.locked && lock_updated {
        bail!("{LOCK_NAME} would change although --locked checked it; run `airgap bundle lock`");
    }
    let created = build_time(opts.source_date_epoch);
    let staged = assemble(AssembleInputs {
        staging_root,
        store: &store,
        version: &version,
        arches: &opts.arches,
        created,
        pulled: &pulled,
        wanted: &wanted,
        binaries: &binaries
            .iter()
            .map(|(arch, a)| {
                (
                    arch.clone(),
                    a.binary.path.clone(),
                    a.binary.digest,
                    a.binary.size,
                )
            })
            .collect::<Vec<_>>(),
        install_sh: install_sh.as_deref(),
        manifest_files: &manifest_files,
        lock: &lock,
    })?;

    // Sign SHA256SUMS; its trusted comment names the bundle.
    let sums_text = staged.sums.render();
    let comment = format!(
        "airgap bundle k3s={version} arch={} created={created} sums={}",
        opts.arches.join(","),
        Digest::of(sums_text.as_bytes())
    );
    let signature = sign::sign(&secret_key, sums_text.as_bytes(), &comment)?;

    // Write the tar stream beside the output, then rename it into place.
    let total: u64 = staged.entries.iter().map(|e| e.size).sum();
    progress.writing_started(total);
    let tar_bytes = tar_size(&signature, &sums_text, &staged.entries);
    progress.writing(&output, tar_bytes, opts.compression);
    let written = write_output(
        &output,
        opts,
        &Signed {
            signature: &signature,
            sums: &sums_text,
            entries: &staged.entries,
            stamp: TarStamp { mtime: created },
        },
        progress,
    )?;

    // Record the pins only once the bundle exists.
    progress.recording(&opts.lock_path, lock_text.len() as u64);
    let final_lock_text = if lock_updated {
        let text = lock.render();
        write_whole(&opts.lock_path, text.as_bytes(), None)?;
        text
    } else {
        lock_text
    };

    let meta = &staged.meta;
    let summary = BuildSummary {
        file: output,
        size: written.size,
        sha256: written.sha256,
        k3s_version: version.clone(),
        arches: opts.arches.clone(),
        images: meta
            .images
            .iter()
            .map(|i| ImageSummary {
                reference: i.reference.to_string(),
                digest: i.digest,
                size: i.platforms.iter().map(|p| p.size).sum::<u64>() + i.size,
            })
            .collect(),
        blobs: meta.totals.blobs,
        blob_bytes: meta.totals.blob_bytes,
        dedup_saved_bytes: meta.dedup_saved(),
        lock_updated,
        key_id: sign::secret_key_id(&secret_key),
        parts: written.parts,
        up_to_date: false,
        lock_path: opts.lock_path.clone(),
    };
    if let Some(dir) = &opts.cache {
        match fresh_inputs(&final_lock_text)? {
            Some(fingerprint) => fresh::record(dir, &summary.file, fingerprint, &summary),
            None => fresh::forget(dir, &summary.file),
        }
    }
    Ok(summary)
}

/// `--locked`: fails, naming every difference, unless the lock pins exactly
/// the wanted images. The system image list is fetched as the release fetch
/// fetches it, but afresh (into a scratch store, not the cache), so that the
/// check sees the release as it is now.
fn check_locked(
    opts: &BuildOptions,
    version: &str,
    platforms: &[Platform],
    lock: &ImagesLock,
    manifest_images: &[imageset::ManifestImage],
    handle: &Handle,
) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("airgap-locked-")
        .tempdir()
        .context("creating a scratch directory")?;
    let store = BlobStore::open(scratch.path())?;
    let client = net::http_client()?;
    let k3s = handle
        .block_on(pins::fetch_k3s_images(
            &client,
            &opts.release,
            version,
            &opts.arches[0],
            &store,
        ))
        .with_context(|| format!("fetching the system image list of k3s {version}"))?;
    let wanted = imageset::wanted_images(lock, manifest_images, &k3s)?;
    pins::check_locked(lock, &wanted, platforms)?;
    // The release files: each architecture's binary as its checksum
    // listing gives it now, and install.sh, must be pinned, and alike.
    let pins = lock.release.get(version).cloned().unwrap_or_default();
    let mut missing = Vec::new();
    for arch in &opts.arches {
        let list = handle
            .block_on(release::fetch_image_list(
                &client,
                &opts.release,
                version,
                arch,
                &store,
                &crate::progress::NoProgress,
            ))
            .with_context(|| {
                format!("fetching the checksum listing of k3s {version} for {arch}")
            })?;
        let binary = release::k3s_asset_name(arch)?;
        let listing = release::checksums_name(arch);
        let listed = list.sums.get(binary).with_context(|| {
            format!(
                "{listing} from {} has no line for {binary}",
                list.checksums.url
            )
        })?;
        release::check_pin(&pins, binary, listed, &listing, &list.checksums.url)
            .context("--locked")?;
        if !pins.contains_key(binary) {
            missing.push(binary);
        }
    }
    if !pins.contains_key(release::INSTALL_SH) {
        missing.push(release::INSTALL_SH);
    }
    if !missing.is_empty() {
        bail!(
            "--locked: {LOCK_NAME} pins no sha256 for {} of k3s {version}; run `airgap bundle lock`",
            missing.join(", ")
        );
    }
    Ok(())
}

struct FetchInputs<'a> {
    opts: &'a BuildOptions,
    version: &'a str,
    platforms: &'a [Platform],
    lock: &'a ImagesLock,
    manifest_images: &'a [imageset::ManifestImage],
    client: &'a reqwest::Client,
    puller: &'a Puller,
    store: &'a BlobStore,
    progress: &'a SpaceWatch<'a>,
}

/// What the fetch stage brought into the store.
struct Fetched {
    /// Each architecture's release assets.
    binaries: Vec<(String, ReleaseAssets)>,
    install_sh: Option<PathBuf>,
    wanted: WantedImages,
    pulled: Vec<PulledImage>,
}

/// The fetch stage: release assets of every architecture, then every wanted
/// image (`jobs` at once), each verified into the store.
async fn fetch(inp: FetchInputs<'_>) -> anyhow::Result<Fetched> {
    let FetchInputs {
        opts,
        version,
        platforms,
        lock,
        manifest_images,
        client,
        puller,
        store,
        progress,
    } = inp;
    let pins = lock.release.get(version).cloned().unwrap_or_default();
    let mut k3s_images: Vec<ImageRef> = Vec::new();
    let mut binaries = Vec::new();
    let mut install_sh: Option<PathBuf> = None;
    for arch in &opts.arches {
        let assets =
            release::fetch_release(client, &opts.release, version, arch, &pins, store, progress)
                .await
                .with_context(|| format!("fetching k3s {version} for {arch}"))?;
        for image in &assets.images {
            if !k3s_images.contains(image) {
                k3s_images.push(image.clone());
            }
        }
        if install_sh.is_none() {
            install_sh = Some(assets.install_sh.path.clone());
        }
        binaries.push((arch.clone(), assets));
    }

    let wanted = imageset::wanted_images(lock, manifest_images, &k3s_images)?;
    let requests: Vec<(ImageRef, ImageRef)> = wanted
        .keys()
        .map(|r| {
            let pinned = lock.get(r).and_then(|l| l.digest);
            let fetch = match pinned {
                Some(d) => r.with_digest(d),
                None => r.clone(),
            };
            (r.clone(), fetch)
        })
        .collect();
    let pulled: Vec<PulledImage> =
        stream::iter(requests.into_iter().map(|(name, fetch)| async move {
            let mut image = puller.pull(&fetch, platforms, store, progress).await?;
            image.reference = name;
            anyhow::Ok(image)
        }))
        .buffered(opts.jobs.max(1))
        .try_collect()
        .await?;
    Ok(Fetched {
        binaries,
        install_sh,
        wanted,
        pulled,
    })
}

/// Records what an image resolved to in its lock entry.
fn pin(entry: &mut LockedImage, image: &PulledImage) {
    entry.digest = Some(image.top.digest);
    for (platform, desc) in &image.platforms {
        entry.platforms.insert(platform.to_string(), desc.digest);
    }
}

/// The signed contents of the tar stream.
struct Signed<'a> {
    signature: &'a str,
    sums: &'a str,
    entries: &'a [StagedEntry],
    stamp: TarStamp,
}

/// What the write stage put at the output path.
struct Written {
    size: u64,
    sha256: Digest,
    /// The parts, when split.
    parts: Vec<PathBuf>,
}

/// The write stage: the tar stream into a temporary file beside `output`
/// (or temporary parts), renamed into place only once complete. Runs on the
/// caller's thread: it is file IO and compression, nothing to await.
fn write_output(
    output: &Path,
    opts: &BuildOptions,
    signed: &Signed<'_>,
    progress: &SpaceWatch<'_>,
) -> anyhow::Result<Written> {
    if let Some(part_size) = opts.split {
        let split = write_parts(output, part_size, opts.compression, signed, progress)
            .with_context(|| format!("writing {} in parts", output.display()))?;
        progress.writing_done();
        return Ok(Written {
            size: split.manifest.size,
            sha256: split.manifest.sha256,
            parts: split.parts,
        });
    }
    let mut out =
        AtomicFile::create(output).with_context(|| format!("creating {}", output.display()))?;
    // The file's digest is taken from the bytes as they are written, not by
    // reading the file back.
    let file = HashingWriter::new(out.file().try_clone()?);
    let writer = std::io::BufWriter::with_capacity(1 << 20, file);
    let written = tar(writer, opts.compression, signed, progress)
        .and_then(|w| Ok(w.into_inner().map_err(|e| e.into_error())?.finish().1))
        .with_context(|| format!("writing {}", output.display()))?;
    progress.writing_done();
    let size = out.file().metadata()?.len();
    anyhow::ensure!(
        size == written.size,
        "{} holds {size} bytes, but {} were written",
        output.display(),
        written.size
    );
    out.commit()?;
    Ok(Written {
        size,
        sha256: written.digest,
        parts: Vec::new(),
    })
}

/// The tar stream in parts of at most `part_size` bytes, committed.
fn write_parts(
    output: &Path,
    part_size: u64,
    compression: Compression,
    signed: &Signed<'_>,
    progress: &SpaceWatch<'_>,
) -> anyhow::Result<airgap_bundle::split::CommittedParts> {
    let writer = SplitWriter::create(output, part_size)?;
    let writer = std::io::BufWriter::with_capacity(1 << 20, writer);
    tar(writer, compression, signed, progress)?
        .into_inner()
        .map_err(|e| e.into_error())?
        .finish()?
        .commit()
}

/// The tar stream of `signed` into `writer`, compressed as asked.
fn tar<W: std::io::Write>(
    writer: W,
    compression: Compression,
    signed: &Signed<'_>,
    progress: &SpaceWatch<'_>,
) -> anyhow::Result<W> {
    let mut on_bytes = |n| progress.writing_advanced(n);
    write_bundle(
        writer,
        signed.signature,
        signed.sums,
        signed.entries,
        compression,
        signed.stamp,
        &mut on_bytes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_date_epoch_is_a_number_or_unset() {
        assert_eq!(parse_source_date_epoch(None).unwrap(), None);
        assert_eq!(
            parse_source_date_epoch(Some("1700000000".into())).unwrap(),
            Some(1_700_000_000)
        );
        let err = parse_source_date_epoch(Some("yesterday".into())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "SOURCE_DATE_EPOCH=\"yesterday\" is not a number"
        );
    }
}
