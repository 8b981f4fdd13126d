//! `images.lock`: the images a bundle carries, each pinned to a digest per
//! platform, as Cargo.lock pins crates. An entry without a digest is resolved
//! by the next build and written back; a pinned one is pulled by digest, so a
//! tag that moves in the registry does not change the bundle. The k3s system
//! images are entries like the manifests' images: a lock describes one k3s
//! version. Platforms are keyed `os/arch[/variant]` (`linux/arm/v7`).
//!
//! `release` pins the k3s release files next to the images: per version, the
//! sha256 of each architecture's binary (`k3s`, `k3s-arm64`, `k3s-armhf`) and
//! of `install.sh`. A lock without it (older ones) still parses.

use crate::digest::Digest;
use crate::reference::ImageRef;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const LOCK_NAME: &str = "images.lock";
pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesLock {
    pub version: u32,
    pub images: Vec<LockedImage>,
    /// k3s version (`v1.20.6+k3s1`) -> release asset name -> its sha256.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub release: BTreeMap<String, BTreeMap<String, Digest>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedImage {
    /// Full reference by tag (`docker.io/rancher/pause:3.1`).
    pub reference: ImageRef,
    /// The top-level manifest or index digest the tag resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// The image manifest digest per platform (`linux/arm/v7` -> digest).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub platforms: BTreeMap<String, Digest>,
    /// The pod sandbox (pause) image: containerd pins it against GC.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
}

impl ImagesLock {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let lock: ImagesLock =
            serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{LOCK_NAME}: {e}"))?;
        if lock.version != LOCK_VERSION {
            anyhow::bail!("{LOCK_NAME}: version {} is not supported", lock.version);
        }
        let mut seen = std::collections::BTreeSet::new();
        for image in &lock.images {
            if image.reference.digest.is_some() {
                anyhow::bail!(
                    "{LOCK_NAME}: {} names a digest in its reference; put it in \"digest\"",
                    image.reference
                );
            }
            if !seen.insert(image.reference.to_string()) {
                anyhow::bail!("{LOCK_NAME}: {} is listed twice", image.reference);
            }
        }
        Ok(lock)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
    }

    /// Pretty JSON with a trailing newline, entries sorted by reference so
    /// that rewrites give small diffs.
    pub fn render(&self) -> String {
        let mut sorted = self.clone();
        sorted.images.sort_by_key(|a| a.reference.to_string());
        let mut text = serde_json::to_string_pretty(&sorted).expect("lock serialises");
        text.push('\n');
        text
    }

    pub fn get(&self, reference: &ImageRef) -> Option<&LockedImage> {
        self.images.iter().find(|i| &i.reference == reference)
    }

    pub fn get_mut(&mut self, reference: &ImageRef) -> Option<&mut LockedImage> {
        self.images.iter_mut().find(|i| &i.reference == reference)
    }

    /// The entry for `reference`, added unpinned when missing.
    pub fn entry(&mut self, reference: &ImageRef) -> &mut LockedImage {
        if let Some(i) = self.images.iter().position(|i| &i.reference == reference) {
            return &mut self.images[i];
        }
        self.images.push(LockedImage {
            reference: reference.clone(),
            digest: None,
            platforms: BTreeMap::new(),
            sandbox: false,
        });
        self.images.last_mut().expect("just pushed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::MAX_REFERENCE;

    #[test]
    fn parses_and_renders() {
        let d = Digest::of(b"x");
        let text = format!(
            r#"{{"version":1,"images":[
              {{"reference":"docker.io/rancher/pause:3.1","digest":"{d}","platforms":{{"linux/amd64":"{d}"}},"sandbox":true}},
              {{"reference":"kubeguide/redis-master"}}]}}"#
        );
        let lock = ImagesLock::parse(&text).unwrap();
        assert_eq!(
            lock.images[1].reference.to_string(),
            "docker.io/kubeguide/redis-master:latest"
        );
        assert!(lock.images[0].sandbox);
        let again = ImagesLock::parse(&lock.render()).unwrap();
        assert_eq!(again.images.len(), 2);
        assert!(ImagesLock::parse(r#"{"version":1,"images":[{"reference":"a"},{"reference":"docker.io/library/a:latest"}]}"#).is_err());
        assert!(ImagesLock::parse(r#"{"version":2,"images":[]}"#).is_err());
        assert!(again.release.is_empty());
        assert!(!lock.render().contains("release"), "{}", lock.render());
    }

    #[test]
    fn release_pins_round_trip() {
        let d = Digest::of(b"k3s");
        let text = format!(
            r#"{{"version":1,"images":[],"release":{{"v1.20.6+k3s1":{{"k3s":"{d}","install.sh":"{d}"}}}}}}"#
        );
        let lock = ImagesLock::parse(&text).unwrap();
        assert_eq!(lock.release["v1.20.6+k3s1"]["k3s"], d);
        assert_eq!(ImagesLock::parse(&lock.render()).unwrap(), lock);
    }

    /// Found by the images_lock fuzz target: a reference of almost the
    /// longest length, without registry or tag, parsed, but was written back
    /// with `docker.io/` and `:latest` added, too long to be read again.
    #[test]
    fn a_reference_too_long_in_full_is_refused_when_read() {
        let name = |len: usize| format!("io/{}", "a".repeat(len - 3));
        let fits = MAX_REFERENCE - "docker.io/".len() - ":latest".len();
        for (len, parses) in [(fits, true), (fits + 1, false), (MAX_REFERENCE, false)] {
            let text = format!(
                r#"{{"version":1,"images":[{{"reference":"{}"}}]}}"#,
                name(len)
            );
            match ImagesLock::parse(&text) {
                Ok(lock) => {
                    assert!(parses, "{len} characters parsed");
                    ImagesLock::parse(&lock.render())
                        .expect("what parsed renders to a lock that parses");
                }
                Err(e) => {
                    assert!(!parses, "{len} characters: {e}");
                    assert!(
                        e.to_string().contains("too long once written in full"),
                        "{e}"
                    );
                }
            }
        }
    }
}
