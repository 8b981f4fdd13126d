//! A bundle split into parts for file systems that cap a file's size (FAT32:
//! 4 GiB − 1): `NAME.part000`, `NAME.part001`, … are the bundle's bytes cut
//! in order (`cat NAME.part* > NAME` gives the bundle back), and `NAME.parts`
//! lists each part with its size, its sha256 and the sha256 of its first
//! 64 KiB.
//!
//! The list is not signed and need not be: the stream the parts make up is
//! still read under the reader rules, signature first. The list only lets a
//! missing, truncated, foreign or swapped part be named before the stream is
//! read (sizes and heads, a cheap check), and a damaged one when its end is
//! reached (the full sha256, checked as it streams).

use crate::atomic::{AtomicFile, ModeSupport};
use crate::digest::{Digest, Hasher};
use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Suffix of the part list.
pub const PARTS_SUFFIX: &str = ".parts";
/// How much of each part the head digest covers.
pub const HEAD_BYTES: u64 = 64 * 1024;
/// The largest file FAT32 can hold.
pub const FAT_MAX_FILE: u64 = (4 << 30) - 1;
/// The smallest part size accepted (smaller only multiplies files).
pub const MIN_PART_SIZE: u64 = 4096;
/// Largest part list accepted.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
const SCHEMA: u32 = 1;

