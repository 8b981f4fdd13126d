//! One manifest (or index) GET, read under its size limit while it streams:
//! a `Content-Length` over [`MAX_MANIFEST_BYTES`] is refused before any body
//! byte is read, and a body without one (or longer than it says) is cut off
//! as soon as it passes the limit, so a registry cannot make a build hold
//! more than the limit in memory. oci-client's `pull_manifest_raw` reads the
//! whole body before anything can look at its size; its token exchange is
//! still used here, so credentials and bearer tokens are handled as for
//! blobs.
//!
//! Trusts nothing about the body; the caller checks its digest.

use super::Job;
use airgap_bundle::oci::{MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES};
use anyhow::{bail, Result};
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use reqwest::StatusCode;

/// How much of an error answer's body is read (to name the registry's
/// error code).
const MAX_ERROR_BODY: usize = 64 << 10;

impl Job<'_> {
    /// GETs `reference`'s manifest. The outer error is final (a body over
    /// the limit); the inner one is the registry's or the connection's, for
    /// [`super::classify`] to describe and maybe retry.
    pub(super) async fn get_manifest(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Result<Result<Vec<u8>, OciDistributionError>> {
        let registry = reference.resolve_registry();
        let scheme = if self.puller.plain_http.contains(registry) {
            "http"
        } else {
            "https"
        };
        let tag_or_digest = match reference.digest() {
            Some(d) => d,
            None => reference.tag().unwrap_or("latest"),
        };
        let url = format!(
            "{scheme}://{registry}/v2/{}/manifests/{tag_or_digest}",
            reference.repository()
        );
        // As oci-client does for its own requests: a failed token exchange
        // leaves the request anonymous, and the registry's 401 says why.
        let token = self
            .puller
            .client
            .auth(reference, auth, RegistryOperation::Pull)
            .await
            .ok()
            .flatten();
        let mut request = self
            .puller
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, MANIFEST_MEDIA_TYPES.join(", "));
        request = match (token, auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        };
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Ok(Err(e.into())),
        };
        let status = response.status();
        if status != StatusCode::OK {
            let mut body = Vec::new();
            while body.len() < MAX_ERROR_BODY {
                match response.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    _ => break,
                }
            }
            body.truncate(MAX_ERROR_BODY);
            return Ok(Err(status_error(status, &body, &url)));
        }
        if let Some(length) = response.content_length() {
            if length > MAX_MANIFEST_BYTES {
                bail!(
                    "{url} announces {length} bytes (Content-Length), more than the \
                     {MAX_MANIFEST_BYTES} a manifest may have; not read"
                );
            }
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if (body.len() + chunk.len()) as u64 > MAX_MANIFEST_BYTES {
                        bail!(
                            "{url} sent more than the {MAX_MANIFEST_BYTES} bytes a manifest \
                             may have; stopped reading"
                        );
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(Ok(body)),
                Err(e) => return Ok(Err(e.into())),
            }
        }
    }
}

/// The registry's answer other than 200 as oci-client types it, so that it
/// is described and retried as every other registry failure.
fn status_error(status: StatusCode, body: &[u8], url: &str) -> OciDistributionError {
    let url = url.to_string();
    match status {
        StatusCode::UNAUTHORIZED => OciDistributionError::UnauthorizedError { url },
        s if s.is_success() => OciDistributionError::SpecViolationError(format!(
            "expected HTTP status 200, got {s} for GET {url}"
        )),
        s if s.is_client_error() => match serde_json::from_slice::<OciEnvelope>(body) {
            Ok(envelope) => OciDistributionError::RegistryError { envelope, url },
            Err(_) => OciDistributionError::ServerError {
                code: s.as_u16(),
                url,
                message: String::from_utf8_lossy(body).into_owned(),
            },
        },
        s => OciDistributionError::ServerError {
            code: s.as_u16(),
            url,
            message: String::from_utf8_lossy(body).into_owned(),
        },
    }
}
