//! Tar streams at the byte level, for crafting hostile bundles: read a good
//! bundle's entries, change them (flip a byte, drop, add, duplicate, rename
//! to `..` or an absolute path, turn into a link, re-sign with another key)
//! and write the result as a plain tar.
//!
//! Headers are written by hand (ustar), so names that a careful tar library
//! refuses (`../x`, `/etc/x`) can be written as they are: the reader under
//! test must refuse them itself.

use airgap_bundle::sums::{SIGNATURE_NAME, SUMS_NAME};
use std::io::Read as _;
use std::path::Path;

pub const BLOCK: usize = 512;

/// Type flags.
pub const REGULAR: u8 = b'0';
pub const HARD_LINK: u8 = b'1';
pub const SYMLINK: u8 = b'2';
pub const DIRECTORY: u8 = b'5';

const NAME: std::ops::Range<usize> = 0..100;
const MODE: std::ops::Range<usize> = 100..108;
const UID: std::ops::Range<usize> = 108..116;
const GID: std::ops::Range<usize> = 116..124;
const SIZE: std::ops::Range<usize> = 124..136;
const MTIME: std::ops::Range<usize> = 136..148;
const CHKSUM: std::ops::Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const LINKNAME: std::ops::Range<usize> = 157..257;
const MAGIC: std::ops::Range<usize> = 257..265;
const PREFIX: std::ops::Range<usize> = 345..500;

/// One entry: its raw header block and its data.
#[derive(Clone)]
pub struct TarEntry {
    pub header: [u8; BLOCK],
    pub data: Vec<u8>,
}

impl std::fmt::Debug for TarEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TarEntry({:?}, type {:?}, {} bytes)",
            self.name(),
            self.kind() as char,
            self.data.len()
        )
    }
}

fn put_octal(field: &mut [u8], value: u64) {
    // Zero-padded octal digits and a NUL, as ustar writes them.
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    assert!(text.len() <= digits, "{value} does not fit a tar field");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

fn get_octal(field: &[u8]) -> u64 {
    let text: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return 0;
    }
    u64::from_str_radix(text, 8).unwrap_or_else(|_| panic!("bad octal tar field {text:?}"))
}

fn get_str(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

impl TarEntry {
    fn blank(kind: u8, mode: u32) -> TarEntry {
        let mut header = [0u8; BLOCK];
        put_octal(&mut header[MODE], mode as u64);
        put_octal(&mut header[UID], 0);
        put_octal(&mut header[GID], 0);
        put_octal(&mut header[MTIME], 1_600_000_000);
        header[TYPEFLAG] = kind;
        header[MAGIC].copy_from_slice(b"ustar\x0000");
        TarEntry {
            header,
            data: Vec::new(),
        }
    }

    /// A regular file.
    pub fn file(name: &str, data: impl Into<Vec<u8>>, mode: u32) -> TarEntry {
        let mut e = Self::blank(REGULAR, mode);
        e.set_name_raw(name.as_bytes());
        e.set_data(data);
        e
    }

    /// A symbolic link `name -> target`.
    pub fn symlink(name: &str, target: &str) -> TarEntry {
        let mut e = Self::blank(SYMLINK, 0o777);
        e.set_link_raw(target.as_bytes());
        e.set_name_raw(name.as_bytes());
        e
    }

    /// A hard link `name` to the earlier entry `target`.
    pub fn hard_link(name: &str, target: &str) -> TarEntry {
        let mut e = Self::blank(HARD_LINK, 0o644);
        e.set_link_raw(target.as_bytes());
        e.set_name_raw(name.as_bytes());
        e
    }

    /// The entry's name (ustar prefix joined with the name field).
    pub fn name(&self) -> String {
        let name = get_str(&self.header[NAME]);
        let prefix = if &self.header[257..263] == b"ustar\0" {
            get_str(&self.header[PREFIX])
        } else {
            String::new()
        };
        if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        }
    }

    pub fn kind(&self) -> u8 {
        self.header[TYPEFLAG]
    }

    pub fn link_name(&self) -> String {
        get_str(&self.header[LINKNAME])
    }

    /// Writes `name` into the header exactly as given (no checks, no
    /// normalisation; at most 100 bytes), clearing the ustar prefix.
    pub fn set_name_raw(&mut self, name: &[u8]) {
        assert!(
            name.len() <= 100,
            "names over 100 bytes need a prefix split"
        );
        self.header[NAME].fill(0);
        self.header[..name.len()].copy_from_slice(name);
        self.header[PREFIX].fill(0);
        self.seal();
    }

    fn set_link_raw(&mut self, target: &[u8]) {
        assert!(target.len() <= 100);
        self.header[LINKNAME].fill(0);
        self.header[LINKNAME.start..LINKNAME.start + target.len()].copy_from_slice(target);
        self.seal();
    }

    /// Turns this entry into another type (keeping its name and data).
    pub fn set_kind(&mut self, kind: u8) {
        self.header[TYPEFLAG] = kind;
        self.seal();
    }

    pub fn set_data(&mut self, data: impl Into<Vec<u8>>) {
        self.data = data.into();
        self.seal();
    }

    /// Flips every bit of the data byte at `offset` (the middle when `None`).
    pub fn flip_byte(&mut self, offset: Option<usize>) {
        assert!(!self.data.is_empty(), "{self:?} has no data to flip");
        let at = offset.unwrap_or(self.data.len() / 2);
        self.data[at] ^= 0xff;
    }

    /// Recomputes the size field (links and directories carry no data) and
    /// the header checksum.
    fn seal(&mut self) {
        let size = match self.kind() {
            REGULAR | 0 | b'7' => self.data.len() as u64,
            _ => 0,
        };
        put_octal(&mut self.header[SIZE], size);
        self.header[CHKSUM].fill(b' ');
        let sum: u64 = self.header.iter().map(|b| *b as u64).sum();
        put_octal(&mut self.header[CHKSUM.start..CHKSUM.start + 7], sum);
        self.header[CHKSUM.end - 1] = b' ';
    }
}

