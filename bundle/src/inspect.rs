//! `bundle verify` and `bundle inspect` as library calls: open a bundle file,
//! read it under the reader rules, and describe what it holds, for people
//! (`Display`) and for scripts (`serde`).

use crate::digest::Digest;
use crate::meta::{BundleMeta, FileRole};
use crate::read::{read_bundle, read_header, DrainSink, Header, Trust};
use crate::source::open_bundle;
use serde::Serialize;
use std::fmt;
use std::path::Path;

/// What `bundle verify` found: everything checked and good.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub file: String,
    pub signature: String,
    pub trusted_comment: String,
    pub k3s_version: String,
    pub entries: usize,
    pub bytes: u64,
    pub sums_digest: Digest,
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: OK", self.file)?;
        writeln!(
            f,
            "  signature: {} ({})",
            self.signature, self.trusted_comment
        )?;
        write!(
            f,
            "  {} entries, {} bytes, all match SHA256SUMS ({})",
            self.entries, self.bytes, self.sums_digest
        )
    }
}

/// Reads the whole bundle, checking the signature with `key` and every entry
/// against `SHA256SUMS`.
pub fn verify_file(path: &Path, key: crate::sign::PublicKey) -> anyhow::Result<Verified> {
    let key_id = crate::sign::public_key_id(&key);
    let input = open_bundle(path)?;
    let summary = read_bundle(input, &Trust::Key(key), &mut DrainSink)
        .map_err(|e| e.context(format!("bundle {} is not valid", path.display())))?;
    Ok(Verified {
        file: path.display().to_string(),
        signature: format!("good, key {key_id}"),
        trusted_comment: summary.header.trusted_comment.unwrap_or_default(),
        k3s_version: summary.header.meta.k3s_version,
        entries: summary.entries,
        bytes: summary.bytes,
        sums_digest: summary.header.sums_digest,
    })
}

/// What `bundle inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub file: String,
    /// `verified` when a key was given and the signature checked, else
    /// `not checked`.
    pub signature: String,
    pub sums_digest: Digest,
    pub meta: BundleMeta,
    pub dedup_saved_bytes: u64,
    /// What each architecture's nodes get.
    pub per_arch: Vec<ArchTotals>,
}

/// One architecture's share of a bundle.
#[derive(Debug, Clone, Serialize)]
pub struct ArchTotals {
    pub arch: String,
    /// Images carried for this architecture's platform.
    pub images: usize,
    /// Bytes of those images' manifests, configs and layers (a layer two
    /// images share counts twice).
    pub image_bytes: u64,
    /// Bytes of `bin/<arch>/k3s`.
    pub k3s_bytes: u64,
}

/// Per-architecture totals from `bundle.json`.
pub fn per_arch(meta: &BundleMeta) -> Vec<ArchTotals> {
    meta.arches
        .iter()
        .map(|arch| {
            let wanted = crate::oci::Platform::for_arch(arch);
            let platforms: Vec<_> = meta
                .images
                .iter()
                .filter_map(|i| {
                    i.platforms
                        .iter()
                        .find(|p| wanted.as_ref().is_some_and(|w| w.matches(&p.platform)))
                })
                .collect();
            ArchTotals {
                arch: arch.clone(),
                images: platforms.len(),
                image_bytes: platforms.iter().map(|p| p.size).sum(),
                k3s_bytes: meta
                    .files
                    .iter()
                    .filter(|f| f.role == FileRole::K3sBinary && f.arch.as_deref() == Some(arch))
                    .map(|f| f.size)
                    .sum(),
            }
        })
        .collect()
}

/// Reads the head of a bundle (signature, `SHA256SUMS`, `bundle.json`) only.
pub fn inspect_file(
    path: &Path,
    key: Option<crate::sign::PublicKey>,
) -> anyhow::Result<Inspection> {
    let input = open_bundle(path)?;
    let (trust, signature) = match key {
        Some(k) => {
            let id = crate::sign::public_key_id(&k);
            (Trust::Key(k), format!("good, key {id}"))
        }
        None => (Trust::SkipSignature, "not checked (give --key)".to_string()),
    };
    let Header {
        meta, sums_digest, ..
    } = read_header(input, &trust)
        .map_err(|e| e.context(format!("reading bundle {}", path.display())))?;
    Ok(Inspection {
        file: path.display().to_string(),
        signature,
        sums_digest,
        dedup_saved_bytes: meta.dedup_saved(),
        per_arch: per_arch(&meta),
        meta,
    })
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.meta;
        writeln!(f, "bundle     {}", self.file)?;
        writeln!(f, "k3s        {}", m.k3s_version)?;
        writeln!(f, "arches     {}", m.arches.join(", "))?;
        writeln!(f, "created    {}", crate::time::rfc3339_utc(m.created))?;
        writeln!(f, "builder    {}", m.builder)?;
        writeln!(f, "signature  {}", self.signature)?;
        writeln!(f, "content    {}", self.sums_digest)?;
        writeln!(f)?;
        writeln!(f, "images ({}):", m.images.len())?;
        for image in &m.images {
            let size: u64 = image.platforms.iter().map(|p| p.size).sum();
            writeln!(
                f,
                "  {}  {}  {}  [{}]",
                image.reference,
                image.digest.short(),
                human_bytes(size),
                image.sources.join(",")
            )?;
            for p in &image.platforms {
                writeln!(
                    f,
                    "      {:<16} {}  {}",
                    p.platform.to_string(),
                    p.digest.short(),
                    human_bytes(p.size)
                )?;
            }
        }
        writeln!(f)?;
        writeln!(f, "per arch:")?;
        for a in &self.per_arch {
            writeln!(
                f,
                "  {:<8} {} images, {}; k3s {}",
                a.arch,
                a.images,
                human_bytes(a.image_bytes),
                human_bytes(a.k3s_bytes)
            )?;
        }
        writeln!(f)?;
        writeln!(f, "files ({}):", m.files.len())?;
        for file in &m.files {
            let role = match file.role {
                FileRole::K3sBinary => "k3s binary",
                FileRole::Installer => "installer",
                FileRole::InstallScript => "install script",
                FileRole::Manifest => "manifest",
                FileRole::Lock => "lock",
            };
            writeln!(
                f,
                "  {:<40} {:>10}  {:o}  {role}",
                file.path,
                human_bytes(file.size),
                file.mode
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "blobs      {} distinct, {}",
            m.totals.blobs,
            human_bytes(m.totals.blob_bytes)
        )?;
        writeln!(
            f,
            "dedup      {} saved (images would take {} without sharing)",
            human_bytes(self.dedup_saved_bytes),
            human_bytes(m.totals.image_bytes_undeduplicated)
        )?;
        write!(
            f,
            "total      {}",
            human_bytes(m.totals.blob_bytes + m.totals.file_bytes)
        )
    }
}