/// Parses a part size: bytes (`4096`), or a number with `K`, `M`, `G`
/// (powers of 1024; `KiB`, `MiB`, `GiB` too), or `fat32` for 4 GiB − 1.
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("fat32") || t.eq_ignore_ascii_case("fat") {
        return Ok(FAT_MAX_FILE);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .with_context(|| format!("size {text:?}: expected a number of bytes, e.g. 4000M or 1G"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => bail!("size {text:?}: unknown unit {unit:?} (use K, M or G, powers of 1024)"),
    };
    let size = n
        .checked_mul(mult)
        .with_context(|| format!("size {text:?} is too large"))?;
    if size < MIN_PART_SIZE {
        bail!("size {text:?} is smaller than the {MIN_PART_SIZE} bytes a part needs at least");
    }
    Ok(size)
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut name = base.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// `BASE.partNNN` (zero-based, at least three digits).
pub fn part_path(base: &Path, index: usize) -> PathBuf {
    with_suffix(base, &format!(".part{index:03}"))
}

/// `BASE.parts`.
pub fn manifest_path(base: &Path) -> PathBuf {
    with_suffix(base, PARTS_SUFFIX)
}

/// `BASE.partNNN` -> (`BASE`, NNN).
pub fn split_part_name(path: &Path) -> Option<(PathBuf, usize)> {
    let s = path.to_str()?;
    let (base, digits) = s.rsplit_once(".part")?;
    if digits.len() < 3 || !digits.bytes().all(|b| b.is_ascii_digit()) || base.is_empty() {
        return None;
    }
    Some((PathBuf::from(base), digits.parse().ok()?))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// `NAME.parts`: the parts in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartsManifest {
    pub schema: u32,
    /// The bundle's file name (without a part suffix).
    pub bundle: String,
    /// Size and sha256 of the whole bundle (all parts in order).
    pub size: u64,
    pub sha256: Digest,
    /// The size every part but the last has.
    pub part_size: u64,
    pub parts: Vec<PartInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// File name, in the bundle's directory.
    pub name: String,
    pub size: u64,
    pub sha256: Digest,
    /// sha256 of the first [`HEAD_BYTES`] (or all, when smaller).
    pub head_sha256: Digest,
}

impl PartsManifest {
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        let m: PartsManifest = serde_json::from_slice(bytes)?;
        if m.schema != SCHEMA {
            bail!("schema {} is not supported (expected {SCHEMA})", m.schema);
        }
        if m.parts.is_empty() {
            bail!("lists no parts");
        }
        for p in &m.parts {
            if p.name.contains('/') || p.name.starts_with('.') {
                bail!("part name {:?} is not a plain file name", p.name);
            }
        }
        Ok(m)
    }
}

// ---------------------------------------------------------------- writing

/// A part (or the list) published by rename once complete; a stick's FAT
/// keeps no modes, and a stick is the reason parts exist.
fn publish_file(target: &Path) -> anyhow::Result<AtomicFile> {
    AtomicFile::create_with_mode(target, 0o644, ModeSupport::IfKept)
}

struct OpenPart {
    file: AtomicFile,
    hasher: Hasher,
    head: Hasher,
}

impl OpenPart {
    fn close(self) -> (AtomicFile, PartInfo) {
        let name = file_name(self.file.target());
        let head = self.head.finish().digest;
        let whole = self.hasher.finish();
        let info = PartInfo {
            name,
            size: whole.size,
            sha256: whole.digest,
            head_sha256: head,
        };
        (self.file, info)
    }
}

/// Writes one stream as `BASE.part000`, `BASE.part001`, … of at most
/// `part_size` bytes each, all temporary until [`SplitParts::commit`].
pub struct SplitWriter {
    base: PathBuf,
    part_size: u64,
    current: Option<OpenPart>,
    done: Vec<(AtomicFile, PartInfo)>,
    whole: Hasher,
}

impl SplitWriter {
    pub fn create(base: &Path, part_size: u64) -> anyhow::Result<Self> {
        if part_size < MIN_PART_SIZE {
            bail!("a part must hold at least {MIN_PART_SIZE} bytes, not {part_size}");
        }
        Ok(Self {
            base: base.to_path_buf(),
            part_size,
            current: None,
            done: Vec::new(),
            whole: Hasher::new(),
        })
    }

    fn open_next(&mut self) -> io::Result<&mut OpenPart> {
        if self.current.is_none() {
            let path = part_path(&self.base, self.done.len());
            let file = publish_file(&path).map_err(io::Error::other)?;
            self.current = Some(OpenPart {
                file,
                hasher: Hasher::new(),
                head: Hasher::new(),
            });
        }
        Ok(self.current.as_mut().expect("just opened"))
    }

    /// Closes the last part; nothing is published yet.
    pub fn finish(mut self) -> anyhow::Result<SplitParts> {
        if self.current.is_none() && self.done.is_empty() {
            self.open_next()?;
        }
        if let Some(part) = self.current.take() {
            self.done.push(part.close());
        }
        let whole = self.whole.finish();
        let manifest = PartsManifest {
            schema: SCHEMA,
            bundle: file_name(&self.base),
            size: whole.size,
            sha256: whole.digest,
            part_size: self.part_size,
            parts: self.done.iter().map(|(_, i)| i.clone()).collect(),
        };
        Ok(SplitParts {
            base: self.base,
            files: self.done.into_iter().map(|(f, _)| f).collect(),
            manifest,
        })
    }
}

impl Write for SplitWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let part_size = self.part_size;
        let part = self.open_next()?;
        let room = part_size - part.hasher.len();
        let n = (buf.len() as u64).min(room) as usize;
        let n = part.file.write(&buf[..n])?;
        let head_room = HEAD_BYTES.saturating_sub(part.head.len()) as usize;
        part.head.update(&buf[..n.min(head_room)]);
        part.hasher.update(&buf[..n]);
        let full = part.hasher.len() == part_size;
        self.whole.update(&buf[..n]);
        if full {
            let part = self.current.take().expect("a part is open");
            self.done.push(part.close());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.current.as_mut() {
            Some(p) => p.file.flush(),
            None => Ok(()),
        }
    }
}

/// Every part written, none published.
pub struct SplitParts {
    base: PathBuf,
    files: Vec<AtomicFile>,
    pub manifest: PartsManifest,
}

/// What [`SplitParts::commit`] published.
#[derive(Debug, Clone)]
pub struct CommittedParts {
    pub manifest_path: PathBuf,
    pub parts: Vec<PathBuf>,
    pub manifest: PartsManifest,
}

impl SplitParts {
    /// The temporary files, in order (to verify them before publishing).
    pub fn temp_paths(&self) -> Vec<PathBuf> {
        self.files
            .iter()
            .map(|f| f.temp_path().to_path_buf())
            .collect()
    }

