//! k3s release assets: the version name, where a release's files live, and
//! fetching them verified.
//!
//! The release's `sha256sum-<arch>.txt` is the trust anchor here: the k3s
//! binary (and `k3s-images.txt`, when listed) must match its line in it, or
//! nothing is written at the final path. The checksum file itself, like
//! `install.sh`, is trusted as served over the configured URL (HTTPS by
//! default), and recorded by digest so the bundle pins what was used.
//!
//! `images.lock` pins the binary and `install.sh` of a version
//! ([`ReleasePins`]): a checksum file that now lists another hash for the
//! binary than the lock's is refused, naming both, and `install.sh` must
//! hash to its pin. Without a pin, a cached `install.sh` found by its URL is
//! not used: it is fetched again, and the build pins what it got.
//!
//! Every file lands in the cache ([`crate::cache`]): by digest when the
//! checksum file names it, else by URL. A file the cache has (and that still
//! hashes right) is not fetched again, so with a warm cache a build works
//! with the release server down, using the cached listings.

use crate::cache;
use crate::progress::Progress;
use crate::store::{BlobStore, BlobWriter};
use airgap_bundle::digest::Digest;
use airgap_bundle::error;
use airgap_bundle::reference::ImageRef;
use anyhow::{anyhow, bail, Context as _, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where GitHub serves k3s release assets.
pub const GITHUB_RELEASES: &str = "https://github.com/k3s-io/k3s/releases/download";
/// Where GitHub serves files of the k3s source tree at a tag.
pub const GITHUB_RAW: &str = "https://raw.githubusercontent.com/k3s-io/k3s";

/// Largest checksum list, image list or install script accepted, by `bundle
/// build` and `bundle lock` alike.
pub(crate) const MAX_TEXT_ASSET: u64 = 4 << 20;

/// The full k3s version for what a user typed: `v1.20.6` and `1.20.6` are
/// `v1.20.6+k3s1`; `v1.20.6+k3s2` (and pre-releases such as
/// `v1.21.0-rc1+k3s1`) are taken as they are.
pub fn resolve_version(input: &str) -> Result<String> {
    let bad = |why: &str| {
        anyhow!("invalid k3s version {input:?}: {why} (expected e.g. v1.20.6 or v1.20.6+k3s1)")
    };
    let v = input.strip_prefix('v').unwrap_or(input);
    let (core, build) = match v.split_once('+') {
        Some((core, build)) => (core, Some(build)),
        None => (v, None),
    };
    let (numbers, pre) = match core.split_once('-') {
        Some((numbers, pre)) => (numbers, Some(pre)),
        None => (core, None),
    };
    let parts: Vec<&str> = numbers.split('.').collect();
    let numeric = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
    if parts.len() != 3 || !parts.iter().all(|p| numeric(p)) {
        return Err(bad("not MAJOR.MINOR.PATCH"));
    }
    if let Some(pre) = pre {
        if pre.is_empty()
            || !pre
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.')
        {
            return Err(bad("bad pre-release"));
        }
    }
    let build = match build {
        None => "k3s1",
        Some(b) if b.strip_prefix("k3s").is_some_and(numeric) => b,
        Some(_) => return Err(bad("the build must be k3s<N>")),
    };
    Ok(format!("v{core}+{build}"))
}

/// The release's checksum listing for an architecture, `sha256sum-<arch>.txt`
/// (`armhf` is spelt `arm` there).
pub fn checksums_name(arch: &str) -> String {
    let arch = if arch == "armhf" { "arm" } else { arch };
    format!("sha256sum-{arch}.txt")
}

/// The release asset of the k3s binary for an architecture.
pub fn k3s_asset_name(arch: &str) -> Result<&'static str> {
    match arch {
        "amd64" => Ok("k3s"),
        "arm64" => Ok("k3s-arm64"),
        "arm" | "armhf" => Ok("k3s-armhf"),
        _ => bail!("unsupported architecture {arch:?}: expected amd64, arm64 or arm"),
    }
}

/// How a release server lays out a version's files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReleaseLayout {
    /// GitHub's: `<base>/<version with + as %2B>/<asset>`.
    #[default]
    Github,
    /// The mirror many users in China use (rancher-mirror.rancher.cn):
    /// `<base>/k3s/<version with + as ->/<asset>`.
    Cn,
}

