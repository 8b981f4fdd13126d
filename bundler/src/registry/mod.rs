//! Pulling images from registries into the blob store, verified.
//!
//! Trusts nothing a registry says except through digests: the top manifest
//! must hash to the pinned digest when there is one (else its digest is
//! recorded as pulled), each platform manifest and blob must hash to the
//! digest and size its parent names. Manifests are stored byte for byte;
//! blobs stream through [`BlobWriter`](crate::store::BlobWriter) and are
//! published only once verified. The HTTP work is oci-client's (auth, token
//! exchange, redirects); the decisions (which platform, what to keep, what
//! to check, when to retry) are made here.
//!
//! What the store (the cache) already has is not fetched: a manifest pinned
//! by digest, a blob, each hashed again first. A blob download that breaks
//! off is kept and resumed with a Range request; 5xx, 429, broken
//! connections and reads that stall longer than the read timeout
//! (`--registry-timeout`) are retried a few times with backoff.

use crate::auth::Credentials;
use crate::progress::{NoProgress, Progress};
use crate::release::{error_chain, install_tls_provider, USER_AGENT};
use crate::store::{BlobStore, BlobWriter, Claim};
use airgap_bundle::digest::{Digest, DigestMismatch, Hashed};
use airgap_bundle::oci::{
    is_manifest, AnyManifest, Descriptor, Manifest, Platform, MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_BYTES,
};
use airgap_bundle::reference::ImageRef;
use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{StreamExt as _, TryStreamExt as _};
use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol, SizedStream,
};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Largest image config read to learn a single-platform image's platform.
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Tries of one request when the registry answers 5xx or 429 or the
/// connection breaks; the waits between them double from [`FIRST_BACKOFF`]
/// (0.2 s, 0.4 s, 0.8 s, 1.6 s).
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// How long a registry may send nothing, by default.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(120);

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
fn mirror_host(url: &str) -> Result<(String, bool)> {
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
        install_tls_provider();
        let mut mirrors = HashMap::new();
        let mut plain_http: HashSet<String> = HashSet::new();
        for (registry, url) in &config.mirrors {
            let (host, plain) = mirror_host(url)?;
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
        let mut extra_root_certificates = Vec::new();
        for file in &config.ca_files {
            let data = std::fs::read(file)
                .with_context(|| format!("reading registry CA {}", file.display()))?;
            if !String::from_utf8_lossy(&data).contains("-----BEGIN CERTIFICATE-----") {
                bail!("registry CA {}: not a PEM certificate", file.display());
            }
            extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let client_config = ClientConfig {
            extra_root_certificates,
            protocol: ClientProtocol::HttpsExcept(plain_http.iter().cloned().collect()),
            // Indexes are resolved here, for every wanted platform.
            platform_resolver: None,
            max_concurrent_download: jobs,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(config.read_timeout),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        let client = Client::try_from(client_config)
            .map_err(|e| anyhow!("creating the registry client: {}", error_chain(&e)))?;
        Ok(Puller {
            client,
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
                    let entry = select(&index.manifests, wanted)?;
                    if fetched.insert(entry.digest) {
                        manifests.push(self.platform_manifest(entry, wanted).await?);
                        blobs.push(entry.clone());
                    }
                    chosen.push((wanted.clone(), entry.clone()));
                }
            }
            AnyManifest::Image(manifest) => {
                // Only the config says which platform a lone manifest is for.
                self.fetch_blob(&manifest.config).await?;
                fetched.insert(manifest.config.digest);
                blobs.push(manifest.config.clone());
                let found = self
                    .config_platform(&manifest.config)
                    .with_context(|| format!("config {}", manifest.config.digest))?;
                for wanted in platforms {
                    if !compatible(wanted, &found) {
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

    /// GETs a manifest (bounded in size), checking it against `expected`.
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
            let result = self
                .puller
                .client
                .pull_manifest_raw(reference, &auth, MANIFEST_MEDIA_TYPES)
                .await;
            match result {
                Ok((bytes, _)) => break bytes,
                Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                    self.backoff(attempt, &self.describe(e)).await
                }
                Err(e) => return Err(self.give_up(attempt, self.describe(e))),
            }
        };
        // oci-client has read the body whole by now; still refuse to keep
        // or parse an oversized one.
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            bail!(
                "{} bytes is more than the {MAX_MANIFEST_BYTES} a manifest may have",
                bytes.len()
            );
        }
        if let Some((digest, size)) = expected {
            let hashed = Hashed {
                digest: Digest::of(&bytes),
                size: bytes.len() as u64,
            };
            hashed.verify(&format!("manifest {digest}"), &digest, size)?;
        }
        Ok(bytes.to_vec())
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

    /// Streams one blob into the store unless it is there (or another image
    /// is fetching it, in which case this waits for that).
    async fn fetch_blob(&self, desc: &Descriptor) -> Result<()> {
        self.fetch_blob_inner(desc)
            .await
            .with_context(|| format!("blob {}", desc.digest.short()))
    }

    async fn fetch_blob_inner(&self, desc: &Descriptor) -> Result<()> {
        let p = self.progress;
        let mut waited = false;
        let lease = loop {
            match self.store.try_claim(&desc.digest, desc.size) {
                Claim::Present { shared } if !waited => {
                    self.report_present(desc, shared);
                    return Ok(());
                }
                Claim::Present { .. } => {
                    p.blob_done(self.image, &desc.digest, desc.size, true);
                    return Ok(());
                }
                Claim::Wait(waiter) => {
                    // Shown as shared while another image fetches it.
                    if !waited {
                        p.blob_started(self.image, &desc.digest, desc.size, true);
                        waited = true;
                    }
                    waiter.wait().await;
                }
                Claim::Fetch(lease) => break lease,
            }
        };
        if lease.reuse().await? {
            // In the cache from an earlier run, and still matching.
            drop(lease);
            self.report_present(desc, false);
            return Ok(());
        }
        let _permit = self.puller.permits.acquire().await?;
        // After a failed fetch by another image this one takes over, and
        // its image bar counts the blob twice; the run is failing anyway.
        p.blob_started(self.image, &desc.digest, desc.size, false);
        let mut writer = lease.resume().await?;
        p.blob_advanced(self.image, writer.written());
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.download(desc, &mut writer).await {
                Ok(()) => break,
                Err(Failed::Retry(e)) if attempt < ATTEMPTS => self.backoff(attempt, &e).await,
                Err(Failed::Retry(e)) => return Err(self.give_up(attempt, e)),
                Err(Failed::Fatal(e)) => return Err(e),
            }
        }
        writer.commit().await?;
        drop(lease);
        p.blob_done(self.image, &desc.digest, desc.size, false);
        Ok(())
    }

    /// One request for the rest of a blob: from where `writer` stands, with
    /// a Range request when it already holds some.
    async fn download(&self, desc: &Descriptor, writer: &mut BlobWriter) -> Result<(), Failed> {
        let p = self.progress;
        let digest = desc.digest.to_string();
        let offset = writer.written();
        let client = &self.puller.client;
        let fail = |e: OciDistributionError| {
            if retryable(&e) {
                Failed::Retry(self.describe(e))
            } else {
                Failed::Fatal(self.describe(e))
            }
        };
        let mut stream: SizedStream = if offset == 0 || offset >= desc.size {
            if offset > 0 {
                writer.restart().await.map_err(Failed::Fatal)?;
            }
            client
                .pull_blob_stream(&self.source, digest.as_str())
                .await
                .map_err(fail)?
        } else {
            match client
                .pull_blob_stream_partial(&self.source, digest.as_str(), offset, None)
                .await
                .map_err(fail)?
            {
                BlobResponse::Partial(stream) => stream,
                BlobResponse::Full(stream) => {
                    // The registry ignored the range: start over.
                    writer.restart().await.map_err(Failed::Fatal)?;
                    stream
                }
            }
        };
        let expected = desc.size - writer.written();
        if let Some(length) = stream.content_length.filter(|&l| l != expected) {
            return Err(Failed::Fatal(
                DigestMismatch::Size {
                    what: desc.digest.blob_path(),
                    expected: desc.size,
                    found: length + writer.written(),
                }
                .into(),
            ));
        }
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    writer.write(&bytes).await.map_err(Failed::Fatal)?;
                    p.blob_advanced(self.image, bytes.len() as u64);
                }
                // oci-client's own check at the end of a whole stream: the
                // writer has seen every byte and gives the typed error.
                Err(e) if e.get_ref().is_some_and(|inner| inner.is::<DigestError>()) => break,
                Err(e) if is_read_timeout(&e) => {
                    return Err(Failed::Retry(anyhow!(
                        "{} sent nothing for {:?} (the read timeout, --registry-timeout) \
                         after {} of {} bytes",
                        self.host,
                        self.puller.read_timeout,
                        writer.written(),
                        desc.size,
                    )))
                }
                Err(e) => {
                    return Err(Failed::Retry(anyhow!(
                        "reading from {} after {} of {} bytes: {}",
                        self.host,
                        writer.written(),
                        desc.size,
                        error_chain(&e)
                    )))
                }
            }
        }
        Ok(())
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

    /// The platform an image config declares.
    fn config_platform(&self, config: &Descriptor) -> Result<Platform> {
        if config.size > MAX_CONFIG_BYTES {
            bail!(
                "{} bytes is more than the {MAX_CONFIG_BYTES} a config may have",
                config.size
            );
        }
        let bytes = std::fs::read(self.store.path(&config.digest))?;
        let platform: Platform =
            serde_json::from_slice(&bytes).context("no os and architecture in the config")?;
        Ok(platform)
    }

    /// A registry failure as a short sentence naming what was asked of whom.
    fn describe(&self, e: OciDistributionError) -> anyhow::Error {
        let host = &self.host;
        let scheme = if self.puller.plain_http.contains(host) {
            "http"
        } else {
            "https"
        };
        match e {
            OciDistributionError::RequestError(e) => {
                let chain = error_chain(&e);
                if e.is_timeout() && !e.is_connect() {
                    anyhow!(
                        "{scheme}://{host} did not answer within the read timeout \
                         ({:?}, --registry-timeout): {chain}",
                        self.puller.read_timeout
                    )
                } else if e.is_connect() {
                    let tls = ["tls", "certificate", "corrupt message", "handshake"]
                        .iter()
                        .any(|w| chain.to_lowercase().contains(w));
                    let hint = if scheme == "https" && is_certificate_error(&chain) {
                        format!(
                            " (if {host}'s certificate is issued by a private CA, \
                             pass --registry-ca CA.pem)"
                        )
                    } else if scheme == "https" && tls {
                        format!(" (if {host} serves plain HTTP, pass --insecure-registry {host})")
                    } else {
                        String::new()
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
            other => anyhow!("{}", error_chain(&other)),
        }
    }
}

impl Job<'_> {
    /// ` (as USER, from SOURCE)` or ` (anonymously)`, for auth errors.
    fn who(&self) -> String {
        match self.puller.credentials.describe(&self.host) {
            Some(who) => format!(" ({who})"),
            None => " (anonymously)".to_string(),
        }
    }
}

/// Why one try of a download failed.
enum Failed {
    /// A broken connection, 5xx or 429: worth another try.
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

/// Whether a registry failure may go away on its own: 5xx, 429 (also as a
/// TOOMANYREQUESTS error), a connection refused, reset or timed out.
fn retryable(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Toomanyrequests)),
        OciDistributionError::RequestError(e) => {
            (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body())
                && !is_certificate_error(&error_chain(e))
        }
        _ => false,
    }
}

