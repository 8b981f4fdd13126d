//! What a registry failure means: a sentence naming what was asked of
//! whom (with a hint where one helps, such as `--registry-ca` for a
//! certificate a private CA issued), and whether another try may succeed.
//!
//! Failures are told apart by their types, never by their message text:
//! oci-client's typed errors, then the causes of a connection failure as
//! `std::error::Error::source` links them, down to `rustls::Error` (which
//! reaches us inside `std::io::Error`s whose `source` skips it, so each
//! `io::Error` is opened with `get_ref`). oci-client keeps reqwest's error as
//! the source of its `RequestError`, so nothing here needs to fall back to
//! reading messages.

use super::Job;
use airgap_bundle::error;
use anyhow::anyhow;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use std::error::Error as StdError;

impl Job<'_> {
    /// A registry failure as a short sentence naming what was asked of whom.
    pub(super) fn describe(&self, e: OciDistributionError) -> anyhow::Error {
        let host = &self.host;
        let scheme = if self.puller.plain_http.contains(host) {
            "http"
        } else {
            "https"
        };
        match e {
            OciDistributionError::RequestError(e) => {
                let chain = error::chain(&e);
                if e.is_timeout() && !e.is_connect() {
                    anyhow!(
                        "{scheme}://{host} did not answer within the read timeout \
                         ({:?}, --registry-timeout): {chain}",
                        self.puller.read_timeout
                    )
                } else if e.is_connect() {
                    let hint = match (scheme, tls_failure(&e)) {
                        ("https", Some(TlsFailure::Certificate)) => format!(
                            " (if {host}'s certificate is issued by a private CA, \
                             pass --registry-ca CA.pem)"
                        ),
                        ("https", Some(TlsFailure::Handshake)) => {
                            format!(
                                " (if {host} serves plain HTTP, pass --insecure-registry {host})"
                            )
                        }
                        _ => String::new(),
                    };
                    anyhow!("cannot connect to registry {scheme}://{host}: {chain}{hint}")
                } else {
                    anyhow!("request to {scheme}://{host} failed: {chain}")
                }
            }
            OciDistributionError::RegistryError { envelope, url } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let detail = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{} ({})", e.message, code_name(&e.code)))
                    .collect::<Vec<_>>()
                    .join("; ");
                let not_found = codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                });
                let denied = codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied));
                if not_found {
                    anyhow!("not found on {host}: {detail} (GET {url})")
                } else if denied {
                    anyhow!(
                        "access denied by {host}{}: {detail} (GET {url})",
                        self.who()
                    )
                } else {
                    anyhow!("{host} refused: {detail} (GET {url})")
                }
            }
            OciDistributionError::ServerError { code, url, message } => {
                let message: String = message.trim().chars().take(200).collect();
                if code == 404 {
                    anyhow!("not found on {host} (HTTP 404 for GET {url})")
                } else if message.is_empty() {
                    anyhow!("HTTP {code} for GET {url}")
                } else {
                    anyhow!("HTTP {code} for GET {url}: {message}")
                }
            }
            OciDistributionError::UnauthorizedError { url } => {
                if self.puller.credentials.has(host) {
                    anyhow!(
                        "{host} refused the credentials{} (HTTP 401 for GET {url})",
                        self.who()
                    )
                } else {
                    anyhow!(
                        "{host} wants credentials (HTTP 401 for GET {url}); none given for it \
                         (--registry-auth {host}=USER:PASSFILE, or docker login)"
                    )
                }
            }
            OciDistributionError::AuthenticationFailure(reason) => {
                let reason: String = reason.trim().chars().take(200).collect();
                anyhow!(
                    "{host}'s token service refused the credentials{}: {reason}",
                    self.who()
                )
            }
            other => anyhow!("{}", error::chain(&other)),
        }
    }

    /// ` (as USER, from SOURCE)` or ` (anonymously)`, for auth errors.
    fn who(&self) -> String {
        match self.puller.credentials.describe(&self.host) {
            Some(who) => format!(" ({who})"),
            None => " (anonymously)".to_string(),
        }
    }
}

