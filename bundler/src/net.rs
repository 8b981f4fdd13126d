//! HTTP client setup shared by release downloads ([`crate::release`]) and
//! registry pulls ([`crate::registry`]): the one TLS provider, the
//! `User-Agent`, the timeouts, and the extra CA files a user names.
//!
//! Trusts the roots the TLS stack trusts by default, plus those CA files;
//! a CA file is only checked to be PEM here, the TLS stack parses it.

use anyhow::{bail, Context as _, Result};
use std::path::PathBuf;
use std::time::Duration;

/// `User-Agent` of every request this crate makes.
pub const USER_AGENT: &str = concat!("airgap/", env!("CARGO_PKG_VERSION"));
/// How long establishing a connection (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may send nothing (no answer, or no body bytes), by
/// default: a stalled server fails, a slow one does not.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Installs rustls's ring provider as the process default, once; the
/// workspace builds reqwest without one so that only ring is linked.
pub fn install_tls_provider() {
    // An error means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The HTTP client for release downloads: rustls over ring, with
/// [`CONNECT_TIMEOUT`] and [`DEFAULT_READ_TIMEOUT`].
pub fn http_client() -> Result<reqwest::Client> {
    install_tls_provider();
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(DEFAULT_READ_TIMEOUT)
        .build()
        .context("creating the HTTP client")
}

/// The bytes of each extra CA file (`--registry-ca`), each checked to hold
/// a PEM certificate.
pub fn read_ca_files(files: &[PathBuf]) -> Result<Vec<Vec<u8>>> {
    files
        .iter()
        .map(|file| {
            let data = std::fs::read(file)
                .with_context(|| format!("reading registry CA {}", file.display()))?;
            if !String::from_utf8_lossy(&data).contains("-----BEGIN CERTIFICATE-----") {
                bail!("registry CA {}: not a PEM certificate", file.display());
            }
            Ok(data)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_must_be_pem() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, "-----BEGIN CERTIFICATE-----\nMII=\n").unwrap();
        let bad = dir.path().join("ca.der");
        std::fs::write(&bad, [0x30, 0x82]).unwrap();
        assert_eq!(read_ca_files(std::slice::from_ref(&good)).unwrap().len(), 1);
        let err = read_ca_files(&[good, bad]).unwrap_err().to_string();
        assert!(err.contains("ca.der: not a PEM certificate"), "{err}");
        let err = format!(
            "{:#}",
            read_ca_files(&[dir.path().join("none")]).unwrap_err()
        );
        assert!(err.contains("reading registry CA"), "{err}");
    }
}
