//! Reading a bundle as one stream, under the reader rules: the signature and
//! `SHA256SUMS` come first and are checked before anything else is looked at;
//! then every entry must be a regular file or directory with a safe name,
//! listed in `SHA256SUMS`, seen once, and hash to its listed digest; at the
//! end nothing listed may be missing.
//!
//! A [`EntrySink`] receives each entry's bytes as they stream by, but learns
//! that they were good only from [`EntrySink::verified`]: it must stage what it
//! receives and publish nothing before that call. Any error ends the read;
//! the sink is then dropped and cleans up its staging.

use crate::digest::{Digest, Hashed, HashingReader};
use crate::meta::{BundleMeta, MAX_META_BYTES, META_NAME};
use crate::path::check_entry_path;
use crate::sign::{self, PublicKey};
use crate::sums::{Sums, MAX_SUMS_BYTES, SIGNATURE_NAME, SUMS_NAME};
use anyhow::Context as _;
use std::collections::BTreeSet;
use std::io::{self, Read};

/// Largest signature file accepted.
pub const MAX_SIGNATURE_BYTES: u64 = 4096;
/// Most entries accepted in one bundle.
pub const MAX_ENTRIES: usize = 200_000;

/// Whose signature makes a bundle trusted.
pub enum Trust {
    Key(PublicKey),
    /// Read without checking the signature (inspecting; the installer only
    /// with an explicit `--insecure-skip-signature`). Checksums are still
    /// enforced.
    SkipSignature,
}

/// A bundle that breaks one of the reader rules.
#[derive(Debug, thiserror::Error)]
#[error("entry {entry}: {rule}")]
pub struct RuleViolation {
    pub entry: String,
    pub rule: String,
}

fn violation(entry: &str, rule: impl Into<String>) -> anyhow::Error {
    RuleViolation {
        entry: entry.to_string(),
        rule: rule.into(),
    }
    .into()
}

/// The verified head of a bundle.
#[derive(Debug, Clone)]
pub struct Header {
    /// The signature's trusted comment, when the signature was checked.
    pub trusted_comment: Option<String>,
    pub sums: Sums,
    /// Digest of the `SHA256SUMS` bytes: names the bundle's whole content.
    pub sums_digest: Digest,
    pub meta: BundleMeta,
}

/// Receives the entries of a bundle while it streams.
pub trait EntrySink {
    /// The signature, `SHA256SUMS` and `bundle.json` are verified.
    fn begin(&mut self, header: &Header) -> anyhow::Result<()>;
    /// A regular file entry; `body` yields exactly `size` bytes (what the
    /// sink leaves unread is drained). Nothing may be published yet.
    fn entry(&mut self, path: &str, size: u64, body: &mut dyn Read) -> anyhow::Result<()>;
    /// The entry last given to [`EntrySink::entry`] matched `SHA256SUMS`.
    fn verified(&mut self, path: &str, hashed: Hashed) -> anyhow::Result<()>;
}

/// A sink that only drains: what `bundle verify` uses.
pub struct DrainSink;

impl EntrySink for DrainSink {
    fn begin(&mut self, _: &Header) -> anyhow::Result<()> {
        Ok(())
    }
    fn entry(&mut self, _: &str, _: u64, _: &mut dyn Read) -> anyhow::Result<()> {
        Ok(())
    }
    fn verified(&mut self, _: &str, _: Hashed) -> anyhow::Result<()> {
        Ok(())
    }
}

/// What a full read saw.
#[derive(Debug, Clone)]
pub struct ReadSummary {
    pub header: Header,
    pub entries: usize,
    pub bytes: u64,
}

fn entry_name<R: Read>(entry: &tar::Entry<R>) -> anyhow::Result<String> {
    let raw = entry.path_bytes();
    let name = std::str::from_utf8(&raw)
        .map_err(|_| violation(&String::from_utf8_lossy(&raw), "name is not UTF-8"))?;
    Ok(name.to_string())
}

