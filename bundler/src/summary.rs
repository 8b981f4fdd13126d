//! What a finished `bundle build` reports: [`BuildSummary`], printed as JSON
//! by `--json`, as a few lines by its `Display`, and kept by [`crate::fresh`]
//! for a later build that finds the output up to date.
//!
//! Owns no decisions; trusts the build that filled it in.

use airgap_bundle::digest::Digest;
use airgap_bundle::inspect::human_bytes;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// What a finished build reports (`--json` prints it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildSummary {
    pub file: PathBuf,
    pub size: u64,
    pub sha256: Digest,
    pub k3s_version: String,
    pub arches: Vec<String>,
    pub images: Vec<ImageSummary>,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub dedup_saved_bytes: u64,
    pub lock_updated: bool,
    /// The parts, when the bundle was split (`file` is then their base name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PathBuf>,
    /// The output was already what this build would write, and was kept
    /// ([`crate::fresh`]); the other fields describe it as it was built.
    #[serde(default)]
    pub up_to_date: bool,
    /// The lock the build read (and, when `lock_updated`, wrote). Not part
    /// of the JSON: it names an input, which the caller knows.
    #[serde(skip)]
    pub lock_path: PathBuf,
    /// The id of the key that signed the bundle (as minisign prints it).
    #[serde(default)]
    pub key_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSummary {
    pub reference: String,
    pub digest: Digest,
    pub size: u64,
}

impl fmt::Display for BuildSummary {
    /// `built FILE (SIZE, N images, N distinct blobs, SIZE saved by sharing
    /// layers)` (or `up to date, kept FILE …`), then the parts and the lock
    /// when there is something to say about them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({}, {} images, {} distinct blobs, {} saved by sharing layers)",
            if self.up_to_date {
                "up to date, kept"
            } else {
                "built"
            },
            self.file.display(),
            human_bytes(self.size),
            self.images.len(),
            self.blobs,
            human_bytes(self.dedup_saved_bytes),
        )?;
        if let (Some(first), Some(last)) = (self.parts.first(), self.parts.last()) {
            write!(
                f,
                "\n  in {} parts, {} to {}, listed in {}.parts",
                self.parts.len(),
                first.display(),
                last.display(),
                self.file.display()
            )?;
        }
        if self.lock_updated {
            write!(f, "\npinned new digests in {}", self.lock_path.display())?;
        }
        if !self.key_id.is_empty() {
            write!(
                f,
                "\nsigned with key id {} (fingerprint {})",
                self.key_id,
                airgap_bundle::sign::fingerprint(&self.key_id)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> BuildSummary {
        BuildSummary {
            file: "k3s.airgap.tar.zst".into(),
            size: 3 << 20,
            sha256: Digest::of(b"bundle"),
            k3s_version: "v1.20.6+k3s1".into(),
            arches: vec!["amd64".into()],
            images: vec![ImageSummary {
                reference: "docker.io/rancher/pause:3.1".into(),
                digest: Digest::of(b"pause"),
                size: 1,
            }],
            blobs: 4,
            blob_bytes: 3 << 20,
            dedup_saved_bytes: 0,
            lock_updated: false,
            parts: Vec::new(),
            up_to_date: false,
            lock_path: "images.lock".into(),
            key_id: String::new(),
        }
    }

    #[test]
    fn displays_what_the_build_did() {
        let s = summary();
        assert_eq!(
            s.to_string(),
            format!(
                "built k3s.airgap.tar.zst ({}, 1 images, 4 distinct blobs, {} saved by sharing layers)",
                human_bytes(3 << 20),
                human_bytes(0)
            )
        );
        let s = BuildSummary {
            up_to_date: true,
            lock_updated: true,
            parts: vec!["b.part000".into(), "b.part001".into()],
            ..summary()
        };
        let text = s.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("up to date, kept k3s.airgap.tar.zst ("));
        assert_eq!(
            lines[1],
            "  in 2 parts, b.part000 to b.part001, listed in k3s.airgap.tar.zst.parts"
        );
        assert_eq!(lines[2], "pinned new digests in images.lock");
    }

    #[test]
    fn the_lock_path_stays_out_of_the_json() {
        let json = serde_json::to_value(summary()).unwrap();
        assert!(json.get("lock_path").is_none(), "{json}");
        let back: BuildSummary = serde_json::from_value(json).unwrap();
        assert_eq!(back.lock_path, PathBuf::new());
    }
}
