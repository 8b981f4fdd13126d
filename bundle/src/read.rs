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
use crate::oci::{Index, ANNOTATION_REF_NAME, MAX_MANIFEST_BYTES};
use crate::path::check_entry_path;
use crate::sign::{self, PublicKey};
use crate::sums::{Sums, MAX_SUMS_BYTES, SIGNATURE_NAME, SUMS_NAME};
use anyhow::Context as _;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
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

/// How many bytes of tar stream the reader lets through: before the header
/// is verified only enough for the signature, `SHA256SUMS` and `bundle.json`;
/// after it, what `SHA256SUMS` and `bundle.json` account for plus tar's
/// overhead. However a (zstd) stream expands, reading stops there.
struct Budget {
    used: Cell<u64>,
    limit: Cell<u64>,
}

struct BudgetReader<'b, R> {
    inner: R,
    budget: &'b Budget,
}

impl<R: Read> Read for BudgetReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (used, limit) = (self.budget.used.get(), self.budget.limit.get());
        if buf.is_empty() {
            return Ok(0);
        }
        if used >= limit {
            return Err(io::Error::other(format!(
                "the bundle's tar stream goes on past the {limit} bytes its SHA256SUMS and bundle.json account for"
            )));
        }
        let room = usize::try_from(limit - used).unwrap_or(usize::MAX);
        let max = buf.len().min(room);
        let n = self.inner.read(&mut buf[..max])?;
        self.budget.used.set(used + n as u64);
        Ok(n)
    }
}

/// Tar bytes allowed per entry beyond its data: its header block and padding.
const ENTRY_OVERHEAD: u64 = 1024;
/// Most directory entries accepted (the builder writes none).
const MAX_DIRECTORIES: u64 = 4096;
/// Slack for the end-of-archive blocks and a tar writer's record padding.
const TRAILER_BYTES: u64 = 1 << 20;
/// Before the header is verified: the three head documents and their headers.
const HEAD_BUDGET: u64 = MAX_SIGNATURE_BYTES + MAX_SUMS_BYTES + MAX_META_BYTES + 8 * ENTRY_OVERHEAD;
/// The OCI layout's `index.json`, parsed and checked against `bundle.json`.
pub const INDEX_NAME: &str = "images/index.json";

/// The largest size each listed entry may have, from `bundle.json`: a file
/// or a top-level image manifest exactly its declared size, a platform's
/// blob at most that platform's size, anything else at most a manifest's
/// limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeRule {
    Exactly(u64),
    AtMost(u64),
}

fn size_rules(meta: &BundleMeta, sums: &Sums) -> BTreeMap<String, SizeRule> {
    let mut rules = BTreeMap::new();
    for image in &meta.images {
        for platform in &image.platforms {
            for blob in &platform.blobs {
                let rule = rules
                    .entry(format!("images/{}", blob.blob_path()))
                    .or_insert(SizeRule::AtMost(0));
                if let SizeRule::AtMost(m) = rule {
                    *m = (*m).max(platform.size);
                }
            }
        }
    }
    for image in &meta.images {
        rules.insert(
            format!("images/{}", image.digest.blob_path()),
            SizeRule::Exactly(image.size),
        );
    }
    for file in &meta.files {
        rules.insert(file.path.clone(), SizeRule::Exactly(file.size));
    }
    for (path, _) in sums.iter() {
        rules
            .entry(path.to_string())
            .or_insert(SizeRule::AtMost(MAX_MANIFEST_BYTES));
    }
    rules
}

fn check_size(name: &str, size: u64, rule: SizeRule) -> anyhow::Result<()> {
    match rule {
        SizeRule::Exactly(n) if size != n => Err(violation(
            name,
            format!("{size} bytes, but {META_NAME} declares {n}"),
        )),
        SizeRule::AtMost(n) if size > n => Err(violation(
            name,
            format!("{size} bytes, more than the {n} {META_NAME} allows for it"),
        )),
        _ => Ok(()),
    }
}

