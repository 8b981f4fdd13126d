//! `airgap bundle build`: the whole connected-side pipeline, stage by stage.
//!
//! resolve (version, wanted images) -> fetch (release assets, images into a
//! content-addressed staging store, every digest verified) -> assemble
//! (bundle.json, the OCI layout's index.json, SHA256SUMS, signature) -> write
//! (one tar stream to a temporary file beside the output, renamed only when
//! complete and signed) -> record (pins written back to images.lock).

use crate::fresh;
use crate::imageset::{self, Source};
use crate::lint::{self, LintOptions, Severity};
use crate::locking::{self, BuildChecks};
use crate::progress::Progress;
use crate::registry::{PulledImage, Puller, RegistryConfig};
use crate::release::{self, ReleaseSource};
use crate::space::SpaceWatch;
use crate::store::BlobStore;
use airgap_bundle::atomic::AtomicFile;
use airgap_bundle::digest::{hash_file, Digest, HashingWriter};
use airgap_bundle::lock::{ImagesLock, LockedImage, LOCK_NAME};
use airgap_bundle::meta::{
    BundleMeta, FileMeta, FileRole, ImageMeta, PlatformMeta, Totals, META_NAME, SCHEMA_VERSION,
};
use airgap_bundle::oci::{self, Descriptor, Platform};
use airgap_bundle::reference::ImageRef;
use airgap_bundle::sign;
use airgap_bundle::split::SplitWriter;
use airgap_bundle::sums::Sums;
use airgap_bundle::write::{tar_size, write_bundle, Compression, StagedEntry, TarStamp};
use anyhow::{bail, Context as _};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

/// What a finished build reports (`--json` prints it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildSummary {
    pub file: PathBuf,
    pub size: u64,
    pub sha256: Digest,
    pub k3s_version: String,
    pub arches: Vec<String>,
    pub images: Vec<ImageSummary>,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub dedup_saved_bytes: u64,
    pub lock_updated: bool,
    /// The parts, when the bundle was split (`file` is then their base name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PathBuf>,
    /// The output was already what this build would write, and was kept
    /// ([`crate::fresh`]); the other fields describe it as it was built.
    #[serde(default)]
    pub up_to_date: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSummary {
    pub reference: String,
    pub digest: Digest,
    pub size: u64,
}

/// The default bundle name for a version and its architectures.
pub fn default_output(full_version: &str, arches: &[String]) -> PathBuf {
    PathBuf::from(format!(
        "k3s-{full_version}-linux-{}.airgap.tar.zst",
        arches.join("-")
    ))
}

fn build_time(source_date_epoch: Option<u64>) -> u64 {
    source_date_epoch.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    })
}

/// Runs the whole build. On any error nothing is left at the output path and
/// the lock file is unchanged.
pub async fn build(opts: &BuildOptions, progress: &dyn Progress) -> anyhow::Result<BuildSummary> {
    build_with(opts, &BuildChecks::default(), progress).await
}

/// [`build`], with the offline-readiness lint and `--locked` as `checks` say;
/// both run before anything is downloaded (but `k3s-images.txt`). A full
/// file system fails it with "no space left on <dir>, needed N more"
/// ([`crate::space`]).
pub async fn build_with(
    opts: &BuildOptions,
    checks: &BuildChecks,
    progress: &dyn Progress,
) -> anyhow::Result<BuildSummary> {
    let watch = SpaceWatch::new(progress);
    build_stages(opts, checks, &watch)
        .await
        .map_err(|e| watch.explain(e))
}

