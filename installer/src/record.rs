//! `/var/lib/rancher/k3s/airgap/install.json`: what an install wrote (files
//! with their hashes and modes, links, directories it created, images, the
//! service), so that a second run can tell it would change nothing and
//! `airgap uninstall` removes exactly that and nothing else.

use crate::layout::{Role, INSTALL_RECORD};
use crate::root::HostRoot;
use crate::service::Init;
use airgap_bundle::digest::Digest;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallRecord {
    pub schema: u32,
    pub role: Role,
    pub init: Init,
    pub k3s_version: String,
    /// Digest of the bundle's SHA256SUMS: names its whole content.
    pub bundle: Digest,
    /// The bundle's build time (unix seconds), for rollback protection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
    pub runtime: String,
    /// containerd socket the images went to (external runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containerd_socket: Option<String>,
    pub namespace: String,
    /// Host paths (as on the host, not under --root).
    pub files: Vec<RecordedFile>,
    pub links: Vec<RecordedLink>,
    /// Directories this install created, parents first.
    pub dirs: Vec<String>,
    pub images: Vec<RecordedImage>,
    /// A server's cluster-critical flags, which joining servers must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::CriticalConfig>,
    /// The port k3s serves its API on (`--https-listen-port`, 6443).
    #[serde(default = "default_port")]
    pub https_port: u16,
    /// The detached k3s's pid file, for `--init none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<String>,
    /// The detached k3s's log, for `--init none` (removed on uninstall).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedFile {
    pub path: String,
    pub sha256: Digest,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedLink {
    pub path: String,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedImage {
    pub name: String,
    pub digest: Digest,
}

pub const RECORD_SCHEMA: u32 = 1;

fn default_port() -> u16 {
    6443
}

impl InstallRecord {
    pub fn load(root: &HostRoot) -> anyhow::Result<Option<Self>> {
        let path = root.path(INSTALL_RECORD);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!("{}: not an airgap install record: {e}", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("record serialises");
        s.push('\n');
        s
    }

    pub fn file(&self, path: &str) -> Option<&RecordedFile> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// Whether `path` is a symlink to `target`.
pub fn link_is(path: &Path, target: &str) -> bool {
    std::fs::read_link(path).is_ok_and(|t| t == Path::new(target))
}
