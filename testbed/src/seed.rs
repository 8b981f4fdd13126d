//! The image sets the rig pushes to a local registry, under the repository
//! paths a docker.io mirror would hold (`kubeguide/redis-master`, pulled by the
//! product as `docker.io/kubeguide/redis-master:latest`), and the k3s release
//! that goes with them.
//!
//! [`seed_demo`] pushes the guestbook images and the k3s v1.20.6+k3s1 system
//! images; [`seed_bench`] pushes big incompressible images for benchmarks.
//! Both return [`Seeded`]: every digest and size, for tests to assert against.

use crate::image::{
    busybox_layer, note_layer, random_layer, Image, ImageIndex, ImageSpec, Kind, Layer,
    LayerBuilder,
};
use crate::push::RegistryClient;
use crate::registry::Registry;
use crate::release;
use airgap_bundle::digest::Digest;
use airgap_bundle::oci::Platform;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The k3s version of the demo.
pub const DEMO_VERSION: &str = "v1.20.6+k3s1";
/// What `ctr run` of `rancher/library-busybox:1.32.1` (amd64) prints.
pub const BUSYBOX_GREETING: &str = "hello from airgap";
/// The runnable image.
pub const BUSYBOX_REF: &str = "docker.io/rancher/library-busybox:1.32.1";
/// The guestbook images the demo manifests use.
pub const GUESTBOOK_REFS: &[&str] = &[
    "docker.io/kubeguide/redis-master:latest",
    "docker.io/kubeguide/guestbook-redis-slave:latest",
    "docker.io/kubeguide/guestbook-php-frontend:latest",
];
/// The k3s binary asset used when no other is given: a shell script that
/// says what it is.
pub const K3S_STAND_IN: &str = "#!/bin/sh\necho \"k3s stand-in (test double)\"\n";
/// The demo's `install.sh` (the real one cannot be fetched here).
pub const INSTALL_SH_STAND_IN: &str = "#!/bin/sh\n\
# install.sh stand-in for k3s v1.20.6+k3s1 (test double)\n\
set -e\n\
echo \"k3s install.sh stand-in (test double)\"\n";

/// A blob as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// One platform's manifest of a seeded image.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformManifest {
    pub platform: Platform,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub config: BlobInfo,
    pub layers: Vec<BlobInfo>,
}

/// One pushed image (single manifest or index).
#[derive(Debug, Clone, Serialize)]
pub struct SeededImage {
    /// Full reference, `docker.io/<repository>:<tag>`.
    pub reference: String,
    /// Repository path in the local registry (`kubeguide/redis-master`).
    pub repository: String,
    pub tag: String,
    /// The top manifest (index or image manifest).
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// One entry per platform; for a single manifest, the manifest itself.
    pub platforms: Vec<PlatformManifest>,
}

impl SeededImage {
    /// The manifest for a k3s arch name (`amd64`, `arm64`, `arm`).
    pub fn platform(&self, arch: &str) -> Option<&PlatformManifest> {
        let want = Platform::for_arch(arch)?;
        self.platforms.iter().find(|p| want.matches(&p.platform))
    }

    /// Whether the top manifest is an index / manifest list.
    pub fn is_index(&self) -> bool {
        airgap_bundle::oci::is_index(&self.media_type)
    }

