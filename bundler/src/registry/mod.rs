//! Pulling images from registries into the blob store, verified.
//!
//! Trusts nothing a registry says except through digests: the top manifest
//! must hash to the pinned digest when there is one (else its digest is
//! recorded as pulled), each platform manifest and blob must hash to the
//! digest and size its parent names. Manifests are stored byte for byte;
//! blobs stream through [`BlobWriter`](crate::store::BlobWriter) and are
//! published only once verified. The HTTP work is oci-client's (auth, token
//! exchange, redirects), but for manifest GETs (`manifest`, read under
//! their size limit as they stream); the decisions (which platform, what to keep, what
//! to check, when to retry) are made here and in the submodules: `config`
//! (mirrors, insecure hosts, timeouts), `platform` (which manifest serves a
//! platform), `blob` (a blob's download, resume and retries) and `classify`
//! (what a failure means, and whether to try again).
//!
//! What the store (the cache) already has is not fetched: a manifest pinned
//! by digest, a blob, each hashed again first. 5xx, 429, broken connections
//! and reads that stall longer than the read timeout (`--registry-timeout`)
//! are retried a few times with backoff.

mod blob;
mod classify;
mod config;
mod manifest;
mod platform;

pub use config::{parse_mirror, RegistryConfig, DEFAULT_READ_TIMEOUT};
pub(crate) use platform::{check_config_size, compatible, select, stored_config_platform};

use crate::auth::Credentials;
use crate::net;
use crate::progress::{NoProgress, Progress};
use crate::store::BlobStore;
use airgap_bundle::digest::{Digest, Hashed};
use airgap_bundle::error;
use airgap_bundle::oci::{AnyManifest, Descriptor, Manifest, Platform, MAX_MANIFEST_BYTES};
use airgap_bundle::reference::ImageRef;
use anyhow::{anyhow, bail, Context as _, Result};
use classify::retryable;
use futures_util::TryStreamExt as _;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Tries of one request when the registry answers 5xx or 429 or the
/// connection breaks; the waits between them double from [`FIRST_BACKOFF`]
/// (0.2 s, 0.4 s, 0.8 s, 1.6 s).
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// An image as pulled into the store.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The name the image is known by, as asked (tag form when it has a
    /// tag), never the mirror's host.
    pub reference: ImageRef,
    /// The top-level manifest or index, exactly as pulled and stored.
    pub top: Descriptor,
    /// The image manifest chosen for each requested platform.
    pub platforms: Vec<(Platform, Descriptor)>,
    /// Every blob the bundle needs for this image, each once: the top, the
    /// platform manifests, the configs and the layers.
    pub blobs: Vec<Descriptor>,
}

/// Pulls images; one per run, shared by all images so that `jobs` bounds
/// the whole run.
pub struct Puller {
    client: Client,
    /// Manifest GETs ([`manifest`]): oci-client cannot read one under a
    /// limit. Same CAs and timeouts as `client`.
    http: reqwest::Client,
    /// Image registry -> host actually contacted.
    mirrors: HashMap<String, String>,
    plain_http: HashSet<String>,
    permits: Arc<Semaphore>,
    jobs: usize,
    credentials: Credentials,
    read_timeout: Duration,
}