/// Whether a body stream broke off because nothing came within the read
/// timeout.
fn is_read_timeout(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
            .is_some_and(reqwest::Error::is_timeout)
}

/// Whether a connection failed on the server's certificate (which no retry
/// changes).
fn is_certificate_error(chain: &str) -> bool {
    let chain = chain.to_lowercase();
    [
        "certificate",
        "unknownissuer",
        "unknown issuer",
        "invalid peer",
    ]
    .iter()
    .any(|w| chain.contains(w))
}

fn code_name(code: &OciErrorCode) -> String {
    match code {
        OciErrorCode::Other(s) => s.clone(),
        other => serde_json::to_string(other)
            .map(|s| s.trim_matches('"').to_string())
            .unwrap_or_else(|_| format!("{other:?}")),
    }
}

/// The index entry for `wanted`: the first image manifest whose platform
/// matches (variants respected).
pub(crate) fn select<'a>(entries: &'a [Descriptor], wanted: &Platform) -> Result<&'a Descriptor> {
    entries
        .iter()
        .find(|d| {
            is_manifest(&d.media_type) && d.platform.as_ref().is_some_and(|p| wanted.matches(p))
        })
        .ok_or_else(|| {
            let have: Vec<String> = entries
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(ToString::to_string)
                .collect();
            anyhow!(
                "no manifest for platform {wanted} (the index has: {})",
                if have.is_empty() {
                    "none with a platform".to_string()
                } else {
                    have.join(", ")
                }
            )
        })
}

