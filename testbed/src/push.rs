//! Pushing to (and reading back from) a registry over plain HTTP, with the
//! distribution API: monolithic blob uploads (`POST` then `PUT ?digest=`,
//! streamed from a file for big blobs, skipped when `HEAD` finds the blob) and
//! manifests `PUT` as their exact bytes. Every digest the registry reports is
//! checked against ours.

use crate::http::{self, Body, Response};
use crate::image::{Blob, Image, ImageIndex};
use airgap_bundle::digest::Digest;
use airgap_bundle::oci;
use anyhow::{bail, Context, Result};

/// A client for one registry (`127.0.0.1:PORT`).
#[derive(Debug, Clone)]
pub struct RegistryClient {
    addr: String,
    auth: Option<String>,
}

/// A manifest as a registry served it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The Content-Type the registry answered with.
    pub media_type: String,
    pub bytes: Vec<u8>,
    /// sha256 of `bytes`.
    pub digest: Digest,
    /// The registry's `Docker-Content-Digest` header.
    pub registry_digest: Option<Digest>,
}

impl RegistryClient {
    /// A client for the registry at `addr` (`127.0.0.1:PORT`).
    pub fn new(addr: &str) -> Self {
        RegistryClient {
            addr: addr.to_string(),
            auth: None,
        }
    }

    /// Sends HTTP basic credentials with every request.
    pub fn with_basic_auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some(http::basic_auth(user, password));
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn call(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<Response> {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &self.auth {
            all.push(("Authorization", a));
        }
        http::request(method, url, &all, body)
    }

    /// `GET path` (`/v2/...`) with this client's credentials, any status.
    pub fn get(&self, path: &str) -> Result<Response> {
        self.call("GET", &self.url(path), &[], Body::Empty)
    }

    /// Whether `repo` has blob `digest`.
    pub fn has_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self.call("HEAD", &url, &[], Body::Empty)?;
        match resp.status {
            200 => Ok(true),
            404 => Ok(false),
            s => bail!("HEAD {url}: unexpected status {s}"),
        }
    }

    /// Uploads `blob` to `repo` unless it is already there; returns whether it
    /// uploaded.
    pub fn push_blob(&self, repo: &str, blob: &Blob) -> Result<bool> {
        if self.has_blob(repo, &blob.digest)? {
            return Ok(false);
        }
        let start = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let resp = self.call("POST", &start, &[], Body::Empty)?;
        if resp.status != 202 {
            bail!("POST {start}: status {}: {}", resp.status, resp.text());
        }
        let location = resp
            .header("location")
            .with_context(|| format!("POST {start}: no Location"))?;
        let mut target = http::Url::parse(&start)?.join(location)?.to_string();
        target.push(if target.contains('?') { '&' } else { '?' });
        target.push_str(&format!("digest={}", blob.digest));
        let reader = blob
            .open()
            .with_context(|| format!("reading blob {}", blob.digest))?;
        let resp = self.call(
            "PUT",
            &target,
            &[("Content-Type", "application/octet-stream")],
            Body::Reader(reader, blob.size),
        )?;
        if resp.status != 201 {
            bail!(
                "uploading blob {} to {repo}: status {}: {}",
                blob.digest,
                resp.status,
                resp.text()
            );
        }
        check_digest(
            &resp,
            &blob.digest,
            &format!("blob {} in {repo}", blob.digest),
        )?;
        Ok(true)
    }

    /// Links blob `digest` from repository `from` into `repo` without
    /// sending it (cross-repository mount); returns whether the registry
    /// mounted it (if not, push it).
    pub fn mount_blob(&self, repo: &str, digest: &Digest, from: &str) -> Result<bool> {
        let url = self.url(&format!(
            "/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"
        ));
        let resp = self.call("POST", &url, &[], Body::Empty)?;
        match resp.status {
            201 => {
                check_digest(&resp, digest, &format!("blob {digest} mounted in {repo}"))?;
                Ok(true)
            }
            // The registry opened an ordinary upload instead; leave it.
            202 => Ok(false),
            s => bail!("POST {url}: status {s}: {}", resp.text()),
        }
    }