async fn build_stages(
    opts: &BuildOptions,
    checks: &BuildChecks,
    progress: &SpaceWatch<'_>,
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
    let manifest_files = imageset::manifest_files(&opts.manifests_dir)?;
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
        let k3s = locking::fetch_k3s_images(
            &release::http_client()?,
            &opts.release,
            &version,
            &opts.arches[0],
        )
        .await
        .with_context(|| format!("fetching the system image list of k3s {version}"))?;
        let wanted = imageset::wanted_images(&lock, &manifest_images, &k3s)?;
        locking::check_locked(&lock, &wanted, &platforms)?;
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
                return Ok(kept);
            }
        }
    }

    // Fetch the release assets of every architecture.
    let client = release::http_client()?;
    let mut k3s_images: Vec<ImageRef> = Vec::new();
    let mut binaries = Vec::new();
    let mut install_sh: Option<PathBuf> = None;
    for arch in &opts.arches {
        let assets =
            release::fetch_release(&client, &opts.release, &version, arch, &store, progress)
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

    // Pull every wanted image, pinned ones by digest.
    let wanted = imageset::wanted_images(&lock, &manifest_images, &k3s_images)?;
    // Entries no longer wanted leave the lock, as cargo drops unused crates.
    let locked_entries = lock.images.len();
    lock.images.retain(|i| wanted.contains_key(&i.reference));
    let mut lock_updated = lock.images.len() != locked_entries;
    let puller = Puller::new(opts.registry.clone())?;
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
    let pulled: Vec<PulledImage> = stream::iter(requests.into_iter().map(|(name, fetch)| {
        let (puller, store, platforms) = (&puller, &store, &platforms);
        async move {
            let mut image = puller.pull(&fetch, platforms, store, progress).await?;
            image.reference = name;
            anyhow::Ok(image)
        }
    }))
    .buffered(opts.jobs.max(1))
    .try_collect()
    .await?;

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
    let stamp = TarStamp { mtime: created };
    let (size, sha256, parts) = if let Some(part_size) = opts.split {
        let split = tokio::task::block_in_place(|| {
            let writer = SplitWriter::create(&output, part_size)?;
            let writer = std::io::BufWriter::with_capacity(1 << 20, writer);
            let mut on_bytes = |n| progress.writing_advanced(n);
            write_bundle(
                writer,
                &signature,
                &sums_text,
                &staged.entries,
                opts.compression,
                stamp,
                &mut on_bytes,
            )?
            .into_inner()
            .map_err(|e| e.into_error())?
            .finish()?
            .commit()
        })
        .with_context(|| format!("writing {} in parts", output.display()))?;
        progress.writing_done();
        (split.manifest.size, split.manifest.sha256, split.parts)
    } else {
        let mut out = AtomicFile::create(&output)
            .with_context(|| format!("creating {}", output.display()))?;
        let entries = staged.entries.clone();
        let compression = opts.compression;
        // The file's digest is taken from the bytes as they are written,
        // not by reading the file back.
        let file = HashingWriter::new(out.file().try_clone()?);
        let writer = std::io::BufWriter::with_capacity(1 << 20, file);
        let written = tokio::task::block_in_place(|| {
            let mut on_bytes = |n| progress.writing_advanced(n);
            let (_, hashed) = write_bundle(
                writer,
                &signature,
                &sums_text,
                &entries,
                compression,
                stamp,
                &mut on_bytes,
            )?
            .into_inner()
            .map_err(|e| e.into_error())?
            .finish();
            anyhow::Ok(hashed)
        })
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
        (size, written.digest, Vec::new())
    };

    // Record the pins only once the bundle exists.
    progress.recording(&opts.lock_path, lock_text.len() as u64);
    let final_lock_text = if lock_updated {
        let text = lock.render();
        let mut f = AtomicFile::create(&opts.lock_path)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.commit()?;
        text
    } else {
        lock_text
    };

    let meta = &staged.meta;
    let summary = BuildSummary {
        file: output,
        size,
        sha256,
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
        parts,
        up_to_date: false,
    };
    if let Some(dir) = &opts.cache {
        match fresh_inputs(&final_lock_text)? {
            Some(fingerprint) => fresh::record(dir, &summary.file, fingerprint, &summary),
            None => fresh::forget(dir, &summary.file),
        }
    }
    Ok(summary)
}