fn read<R: Read>(
    input: R,
    trust: &Trust,
    sink: Option<&mut dyn EntrySink>,
) -> anyhow::Result<ReadSummary> {
    let budget = Budget {
        used: Cell::new(0),
        limit: Cell::new(HEAD_BUDGET),
    };
    let mut archive = tar::Archive::new(BudgetReader {
        inner: input,
        budget: &budget,
    });
    // Raw: GNU long names and PAX headers come as entries of their own (and
    // are refused), rather than being read into memory and applied.
    let mut entries = archive
        .entries()
        .context("reading the bundle's tar stream")?
        .raw(true);
    let mut next = |expect: &str| -> anyhow::Result<tar::Entry<'_, _>> {
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
    if let Some(comment) = &trusted_comment {
        check_meta_against_comment(&meta, &sums_digest, comment)?;
    }
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

    // From here on the stream may be as long as the verified header says.
    let rules = size_rules(&header.meta, &header.sums);
    let declared = rules
        .iter()
        .filter(|(p, _)| p.as_str() != META_NAME)
        .map(|(_, r)| match r {
            SizeRule::Exactly(n) | SizeRule::AtMost(n) => *n,
        })
        .fold(0u64, u64::saturating_add);
    let overhead = (header.sums.len() as u64 + MAX_DIRECTORIES) * ENTRY_OVERHEAD + TRAILER_BYTES;
    budget.limit.set(
        budget
            .used
            .get()
            .saturating_add(declared)
            .saturating_add(overhead),
    );

    // 4. Everything else, each checked as it streams.
    let mut seen: BTreeSet<String> = [META_NAME.to_string()].into();
    let mut count = 3;
    let mut bytes = 0u64;
    let mut last = META_NAME.to_string();
    let mut directories = 0u64;
    for entry in entries {
        let mut entry =
            entry.with_context(|| format!("reading the bundle's tar stream after entry {last}"))?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(violation(
                &entry_name(&entry)?,
                format!("more than {MAX_ENTRIES} entries"),
            ));
        }
        let raw_name = entry_name(&entry)?;
        let kind = entry.header().entry_type();
        if let Some(what) = extension_name(kind) {
            return Err(violation(
                &raw_name,
                format!("{what} entries are not allowed (only regular files and directories)"),
            ));
        }
        let name = check_entry_path(&raw_name)?.to_string();
        last.clone_from(&name);
        if name == SIGNATURE_NAME || name == SUMS_NAME || !seen.insert(name.clone()) {
            return Err(violation(&name, "duplicate entry"));
        }
        let size = entry.size();
        if kind.is_dir() {
            if size != 0 {
                return Err(violation(
                    &name,
                    format!("a directory with {size} bytes of data"),
                ));
            }
            directories += 1;
            if directories > MAX_DIRECTORIES {
                return Err(violation(
                    &name,
                    format!("more than {MAX_DIRECTORIES} directory entries"),
                ));
            }
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
        if let Some(rule) = rules.get(&name) {
            check_size(&name, size, *rule)?;
        }
        let hashed = if name == INDEX_NAME {
            // Read whole (it is small and checked above), checked, then handed on.
            let body = read_small(&mut entry, &name, MAX_MANIFEST_BYTES)?;
            let hashed = Hashed {
                digest: Digest::of(&body),
                size,
            };
            hashed.verify(&name, &expected, None)?;
            check_index(&body, &header.meta)?;
            sink.entry(&name, size, &mut io::Cursor::new(&body))
                .with_context(|| format!("entry {name}"))?;
            hashed
        } else {
            let mut reader = HashingReader::new(entry);
            sink.entry(&name, size, &mut reader)
                .with_context(|| format!("entry {name}"))?;
            io::copy(&mut reader, &mut io::sink())
                .with_context(|| format!("reading entry {name}"))?;
            let hashed = reader.finish();
            if hashed.size != size {
                return Err(violation(
                    &name,
                    format!("truncated: {} of {size} bytes", hashed.size),
                ));
            }
            hashed.verify(&name, &expected, None)?;
            hashed
        };
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

/// Tar's extension headers, which change the entry after them.
fn extension_name(kind: tar::EntryType) -> Option<&'static str> {
    match kind {
        tar::EntryType::XHeader => Some("PAX extended header"),
        tar::EntryType::XGlobalHeader => Some("PAX global header"),
        tar::EntryType::GNULongName => Some("GNU long-name"),
        tar::EntryType::GNULongLink => Some("GNU long-link"),
        tar::EntryType::GNUSparse => Some("GNU sparse"),
        _ => None,
    }
}

/// The OCI layout's `index.json` names each image once, by the reference and
/// digest `bundle.json` gives it, so a tool reading the layout (skopeo,
/// `ctr import`) sees the images the installer names.
fn check_index(bytes: &[u8], meta: &BundleMeta) -> anyhow::Result<()> {
    let index: Index = serde_json::from_slice(bytes)
        .map_err(|e| violation(INDEX_NAME, format!("not an OCI image index: {e}")))?;
    let mut named: BTreeMap<&str, &Digest> = BTreeMap::new();
    for desc in &index.manifests {
        let Some(reference) = desc.annotations.get(ANNOTATION_REF_NAME) else {
            continue;
        };
        if let Some(first) = named.insert(reference, &desc.digest) {
            return Err(violation(
                INDEX_NAME,
                format!(
                    "names image {reference} twice ({first} and {})",
                    desc.digest
                ),
            ));
        }
        match meta.image(reference) {
            Some(image) if image.digest == desc.digest => {}
            Some(image) => {
                return Err(violation(
                    INDEX_NAME,
                    format!(
                        "names image {reference} as {}, but {META_NAME} says {}",
                        desc.digest, image.digest
                    ),
                ))
            }
            None => {
                return Err(violation(
                    INDEX_NAME,
                    format!("names image {reference}, which {META_NAME} does not list"),
                ))
            }
        }
    }
    Ok(())
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
/// The signature's trusted comment names the bundle it signs (`airgap
/// bundle k3s=V arch=A,B created=T sums=sha256:…`): `bundle.json` must say
/// the same, so an old signed `SHA256SUMS` cannot be passed off with
/// another version's or build time's `bundle.json`, and the comment a user
/// is shown is the bundle's.
fn check_meta_against_comment(
    meta: &BundleMeta,
    sums_digest: &Digest,
    comment: &str,
) -> anyhow::Result<()> {
    check_comment(
        comment,
        sums_digest,
        &meta.k3s_version,
        &meta.arches,
        meta.created,
    )
}

fn check_comment(
    comment: &str,
    sums_digest: &Digest,
    k3s_version: &str,
    arches: &[String],
    created: u64,
) -> anyhow::Result<()> {
    let field = |key: &str| {
        comment
            .strip_prefix("airgap bundle ")?
            .split(' ')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    let mismatch = |what: &str, signed: Option<&str>, found: String| {
        violation(
            META_NAME,
            format!(
                "its {what} ({found}) is not the one the signature's trusted comment names ({}): {comment:?}",
                signed.unwrap_or("none")
            ),
        )
    };
    let sums = sums_digest.to_string();
    if field("sums") != Some(sums.as_str()) {
        return Err(mismatch("SHA256SUMS digest", field("sums"), sums));
    }
    if field("k3s") != Some(k3s_version) {
        return Err(mismatch(
            "k3s version",
            field("k3s"),
            k3s_version.to_string(),
        ));
    }
    let created = created.to_string();
    if field("created") != Some(created.as_str()) {
        return Err(mismatch("build time", field("created"), created));
    }
    let mut signed: Vec<&str> = field("arch").unwrap_or_default().split(',').collect();
    let mut found: Vec<&str> = arches.iter().map(String::as_str).collect();
    signed.sort_unstable();
    found.sort_unstable();
    if signed != found {
        return Err(mismatch("arches", field("arch"), arches.join(",")));
    }
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trusted_comment_must_name_the_bundle() {
        let sums = Digest::of(b"SHA256SUMS");
        let arches = vec!["amd64".to_string(), "arm64".to_string()];
        let comment =
            format!("airgap bundle k3s=v1.20.6+k3s1 arch=arm64,amd64 created=1700 sums={sums}");
        check_comment(&comment, &sums, "v1.20.6+k3s1", &arches, 1700).unwrap();
        for (case, version, created, arches) in [
            ("another version", "v1.20.7+k3s1", 1700, arches.clone()),
            ("another build time", "v1.20.6+k3s1", 1699, arches.clone()),
            (
                "other arches",
                "v1.20.6+k3s1",
                1700,
                vec!["amd64".to_string()],
            ),
        ] {
            let err = check_comment(&comment, &sums, version, &arches, created).unwrap_err();
            assert!(
                format!("{err}").starts_with("entry bundle.json: its "),
                "{case}: {err}"
            );
        }
        let other_sums = Digest::of(b"other");
        assert!(check_comment(&comment, &other_sums, "v1.20.6+k3s1", &arches, 1700).is_err());
        // A comment that names no bundle (a hand-signed SHA256SUMS) binds nothing.
        assert!(check_comment("timestamp:1700", &sums, "v1.20.6+k3s1", &arches, 1700).is_err());
    }

    #[test]
    fn the_budget_stops_a_stream_that_goes_on() {
        let budget = Budget {
            used: Cell::new(0),
            limit: Cell::new(1000),
        };
        let mut r = BudgetReader {
            inner: io::repeat(0),
            budget: &budget,
        };
        let mut buf = Vec::new();
        let err = r.read_to_end(&mut buf).unwrap_err();
        assert_eq!(buf.len(), 1000);
        assert!(
            err.to_string().contains("goes on past the 1000 bytes"),
            "{err}"
        );
        budget.limit.set(1500);
        let mut more = [0u8; 4096];
        assert_eq!(r.read(&mut more).unwrap(), 500);
    }

    #[test]
    fn size_rules_follow_bundle_json() {
        assert!(check_size("a", 5, SizeRule::Exactly(5)).is_ok());
        let err = check_size("a", 6, SizeRule::Exactly(5)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "entry a: 6 bytes, but bundle.json declares 5"
        );
        assert!(check_size("b", 5, SizeRule::AtMost(5)).is_ok());
        assert!(check_size("b", 6, SizeRule::AtMost(5)).is_err());
    }
}