impl Puller {
    pub fn new(config: RegistryConfig) -> Result<Puller> {
        net::install_tls_provider();
        let mut mirrors = HashMap::new();
        let mut plain_http: HashSet<String> = HashSet::new();
        for (registry, url) in &config.mirrors {
            let (host, plain) = config::mirror_host(url)?;
            if plain {
                plain_http.insert(host.clone());
            }
            mirrors.insert(registry.clone(), host);
        }
        for host in &config.insecure {
            plain_http.insert(host.clone());
            if host == "docker.io" {
                // oci-client contacts Docker Hub under this name.
                plain_http.insert("index.docker.io".to_string());
            }
        }
        let jobs = config.jobs.max(1);
        let ca_files = net::read_ca_files(&config.ca_files)?;
        let mut http = reqwest::Client::builder()
            .user_agent(net::USER_AGENT)
            .connect_timeout(net::CONNECT_TIMEOUT)
            .read_timeout(config.read_timeout);
        for data in &ca_files {
            let certificates = reqwest::Certificate::from_pem_bundle(data)
                .context("reading a registry CA certificate")?;
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        let http = http.build().context("creating the registry HTTP client")?;
        let extra_root_certificates = ca_files
            .into_iter()
            .map(|data| Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            })
            .collect();
        let client_config = ClientConfig {
            extra_root_certificates,
            protocol: ClientProtocol::HttpsExcept(plain_http.iter().cloned().collect()),
            // Indexes are resolved here, for every wanted platform.
            platform_resolver: None,
            max_concurrent_download: jobs,
            connect_timeout: Some(net::CONNECT_TIMEOUT),
            read_timeout: Some(config.read_timeout),
            user_agent: net::USER_AGENT,
            ..ClientConfig::default()
        };
        let client = Client::try_from(client_config)
            .map_err(|e| anyhow!("creating the registry client: {}", error::chain(&e)))?;
        Ok(Puller {
            client,
            http,
            mirrors,
            plain_http,
            permits: Arc::new(Semaphore::new(jobs)),
            jobs,
            credentials: config.credentials,
            read_timeout: config.read_timeout,
        })
    }

    /// The host pulls of `image` contact (a mirror's, or the registry's).
    pub fn host_for(&self, image: &ImageRef) -> String {
        self.source(image).resolve_registry().to_string()
    }

    fn source(&self, image: &ImageRef) -> Reference {
        let registry = self
            .mirrors
            .get(&image.registry)
            .unwrap_or(&image.registry)
            .clone();
        let repository = image.repository.clone();
        match (&image.digest, &image.tag) {
            (Some(digest), _) => Reference::with_digest(registry, repository, digest.to_string()),
            (None, tag) => Reference::with_tag(
                registry,
                repository,
                tag.clone().unwrap_or_else(|| "latest".to_string()),
            ),
        }
    }

    /// Pulls `image` for each of `platforms` into `store`. When the image
    /// pins a digest it is fetched by that digest and must match it.
    pub async fn pull(
        &self,
        image: &ImageRef,
        platforms: &[Platform],
        store: &BlobStore,
        progress: &dyn Progress,
    ) -> Result<PulledImage> {
        let source = self.source(image);
        let host = source.resolve_registry().to_string();
        let job = Job {
            puller: self,
            image,
            source,
            host,
            store,
            progress,
        };
        progress.image_started(image);
        match job.run(platforms).await {
            Ok(pulled) => {
                let bytes = pulled.blobs.iter().map(|d| d.size).sum();
                progress.image_done(image, pulled.blobs.len(), bytes);
                Ok(pulled)
            }
            Err(e) => {
                progress.image_failed(image);
                Err(e.context(format!("pulling {image} from {}", job.host)))
            }
        }
    }

    /// `image`'s top manifest or index, fetched as [`Puller::pull`] fetches
    /// it (by its digest, and checked against it, when it has one; retried
    /// on 5xx, 429 and broken connections) and nothing else.
    pub(crate) async fn top_manifest(
        &self,
        image: &ImageRef,
        store: &BlobStore,
    ) -> Result<Vec<u8>> {
        let job = self.job(image, store);
        job.fetch_manifest(&job.source, image.digest.map(|d| (d, None)))
            .await
    }

    /// Fetches blob `desc` of `image` into `store`, verified, as pulls do.
    pub(crate) async fn fetch_blob(
        &self,
        image: &ImageRef,
        desc: &Descriptor,
        store: &BlobStore,
    ) -> Result<()> {
        self.job(image, store).fetch_blob(desc).await
    }

