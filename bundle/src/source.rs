//! Opening a bundle file as one byte stream: plain tar or zstd-compressed,
//! told apart by the zstd magic number, never by the file name.

use anyhow::Context as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Largest zstd window accepted (128 MiB): bounds the decoder's memory
/// whatever a hostile frame header asks for.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Opens `path` and returns the decompressed tar stream.
pub fn open_bundle(path: &Path) -> anyhow::Result<Box<dyn Read + Send>> {
    let file = File::open(path).with_context(|| format!("opening bundle {}", path.display()))?;
    decompress(BufReader::with_capacity(1 << 20, file))
        .with_context(|| format!("reading bundle {}", path.display()))
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