/// Where a release's files are fetched from: GitHub or a mirror, in one of
/// the [`ReleaseLayout`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseSource {
    pub base_url: String,
    /// Overrides where `install.sh` comes from (it is not a release asset).
    pub install_sh_url: Option<String>,
    pub layout: ReleaseLayout,
}

impl Default for ReleaseSource {
    fn default() -> Self {
        Self {
            base_url: GITHUB_RELEASES.to_string(),
            install_sh_url: None,
            layout: ReleaseLayout::Github,
        }
    }
}

impl ReleaseSource {
    fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }

    /// The URL of a release asset.
    pub fn asset_url(&self, version: &str, asset: &str) -> String {
        match self.layout {
            ReleaseLayout::Github => {
                format!("{}/{}/{asset}", self.base(), version.replace('+', "%2B"))
            }
            ReleaseLayout::Cn => {
                format!("{}/k3s/{}/{asset}", self.base(), version.replace('+', "-"))
            }
        }
    }

    /// The URL of `install.sh`: the explicit one; GitHub's source tree at
    /// the version's tag when the assets come from GitHub; else beside the
    /// assets, where a mirror or local server keeps it.
    pub fn install_sh_url(&self, version: &str) -> String {
        match &self.install_sh_url {
            Some(url) => url.clone(),
            None if self.base() == GITHUB_RELEASES => {
                format!("{GITHUB_RAW}/{version}/install.sh")
            }
            None => self.asset_url(version, "install.sh"),
        }
    }
}

/// One downloaded, verified file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    /// The asset's upstream name (`k3s-arm64`, `install.sh`).
    pub name: String,
    pub url: String,
    pub path: PathBuf,
    pub digest: Digest,
    pub size: u64,
}

/// What [`fetch_release`] brought.
#[derive(Debug, Clone)]
pub struct ReleaseAssets {
    /// The full version (`v1.20.6+k3s1`).
    pub version: String,
    /// The k3s architecture (`amd64`, `arm64`, `arm`).
    pub arch: String,
    pub binary: Asset,
    /// `sha256sum-<arch>.txt`.
    pub checksums: Asset,
    /// `k3s-images.txt`.
    pub images_list: Asset,
    pub install_sh: Asset,
    /// The system images `k3s-images.txt` names.
    pub images: Vec<ImageRef>,
}

/// The lock's pins of one version's release files: asset name -> sha256.
pub type ReleasePins = BTreeMap<String, Digest>;

/// The name `images.lock` pins `install.sh` under.
pub const INSTALL_SH: &str = "install.sh";

/// Fails unless the lock's pin of `asset` (if any) is what the release's
/// listing `listing` (from `url`) gives now.
pub(crate) fn check_pin(
    pins: &ReleasePins,
    asset: &str,
    listed: &Digest,
    listing: &str,
    url: &str,
) -> Result<()> {
    match pins.get(asset) {
        Some(pinned) if pinned != listed => bail!(
            "{asset}: images.lock pins {pinned}, but {listing} from {url} now lists {listed}; \
             if the release changed on purpose, run `airgap bundle lock`"
        ),
        _ => Ok(()),
    }
}

/// Parses a `sha256sum` listing (`<64 hex>  <name>` or `<64 hex> *<name>`
/// per line). Strict: any other line, or a name listed twice, is an error.
pub fn parse_sha256sums(text: &str) -> Result<BTreeMap<String, Digest>> {
    let mut sums = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| anyhow!("line {}: {why}: {line:?}", i + 1);
        let (hex, rest) = line
            .split_at_checked(64)
            .ok_or_else(|| bad("too short for a sha256 line"))?;
        let digest = Digest::from_hex(hex).map_err(|_| bad("not 64 lowercase hex digits"))?;
        let name = rest
            .strip_prefix("  ")
            .or_else(|| rest.strip_prefix(" *"))
            .ok_or_else(|| bad("expected two spaces after the digest"))?;
        if name.is_empty() || name.trim() != name || name.contains(['\r', '\\']) {
            return Err(bad("bad file name"));
        }
        if sums.insert(name.to_string(), digest).is_some() {
            return Err(bad("file listed twice"));
        }
    }
    Ok(sums)
}

/// Parses `k3s-images.txt`: one image reference per line; blank lines and
/// `#` comments are skipped.
pub fn parse_image_list(text: &str) -> Result<Vec<ImageRef>> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(i, line)| {
            line.parse::<ImageRef>()
                .with_context(|| format!("line {}", i + 1))
        })
        .collect()
}

