//! Writing a bundle: one tar stream in v1 order (signature, `SHA256SUMS`,
//! `bundle.json`, then every other entry), optionally zstd-compressed.
//!
//! Entries are streamed from staged files on disk; each is hashed again as it
//! is copied into the tar and must still match the digest that was signed, so
//! a staging area changed behind the builder's back cannot produce a bundle
//! whose contents differ from its signature.

use crate::digest::{Digest, HashingReader};
use crate::sums::{SIGNATURE_NAME, SUMS_NAME};
use anyhow::Context as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// A file ready to go into the bundle.
#[derive(Debug, Clone)]
pub struct StagedEntry {
    /// Name inside the bundle.
    pub path: String,
    /// Where its bytes are now.
    pub source: PathBuf,
    pub mode: u32,
    pub size: u64,
    pub digest: Digest,
}

/// How the tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd { level: i32, threads: u32 },
}

impl Compression {
    /// zstd at `level` with one worker thread per CPU this process may use
    /// (1 when that cannot be told): what `bundle build` compresses with.
    pub fn zstd(level: i32) -> Compression {
        let threads = std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1);
        Compression::Zstd { level, threads }
    }
}

/// Fixed metadata for every tar header, so that the same inputs give the
/// same bytes (reproducible builds).
#[derive(Debug, Clone, Copy)]
pub struct TarStamp {
    pub mtime: u64,
}

fn header(size: u64, mode: u32, stamp: TarStamp) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(stamp.mtime);
    h
}

/// The size of the uncompressed tar [`write_bundle`] writes: a 512-byte
/// header and the body padded to 512 for each entry, then two zero blocks.
/// (An entry name longer than ustar holds would add a GNU long-name entry;
/// the bundle's names are far shorter.)
pub fn tar_size(signature: &str, sums: &str, entries: &[StagedEntry]) -> u64 {
    let entry = |size: u64| 512 + size.div_ceil(512) * 512;
    entry(signature.len() as u64)
        + entry(sums.len() as u64)
        + entries.iter().map(|e| entry(e.size)).sum::<u64>()
        + 1024
}

/// Writes the whole bundle to `out`: the signature and checksums first, then
/// `entries` in the order given. Returns `out` when everything was written.
pub fn write_bundle<W: Write>(
    out: W,
    signature: &str,
    sums: &str,
    entries: &[StagedEntry],
    compression: Compression,
    stamp: TarStamp,
    on_bytes: &mut dyn FnMut(u64),
) -> anyhow::Result<W> {
    match compression {
        Compression::None => write_tar(out, signature, sums, entries, stamp, on_bytes),
        Compression::Zstd { level, threads } => {
            let mut enc = zstd::stream::write::Encoder::new(out, level)?;
            if threads > 1 {
                enc.multithread(threads)
                    .context("enabling multi-threaded zstd")?;
            }
            enc.include_checksum(true)?;
            let enc = write_tar(enc, signature, sums, entries, stamp, on_bytes)?;
            Ok(enc.finish()?)
        }
    }
}

fn write_tar<W: Write>(
    out: W,
    signature: &str,
    sums: &str,
    entries: &[StagedEntry],
    stamp: TarStamp,
    on_bytes: &mut dyn FnMut(u64),
) -> anyhow::Result<W> {
    let mut tar = tar::Builder::new(out);
    for (name, text) in [(SIGNATURE_NAME, signature), (SUMS_NAME, sums)] {
        let mut h = header(text.len() as u64, 0o644, stamp);
        tar.append_data(&mut h, name, text.as_bytes())
            .with_context(|| format!("writing {name}"))?;
    }
    for entry in entries {
        let file = File::open(&entry.source)
            .with_context(|| format!("opening {} for {}", entry.source.display(), entry.path))?;
        let mut reader = HashingReader::new(ProgressReader {
            inner: file.take(entry.size),
            on_bytes: &mut *on_bytes,
        });
        let mut h = header(entry.size, entry.mode, stamp);
        tar.append_data(&mut h, &entry.path, &mut reader)
            .with_context(|| format!("writing {}", entry.path))?;
        reader
            .finish()
            .verify(&entry.path, &entry.digest, Some(entry.size))
            .context("a staged file changed while the bundle was written")?;
    }
    Ok(tar.into_inner()?)
}

struct ProgressReader<'a, R> {
    inner: R,
    on_bytes: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.on_bytes)(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_size_is_what_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<StagedEntry> = [0usize, 1, 511, 512, 513, 70_000]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let bytes = vec![7u8; n];
                let source = dir.path().join(i.to_string());
                std::fs::write(&source, &bytes).unwrap();
                StagedEntry {
                    path: format!("images/blobs/sha256/{}", Digest::of(&bytes).hex()),
                    source,
                    mode: 0o644,
                    size: n as u64,
                    digest: Digest::of(&bytes),
                }
            })
            .collect();
        let out = write_bundle(
            Vec::new(),
            "sig",
            "sums\n",
            &entries,
            Compression::None,
            TarStamp { mtime: 0 },
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(out.len() as u64, tar_size("sig", "sums\n", &entries));
    }
}