    /// Renames every part into place, then writes the list, then removes
    /// what an earlier build of the same name left that would now mislead a
    /// reader: higher-numbered parts and an unsplit file of the bundle's name.
    pub fn commit(self) -> anyhow::Result<CommittedParts> {
        let mut parts = Vec::new();
        for f in self.files {
            parts.push(f.commit()?);
        }
        let manifest_path = manifest_path(&self.base);
        let mut list = publish_file(&manifest_path)?;
        let mut text = serde_json::to_vec_pretty(&self.manifest)?;
        text.push(b'\n');
        list.write_all(&text)
            .with_context(|| format!("writing {}", manifest_path.display()))?;
        list.commit()?;
        let mut stale = parts.len();
        while part_path(&self.base, stale).is_file() {
            let p = part_path(&self.base, stale);
            std::fs::remove_file(&p).with_context(|| format!("removing stale {}", p.display()))?;
            stale += 1;
        }
        if self.base.is_file() {
            std::fs::remove_file(&self.base)
                .with_context(|| format!("removing the unsplit {}", self.base.display()))?;
        }
        Ok(CommittedParts {
            manifest_path,
            parts,
            manifest: self.manifest,
        })
    }
}

// ---------------------------------------------------------------- reading

/// Where a bundle's bytes are.
#[derive(Debug, Clone)]
pub enum Located {
    /// One file.
    Single(PathBuf),
    /// Parts, checked against their list (present, sizes, heads).
    Parts {
        manifest_path: PathBuf,
        manifest: PartsManifest,
        paths: Vec<PathBuf>,
    },
}

/// Finds a bundle's bytes from what the user named: the bundle file, its
/// name without a part suffix, any `NAME.partNNN`, or `NAME.parts`. Parts are
/// checked against their list before any is read; a problem names the part.
pub fn locate(path: &Path) -> anyhow::Result<Located> {
    let base = if let Some((base, _)) = split_part_name(path) {
        base
    } else if let Some(base) = path
        .to_str()
        .and_then(|s| s.strip_suffix(PARTS_SUFFIX))
        .filter(|b| !b.is_empty())
    {
        PathBuf::from(base)
    } else if path.is_file() || !part_path(path, 0).exists() && !manifest_path(path).exists() {
        return Ok(Located::Single(path.to_path_buf()));
    } else {
        path.to_path_buf()
    };
    let list = manifest_path(&base);
    let bytes = match File::open(&list) {
        Ok(f) => {
            let mut buf = Vec::new();
            f.take(MAX_MANIFEST_BYTES + 1)
                .read_to_end(&mut buf)
                .with_context(|| format!("reading {}", list.display()))?;
            if buf.len() as u64 > MAX_MANIFEST_BYTES {
                bail!(
                    "{} is larger than {MAX_MANIFEST_BYTES} bytes",
                    list.display()
                );
            }
            buf
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let found: Vec<String> = (0..)
                .map(|i| part_path(&base, i))
                .take_while(|p| p.exists())
                .map(|p| file_name(&p))
                .collect();
            let found = match found.as_slice() {
                [] => "no parts".to_string(),
                [one] => one.clone(),
                [first, .., last] => format!("{} parts, {first} to {last}", found.len()),
            };
            bail!(
                "bundle {}: its part list {} is missing (found {}); it says how many parts \
                 there are and in which order",
                base.display(),
                file_name(&list),
                found
            );
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", list.display())),
    };
    let manifest =
        PartsManifest::parse(&bytes).with_context(|| format!("reading {}", list.display()))?;
    let dir = match base.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let paths: Vec<PathBuf> = manifest.parts.iter().map(|p| dir.join(&p.name)).collect();
    check_parts(&list, &manifest, &paths)?;
    let mut extra = manifest.parts.len();
    while part_path(&base, extra).exists() {
        tracing::warn!(
            "{} is not in {}: ignored",
            part_path(&base, extra).display(),
            list.display()
        );
        extra += 1;
    }
    Ok(Located::Parts {
        manifest_path: list,
        manifest,
        paths,
    })
}

fn head_digest(path: &Path) -> anyhow::Result<Digest> {
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|f| f.take(HEAD_BYTES).read_to_end(&mut buf))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Digest::of(&buf))
}

