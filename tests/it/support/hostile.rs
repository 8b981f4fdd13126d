//! Building blocks of hostile bundles beyond [`super::tarball`]'s rewrites:
//! raw header fields (a size that lies, PAX and GNU extension entries, device
//! types), `SHA256SUMS` rebuilt and re-signed with the site key (an attacker
//! who holds the key, so that only the structural rules can stop the
//! bundle), byte offsets of each entry for truncations, and zstd streams made
//! by hand (an RLE frame that expands a few bytes into gigabytes).

use super::tarball::{Bundle, TarEntry, BLOCK};
use airgap_bundle::digest::Digest;
use airgap_bundle::sums::{SIGNATURE_NAME, SUMS_NAME};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

const SIZE: std::ops::Range<usize> = 124..136;
const CHKSUM: std::ops::Range<usize> = 148..156;
const TYPEFLAG: usize = 156;

/// Recomputes a raw header's checksum.
pub fn reseal(header: &mut [u8; BLOCK]) {
    header[CHKSUM].fill(b' ');
    let sum: u64 = header.iter().map(|b| *b as u64).sum();
    let text = format!("{sum:06o}\0 ");
    header[CHKSUM].copy_from_slice(text.as_bytes());
}

/// Writes `size` into the header's size field as it is (octal, or GNU
/// base-256 when it does not fit), whatever the data is.
pub fn set_size_raw(entry: &mut TarEntry, size: u64) {
    let field = &mut entry.header[SIZE];
    if size < 0o77777777777 {
        let text = format!("{size:011o}\0");
        field.copy_from_slice(text.as_bytes());
    } else {
        field.fill(0);
        field[0] = 0x80;
        field[4..].copy_from_slice(&size.to_be_bytes());
    }
    reseal(&mut entry.header);
}

/// An entry of any type flag with `data` as its body and a size field that
/// says so (the tarball helpers give non-files a size of 0).
pub fn raw_entry(kind: u8, name: &str, data: &[u8]) -> TarEntry {
    let mut e = TarEntry::file(name, data.to_vec(), 0o644);
    e.header[TYPEFLAG] = kind;
    set_size_raw(&mut e, data.len() as u64);
    e
}

/// A PAX extended header whose records are `key=value` pairs.
pub fn pax_header(name: &str, records: &[(&str, &str)]) -> TarEntry {
    let mut body = String::new();
    for (k, v) in records {
        // The length prefix counts itself.
        let rest = format!(" {k}={v}\n");
        let mut len = rest.len() + 1;
        while format!("{len}{rest}").len() != len {
            len += 1;
        }
        body.push_str(&format!("{len}{rest}"));
    }
    raw_entry(b'x', name, body.as_bytes())
}

/// A GNU long-name entry naming the entry after it.
pub fn gnu_long_name(name: &str) -> TarEntry {
    let mut data = name.as_bytes().to_vec();
    data.push(0);
    raw_entry(b'L', "././@LongLink", &data)
}

/// `SHA256SUMS` listing every regular file after it, in stream order.
pub fn sums_of(bundle: &Bundle) -> String {
    let mut out = String::new();
    for e in &bundle.entries {
        let name = e.name();
        if name == SIGNATURE_NAME || name == SUMS_NAME || e.kind() != b'0' {
            continue;
        }
        out.push_str(&format!("{}  {name}\n", Digest::of(&e.data).hex()));
    }
    out
}

/// Replaces `SHA256SUMS` with `text` and signs it with `secret_key`, keeping
/// the trusted comment (with the new digest of `SHA256SUMS` in it).
pub fn set_sums_signed(bundle: &mut Bundle, text: &str, secret_key: &Path) {
    let old_digest = Digest::of(bundle.data(SUMS_NAME)).hex();
    let old = String::from_utf8(bundle.data(SIGNATURE_NAME).to_vec()).unwrap();
    let comment = old
        .lines()
        .find_map(|l| l.strip_prefix("trusted comment: "))
        .expect("the signature has a trusted comment")
        .replace(&old_digest, &Digest::of(text.as_bytes()).hex());
    let sk = airgap_bundle::sign::load_secret_key(secret_key, None).unwrap();
    let sig = airgap_bundle::sign::sign(&sk, text.as_bytes(), &comment).unwrap();
    bundle.get_mut(SUMS_NAME).set_data(text.as_bytes().to_vec());
    bundle.get_mut(SIGNATURE_NAME).set_data(sig.into_bytes());
}

/// Lists every regular entry as it now is and re-signs.
pub fn relist(bundle: &mut Bundle, secret_key: &Path) {
    let text = sums_of(bundle);
    set_sums_signed(bundle, &text, secret_key);
}

/// Where each entry starts in the serialised tar: (header offset, data
/// offset, data length).
pub fn offsets(bundle: &Bundle) -> Vec<(usize, usize, usize)> {
    let mut at = 0;
    let mut out = Vec::new();
    for e in &bundle.entries {
        out.push((at, at + BLOCK, e.data.len()));
        at += BLOCK + e.data.len().div_ceil(BLOCK) * BLOCK;
    }
    out
}

/// Compresses `bytes` with the `zstd` program into one frame.
pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    let mut child = Command::new("zstd")
        .args(["-q", "-c", "-3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running zstd");
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "zstd failed");
    out.stdout
}

/// A zstd frame of RLE blocks that decompresses to `len` copies of `byte`
/// (4 bytes of frame per 128 KiB; no content size, no checksum).
pub fn rle_frame(byte: u8, len: u64) -> Vec<u8> {
    const BLOCK_MAX: u64 = 128 << 10;
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd];
    out.push(0x00); // no content size, not single-segment, no checksum
    out.push((17 - 10) << 3); // window 128 KiB
    let mut left = len;
    loop {
        let n = left.min(BLOCK_MAX);
        left -= n;
        let last = u32::from(left == 0);
        let header = ((n as u32) << 3) | (1 << 1) | last;
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.push(byte);
        if left == 0 {
            return out;
        }
    }
}