/// Records what an image resolved to in its lock entry.
fn pin(entry: &mut LockedImage, image: &PulledImage) {
    entry.digest = Some(image.top.digest);
    for (platform, desc) in &image.platforms {
        entry.platforms.insert(platform.to_string(), desc.digest);
    }
}

struct AssembleInputs<'a> {
    staging_root: &'a Path,
    store: &'a BlobStore,
    version: &'a str,
    arches: &'a [String],
    created: u64,
    pulled: &'a [PulledImage],
    wanted: &'a imageset::WantedImages,
    /// (arch, staged path, digest, size) of each k3s binary.
    binaries: &'a [(String, PathBuf, Digest, u64)],
    install_sh: Option<&'a Path>,
    manifest_files: &'a [PathBuf],
    lock: &'a ImagesLock,
}

struct Staged {
    meta: BundleMeta,
    sums: Sums,
    entries: Vec<StagedEntry>,
}

/// Hashes a staged file and describes it as a bundle entry.
fn stage(path: &str, source: PathBuf, mode: u32) -> anyhow::Result<StagedEntry> {
    let hashed = hash_file(&source).with_context(|| format!("hashing {}", source.display()))?;
    Ok(StagedEntry {
        path: path.to_string(),
        source,
        mode,
        size: hashed.size,
        digest: hashed.digest,
    })
}

fn file_meta(entry: &StagedEntry, role: FileRole, arch: Option<&str>) -> FileMeta {
    FileMeta {
        path: entry.path.clone(),
        size: entry.size,
        mode: entry.mode,
        role,
        arch: arch.map(str::to_string),
    }
}