/// Parses a whole (uncompressed) tar stream. Only plain ustar/GNU headers:
/// the product writes no long-name or pax entries, and a test that meets one
/// should know.
pub fn parse(bytes: &[u8]) -> Vec<TarEntry> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at + BLOCK <= bytes.len() {
        let header: [u8; BLOCK] = bytes[at..at + BLOCK].try_into().unwrap();
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let kind = header[TYPEFLAG];
        assert!(
            !matches!(kind, b'L' | b'K' | b'x' | b'g'),
            "tar entry type {:?} (long names, pax) is not supported here",
            kind as char
        );
        let size = get_octal(&header[SIZE]) as usize;
        at += BLOCK;
        assert!(at + size <= bytes.len(), "tar stream truncated");
        let data = bytes[at..at + size].to_vec();
        at += size.div_ceil(BLOCK) * BLOCK;
        entries.push(TarEntry { header, data });
    }
    entries
}

/// Serialises entries as a tar stream, with the two zero blocks at the end.
pub fn serialize(entries: &[TarEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(&e.header);
        out.extend_from_slice(&e.data);
        let pad = e.data.len().div_ceil(BLOCK) * BLOCK - e.data.len();
        out.resize(out.len() + pad, 0);
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    out
}

/// A bundle's entries in stream order, to be rewritten and written out.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub entries: Vec<TarEntry>,
}

impl Bundle {
    /// Reads a bundle file, plain or zstd-compressed.
    pub fn read(path: &Path) -> Bundle {
        let mut input = airgap_bundle::source::open_bundle(path).unwrap();
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes).unwrap();
        Bundle {
            entries: parse(&bytes),
        }
    }

    /// Writes the entries as an uncompressed tar.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, serialize(&self.entries)).unwrap();
    }

    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(TarEntry::name).collect()
    }

    /// How many entries are called `name`.
    pub fn count(&self, name: &str) -> usize {
        self.entries.iter().filter(|e| e.name() == name).count()
    }

    pub fn position(&self, name: &str) -> usize {
        self.entries
            .iter()
            .position(|e| e.name() == name)
            .unwrap_or_else(|| panic!("no entry {name} in {:?}", self.names()))
    }

    pub fn get(&self, name: &str) -> &TarEntry {
        &self.entries[self.position(name)]
    }

    pub fn get_mut(&mut self, name: &str) -> &mut TarEntry {
        let at = self.position(name);
        &mut self.entries[at]
    }

    /// The data of entry `name`.
    pub fn data(&self, name: &str) -> &[u8] {
        &self.get(name).data
    }

    pub fn remove(&mut self, name: &str) -> TarEntry {
        let at = self.position(name);
        self.entries.remove(at)
    }

    /// Inserts `entry` right after the entry `after`.
    pub fn insert_after(&mut self, after: &str, entry: TarEntry) {
        let at = self.position(after);
        self.entries.insert(at + 1, entry);
    }

    pub fn push(&mut self, entry: TarEntry) {
        self.entries.push(entry);
    }

    /// Names of the blobs in the image layout (`images/blobs/sha256/<hex>`).
    pub fn blob_names(&self) -> Vec<String> {
        self.names()
            .into_iter()
            .filter(|n| n.starts_with("images/blobs/sha256/"))
            .collect()
    }

    /// Replaces the signature with one of the same `SHA256SUMS` (and the same
    /// trusted comment) made with another secret key.
    pub fn resign(&mut self, secret_key: &Path) {
        let old = String::from_utf8(self.data(SIGNATURE_NAME).to_vec()).unwrap();
        let comment = old
            .lines()
            .find_map(|l| l.strip_prefix("trusted comment: "))
            .expect("the signature has a trusted comment")
            .to_string();
        let sk = airgap_bundle::sign::load_secret_key(secret_key, None).unwrap();
        let sig = airgap_bundle::sign::sign(&sk, self.data(SUMS_NAME), &comment).unwrap();
        self.get_mut(SIGNATURE_NAME).set_data(sig.into_bytes());
    }
}
