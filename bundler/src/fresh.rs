//! Up-to-date checks: a build whose inputs are those of the build that wrote
//! the output already there keeps that output instead of writing it again,
//! as `make` and cargo keep fresh artifacts.
//!
//! A finished build with a persistent cache records, in
//! `<cache>/builds/<sha256 of the output's absolute path>.json`, a
//! fingerprint of everything the bundle's bytes depend on and the size,
//! mtime and inode of each file it wrote. The next build computes the
//! fingerprint again before it fetches anything; when it matches and every
//! file is as recorded, the build reports the recorded summary and stops.
//!
//! The fingerprint covers: airgap's version and the bundle schema, the k3s
//! version and architectures, compression, split size, `SOURCE_DATE_EPOCH`,
//! the signing key's id, the bytes of `images.lock` and of every manifest,
//! and the cached digests of the release's `sha256sum-<arch>.txt` listings
//! and `install.sh` (which name the k3s binaries and `k3s-images.txt`). A
//! complete lock pins every image by digest, so the images cannot move
//! without the lock changing; a lock that a build would change is never
//! fresh, because the build writes its pins back and records the lock as
//! written. Without `SOURCE_DATE_EPOCH` the build time is not an input: the
//! kept bundle keeps the time it was built at, which the report shows.
//! `--rebuild` skips the check.

use crate::cache;
use crate::release::ReleaseSource;
use crate::store::BlobStore;
use crate::summary::BuildSummary;
use airgap_bundle::atomic::write_whole;
use airgap_bundle::digest::Digest;
use airgap_bundle::split;
use airgap_bundle::write::Compression;
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// What a bundle's bytes depend on, in a form that hashes the same way
/// every time (fields in a fixed order, paths relative to the manifests).
#[derive(Serialize)]
pub struct Inputs<'a> {
    pub airgap_version: &'a str,
    pub schema_version: u32,
    pub k3s_version: &'a str,
    pub arches: &'a [String],
    pub compression: String,
    pub split: Option<u64>,
    pub source_date_epoch: Option<u64>,
    pub key_id: String,
    pub lock_sha256: Digest,
    /// (path under the manifests directory, sha256) of each manifest.
    pub manifests: Vec<(String, Digest)>,
    /// (URL, cached digest) of each release listing and of `install.sh`.
    pub release: Vec<(String, Digest)>,
}

/// Describes `compression` by what changes the output: zstd's output is the
/// same for any number of worker threads, but single-threaded differs.
pub fn compression_key(compression: Compression) -> String {
    match compression {
        Compression::None => "none".into(),
        Compression::Zstd { level, threads } => {
            format!("zstd-{level}-{}", if threads > 0 { "mt" } else { "st" })
        }
    }
}

/// The release inputs as the cache knows them; `None` when a listing is not
/// cached (the build has to fetch it, so it cannot be known to be fresh).
pub fn release_inputs(
    store: &BlobStore,
    source: &ReleaseSource,
    version: &str,
    arches: &[String],
) -> Option<Vec<(String, Digest)>> {
    let mut urls: Vec<String> = arches
        .iter()
        .map(|arch| source.asset_url(version, &crate::release::checksums_name(arch)))
        .collect();
    let install_sh = source.install_sh_url(version);
    let mut out = Vec::new();
    for url in urls.drain(..) {
        let digest = cache::lookup_url(store, &url)?;
        out.push((url, digest));
    }
    // `install.sh` is recorded only when no listing names it.
    if let Some(digest) = cache::lookup_url(store, &install_sh) {
        out.push((install_sh, digest));
    }
    Some(out)
}

/// (path under `dir`, sha256) of each manifest file.
pub fn manifest_inputs(dir: &Path, files: &[PathBuf]) -> anyhow::Result<Vec<(String, Digest)>> {
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let name = file.strip_prefix(dir).unwrap_or(file);
        out.push((name.display().to_string(), Digest::of(&bytes)));
    }
    Ok(out)
}

impl Inputs<'_> {
    pub fn fingerprint(&self) -> Digest {
        Digest::of(&serde_json::to_vec(self).expect("build inputs serialize"))
    }
}

/// A file a build wrote, as the file system saw it just after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WrittenFile {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

impl WrittenFile {
    fn stat(path: &Path) -> std::io::Result<WrittenFile> {
        let m = std::fs::metadata(path)?;
        Ok(WrittenFile {
            path: path.to_path_buf(),
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            inode: m.ino(),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    fingerprint: Digest,
    files: Vec<WrittenFile>,
    summary: BuildSummary,
}

fn record_path(cache_dir: &Path, output: &Path) -> PathBuf {
    let absolute = std::path::absolute(output).unwrap_or_else(|_| output.to_path_buf());
    cache_dir.join("builds").join(format!(
        "{}.json",
        Digest::of(absolute.as_os_str().as_encoded_bytes()).hex()
    ))
}

/// The files a build of `output` writes, as absolute paths (a later build
/// may run from another directory).
fn written_files(output: &Path, summary: &BuildSummary) -> Vec<PathBuf> {
    let mut files = if summary.parts.is_empty() {
        vec![output.to_path_buf()]
    } else {
        let mut files = summary.parts.clone();
        files.push(split::manifest_path(output));
        files
    };
    for file in &mut files {
        if let Ok(absolute) = std::path::absolute(&*file) {
            *file = absolute;
        }
    }
    files
}

/// The summary of the build that wrote `output` from the same inputs, when
/// every file it wrote is still as it left it.
pub fn check(cache_dir: &Path, output: &Path, fingerprint: &Digest) -> Option<BuildSummary> {
    let text = std::fs::read(record_path(cache_dir, output)).ok()?;
    let record: Record = serde_json::from_slice(&text).ok()?;
    if record.fingerprint != *fingerprint || record.files.is_empty() {
        return None;
    }
    for file in &record.files {
        if WrittenFile::stat(&file.path).ok().as_ref() != Some(file) {
            tracing::debug!("{} changed since it was built", file.path.display());
            return None;
        }
    }
    Some(record.summary)
}

/// Records a finished build. A failure to record only costs the next build
/// its shortcut, so it is logged, not returned.
pub fn record(cache_dir: &Path, output: &Path, fingerprint: Digest, summary: &BuildSummary) {
    let write = || -> anyhow::Result<()> {
        let files = written_files(output, summary)
            .iter()
            .map(|p| WrittenFile::stat(p).with_context(|| format!("stat {}", p.display())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let record = Record {
            fingerprint,
            files,
            summary: summary.clone(),
        };
        let path = record_path(cache_dir, output);
        std::fs::create_dir_all(path.parent().expect("a record path has a parent"))?;
        write_whole(&path, &serde_json::to_vec_pretty(&record)?, None)?;
        Ok(())
    };
    if let Err(e) = write() {
        tracing::warn!(
            "could not record the build of {} in the cache: {e:#}",
            output.display()
        );
    }
}

/// Forgets the record of `output` (before a build starts writing it).
pub fn forget(cache_dir: &Path, output: &Path) {
    let _ = std::fs::remove_file(record_path(cache_dir, output));
}