/// A release's checksum listing and system image list for one architecture.
pub(crate) struct ImageList {
    /// `sha256sum-<arch>.txt`, as fetched.
    pub checksums: Asset,
    /// What it lists, by file name.
    pub sums: BTreeMap<String, Digest>,
    /// `k3s-images.txt`, checked against its line in the listing when it
    /// has one.
    pub images_list: Asset,
    /// The system images `k3s-images.txt` names.
    pub images: Vec<ImageRef>,
}

/// One text file of the release (at most [`MAX_TEXT_ASSET`] bytes) through
/// the cache: `expected`, when known, is the digest it must have.
async fn fetch_text_asset(
    client: &reqwest::Client,
    store: &BlobStore,
    name: &str,
    url: String,
    expected: Option<Digest>,
    progress: &dyn Progress,
) -> Result<Asset> {
    let target = Target {
        name: name.to_string(),
        url,
        dest: PathBuf::new(),
        expected,
        limit: Some(MAX_TEXT_ASSET),
        by_cached_url: true,
    };
    fetch_cached(client, store, target, progress).await
}

/// Fetches the checksum listing of the full `version` for `arch`, then
/// `k3s-images.txt`, into the cache `store` (unless it has them): all that
/// `bundle lock` and `--locked` need of a release, and the first steps of
/// [`fetch_release`].
pub(crate) async fn fetch_image_list(
    client: &reqwest::Client,
    src: &ReleaseSource,
    version: &str,
    arch: &str,
    store: &BlobStore,
    progress: &dyn Progress,
) -> Result<ImageList> {
    let sums_name = checksums_name(arch);
    let checksums = fetch_text_asset(
        client,
        store,
        &sums_name,
        src.asset_url(version, &sums_name),
        None,
        progress,
    )
    .await?;
    let sums = read_text(&checksums)
        .and_then(|text| parse_sha256sums(&text))
        .with_context(|| format!("reading {} from {}", checksums.name, checksums.url))?;
    let images_list = fetch_text_asset(
        client,
        store,
        "k3s-images.txt",
        src.asset_url(version, "k3s-images.txt"),
        sums.get("k3s-images.txt").copied(),
        progress,
    )
    .await?;
    let images = read_text(&images_list)
        .and_then(|text| parse_image_list(&text))
        .with_context(|| format!("reading {} from {}", images_list.name, images_list.url))?;
    Ok(ImageList {
        checksums,
        sums,
        images_list,
        images,
    })
}

/// Fetches the k3s release `version` for `arch` into the cache `store`
/// (unless it has them): the checksum list first, then `k3s-images.txt`,
/// `install.sh` and the binary, each streamed to a temporary file and
/// published only once verified, the binary and `install.sh` checked
/// against `pins` (the lock's, for this version). The assets' paths point
/// into the cache.
pub async fn fetch_release(
    client: &reqwest::Client,
    src: &ReleaseSource,
    version: &str,
    arch: &str,
    pins: &ReleasePins,
    store: &BlobStore,
    progress: &dyn Progress,
) -> Result<ReleaseAssets> {
    let version = resolve_version(version)?;
    let arch = if arch == "armhf" { "arm" } else { arch };
    let binary_name = k3s_asset_name(arch)?;
    let ImageList {
        checksums,
        sums,
        images_list,
        images,
    } = fetch_image_list(client, src, &version, arch, store, progress).await?;

    let install_sh = fetch_install_sh(client, src, &version, &sums, pins, store, progress).await?;

    let sums_name = checksums_name(arch);
    let expected = *sums.get(binary_name).ok_or_else(|| {
        anyhow!(
            "{sums_name} from {} has no line for {binary_name}",
            checksums.url
        )
    })?;
    check_pin(pins, binary_name, &expected, &sums_name, &checksums.url)?;
    let target = Target {
        name: binary_name.to_string(),
        url: src.asset_url(&version, binary_name),
        dest: PathBuf::new(),
        expected: Some(expected),
        limit: None,
        by_cached_url: false,
    };
    let binary = fetch_cached(client, store, target, progress)
        .await
        .with_context(|| format!("{binary_name} does not match its line in {sums_name}"))?;

    Ok(ReleaseAssets {
        version,
        arch: arch.to_string(),
        binary,
        checksums,
        images_list,
        install_sh,
        images,
    })
}