/// Whether a lone manifest whose config declares `found` serves `wanted`.
/// Configs often omit the variant, so an absent one is accepted.
fn compatible(wanted: &Platform, found: &Platform) -> bool {
    wanted.matches(found)
        || (found.variant.is_none()
            && wanted.os == found.os
            && wanted.architecture == found.architecture)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(media_type: &str, platform: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: Digest::of(platform.unwrap_or("").as_bytes()),
            size: 1,
            platform: platform.map(|p| {
                let mut parts = p.split('/');
                Platform {
                    os: parts.next().unwrap().into(),
                    architecture: parts.next().unwrap().into(),
                    variant: parts.next().map(Into::into),
                }
            }),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn selects_platforms_with_variants() {
        use airgap_bundle::oci::{DOCKER_MANIFEST, OCI_MANIFEST};
        let entries = vec![
            desc(OCI_MANIFEST, Some("linux/amd64")),
            desc(OCI_MANIFEST, Some("linux/arm/v6")),
            desc(DOCKER_MANIFEST, Some("linux/arm/v7")),
            desc(OCI_MANIFEST, Some("linux/arm64/v8")),
            desc(OCI_MANIFEST, Some("unknown/unknown")),
        ];
        let arm = Platform::for_arch("arm").unwrap();
        assert_eq!(select(&entries, &arm).unwrap(), &entries[2]);
        let arm64 = Platform::for_arch("arm64").unwrap();
        assert_eq!(select(&entries, &arm64).unwrap(), &entries[3]);
        let err = select(&entries[..2], &arm).unwrap_err().to_string();
        assert!(
            err.contains("no manifest for platform linux/arm/v7"),
            "{err}"
        );
        assert!(err.contains("linux/amd64, linux/arm/v6"), "{err}");
    }

    #[test]
    fn lone_manifests_match_by_config() {
        let arm = Platform::for_arch("arm").unwrap();
        let bare_arm = Platform {
            variant: None,
            ..arm.clone()
        };
        let v6 = Platform {
            variant: Some("v6".into()),
            ..arm.clone()
        };
        assert!(compatible(&arm, &bare_arm));
        assert!(!compatible(&arm, &v6));
        assert!(!compatible(
            &Platform::for_arch("amd64").unwrap(),
            &bare_arm
        ));
    }

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
        assert!(is_certificate_error(
            "invalid peer certificate: UnknownIssuer"
        ));
        assert!(!is_certificate_error("Connection refused"));
    }

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
