//! The assemble stage of `bundle build`: from what the fetch stage stored,
//! the bundle's entries in v1 order (the lock, manifests, install script and
//! k3s binaries; `bundle.json` first; then the OCI layout with every blob
//! once, small documents before layers) and their `SHA256SUMS`.
//!
//! Trusts the store: every blob in it was verified when it was stored. Each
//! staged file is hashed here, and the tar writer hashes it again as it
//! copies it, so what is signed is what is written.

use crate::imageset;
use crate::registry::PulledImage;
use crate::store::BlobStore;
use airgap_bundle::digest::{hash_file, Digest};
use airgap_bundle::images_lock::{ImagesLock, LOCK_NAME};
use airgap_bundle::meta::{
    BundleMeta, FileMeta, FileRole, ImageMeta, PlatformMeta, Totals, META_NAME, SCHEMA_VERSION,
};
use airgap_bundle::oci::{self, Descriptor};
use airgap_bundle::reference::ImageRef;
use airgap_bundle::sums::Sums;
use airgap_bundle::write::StagedEntry;
use anyhow::{bail, Context as _};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub(crate) struct AssembleInputs<'a> {
    pub(crate) staging_root: &'a Path,
    pub(crate) store: &'a BlobStore,
    pub(crate) version: &'a str,
    pub(crate) arches: &'a [String],
    pub(crate) created: u64,
    pub(crate) pulled: &'a [PulledImage],
    pub(crate) wanted: &'a imageset::WantedImages,
    /// (arch, staged path, digest, size) of each k3s binary.
    pub(crate) binaries: &'a [(String, PathBuf, Digest, u64)],
    pub(crate) install_sh: Option<&'a Path>,
    pub(crate) manifest_files: &'a [PathBuf],
    pub(crate) lock: &'a ImagesLock,
}

pub(crate) struct Staged {
    pub(crate) meta: BundleMeta,
    pub(crate) sums: Sums,
    pub(crate) entries: Vec<StagedEntry>,
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
pub(crate) fn assemble(inp: AssembleInputs<'_>) -> anyhow::Result<Staged> {
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
