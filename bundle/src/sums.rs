//! `SHA256SUMS`: the list of every entry of a bundle and its sha256, in the
//! format `sha256sum -c` reads (`<64 hex>  <path>`). It is the one document
//! the signature covers, so it is parsed strictly: one line per entry, safe
//! paths only, no entry twice.

use crate::digest::Digest;
use crate::path::{check_entry_path, PathError};
use std::collections::BTreeMap;

/// Largest `SHA256SUMS` accepted (about 100 000 entries).
pub const MAX_SUMS_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SumsError {
    #[error("SHA256SUMS line {line}: expected `<64 hex digits>  <path>`")]
    Syntax { line: usize },
    #[error("SHA256SUMS line {line}")]
    Path {
        line: usize,
        #[source]
        source: PathError,
    },
    #[error("SHA256SUMS line {line}: {path} is listed twice")]
    Duplicate { line: usize, path: String },
    #[error("SHA256SUMS line {line}: {path} names a file the bundle reserves")]
    Reserved { line: usize, path: String },
    #[error("SHA256SUMS is not UTF-8 text")]
    Encoding,
}

/// The names that precede the checksummed entries and are not listed.
pub const SIGNATURE_NAME: &str = "SHA256SUMS.minisig";
pub const SUMS_NAME: &str = "SHA256SUMS";

/// An ordered list of entry paths and their digests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sums {
    order: Vec<String>,
    digests: BTreeMap<String, Digest>,
}

impl Sums {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry; a path already present is a caller bug.
    pub fn push(&mut self, path: &str, digest: Digest) -> Result<(), SumsError> {
        let line = self.order.len() + 1;
        let path = check_entry_path(path)
            .map_err(|source| SumsError::Path { line, source })?
            .to_string();
        if path == SIGNATURE_NAME || path == SUMS_NAME {
            return Err(SumsError::Reserved { line, path });
        }
        if self.digests.insert(path.clone(), digest).is_some() {
            return Err(SumsError::Duplicate { line, path });
        }
        self.order.push(path);
        Ok(())
    }

    pub fn get(&self, path: &str) -> Option<&Digest> {
        self.digests.get(path)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Digest)> {
        self.order
            .iter()
            .map(move |p| (p.as_str(), &self.digests[p]))
    }

    /// Parses the file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, SumsError> {
        let text = std::str::from_utf8(bytes).map_err(|_| SumsError::Encoding)?;
        let mut sums = Sums::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            // `sha256sum` writes two spaces, or ` *` in binary mode.
            let (hex, path) = match (line.get(..64), line.get(64..66), line.get(66..)) {
                (Some(h), Some("  " | " *"), Some(p)) => (h, p),
                _ => return Err(SumsError::Syntax { line: line_no }),
            };
            let digest = Digest::from_hex(hex).map_err(|_| SumsError::Syntax { line: line_no })?;
            sums.push(path, digest).map_err(|e| match e {
                SumsError::Path { source, .. } => SumsError::Path {
                    line: line_no,
                    source,
                },
                SumsError::Duplicate { path, .. } => SumsError::Duplicate {
                    line: line_no,
                    path,
                },
                SumsError::Reserved { path, .. } => SumsError::Reserved {
                    line: line_no,
                    path,
                },
                other => other,
            })?;
        }
        if !text.is_empty() && !text.ends_with('\n') {
            return Err(SumsError::Syntax {
                line: text.lines().count(),
            });
        }
        Ok(sums)
    }

    /// The file's text, in `sha256sum` format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (path, digest) in self.iter() {
            out.push_str(&digest.hex());
            out.push_str("  ");
            out.push_str(path);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut s = Sums::new();
        s.push("bundle.json", Digest::of(b"a")).unwrap();
        s.push("images/blobs/sha256/x", Digest::of(b"b")).unwrap();
        let text = s.render();
        assert_eq!(Sums::parse(text.as_bytes()).unwrap(), s);
    }

    #[test]
    fn rejects_bad_files() {
        let h = Digest::of(b"a").hex();
        for bad in [
            format!("{h}  a\n{h}  a\n"),
            format!("{h}  ../a\n"),
            format!("{h}  /etc/passwd\n"),
            format!("{h} a\n"),
            format!("{}  a\n", &h[..63]),
            format!("{h}  SHA256SUMS\n"),
            format!("{h}  a"),
            format!("{}  a\n", h.to_uppercase()),
        ] {
            assert!(Sums::parse(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
    }
}
