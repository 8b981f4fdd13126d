//! What `airgap install` is asked to do, and the checks that need nothing
//! but the options themselves: role and join flags that fit together, a
//! token that parses, a key that loads. Invalid states that a type can rule
//! out are ruled out here by enums (a key or the explicit insecure skip; a
//! token given inline or in a file), not by runtime checks.

use crate::layout::Role;
use crate::service::Init;
use crate::source::BundleSource;
use airgap_bundle::read::Trust;
use anyhow::{bail, Context as _};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// Which containerd gets the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// A containerd the host already runs (`--container-runtime-endpoint`).
    External,
    /// k3s's own containerd: images go in as an archive it imports at start.
    Embedded,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::External => "external",
            Runtime::Embedded => "embedded",
        }
    }
}

/// How the bundle's signature is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Against this public key (minisign format), whose id must be the
    /// expected one when one is given (`--expect-key-id`, AIRGAP_KEY_ID:
    /// the fingerprint the site got out of band, not from the stick).
    Key {
        path: PathBuf,
        expect_id: Option<String>,
    },
    /// Not at all (`--insecure-skip-signature`); checksums still are.
    InsecureSkipSignature,
}

/// Where the join token comes from (k3s's K3S_TOKEN and K3S_TOKEN_FILE).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum JoinToken {
    #[default]
    None,
    /// Given on the command line or in K3S_TOKEN.
    Inline(String),
    /// Read from a file (`--token-file`).
    File(PathBuf),
}

/// Everything `airgap install` needs to know.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub bundle: BundleSource,
    pub verification: Verification,
    pub role: Role,
    pub server: Option<String>,
    pub token: JoinToken,
    pub cluster_init: bool,
    pub node_name: Option<String>,
    pub runtime: Runtime,
    pub containerd_socket: Option<PathBuf>,
    pub snapshotter: String,
    pub root: PathBuf,
    pub init: Option<Init>,
    pub skip_preflight: Vec<String>,
    pub no_start: bool,
    pub dry_run: bool,
    /// Install a bundle older than the installed one.
    pub allow_downgrade: bool,
    pub wait: Duration,
    /// Extra k3s flags (after `--`).
    pub extra_args: Vec<String>,
}

impl InstallOptions {
    /// The HTTPS port k3s will listen on (`--https-listen-port` among the
    /// extra flags), 6443 by default.
    pub fn https_port(&self) -> u16 {
        https_port(&self.extra_args)
    }
}

/// The HTTPS port in a list of k3s flags.
pub fn https_port(extra: &[String]) -> u16 {
    let mut it = extra.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--https-listen-port=") {
            return v.parse().unwrap_or(6443);
        }
        if a == "--https-listen-port" {
            return it.next().and_then(|v| v.parse().ok()).unwrap_or(6443);
        }
    }
    6443
}

/// Options that passed every check that needs no bundle and no host.
pub(super) struct Checked {
    pub token: Option<String>,
    pub trust: Trust,
    /// The id of the key the bundle must be signed with.
    pub key_id: Option<String>,
}

/// Reads the token and the key and checks that the flags fit together.
/// The insecure-skip warning is printed here, once per install.
pub(super) fn check(opts: &InstallOptions) -> anyhow::Result<Checked> {
    let token = read_token(&opts.token)?;
    check_roles(opts, token.as_deref())?;
    if let Some(t) = &token {
        let source = match &opts.token {
            JoinToken::File(f) => format!("the token in {}", f.display()),
            _ => "the token given with --token".to_string(),
        };
        crate::join::parse_token(t).with_context(|| match &opts.server {
            Some(url) => format!("{source}, to join {url}, cannot be used"),
            None => format!("{source} cannot be used"),
        })?;
    }
    let (trust, key_id) = match &opts.verification {
        Verification::Key { path, expect_id } => {
            let key = airgap_bundle::sign::load_public_key(path)?;
            let id = airgap_bundle::sign::expect_key_id(&key, path, expect_id.as_deref())
                .context("nothing was installed")?;
            (Trust::Key(key), Some(id))
        }
        Verification::InsecureSkipSignature => {
            tracing::warn!(
                "installing {} without checking its signature (--insecure-skip-signature)",
                opts.bundle
            );
            (Trust::SkipSignature, None)
        }
    };
    Ok(Checked {
        token,
        trust,
        key_id,
    })
}

/// The join token's text, trimmed.
pub fn read_token(token: &JoinToken) -> anyhow::Result<Option<String>> {
    match token {
        JoinToken::None => Ok(None),
        JoinToken::Inline(t) => Ok(Some(t.trim().to_string())),
        JoinToken::File(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading token file {}", f.display()))?;
            let token = text.trim().to_string();
            if token.is_empty() {
                bail!("token file {} is empty", f.display());
            }
            Ok(Some(token))
        }
    }
}

fn check_roles(opts: &InstallOptions, token: Option<&str>) -> anyhow::Result<()> {
    match opts.role {
        Role::Agent => {
            if opts.server.is_none() {
                bail!(
                    "an agent needs the server to join: --server https://<server>:6443 (K3S_URL)"
                );
            }
            if token.is_none() {
                bail!("an agent needs the server's join token: --token-file FILE or --token T (K3S_TOKEN); on the server, `airgap token` prints it");
            }
            if opts.cluster_init {
                bail!("--cluster-init is for the first server, not an agent");
            }
        }
        Role::Server => {
            if opts.server.is_some() && token.is_none() {
                bail!(
                    "a server joining {} needs the cluster's token: --token-file FILE or --token T",
                    opts.server.as_deref().unwrap_or_default()
                );
            }
            if opts.server.is_some() && opts.cluster_init {
                bail!(
                    "--cluster-init starts a new cluster; a server joining one takes --server only"
                );
            }
        }
    }
    if let Some(url) = &opts.server {
        if !url.starts_with("https://") {
            bail!("--server {url}: expected https://<server>:6443");
        }
    }
    Ok(())
}

/// A joining server must agree with the cluster on the critical flags; the
/// first server's values come in the cluster file beside the token file.
pub(super) fn check_cluster_flags(opts: &InstallOptions) -> anyhow::Result<()> {
    let cluster = match &opts.token {
        JoinToken::File(f) => crate::cluster::load_cluster_file(f)?,
        _ => None,
    };
    let Some(cluster) = cluster else {
        tracing::warn!(
            "no cluster file beside the token (`airgap token --out FILE` on the first server writes one): \
             this server's cluster-cidr, service-cidr, cluster-dns, cluster-domain and disable flags \
             are not checked before install; k3s refuses a mismatch when it starts"
        );
        return Ok(());
    };
    let diff = crate::cluster::CriticalConfig::from_args(&opts.extra_args).differences(&cluster);
    if !diff.is_empty() {
        bail!(
            "this server's flags differ from the cluster's, and k3s would refuse to join it; nothing was installed:\n  {}",
            diff.join("\n  ")
        );
    }
    Ok(())
}