    /// A job for `image` that reports no progress.
    fn job<'a>(&'a self, image: &'a ImageRef, store: &'a BlobStore) -> Job<'a> {
        let source = self.source(image);
        Job {
            puller: self,
            image,
            host: source.resolve_registry().to_string(),
            source,
            store,
            progress: &NoProgress,
        }
    }
}

/// One image's pull.
struct Job<'a> {
    puller: &'a Puller,
    image: &'a ImageRef,
    /// The image as named on the host contacted.
    source: Reference,
    host: String,
    store: &'a BlobStore,
    progress: &'a dyn Progress,
}

impl Job<'_> {
    async fn run(&self, platforms: &[Platform]) -> Result<PulledImage> {
        if platforms.is_empty() {
            bail!("no platform requested");
        }
        let what = match (&self.image.digest, &self.image.tag) {
            (Some(d), _) => format!("manifest {d}"),
            (None, tag) => format!("manifest {}", tag.as_deref().unwrap_or("latest")),
        };
        let bytes = self
            .fetch_manifest(&self.source, self.image.digest.map(|d| (d, None)))
            .await
            .with_context(|| what.clone())?;
        let parsed = AnyManifest::parse(&what, None, &bytes)?;
        let top = Descriptor {
            media_type: parsed.media_type().to_string(),
            digest: Digest::of(&bytes),
            size: bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        };
        self.store_manifest(&top, &bytes).await?;

        let mut blobs = vec![top.clone()];
        let mut chosen = Vec::new();
        let mut manifests = Vec::new();
        let mut fetched = HashSet::from([top.digest]);
        match parsed {
            AnyManifest::Index(index) => {
                for wanted in platforms {
                    let entry = platform::select(&index.manifests, wanted)?;
                    if fetched.insert(entry.digest) {
                        manifests.push(self.platform_manifest(entry, wanted).await?);
                        blobs.push(entry.clone());
                    }
                    chosen.push((wanted.clone(), entry.clone()));
                }
            }
            AnyManifest::Image(manifest) => {
                // Only the config says which platform a lone manifest is for.
                let config = || format!("config {}", manifest.config.digest);
                platform::check_config_size(&manifest.config).with_context(config)?;
                self.fetch_blob(&manifest.config).await?;
                fetched.insert(manifest.config.digest);
                blobs.push(manifest.config.clone());
                let found = platform::stored_config_platform(self.store, &manifest.config)
                    .with_context(config)?;
                for wanted in platforms {
                    if !platform::compatible(wanted, &found) {
                        bail!("the image is for {found} only (it has no index), not {wanted}");
                    }
                    let desc = Descriptor {
                        platform: Some(found.clone()),
                        ..top.clone()
                    };
                    chosen.push((wanted.clone(), desc));
                }
                manifests.push(manifest);
            }
        }

        let mut todo = Vec::new();
        for desc in manifests.iter().flat_map(Manifest::blobs) {
            if fetched.insert(desc.digest) {
                blobs.push(desc.clone());
                todo.push(desc);
            }
        }
        futures_util::stream::iter(todo.into_iter().map(Ok))
            .try_for_each_concurrent(self.puller.jobs, |desc| self.fetch_blob(desc))
            .await?;

        let reference = if self.image.tag.is_some() {
            self.image.without_digest()
        } else {
            self.image.clone()
        };
        Ok(PulledImage {
            reference,
            top,
            platforms: chosen,
            blobs,
        })
    }

    /// Fetches, checks and stores the manifest an index entry names.
    async fn platform_manifest(&self, entry: &Descriptor, wanted: &Platform) -> Result<Manifest> {
        let what = format!("manifest {} for {wanted}", entry.digest);
        let reference = self.source.clone_with_digest(entry.digest.to_string());
        let bytes = self
            .fetch_manifest(&reference, Some((entry.digest, Some(entry.size))))
            .await
            .with_context(|| what.clone())?;
        let manifest = match AnyManifest::parse(&what, Some(&entry.media_type), &bytes)? {
            AnyManifest::Image(m) => m,
            AnyManifest::Index(_) => bail!("{what}: an index inside an index is not supported"),
        };
        self.store_manifest(entry, &bytes).await?;
        Ok(manifest)
    }

    /// GETs a manifest (bounded in size while it streams), checking it
    /// against `expected`.
    async fn fetch_manifest(
        &self,
        reference: &Reference,
        expected: Option<(Digest, Option<u64>)>,
    ) -> Result<Vec<u8>> {
        if let Some((_, Some(size))) = expected {
            if size > MAX_MANIFEST_BYTES {
                bail!("{size} bytes is more than the {MAX_MANIFEST_BYTES} a manifest may have");
            }
        }
        if let Some((digest, size)) = expected {
            // Pinned and in the cache: no request at all.
            if let Some(found) = self.store.verify_present(&digest).await? {
                if size.is_none_or(|s| s == found) && found <= MAX_MANIFEST_BYTES {
                    return Ok(std::fs::read(self.store.path(&digest))?);
                }
            }
        }
        let _permit = self.puller.permits.acquire().await?;
        let auth = self.auth();
        let mut attempt = 0;
        let bytes = loop {
            attempt += 1;
            // A body over the limit is final: not retried.
            match self.get_manifest(reference, &auth).await? {
                Ok(bytes) => break bytes,
                Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                    self.backoff(attempt, &self.describe(e)).await
                }
                Err(e) => return Err(self.give_up(attempt, self.describe(e))),
            }
        };
        if let Some((digest, size)) = expected {
            let hashed = Hashed {
                digest: Digest::of(&bytes),
                size: bytes.len() as u64,
            };
            hashed.verify(&format!("manifest {digest}"), &digest, size)?;
        }
        Ok(bytes)
    }

    async fn store_manifest(&self, desc: &Descriptor, bytes: &[u8]) -> Result<()> {
        let shared = self.store.put_bytes(&desc.digest, bytes).await?;
        self.report_present(desc, shared);
        Ok(())
    }

    fn report_present(&self, desc: &Descriptor, shared: bool) {
        let p = self.progress;
        p.blob_started(self.image, &desc.digest, desc.size, shared);
        if !shared {
            p.blob_advanced(self.image, desc.size);
        }
        p.blob_done(self.image, &desc.digest, desc.size, shared);
    }

    /// The credentials for the host contacted.
    fn auth(&self) -> RegistryAuth {
        self.puller.credentials.for_host(&self.host)
    }

    /// Waits before try `attempt + 1`, saying why.
    async fn backoff(&self, attempt: u32, why: &anyhow::Error) {
        let wait = FIRST_BACKOFF * 2u32.pow(attempt - 1);
        tracing::warn!(
            "{} from {}: {why:#}; retrying in {wait:?}",
            self.image,
            self.host
        );
        tokio::time::sleep(wait).await;
    }

    fn give_up(&self, attempts: u32, last: anyhow::Error) -> anyhow::Error {
        if attempts > 1 {
            last.context(format!("giving up after {attempts} attempts"))
        } else {
            last
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_through_mirrors() {
        let puller = Puller::new(RegistryConfig {
            mirrors: vec![("docker.io".into(), "http://127.0.0.1:5000".into())],
            insecure: vec!["10.0.0.1:5000".into()],
            jobs: 2,
            ..RegistryConfig::default()
        })
        .unwrap();
        let hub: ImageRef = "kubeguide/redis-master".parse().unwrap();
        assert_eq!(puller.host_for(&hub), "127.0.0.1:5000");
        let src = puller.source(&hub);
        assert_eq!(src.repository(), "kubeguide/redis-master");
        assert_eq!(src.tag(), Some("latest"));
        let other: ImageRef = "quay.io/x/y:1".parse().unwrap();
        assert_eq!(puller.host_for(&other), "quay.io");
        let plain = Puller::new(RegistryConfig::default()).unwrap();
        assert_eq!(plain.host_for(&hub), "index.docker.io");
    }
}