/// `install.sh` of `version`: checked against the checksum listing `sums`
/// when it lists it, else against the lock's pin; with neither it is
/// fetched afresh (a digest the cache remembers for its URL is no
/// authority), for the caller to pin.
pub(crate) async fn fetch_install_sh(
    client: &reqwest::Client,
    src: &ReleaseSource,
    version: &str,
    sums: &BTreeMap<String, Digest>,
    pins: &ReleasePins,
    store: &BlobStore,
    progress: &dyn Progress,
) -> Result<Asset> {
    let url = src.install_sh_url(version);
    let listed = sums.get(INSTALL_SH).copied();
    if let Some(listed) = listed {
        check_pin(pins, INSTALL_SH, &listed, "the checksum listing", &url)?;
    }
    let expected = listed.or_else(|| pins.get(INSTALL_SH).copied());
    let target = Target {
        name: INSTALL_SH.to_string(),
        url,
        dest: PathBuf::new(),
        expected,
        limit: Some(MAX_TEXT_ASSET),
        by_cached_url: false,
    };
    fetch_cached(client, store, target, progress)
        .await
        .with_context(|| match expected {
            Some(d) if listed.is_none() => format!("{INSTALL_SH} pinned in images.lock as {d}"),
            _ => INSTALL_SH.to_string(),
        })
}

fn read_text(asset: &Asset) -> Result<String> {
    let bytes = std::fs::read(&asset.path)?;
    String::from_utf8(bytes).map_err(|_| anyhow!("not UTF-8 text"))
}

/// One file to download.
struct Target {
    name: String,
    url: String,
    dest: PathBuf,
    expected: Option<Digest>,
    /// Most bytes accepted (for files read into memory afterwards).
    limit: Option<u64>,
    /// Whether the digest the cache remembers for the URL may stand in for
    /// a missing `expected` (the listings; not a file the lock pins).
    by_cached_url: bool,
}

/// The file from the cache when it has it (by its expected digest, else by
/// the digest its URL served last time), else downloaded into it.
async fn fetch_cached(
    client: &reqwest::Client,
    store: &BlobStore,
    mut target: Target,
    progress: &dyn Progress,
) -> Result<Asset> {
    let known = target.expected.or_else(|| {
        target
            .by_cached_url
            .then(|| cache::lookup_url(store, &target.url))
            .flatten()
    });
    if let Some(digest) = known {
        if let Some(size) = store.verify_present(&digest).await? {
            if target.limit.is_none_or(|limit| size <= limit) {
                let name = target.name;
                progress.asset_started(&name, Some(size));
                progress.asset_advanced(&name, size);
                progress.asset_done(&name, size);
                return Ok(Asset {
                    name,
                    url: target.url,
                    path: store.path(&digest),
                    digest,
                    size,
                });
            }
        }
    }
    target.dest = match target.expected {
        Some(digest) => store.path(&digest),
        None => cache::download_path(store, &target.url)?,
    };
    let by_url = target.expected.is_none();
    let mut asset = download(client, target, progress).await?;
    if by_url {
        let path = store.path(&asset.digest);
        std::fs::rename(&asset.path, &path)
            .with_context(|| format!("moving {} into the cache", asset.name))?;
        cache::remember_url(store, &asset.url, &asset.digest)?;
        asset.path = path;
    }
    Ok(asset)
}