/// What the causes of a failed connection say about TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsFailure {
    /// The server's certificate was refused: no retry changes that.
    Certificate,
    /// The handshake failed otherwise: the server sent no TLS (a plain
    /// HTTP server), or hung up before the handshake ended.
    Handshake,
}

/// The TLS failure among `err` and its causes, if any.
pub(crate) fn tls_failure(err: &(dyn StdError + 'static)) -> Option<TlsFailure> {
    let mut next = Some(err);
    let mut cut_off = false;
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(match tls {
                rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::InvalidCertRevocationList(_) => TlsFailure::Certificate,
                _ => TlsFailure::Handshake,
            });
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            // tokio-rustls wraps rustls's error in an io::Error (and
            // hyper-rustls that in another), whose `source` is the wrapped
            // error's source: the wrapped error itself is only `get_ref`'s.
            if let Some(found) = io.get_ref().and_then(|inner| tls_failure(inner)) {
                return Some(found);
            }
            // A TCP connect never ends in EOF; a TLS handshake the server
            // hangs up on does ("tls handshake eof").
            cut_off |= io.kind() == std::io::ErrorKind::UnexpectedEof;
        }
        next = e.source();
    }
    cut_off.then_some(TlsFailure::Handshake)
}

/// Whether a registry failure may go away on its own: 5xx, 429 (also as a
/// TOOMANYREQUESTS error), a connection refused, reset or timed out; never
/// a refused certificate.
pub(super) fn retryable(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Toomanyrequests)),
        OciDistributionError::RequestError(e) => {
            (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body())
                && tls_failure(e) != Some(TlsFailure::Certificate)
        }
        _ => false,
    }
}

/// Whether a body stream broke off because nothing came within the read
/// timeout.
pub(super) fn is_read_timeout(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
            .is_some_and(reqwest::Error::is_timeout)
}

fn code_name(code: &OciErrorCode) -> String {
    match code {
        OciErrorCode::Other(s) => s.clone(),
        other => serde_json::to_string(other)
            .map(|s| s.trim_matches('"').to_string())
            .unwrap_or_else(|_| format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn retries_only_what_may_pass() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "http://r/v2/".into(),
            message: String::new(),
        };
        assert!(retryable(&server(503)));
        assert!(retryable(&server(500)));
        assert!(retryable(&server(429)));
        assert!(!retryable(&server(404)));
        assert!(!retryable(&OciDistributionError::UnauthorizedError {
            url: "http://r/v2/".into()
        }));
        // As hyper-rustls hands over tokio-rustls's handshake failure.
        let unknown_issuer = io::Error::other(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert_eq!(tls_failure(&unknown_issuer), Some(TlsFailure::Certificate));
        assert_eq!(
            tls_failure(&io::Error::from(io::ErrorKind::ConnectionRefused)),
            None
        );
    }

    #[test]
    fn tls_failures_are_told_by_type() {
        let corrupt = io::Error::other(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        ));
        assert_eq!(tls_failure(&corrupt), Some(TlsFailure::Handshake));
        let eof = io::Error::other(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "tls handshake eof",
        ));
        assert_eq!(tls_failure(&eof), Some(TlsFailure::Handshake));
        // The words alone are nothing.
        let words = io::Error::other("certificate unknownissuer tls handshake");
        assert_eq!(tls_failure(&words), None);
    }

    /// The whole path, as reqwest reports it: an HTTPS request to a server
    /// that answers in plain HTTP.
    #[tokio::test]
    async fn an_https_request_to_plain_http_is_a_handshake_failure() {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let _ = conn.read(&mut [0u8; 1024]);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        });
        let client = crate::net::http_client().unwrap();
        let err = client
            .get(format!("https://{addr}/v2/"))
            .send()
            .await
            .unwrap_err();
        server.join().unwrap();
        assert!(err.is_connect(), "{}", error::chain(&err));
        assert_eq!(
            tls_failure(&err),
            Some(TlsFailure::Handshake),
            "{}",
            error::chain(&err)
        );
    }
}