fn read_small<R: Read>(
    entry: &mut tar::Entry<R>,
    name: &str,
    limit: u64,
) -> anyhow::Result<Vec<u8>> {
    let size = entry.size();
    if size > limit {
        return Err(violation(
            name,
            format!("{size} bytes is more than the {limit} allowed"),
        ));
    }
    let mut buf = Vec::with_capacity(size as usize);
    entry
        .take(limit + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {name}"))?;
    if buf.len() as u64 != size {
        return Err(violation(name, "truncated"));
    }
    Ok(buf)
}

/// Reads the whole bundle, feeding every entry after the header to `sink`.
pub fn read_bundle<R: Read>(
    input: R,
    trust: &Trust,
    sink: &mut dyn EntrySink,
) -> anyhow::Result<ReadSummary> {
    read(input, trust, Some(sink))
}

/// Reads only as far as `bundle.json` (for `inspect`).
pub fn read_header<R: Read>(input: R, trust: &Trust) -> anyhow::Result<Header> {
    Ok(read(input, trust, None)?.header)
}

fn read<R: Read>(
    input: R,
    trust: &Trust,
    sink: Option<&mut dyn EntrySink>,
) -> anyhow::Result<ReadSummary> {
    let mut archive = tar::Archive::new(input);
    let mut entries = archive
        .entries()
        .context("reading the bundle's tar stream")?;
    let mut next = |expect: &str| -> anyhow::Result<tar::Entry<'_, R>> {
        match entries.next() {
            Some(e) => e.with_context(|| format!("reading the bundle where {expect} should be")),
            None => Err(violation(expect, "missing: the bundle ends before it")),
        }
    };

    // 1. The signature.
    let mut sig_entry = next(SIGNATURE_NAME)?;
    let name = entry_name(&sig_entry)?;
    if name != SIGNATURE_NAME || !sig_entry.header().entry_type().is_file() {
        return Err(violation(
            &name,
            format!("the bundle must start with {SIGNATURE_NAME}"),
        ));
    }
    let signature = read_small(&mut sig_entry, SIGNATURE_NAME, MAX_SIGNATURE_BYTES)?;
    drop(sig_entry);

    // 2. The checksums, verified against the signature.
    let mut sums_entry = next(SUMS_NAME)?;
    let name = entry_name(&sums_entry)?;
    if name != SUMS_NAME || !sums_entry.header().entry_type().is_file() {
        return Err(violation(
            &name,
            format!("{SUMS_NAME} must follow {SIGNATURE_NAME}"),
        ));
    }
    let sums_bytes = read_small(&mut sums_entry, SUMS_NAME, MAX_SUMS_BYTES)?;
    drop(sums_entry);
    let trusted_comment = match trust {
        Trust::Key(pk) => {
            let sig_text = std::str::from_utf8(&signature)
                .map_err(|_| violation(SIGNATURE_NAME, "not text"))?;
            Some(sign::verify(pk, SUMS_NAME, sig_text, &sums_bytes)?)
        }
        Trust::SkipSignature => None,
    };
    let sums = Sums::parse(&sums_bytes)?;
    let sums_digest = Digest::of(&sums_bytes);

    // 3. bundle.json, checked against SHA256SUMS before it is parsed.
    let mut meta_entry = next(META_NAME)?;
    let name = entry_name(&meta_entry)?;
    if name != META_NAME || !meta_entry.header().entry_type().is_file() {
        return Err(violation(
            &name,
            format!("{META_NAME} must follow {SUMS_NAME}"),
        ));
    }
    let meta_bytes = read_small(&mut meta_entry, META_NAME, MAX_META_BYTES)?;
    drop(meta_entry);
    let expected = sums
        .get(META_NAME)
        .ok_or_else(|| violation(META_NAME, format!("not listed in {SUMS_NAME}")))?;
    Hashed {
        digest: Digest::of(&meta_bytes),
        size: meta_bytes.len() as u64,
    }
    .verify(META_NAME, expected, None)?;
    let meta = BundleMeta::parse(&meta_bytes)?;
    check_meta_against_sums(&meta, &sums)?;
    let header = Header {
        trusted_comment,
        sums,
        sums_digest,
        meta,
    };

    let Some(sink) = sink else {
        return Ok(ReadSummary {
            header,
            entries: 3,
            bytes: 0,
        });
    };
    sink.begin(&header)?;

    // 4. Everything else, each checked as it streams.
    let mut seen: BTreeSet<String> = [META_NAME.to_string()].into();
    let mut count = 3;
    let mut bytes = 0u64;
    for entry in entries {
        let entry = entry.context("reading the bundle's tar stream")?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(violation(
                &entry_name(&entry)?,
                format!("more than {MAX_ENTRIES} entries"),
            ));
        }
        let raw_name = entry_name(&entry)?;
        let name = check_entry_path(&raw_name)?.to_string();
        if name == SIGNATURE_NAME || name == SUMS_NAME || !seen.insert(name.clone()) {
            return Err(violation(&name, "duplicate entry"));
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(violation(
                &name,
                format!(
                    "{} entries are not allowed (only regular files and directories)",
                    kind_name(kind)
                ),
            ));
        }
        let expected = *header
            .sums
            .get(&name)
            .ok_or_else(|| violation(&name, format!("not listed in {SUMS_NAME}")))?;
        let size = entry.size();
        let mut reader = HashingReader::new(entry);
        sink.entry(&name, size, &mut reader)
            .with_context(|| format!("entry {name}"))?;
        io::copy(&mut reader, &mut io::sink()).with_context(|| format!("reading entry {name}"))?;
        let hashed = reader.finish();
        if hashed.size != size {
            return Err(violation(
                &name,
                format!("truncated: {} of {size} bytes", hashed.size),
            ));
        }
        hashed.verify(&name, &expected, None)?;
        bytes += size;
        sink.verified(&name, hashed)?;
    }
    let missing: Vec<&str> = header
        .sums
        .iter()
        .map(|(p, _)| p)
        .filter(|p| !seen.contains(*p))
        .collect();
    if let Some(first) = missing.first() {
        let more = if missing.len() > 1 {
            format!(" (and {} more)", missing.len() - 1)
        } else {
            String::new()
        };
        return Err(violation(
            first,
            format!("listed in {SUMS_NAME} but missing from the bundle{more}"),
        ));
    }
    Ok(ReadSummary {
        header,
        entries: count,
        bytes,
    })
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "symlink",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "FIFO",
        tar::EntryType::Continuous => "contiguous file",
        _ => "special",
    }
}

/// `bundle.json` may only describe what `SHA256SUMS` lists: every blob of
/// every image and every file must be there, so a consumer planning from
/// `bundle.json` never waits for an entry that cannot come.
fn check_meta_against_sums(meta: &BundleMeta, sums: &Sums) -> anyhow::Result<()> {
    for image in &meta.images {
        let blobs = std::iter::once(&image.digest)
            .chain(image.platforms.iter().flat_map(|p| p.blobs.iter()));
        for blob in blobs {
            let path = format!("images/{}", blob.blob_path());
            if sums.get(&path).is_none() {
                return Err(violation(
                    META_NAME,
                    format!(
                        "image {} needs {path}, which {SUMS_NAME} does not list",
                        image.reference
                    ),
                ));
            }
        }
    }
    for file in &meta.files {
        if sums.get(&file.path).is_none() {
            return Err(violation(
                META_NAME,
                format!("names file {}, which {SUMS_NAME} does not list", file.path),
            ));
        }
    }
    Ok(())
}