/// Presence, sizes and heads of every part.
fn check_parts(list: &Path, m: &PartsManifest, paths: &[PathBuf]) -> anyhow::Result<()> {
    let n = m.parts.len();
    let list_name = file_name(list);
    for (i, (part, path)) in m.parts.iter().zip(paths).enumerate() {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
                "bundle part {} is missing (part {} of the {n} that {list_name} lists)",
                part.name,
                i + 1
            ),
            Err(e) => return Err(e).with_context(|| format!("bundle part {}", part.name)),
        };
        if meta.len() != part.size {
            bail!(
                "bundle part {} is {} bytes, {list_name} says {}: truncated, or from another build",
                part.name,
                meta.len(),
                part.size
            );
        }
    }
    let heads = paths
        .iter()
        .map(|p| head_digest(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut wrong = Vec::new();
    for (i, part) in m.parts.iter().enumerate() {
        if heads[i] == part.head_sha256 {
            continue;
        }
        let holds = m
            .parts
            .iter()
            .find(|other| other.head_sha256 == heads[i] && other.name != part.name);
        wrong.push(match holds {
            Some(other) => format!("{} holds {}'s bytes", part.name, other.name),
            None => format!(
                "{} starts with other bytes than {list_name} says (damaged, or from another build)",
                part.name
            ),
        });
    }
    if !wrong.is_empty() {
        bail!("bundle parts out of order or damaged: {}", wrong.join("; "));
    }
    Ok(())
}

/// The parts read in order as one stream; each part's size and sha256 are
/// checked when its end is reached, and an error names the part.
pub struct PartsReader {
    parts: Vec<(PathBuf, Option<PartInfo>)>,
    index: usize,
    current: Option<(File, Hasher)>,
    /// The part being read, for [`NamedPartErrors`].
    position: Arc<AtomicUsize>,
}

impl PartsReader {
    /// Parts with what their list says about them.
    pub fn new(paths: &[PathBuf], infos: &[PartInfo]) -> Self {
        Self::build(
            paths
                .iter()
                .cloned()
                .zip(infos.iter().cloned().map(Some))
                .collect(),
        )
    }

    /// Files concatenated, without a list (temporary parts just written).
    pub fn unlisted(paths: &[PathBuf]) -> Self {
        Self::build(paths.iter().cloned().map(|p| (p, None)).collect())
    }

    fn build(parts: Vec<(PathBuf, Option<PartInfo>)>) -> Self {
        Self {
            parts,
            index: 0,
            current: None,
            position: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn name(&self, i: usize) -> String {
        match &self.parts[i].1 {
            Some(info) => info.name.clone(),
            None => file_name(&self.parts[i].0),
        }
    }

    /// Which part is being read, and the names of all (for error messages).
    pub fn tracker(&self) -> (Arc<AtomicUsize>, Vec<String>) {
        (
            self.position.clone(),
            (0..self.parts.len()).map(|i| self.name(i)).collect(),
        )
    }
}

impl Read for PartsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.index >= self.parts.len() {
                return Ok(0);
            }
            self.position.store(self.index, Ordering::Relaxed);
            if self.current.is_none() {
                let path = &self.parts[self.index].0;
                let f = File::open(path).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("opening bundle part {}: {e}", path.display()),
                    )
                })?;
                self.current = Some((f, Hasher::new()));
            }
            let (file, hasher) = self.current.as_mut().expect("just opened");
            let n = file.read(buf)?;
            if n > 0 || buf.is_empty() {
                hasher.update(&buf[..n]);
                return Ok(n);
            }
            let (_, hasher) = self.current.take().expect("a part is open");
            let hashed = hasher.finish();
            if let Some(info) = &self.parts[self.index].1 {
                hashed
                    .verify(
                        &format!("bundle part {}", info.name),
                        &info.sha256,
                        Some(info.size),
                    )
                    .map_err(|e| io::Error::other(format!("{e} (the part is damaged)")))?;
            }
            self.index += 1;
        }
    }
}

/// Adds the part being read to any error from the stream above the parts
/// (a decompressor that met bad bytes reports where they were).
pub struct NamedPartErrors<R> {
    pub inner: R,
    position: Arc<AtomicUsize>,
    names: Vec<String>,
}

