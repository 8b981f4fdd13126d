//! Opening a bundle as one byte stream: one file or its parts (see
//! [`crate::split`]), plain tar or zstd-compressed, told apart by the zstd
//! magic number, never by the file name.

use crate::split::{self, Located};
use anyhow::Context as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Largest zstd window accepted (128 MiB): bounds the decoder's memory
/// whatever a hostile frame header asks for.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Opens `path` and returns the decompressed tar stream. `path` is a bundle
/// file, or a split bundle's name without suffix, any of its parts or its
/// part list: the parts are then checked against the list and read in order.
pub fn open_bundle(path: &Path) -> anyhow::Result<Box<dyn Read + Send>> {
    match split::locate(path)? {
        Located::Single(path) => {
            let file =
                File::open(&path).with_context(|| format!("opening bundle {}", path.display()))?;
            decompress(BufReader::with_capacity(1 << 20, file))
                .with_context(|| format!("reading bundle {}", path.display()))
        }
        Located::Parts {
            manifest, paths, ..
        } => {
            let parts = split::PartsReader::new(&paths, &manifest.parts);
            let tracker = parts.tracker();
            let stream = decompress(BufReader::with_capacity(1 << 20, parts))
                .with_context(|| format!("reading bundle {}", path.display()))?;
            Ok(Box::new(split::NamedPartErrors::new(stream, tracker)))
        }
    }
}

/// The raw (still compressed) bytes of a bundle, one file or its parts.
pub fn open_raw(path: &Path) -> anyhow::Result<Box<dyn Read + Send>> {
    match split::locate(path)? {
        Located::Single(path) => {
            Ok(Box::new(File::open(&path).with_context(|| {
                format!("opening bundle {}", path.display())
            })?))
        }
        Located::Parts {
            manifest, paths, ..
        } => Ok(Box::new(split::PartsReader::new(&paths, &manifest.parts))),
    }
}

/// Wraps a raw bundle stream in a zstd decoder when it starts with zstd's magic.
pub fn decompress<R: BufRead + Send + 'static>(
    mut input: R,
) -> anyhow::Result<Box<dyn Read + Send>> {
    let head = input.fill_buf()?;
    if head.starts_with(&ZSTD_MAGIC) {
        let mut dec = zstd::stream::read::Decoder::with_buffer(input)?;
        dec.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
        Ok(Box::new(dec))
    } else {
        Ok(Box::new(input))
    }
}