    /// Every config and layer over all platforms, each once.
    pub fn blobs(&self) -> Vec<BlobInfo> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for p in &self.platforms {
            for b in std::iter::once(&p.config).chain(&p.layers) {
                if seen.insert(b.digest) {
                    out.push(b.clone());
                }
            }
        }
        out
    }

    /// The blobs one platform needs (config and layers).
    pub fn blobs_for(&self, arch: &str) -> Vec<BlobInfo> {
        self.platform(arch)
            .map(|p| {
                std::iter::once(&p.config)
                    .chain(&p.layers)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Everything a seeding pushed.
#[derive(Debug, Clone, Serialize)]
pub struct Seeded {
    /// The registry's `127.0.0.1:PORT`.
    pub registry: String,
    pub images: Vec<SeededImage>,
}

impl Seeded {
    /// The image with full reference `reference`.
    pub fn image(&self, reference: &str) -> Option<&SeededImage> {
        self.images.iter().find(|i| i.reference == reference)
    }

    /// The image with full reference `reference`; panics (for tests) when
    /// it was not seeded.
    pub fn get(&self, reference: &str) -> &SeededImage {
        self.image(reference)
            .unwrap_or_else(|| panic!("{reference} was not seeded"))
    }

    pub fn references(&self) -> Vec<String> {
        self.images.iter().map(|i| i.reference.clone()).collect()
    }

    /// Layer digests that more than one image uses.
    pub fn shared_layers(&self) -> BTreeSet<Digest> {
        let mut users: BTreeMap<Digest, BTreeSet<&str>> = BTreeMap::new();
        for image in &self.images {
            for p in &image.platforms {
                for l in &p.layers {
                    users.entry(l.digest).or_default().insert(&image.reference);
                }
            }
        }
        users
            .into_iter()
            .filter(|(_, u)| u.len() > 1)
            .map(|(d, _)| d)
            .collect()
    }

    /// Sizes of the unique blobs (configs and layers) of every image, for
    /// `arch` only when given.
    pub fn unique_blob_bytes(&self, arch: Option<&str>) -> u64 {
        let mut seen = BTreeMap::new();
        for image in &self.images {
            let blobs = match arch {
                Some(a) => image.blobs_for(a),
                None => image.blobs(),
            };
            for b in blobs {
                seen.insert(b.digest, b.size);
            }
        }
        seen.values().sum()
    }

    /// Adds the images of `other` (seeding the demo and a bench set into one
    /// registry).
    pub fn extend(&mut self, other: Seeded) {
        self.images.extend(other.images);
    }
}

fn blob_info(blob: &crate::image::Blob, media_type: &str) -> BlobInfo {
    BlobInfo {
        digest: blob.digest,
        size: blob.size,
        media_type: media_type.to_string(),
    }
}

fn platform_manifest(image: &Image) -> PlatformManifest {
    PlatformManifest {
        platform: image.platform.clone(),
        digest: image.digest(),
        media_type: image.media_type().to_string(),
        size: image.manifest.size,
        config: blob_info(&image.config, image.kind.config_type()),
        layers: image
            .layers
            .iter()
            .map(|l| blob_info(&l.blob, image.kind.layer_type()))
            .collect(),
    }
}

/// Pushes a single-manifest image as `repository:tag`.
pub fn push_image(
    client: &RegistryClient,
    repository: &str,
    tag: &str,
    image: &Image,
) -> Result<SeededImage> {
    let digest = client
        .push_image(repository, Some(tag), image)
        .with_context(|| format!("seeding {repository}:{tag}"))?;
    Ok(SeededImage {
        reference: format!("docker.io/{repository}:{tag}"),
        repository: repository.to_string(),
        tag: tag.to_string(),
        digest,
        media_type: image.media_type().to_string(),
        size: image.manifest.size,
        platforms: vec![platform_manifest(image)],
    })
}

/// Pushes an index and its images as `repository:tag`.
pub fn push_index(
    client: &RegistryClient,
    repository: &str,
    tag: &str,
    index: &ImageIndex,
) -> Result<SeededImage> {
    let digest = client
        .push_index(repository, tag, index)
        .with_context(|| format!("seeding {repository}:{tag}"))?;
    Ok(SeededImage {
        reference: format!("docker.io/{repository}:{tag}"),
        repository: repository.to_string(),
        tag: tag.to_string(),
        digest,
        media_type: index.media_type().to_string(),
        size: index.manifest.size,
        platforms: index.images.iter().map(platform_manifest).collect(),
    })
}

/// The k3s system images of the demo release, as its `k3s-images.txt` lists
/// them.
pub fn k3s_images_txt() -> Vec<String> {
    K3S_IMAGES.iter().map(|(r, _, _)| r.to_string()).collect()
}

/// Reference, command, and whether its per-platform manifests are Docker
/// (a manifest list) rather than OCI (an index).
const K3S_IMAGES: &[(&str, &str, Kind)] = &[
    (
        "docker.io/rancher/coredns-coredns:1.8.3",
        "/coredns",
        Kind::Oci,
    ),
    (
        "docker.io/rancher/klipper-helm:v0.4.3",
        "/usr/bin/entry",
        Kind::Oci,
    ),
    (
        "docker.io/rancher/klipper-lb:v0.1.2",
        "/usr/bin/entry",
        Kind::Docker,
    ),
    (
        "docker.io/rancher/library-traefik:1.7.19",
        "/traefik",
        Kind::Oci,
    ),
    (
        "docker.io/rancher/local-path-provisioner:v0.0.19",
        "/usr/bin/local-path-provisioner",
        Kind::Oci,
    ),
    (
        "docker.io/rancher/metrics-server:v0.3.6",
        "/metrics-server",
        Kind::Oci,
    ),
    (BUSYBOX_REF, "/bin/echo", Kind::Oci),
    ("docker.io/rancher/pause:3.1", "/pause", Kind::Oci),
];

/// The platforms of every k3s system image.
pub const K3S_IMAGE_ARCHES: &[&str] = &["amd64", "arm64", "arm"];

/// Splits `docker.io/<repository>:<tag>`.
fn split_ref(reference: &str) -> (&str, &str) {
    let rest = reference.strip_prefix("docker.io/").unwrap_or(reference);
    rest.rsplit_once(':').expect("demo references have tags")
}

/// The guestbook images: Docker schema 2, amd64, like the real ones. Redis
/// master and slave share a "debian base" and a "redis" layer.
pub fn guestbook_images() -> Result<Vec<(String, Image)>> {
    let debian = LayerBuilder::new()
        .file("/etc/debian_version", "10.9\n", 0o644)
        .file(
            "/etc/os-release",
            "PRETTY_NAME=\"Debian GNU/Linux 10 (buster), airgap test image\"\nID=debian\nVERSION_ID=\"10\"\n",
            0o644,
        )
        .file("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nredis:x:999:999::/data:/bin/false\n", 0o644)
        .dir("/tmp", 0o1777)
        .dir("/root", 0o700)
        .build()?;
    let redis = LayerBuilder::new()
        .file(
            "/usr/local/bin/redis-server",
            "#!/bin/sh\necho redis-server stand-in \"$@\"\n",
            0o755,
        )
        .symlink("/usr/local/bin/redis-cli", "redis-server")
        .dir("/data", 0o755)
        .build()?;
    let master = LayerBuilder::new()
        .file("/etc/redis/master.conf", "port 6379\n", 0o644)
        .build()?;
    let slave = LayerBuilder::new()
        .file(
            "/run.sh",
            "#!/bin/sh\nexec redis-server --slaveof redis-master 6379\n",
            0o755,
        )
        .build()?;
    let php = LayerBuilder::new()
        .file(
            "/usr/local/bin/php",
            "#!/bin/sh\necho php stand-in\n",
            0o755,
        )
        .file(
            "/usr/local/bin/apache2-foreground",
            "#!/bin/sh\nexec php -S 0.0.0.0:80\n",
            0o755,
        )
        .build()?;
    let app = LayerBuilder::new()
        .file(
            "/var/www/html/index.html",
            "<html><body>Guestbook</body></html>\n",
            0o644,
        )
        .file(
            "/var/www/html/guestbook.php",
            "<?php echo 'guestbook'; ?>\n",
            0o644,
        )
        .build()?;
    let spec = |name: &str| {
        ImageSpec::new(Kind::Docker, "amd64").label("org.opencontainers.image.title", name)
    };
    Ok(vec![
        (
            GUESTBOOK_REFS[0].to_string(),
            spec("redis-master")
                .cmd(&["redis-server", "/etc/redis/master.conf"])
                .build(vec![debian.clone(), redis.clone(), master]),
        ),
        (
            GUESTBOOK_REFS[1].to_string(),
            spec("guestbook-redis-slave")
                .cmd(&["/run.sh"])
                .build(vec![debian, redis, slave]),
        ),
        (
            GUESTBOOK_REFS[2].to_string(),
            spec("guestbook-php-frontend")
                .cmd(&["apache2-foreground"])
                .env("GET_HOSTS_FROM=dns")
                .build(vec![php, app]),
        ),
    ])
}

/// The k3s system images: each an index (OCI, or a Docker manifest list for
/// klipper-lb) over amd64, arm64 and arm/v7. The amd64 busybox really runs.
pub fn k3s_system_images() -> Result<Vec<(String, ImageIndex)>> {
    let mut out = Vec::new();
    for (reference, cmd, kind) in K3S_IMAGES {
        let mut images = Vec::new();
        for arch in K3S_IMAGE_ARCHES {
            let spec =
                ImageSpec::new(*kind, arch).label("org.opencontainers.image.ref.name", reference);
            let image = if *reference == BUSYBOX_REF && *arch == "amd64" {
                spec.cmd(&[cmd, BUSYBOX_GREETING])
                    .build(vec![busybox_layer()?])
            } else {
                let text = format!("{reference} for linux/{arch}: airgap test image\n");
                spec.cmd(&[cmd]).build(vec![note_layer(cmd, &text)?])
            };
            images.push(image);
        }
        out.push((reference.to_string(), ImageIndex::new(*kind, images)));
    }
    Ok(out)
}

/// Pushes the demo set: the guestbook images and the k3s v1.20.6+k3s1 system
/// images (see [`k3s_images_txt`]).
pub fn seed_demo(registry: &Registry) -> Result<Seeded> {
    let client = registry.client();
    let mut seeded = Seeded {
        registry: registry.addr().to_string(),
        images: Vec::new(),
    };
    for (reference, image) in guestbook_images()? {
        let (repo, tag) = split_ref(&reference);
        seeded.images.push(push_image(&client, repo, tag, &image)?);
    }
    for (reference, index) in k3s_system_images()? {
        let (repo, tag) = split_ref(&reference);
        seeded.images.push(push_index(&client, repo, tag, &index)?);
    }
    Ok(seeded)
}

/// The benchmark images, `docker.io/airgap-bench/app-{a,b,c,d}:v1`.
pub const BENCH_REFS: &[&str] = &[
    "docker.io/airgap-bench/app-a:v1",
    "docker.io/airgap-bench/app-b:v1",
    "docker.io/airgap-bench/app-c:v1",
    "docker.io/airgap-bench/app-d:v1",
];

/// Pushes four amd64 images whose unique layers add up to at least
/// `total_layer_bytes` of incompressible data: app-a (Docker) and app-b (OCI)
/// share a base layer of 2/5 of the total; each image has one layer of its
/// own (app-c OCI, app-d Docker). Layers are streamed through temp files in
/// the system temp dir, each freed once pushed.
pub fn seed_bench(registry: &Registry, total_layer_bytes: u64) -> Result<Seeded> {
    let tmp = tempfile::Builder::new().prefix("airgap-bench-").tempdir()?;
    seed_bench_in(registry, total_layer_bytes, tmp.path())
}

/// [`seed_bench`] with layer temp files in `tmp_dir`.
pub fn seed_bench_in(
    registry: &Registry,
    total_layer_bytes: u64,
    tmp_dir: &Path,
) -> Result<Seeded> {
    let client = registry.client();
    let base_len = (total_layer_bytes * 2 / 5).max(1);
    let own_len = (total_layer_bytes - base_len.min(total_layer_bytes))
        .div_ceil(4)
        .max(1);
    let repo = |i: usize| split_ref(BENCH_REFS[i]).0;

    let layer = |repo_name: &str, name: &str, len: u64, seed: u64| -> Result<Layer> {
        let mut l = random_layer(tmp_dir, &format!("/data/{name}.bin"), len, seed)?;
        client
            .push_blob(repo_name, &l.blob)
            .with_context(|| format!("pushing bench layer {name}"))?;
        l.release();
        Ok(l)
    };
    let base = layer(repo(0), "base", base_len, 1)?;
    if !client.mount_blob(repo(1), &base.blob.digest, repo(0))? {
        anyhow::bail!("registry did not mount the shared bench base layer");
    }
    let plan = [
        (Kind::Docker, Some(&base), "a", 2),
        (Kind::Oci, Some(&base), "b", 3),
        (Kind::Oci, None, "c", 4),
        (Kind::Docker, None, "d", 5),
    ];
    let mut seeded = Seeded {
        registry: registry.addr().to_string(),
        images: Vec::new(),
    };
    for (i, (kind, base, name, seed)) in plan.into_iter().enumerate() {
        let own = layer(repo(i), name, own_len, seed)?;
        let layers: Vec<Layer> = base.cloned().into_iter().chain([own]).collect();
        let image = ImageSpec::new(kind, "amd64")
            .label("org.opencontainers.image.title", &format!("bench-{name}"))
            .cmd(&["/bin/true"])
            .build(layers);
        let (repo, tag) = split_ref(BENCH_REFS[i]);
        seeded.images.push(push_image(&client, repo, tag, &image)?);
    }
    Ok(seeded)
}

/// The stand-in k3s binary for a non-amd64 arch (a script naming its arch).
pub fn k3s_stand_in(arch: &str) -> String {
    format!("#!/bin/sh\necho \"k3s stand-in for {arch} (test double)\"\n")
}

/// Writes the demo's k3s release under `root`, in the GitHub layout
/// (`<root>/v1.20.6+k3s1/`) and the mirror layout (`<root>/k3s/v1.20.6-k3s1/`):
/// `k3s` is `k3s_amd64`, `k3s-arm64` and `k3s-armhf` are stand-in scripts.
/// Returns the GitHub-layout dir.
pub fn write_demo_release(root: &Path, k3s_amd64: &[u8]) -> Result<PathBuf> {
    let arm64 = k3s_stand_in("arm64");
    let armhf = k3s_stand_in("armhf");
    let assets: [(&str, &[u8]); 3] = [
        ("amd64", k3s_amd64),
        ("arm64", arm64.as_bytes()),
        ("armhf", armhf.as_bytes()),
    ];
    let images = k3s_images_txt();
    release::write_mirror_release(root, DEMO_VERSION, &assets, &images, INSTALL_SH_STAND_IN)?;
    release::write_github_release(root, DEMO_VERSION, &assets, &images, INSTALL_SH_STAND_IN)
}

#[cfg(test)]
#[path = "seed_tests.rs"]
mod tests;