    /// Puts manifest `bytes` as `reference` (a tag or a digest) in `repo`,
    /// with Content-Type `media_type`; returns its digest.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        let digest = Digest::of(bytes);
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let resp = self.call(
            "PUT",
            &url,
            &[("Content-Type", media_type)],
            Body::Bytes(bytes),
        )?;
        if resp.status != 201 {
            bail!("PUT {url}: status {}: {}", resp.status, resp.text());
        }
        check_digest(&resp, &digest, &format!("manifest {repo}:{reference}"))?;
        Ok(digest)
    }

    /// Pushes an image's blobs and manifest, tagged `tag` (or by digest only
    /// when `tag` is `None`); returns the manifest digest.
    pub fn push_image(&self, repo: &str, tag: Option<&str>, image: &Image) -> Result<Digest> {
        for blob in image.blobs() {
            self.push_blob(repo, blob)
                .with_context(|| format!("pushing {repo}"))?;
        }
        let digest = image.digest().to_string();
        let bytes = image
            .manifest
            .bytes()
            .context("manifest bytes are kept in memory")?;
        self.push_manifest(repo, tag.unwrap_or(&digest), image.media_type(), bytes)
    }

    /// Pushes every image of an index by digest, then the index as `tag`;
    /// returns the index digest.
    pub fn push_index(&self, repo: &str, tag: &str, index: &ImageIndex) -> Result<Digest> {
        for image in &index.images {
            self.push_image(repo, None, image)?;
        }
        let bytes = index
            .manifest
            .bytes()
            .context("index bytes are kept in memory")?;
        self.push_manifest(repo, tag, index.media_type(), bytes)
    }

    /// Fetches a manifest with `Accept: accept` (every manifest type when
    /// empty).
    pub fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &[&str],
    ) -> Result<FetchedManifest> {
        let accept = if accept.is_empty() {
            oci::MANIFEST_MEDIA_TYPES.join(", ")
        } else {
            accept.join(", ")
        };
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let resp = self.call("GET", &url, &[("Accept", &accept)], Body::Empty)?;
        if resp.status != 200 {
            bail!("GET {url}: status {}: {}", resp.status, resp.text());
        }
        let registry_digest = match resp.header("docker-content-digest") {
            Some(d) => Some(
                d.parse()
                    .with_context(|| format!("GET {url}: bad digest header"))?,
            ),
            None => None,
        };
        Ok(FetchedManifest {
            media_type: resp.header("content-type").unwrap_or_default().to_string(),
            digest: Digest::of(&resp.body),
            bytes: resp.body,
            registry_digest,
        })
    }

    /// Fetches a whole blob into memory (small blobs only).
    pub fn get_blob(&self, repo: &str, digest: &Digest) -> Result<Vec<u8>> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self.call("GET", &url, &[], Body::Empty)?;
        if resp.status != 200 {
            bail!("GET {url}: status {}", resp.status);
        }
        Ok(resp.body)
    }

    /// Deletes a manifest by digest (the registry runs with deletes enabled),
    /// so that a test can make an image disappear.
    pub fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<()> {
        let url = self.url(&format!("/v2/{repo}/manifests/{digest}"));
        let resp = self.call("DELETE", &url, &[], Body::Empty)?;
        if resp.status != 202 {
            bail!("DELETE {url}: status {}: {}", resp.status, resp.text());
        }
        Ok(())
    }

    /// The tags of `repo`.
    pub fn tags(&self, repo: &str) -> Result<Vec<String>> {
        let url = self.url(&format!("/v2/{repo}/tags/list"));
        let resp = self.call("GET", &url, &[], Body::Empty)?;
        if resp.status != 200 {
            bail!("GET {url}: status {}", resp.status);
        }
        let v: serde_json::Value = serde_json::from_slice(&resp.body)?;
        Ok(v["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

fn check_digest(resp: &Response, ours: &Digest, what: &str) -> Result<()> {
    let theirs = resp
        .header("docker-content-digest")
        .with_context(|| format!("{what}: registry sent no Docker-Content-Digest"))?;
    if theirs != ours.to_string() {
        bail!("{what}: registry computed {theirs}, we computed {ours}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{note_layer, ImageSpec, Kind};
    use crate::registry::Registry;

    #[test]
    fn pushes_blobs_once_and_manifests_byte_exact() {
        let reg = Registry::start().unwrap();
        let client = reg.client();
        let layer = note_layer("/a.txt", "a").unwrap();
        assert!(client.push_blob("t/one", &layer.blob).unwrap());
        assert!(
            !client.push_blob("t/one", &layer.blob).unwrap(),
            "HEAD skips"
        );
        assert!(std::fs::metadata(reg.blob_data_path(&layer.blob.digest)).is_ok());
        let img = ImageSpec::new(Kind::Oci, "amd64").build(vec![layer]);
        let d = client.push_image("t/one", Some("v1"), &img).unwrap();
        assert_eq!(d, img.digest());
        let got = client
            .get_manifest("t/one", "v1", &[oci::OCI_MANIFEST])
            .unwrap();
        assert_eq!(got.bytes, img.manifest.bytes().unwrap());
        assert_eq!(got.media_type, oci::OCI_MANIFEST);
        assert_eq!(got.registry_digest, Some(d));
        assert_eq!(client.tags("t/one").unwrap(), vec!["v1".to_string()]);
        assert_eq!(
            client.get_blob("t/one", &img.config.digest).unwrap(),
            img.config.bytes().unwrap()
        );
        assert!(client
            .mount_blob("t/two", &img.config.digest, "t/one")
            .unwrap());
        assert!(client.has_blob("t/two", &img.config.digest).unwrap());
        client.delete_manifest("t/one", &d).unwrap();
        assert!(client.get_manifest("t/one", "v1", &[]).is_err());
    }
}