impl<R> NamedPartErrors<R> {
    pub fn new(inner: R, tracker: (Arc<AtomicUsize>, Vec<String>)) -> Self {
        Self {
            inner,
            position: tracker.0,
            names: tracker.1,
        }
    }
}

impl<R: Read> Read for NamedPartErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let i = self.position.load(Ordering::Relaxed);
            match self.names.get(i) {
                Some(name) if !e.to_string().contains(name.as_str()) => {
                    io::Error::new(e.kind(), format!("{e} (in bundle part {name})"))
                }
                _ => e,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4000M").unwrap(), 4000 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("fat32").unwrap(), FAT_MAX_FILE);
        assert!(parse_size("1").is_err());
        assert!(parse_size("1T").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn part_names_round_trip() {
        let base = Path::new("/s/k3s.airgap.tar.zst");
        assert_eq!(
            part_path(base, 7),
            PathBuf::from("/s/k3s.airgap.tar.zst.part007")
        );
        assert_eq!(
            split_part_name(&part_path(base, 1234)),
            Some((base.to_path_buf(), 1234))
        );
        assert_eq!(split_part_name(Path::new("x.part1")), None);
        assert_eq!(split_part_name(base), None);
    }

    fn split(dir: &Path, data: &[u8], size: u64) -> CommittedParts {
        let mut w = SplitWriter::create(&dir.join("b"), size).unwrap();
        for chunk in data.chunks(1000) {
            w.write_all(chunk).unwrap();
        }
        w.finish().unwrap().commit().unwrap()
    }

    fn read_all(path: &Path) -> anyhow::Result<Vec<u8>> {
        let Located::Parts {
            manifest, paths, ..
        } = locate(path)?
        else {
            panic!("not parts");
        };
        let mut out = Vec::new();
        PartsReader::new(&paths, &manifest.parts).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn split_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..420_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let size = 2 * HEAD_BYTES;
        let c = split(dir.path(), &data, size);
        assert_eq!(c.parts.len(), 4);
        assert_eq!(c.manifest.sha256, Digest::of(&data));
        for p in &c.parts {
            assert!(std::fs::metadata(p).unwrap().len() <= size);
        }
        assert_eq!(read_all(&dir.path().join("b")).unwrap(), data);
        assert_eq!(read_all(&dir.path().join("b.part003")).unwrap(), data);
        // Nothing but the parts and the list.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 5);

        // A part damaged after its head is named when its end is reached.
        let p2 = dir.path().join("b.part002");
        let mut bytes = std::fs::read(&p2).unwrap();
        bytes[HEAD_BYTES as usize + 10] ^= 1;
        std::fs::write(&p2, &bytes).unwrap();
        let err = format!("{:#}", read_all(&dir.path().join("b")).unwrap_err());
        assert!(
            err.contains("bundle part b.part002") && err.contains("damaged"),
            "{err}"
        );
        // Within its head, before anything is read.
        bytes[10] ^= 1;
        std::fs::write(&p2, &bytes).unwrap();
        let err = format!("{:#}", locate(&dir.path().join("b")).unwrap_err());
        assert!(err.contains("b.part002 starts with other bytes"), "{err}");

        // Swapped parts are named before anything is read.
        let c = split(dir.path(), &data, size);
        let (a, b) = (&c.parts[1], &c.parts[2]);
        let tmp = dir.path().join("t");
        std::fs::rename(a, &tmp).unwrap();
        std::fs::rename(b, a).unwrap();
        std::fs::rename(&tmp, b).unwrap();
        let err = format!("{:#}", locate(&dir.path().join("b")).unwrap_err());
        assert!(err.contains("b.part001 holds b.part002's bytes"), "{err}");

        // The last part missing.
        let c = split(dir.path(), &data, size);
        std::fs::remove_file(c.parts.last().unwrap()).unwrap();
        let err = format!("{:#}", locate(&dir.path().join("b")).unwrap_err());
        assert!(err.contains("b.part003 is missing"), "{err}");

        // A writer that is dropped leaves nothing.
        let empty = tempfile::tempdir().unwrap();
        let mut w = SplitWriter::create(&empty.path().join("b"), size).unwrap();
        w.write_all(&data).unwrap();
        drop(w.finish().unwrap());
        assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
    }
}
