//! Where images are pulled from and how hard: `--registry-mirror`,
//! `--insecure-registry`, credentials, extra CAs, parallel requests and the
//! read timeout, as [`RegistryConfig`].
//!
//! Owns parsing the mirror arguments; trusts the caller's lists as given
//! (a host named insecure is spoken to over plain HTTP).

use crate::auth::Credentials;
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::time::Duration;

pub use crate::net::DEFAULT_READ_TIMEOUT;

/// Where images are pulled from and how hard.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// `(registry, url)`: images named `registry/...` are pulled from the
    /// mirror at `url` (`http://127.0.0.1:5000`, `https://mirror.local`, or a
    /// bare host). An `http://` URL means plain HTTP for that host.
    pub mirrors: Vec<(String, String)>,
    /// Hosts spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Manifests and blobs fetched at once, over all images.
    pub jobs: usize,
    /// Credentials per host contacted; anonymous where there are none.
    pub credentials: Credentials,
    /// PEM files of extra CAs to trust (a registry with a private CA).
    pub ca_files: Vec<PathBuf>,
    /// How long a registry may send nothing (no answer, or no body bytes)
    /// before the request is given up and retried.
    pub read_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            mirrors: Vec::new(),
            insecure: Vec::new(),
            jobs: 4,
            credentials: Credentials::default(),
            ca_files: Vec::new(),
            read_timeout: DEFAULT_READ_TIMEOUT,
        }
    }
}

/// Parses a `--registry-mirror` value, `REGISTRY=URL`.
pub fn parse_mirror(arg: &str) -> Result<(String, String)> {
    match arg.split_once('=') {
        Some((registry, url)) if !registry.is_empty() && !url.is_empty() => {
            mirror_host(url)?;
            Ok((registry.to_string(), url.to_string()))
        }
        _ => bail!("invalid registry mirror {arg:?}: expected REGISTRY=URL, e.g. docker.io=http://127.0.0.1:5000"),
    }
}

/// The host of a mirror URL, and whether it is plain HTTP.
pub(super) fn mirror_host(url: &str) -> Result<(String, bool)> {
    let (rest, plain) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, true)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, false)
    } else if url.contains("://") {
        bail!("registry mirror {url:?}: only http:// and https:// are supported");
    } else {
        (url, false)
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        bail!("registry mirror {url:?}: expected a scheme and host[:port], without a path");
    }
    Ok((host.to_string(), plain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mirrors() {
        assert_eq!(
            parse_mirror("docker.io=http://127.0.0.1:5000").unwrap(),
            ("docker.io".to_string(), "http://127.0.0.1:5000".to_string())
        );
        assert_eq!(
            mirror_host("http://127.0.0.1:5000/").unwrap(),
            ("127.0.0.1:5000".to_string(), true)
        );
        assert_eq!(
            mirror_host("mirror.local").unwrap(),
            ("mirror.local".to_string(), false)
        );
        for bad in [
            "docker.io",
            "=http://x",
            "docker.io=",
            "a=ftp://x",
            "a=http://x/path",
        ] {
            assert!(parse_mirror(bad).is_err(), "{bad}");
        }
    }
}