/// Lays out the bundle's entries in v1 order and computes SHA256SUMS.
fn assemble(inp: AssembleInputs<'_>) -> anyhow::Result<Staged> {
    let mut files = Vec::new();
    let mut entries = Vec::new();

    // The lock as built, and the manifests.
    let lock_path = inp.staging_root.join(LOCK_NAME);
    std::fs::write(&lock_path, inp.lock.render())?;
    let mut add = |entry: StagedEntry, role, arch: Option<&str>| {
        files.push(file_meta(&entry, role, arch));
        entries.push(entry);
    };
    add(stage(LOCK_NAME, lock_path, 0o644)?, FileRole::Lock, None);
    for file in inp.manifest_files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("manifest {} has no UTF-8 name", file.display()))?;
        let entry = stage(&format!("manifests/{name}"), file.clone(), 0o644)?;
        add(entry, FileRole::Manifest, None);
    }
    if let Some(script) = inp.install_sh {
        let entry = stage("scripts/install.sh", script.to_path_buf(), 0o755)?;
        add(entry, FileRole::InstallScript, None);
    }
    for (arch, path, digest, size) in inp.binaries {
        let entry = StagedEntry {
            path: format!("bin/{arch}/k3s"),
            source: path.clone(),
            mode: 0o755,
            size: *size,
            digest: *digest,
        };
        add(entry, FileRole::K3sBinary, Some(arch));
    }

    // The image layout: every blob once; small documents before layers so an
    // installer knows each image's shape before its layers stream by.
    let mut images = Vec::new();
    let mut index_entries = Vec::new();
    let mut blob_sizes: BTreeMap<Digest, (u64, bool)> = BTreeMap::new();
    let mut undeduplicated = 0u64;
    for image in inp.pulled {
        let mut platforms = Vec::new();
        let mut image_blobs: BTreeSet<Digest> = BTreeSet::new();
        let mut note = |d: &Descriptor, small: bool| {
            blob_sizes.insert(d.digest, (d.size, small));
        };
        note(&image.top, true);
        image_blobs.insert(image.top.digest);
        for (platform, manifest_desc) in &image.platforms {
            let manifest = read_manifest(inp.store, manifest_desc, &image.reference)?;
            let mut blobs = vec![manifest_desc.digest];
            let mut size = manifest_desc.size;
            note(manifest_desc, true);
            note(&manifest.config, true);
            blobs.push(manifest.config.digest);
            size += manifest.config.size;
            for layer in &manifest.layers {
                note(layer, false);
                blobs.push(layer.digest);
                size += layer.size;
            }
            image_blobs.extend(blobs.iter().copied());
            platforms.push(PlatformMeta {
                platform: platform.clone(),
                digest: manifest_desc.digest,
                size,
                blobs,
            });
        }
        undeduplicated += image_blobs
            .iter()
            .map(|d| blob_sizes.get(d).map_or(0, |s| s.0))
            .sum::<u64>();
        images.push(ImageMeta {
            reference: image.reference.clone(),
            digest: image.top.digest,
            media_type: image.top.media_type.clone(),
            size: image.top.size,
            platforms,
            sources: inp.wanted[&image.reference]
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
        });
        index_entries.push((image.reference.to_string(), image.top.clone()));
    }
    let layout_dir = inp.staging_root.join("images");
    std::fs::create_dir_all(&layout_dir)?;
    let oci_layout = layout_dir.join("oci-layout");
    std::fs::write(&oci_layout, oci::OCI_LAYOUT_FILE)?;
    let index_json = layout_dir.join("index.json");
    std::fs::write(
        &index_json,
        serde_json::to_vec_pretty(&oci::layout_index(&index_entries))?,
    )?;
    let mut layout_entries = vec![
        stage("images/oci-layout", oci_layout, 0o644)?,
        stage("images/index.json", index_json, 0o644)?,
    ];
    let mut ordered: Vec<(&Digest, &(u64, bool))> = blob_sizes.iter().collect();
    ordered.sort_by_key(|(d, (_, small))| (!*small, **d));
    for (digest, (size, _)) in ordered {
        layout_entries.push(StagedEntry {
            path: format!("images/{}", digest.blob_path()),
            source: inp.store.path(digest),
            mode: 0o644,
            size: *size,
            digest: *digest,
        });
    }

    let meta = BundleMeta {
        schema: SCHEMA_VERSION,
        k3s_version: inp.version.to_string(),
        arches: inp.arches.to_vec(),
        created: inp.created,
        builder: format!("airgap {}", env!("CARGO_PKG_VERSION")),
        images,
        files: files.clone(),
        totals: Totals {
            blobs: blob_sizes.len() as u64,
            blob_bytes: blob_sizes.values().map(|s| s.0).sum(),
            image_bytes_undeduplicated: undeduplicated,
            file_bytes: files.iter().map(|f| f.size).sum(),
        },
    };
    let meta_path = inp.staging_root.join(META_NAME);
    std::fs::write(&meta_path, serde_json::to_vec_pretty(&meta)?)?;
    let mut all = vec![stage(META_NAME, meta_path, 0o644)?];
    all.extend(entries);
    all.extend(layout_entries);

    let mut sums = Sums::new();
    for entry in &all {
        sums.push(&entry.path, entry.digest)?;
    }
    Ok(Staged {
        meta,
        sums,
        entries: all,
    })
}

/// Reads an image manifest back from the store (already verified on pull).
fn read_manifest(
    store: &BlobStore,
    desc: &Descriptor,
    reference: &ImageRef,
) -> anyhow::Result<oci::Manifest> {
    let bytes = std::fs::read(store.path(&desc.digest))
        .with_context(|| format!("reading manifest {} of {reference}", desc.digest))?;
    match oci::AnyManifest::parse(&reference.to_string(), Some(&desc.media_type), &bytes)? {
        oci::AnyManifest::Image(m) => Ok(m),
        oci::AnyManifest::Index(_) => {
            bail!("{reference}: nested index {} is not supported", desc.digest)
        }
    }
}
