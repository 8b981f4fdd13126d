//! Content digests (`sha256:<hex>`) and the streams that compute them.
//!
//! Every byte that crosses a trust boundary passes through a [`HashingReader`]
//! or [`HashingWriter`], which count and hash as the bytes go by; the caller
//! then asks [`Hashed::verify`] whether what passed is what was expected. A
//! digest parsed from untrusted text is checked to be exactly 64 lowercase hex
//! digits, so it is always safe to use as a file name.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

/// A sha256 content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Text that is not a `sha256:<64 lowercase hex>` digest.
#[derive(Debug, thiserror::Error)]
#[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
pub struct InvalidDigest(pub String);

/// What passed through a stream did not match what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestMismatch {
    #[error("hash mismatch for {what}: expected {expected}, found {found}")]
    Hash {
        what: String,
        expected: Digest,
        found: Digest,
    },
    #[error("size mismatch for {what}: expected {expected} bytes, found {found}")]
    Size {
        what: String,
        expected: u64,
        found: u64,
    },
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// Parses the bare 64-hex form used in `SHA256SUMS` and blob file names.
    pub fn from_hex(hex_str: &str) -> Result<Self, InvalidDigest> {
        let bad = || InvalidDigest(hex_str.to_string());
        if hex_str.len() != 64
            || !hex_str
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_str, &mut out).map_err(|_| bad())?;
        Ok(Digest(out))
    }

    /// The 64 lowercase hex digits, without the algorithm prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short form for messages: `sha256:ab12cd34ef56`.
    pub fn short(&self) -> String {
        format!("sha256:{}", &self.hex()[..12])
    }

    /// Where this blob lives inside an OCI image layout.
    pub fn blob_path(&self) -> String {
        format!("blobs/sha256/{}", self.hex())
    }
}

impl FromStr for Digest {
    type Err = InvalidDigest;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("sha256:") {
            Some(hex_str) => Digest::from_hex(hex_str).map_err(|_| InvalidDigest(s.to_string())),
            None => Err(InvalidDigest(s.to_string())),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental sha256 with a byte count.
#[derive(Clone, Default)]
pub struct Hasher {
    sha: Sha256,
    len: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Hashed {
        Hashed {
            digest: Digest(self.sha.finalize().into()),
            size: self.len,
        }
    }
}

/// The digest and size of everything that passed through a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hashed {
    pub digest: Digest,
    pub size: u64,
}

impl Hashed {
    /// Checks size (when one is expected) and digest; `what` names the thing
    /// in the error (a path, an image, a blob).
    pub fn verify(
        &self,
        what: &str,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<(), DigestMismatch> {
        if let Some(size) = expected_size {
            if size != self.size {
                return Err(DigestMismatch::Size {
                    what: what.to_string(),
                    expected: size,
                    found: self.size,
                });
            }
        }
        if *expected != self.digest {
            return Err(DigestMismatch::Hash {
                what: what.to_string(),
                expected: *expected,
                found: self.digest,
            });
        }
        Ok(())
    }
}

/// A reader that hashes and counts what is read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.hasher.len()
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    pub fn finish(self) -> Hashed {
        self.hasher.finish()
    }

    /// Drains the rest of the stream, then verifies it.
    pub fn finish_verified(
        mut self,
        what: &str,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> io::Result<Hashed> {
        io::copy(&mut self, &mut io::sink())?;
        let hashed = self.finish();
        hashed
            .verify(what, expected, expected_size)
            .map_err(io::Error::other)?;
        Ok(hashed)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A writer that hashes and counts what is written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
        }
    }

    pub fn count(&self) -> u64 {
        self.hasher.len()
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    pub fn finish(self) -> (W, Hashed) {
        (self.inner, self.hasher.finish())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes a whole file by streaming it.
pub fn hash_file(path: &std::path::Path) -> io::Result<Hashed> {
    let mut reader = HashingReader::new(std::fs::File::open(path)?);
    io::copy(&mut reader, &mut io::sink())?;
    Ok(reader.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let d = Digest::of(b"hello");
        let s = d.to_string();
        assert!(s.starts_with("sha256:2cf24dba"));
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        assert!("sha256:ABC".parse::<Digest>().is_err());
        assert!(format!("sha256:{}", "A".repeat(64))
            .parse::<Digest>()
            .is_err());
        assert!("sha512:00".parse::<Digest>().is_err());
        assert!(Digest::from_hex(&"0".repeat(63)).is_err());
    }

    #[test]
    fn reader_verifies() {
        let data = b"some layer bytes";
        let ok = HashingReader::new(&data[..]).finish_verified(
            "x",
            &Digest::of(data),
            Some(data.len() as u64),
        );
        assert!(ok.is_ok());
        let err = HashingReader::new(&data[..])
            .finish_verified("blobs/sha256/x", &Digest::of(b"other"), None)
            .unwrap_err();
        assert!(err.to_string().contains("hash mismatch for blobs/sha256/x"));
        let err = HashingReader::new(&data[..])
            .finish_verified("x", &Digest::of(data), Some(3))
            .unwrap_err();
        assert!(err.to_string().contains("size mismatch"));
    }
}