/// Streams a file into place through a verifying temporary file.
async fn download(
    client: &reqwest::Client,
    target: Target,
    progress: &dyn Progress,
) -> Result<Asset> {
    let Target {
        name,
        url,
        dest,
        expected,
        limit,
        by_cached_url: _,
    } = target;
    let fail = |e: anyhow::Error| e.context(format!("downloading {name} from {url}"));
    let mut response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| fail(anyhow!(error::chain(&e))))?;
    let status = response.status();
    if !status.is_success() {
        return Err(fail(anyhow!("HTTP {status}")));
    }
    let length = response.content_length();
    if let (Some(length), Some(limit)) = (length, limit) {
        if length > limit {
            return Err(fail(anyhow!(
                "{length} bytes is more than the {limit} allowed"
            )));
        }
    }
    // The file is checked against the digest only; name the URL in its errors.
    let mut writer =
        BlobWriter::create(&dest, format!("{name} from {url}"), expected, None).map_err(fail)?;
    progress.asset_started(&name, length);
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| fail(anyhow!(error::chain(&e))))?
    {
        if limit.is_some_and(|limit| writer.written() + chunk.len() as u64 > limit) {
            return Err(fail(anyhow!(
                "more than the {} bytes allowed",
                limit.unwrap_or(0)
            )));
        }
        writer.write(&chunk).await.map_err(fail)?;
        progress.asset_advanced(&name, chunk.len() as u64);
    }
    let hashed = writer.commit().await?;
    progress.asset_done(&name, hashed.size);
    Ok(Asset {
        name,
        url,
        path: dest,
        digest: hashed.digest,
        size: hashed.size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_versions() {
        assert_eq!(resolve_version("v1.20.6").unwrap(), "v1.20.6+k3s1");
        assert_eq!(resolve_version("1.20.6").unwrap(), "v1.20.6+k3s1");
        assert_eq!(resolve_version("v1.20.6+k3s2").unwrap(), "v1.20.6+k3s2");
        assert_eq!(
            resolve_version("v1.21.0-rc1+k3s1").unwrap(),
            "v1.21.0-rc1+k3s1"
        );
        for bad in [
            "",
            "v",
            "latest",
            "v1.20",
            "v1.20.6.1",
            "v1.20.x",
            "v1.20.6+",
            "v1.20.6+k3s",
            "v1.20.6+rke2r1",
            "v1.20.6+k3s1+k3s2",
            "v1.20.6-",
            "V1.20.6",
            " v1.20.6",
            "v1.20.6/../x",
        ] {
            assert!(resolve_version(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_assets_and_urls() {
        assert_eq!(k3s_asset_name("amd64").unwrap(), "k3s");
        assert_eq!(k3s_asset_name("arm64").unwrap(), "k3s-arm64");
        assert_eq!(k3s_asset_name("arm").unwrap(), "k3s-armhf");
        assert!(k3s_asset_name("s390x").is_err());

        let gh = ReleaseSource::default();
        assert_eq!(
            gh.asset_url("v1.20.6+k3s1", "k3s"),
            "https://github.com/k3s-io/k3s/releases/download/v1.20.6%2Bk3s1/k3s"
        );
        assert_eq!(
            gh.install_sh_url("v1.20.6+k3s1"),
            "https://raw.githubusercontent.com/k3s-io/k3s/v1.20.6+k3s1/install.sh"
        );
        let local = ReleaseSource {
            base_url: "http://127.0.0.1:8080/releases/".into(),
            ..ReleaseSource::default()
        };
        let cn = ReleaseSource {
            base_url: "https://rancher-mirror.rancher.cn/".into(),
            layout: ReleaseLayout::Cn,
            ..ReleaseSource::default()
        };
        assert_eq!(
            cn.asset_url("v1.20.6+k3s1", "k3s"),
            "https://rancher-mirror.rancher.cn/k3s/v1.20.6-k3s1/k3s"
        );
        assert_eq!(
            cn.install_sh_url("v1.20.6+k3s1"),
            "https://rancher-mirror.rancher.cn/k3s/v1.20.6-k3s1/install.sh"
        );
        assert_eq!(
            local.install_sh_url("v1.20.6+k3s1"),
            "http://127.0.0.1:8080/releases/v1.20.6%2Bk3s1/install.sh"
        );
        let explicit = ReleaseSource {
            install_sh_url: Some("http://x/install.sh".into()),
            ..gh
        };
        assert_eq!(
            explicit.install_sh_url("v1.20.6+k3s1"),
            "http://x/install.sh"
        );
    }

    #[test]
    fn parses_sha256sums_strictly() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let text = format!("{}  k3s\n{} *k3s-images.txt\n", a.hex(), b.hex());
        let sums = parse_sha256sums(&text).unwrap();
        assert_eq!(sums.get("k3s"), Some(&a));
        assert_eq!(sums.get("k3s-images.txt"), Some(&b));
        assert_eq!(sums.len(), 2);

        for bad in [
            format!("{} k3s", a.hex()),
            format!("{}  ", a.hex()),
            format!("{}  k3s\n{}  k3s", a.hex(), b.hex()),
            format!("{}  k3s", a.hex().to_uppercase()),
            format!("{}  k3s", &a.hex()[1..]),
            format!("{}  k3s\r", a.hex()),
            "# comment".to_string(),
            "é".repeat(40),
        ] {
            assert!(parse_sha256sums(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn parses_image_lists() {
        let list = "docker.io/rancher/coredns-coredns:1.8.3\n\n# system\n  rancher/pause:3.1  \n";
        let images = parse_image_list(list).unwrap();
        let names: Vec<String> = images.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "docker.io/rancher/coredns-coredns:1.8.3",
                "docker.io/rancher/pause:3.1"
            ]
        );
        let err = parse_image_list("ok:1\nNOT/OK\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }
}
