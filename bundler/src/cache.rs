//! The download cache: where `bundle build` keeps what it fetched, so that a
//! second build with the same lock downloads nothing.
//!
//! It is a [`BlobStore`] on a persistent directory (`$XDG_CACHE_HOME/airgap`,
//! else `~/.cache/airgap`, or `--cache DIR`): image blobs and release assets
//! by digest in `blobs/sha256/<hex>`, interrupted blob downloads in
//! `partial/<hex>`, and `urls/<sha256 of URL>` naming the digest of a release
//! file that no checksum names (the `sha256sum-<arch>.txt` listings, an
//! unlisted `install.sh`). Nothing in it is trusted as is: a blob is hashed
//! again before a run uses it (see [`BlobStore::verify_present`]).

use crate::store::BlobStore;
use airgap_bundle::atomic::write_whole;
use airgap_bundle::digest::Digest;
use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};

/// The default cache directory: `$XDG_CACHE_HOME/airgap`, else
/// `$HOME/.cache/airgap`; `None` when neither variable is set.
pub fn default_dir() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(xdg) = non_empty("XDG_CACHE_HOME") {
        return Some(PathBuf::from(xdg).join("airgap"));
    }
    non_empty("HOME").map(|home| PathBuf::from(home).join(".cache").join("airgap"))
}

/// The cache a build uses: none with `no_cache`, else `explicit`
/// (`--cache DIR`), else [`default_dir`]; an error when there is no default.
pub fn choose(explicit: Option<PathBuf>, no_cache: bool) -> Result<Option<PathBuf>> {
    if no_cache {
        return Ok(None);
    }
    explicit
        .or_else(default_dir)
        .context(
            "no cache directory: set XDG_CACHE_HOME or HOME, or pass --cache DIR or --no-cache",
        )
        .map(Some)
}

/// Opens the cache at `dir`, creating it.
pub fn open(dir: &Path) -> Result<BlobStore> {
    std::fs::create_dir_all(dir.join("urls"))
        .with_context(|| format!("creating the cache {}", dir.display()))?;
    BlobStore::open(dir).with_context(|| format!("opening the cache {}", dir.display()))
}

fn url_entry(store: &BlobStore, url: &str) -> PathBuf {
    store
        .root()
        .join("urls")
        .join(Digest::of(url.as_bytes()).hex())
}

/// The digest last fetched from `url`, if the cache recorded one.
pub fn lookup_url(store: &BlobStore, url: &str) -> Option<Digest> {
    let text = std::fs::read_to_string(url_entry(store, url)).ok()?;
    Digest::from_hex(text.trim()).ok()
}

/// Records that `url` served the blob `digest` (stored in `store`).
pub fn remember_url(store: &BlobStore, url: &str, digest: &Digest) -> Result<()> {
    let path = url_entry(store, url);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_whole(&path, format!("{}\n", digest.hex()).as_bytes(), None)?;
    Ok(())
}

/// A scratch path in the cache for a download whose digest is not known
/// yet; renamed to its blob path once hashed.
pub fn download_path(store: &BlobStore, url: &str) -> Result<PathBuf> {
    let dir = store.root().join("downloads");
    std::fs::create_dir_all(&dir)?;
    Ok(dir.join(Digest::of(url.as_bytes()).hex()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_the_cache() {
        assert_eq!(choose(Some("/c".into()), true).unwrap(), None);
        assert_eq!(choose(None, true).unwrap(), None);
        assert_eq!(
            choose(Some("/c".into()), false).unwrap(),
            Some(PathBuf::from("/c"))
        );
        // Without --cache: the default, as default_dir finds it.
        match default_dir() {
            Some(dir) => assert_eq!(choose(None, false).unwrap(), Some(dir)),
            None => assert!(choose(None, false)
                .unwrap_err()
                .to_string()
                .contains("--cache DIR or --no-cache")),
        }
    }

    #[test]
    fn remembers_urls() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).unwrap();
        let url = "http://127.0.0.1:1/v1.20.6%2Bk3s1/sha256sum-amd64.txt";
        assert_eq!(lookup_url(&store, url), None);
        let d = Digest::of(b"sums");
        remember_url(&store, url, &d).unwrap();
        assert_eq!(lookup_url(&store, url), Some(d));
        assert_eq!(lookup_url(&store, "http://other"), None);
    }
}
