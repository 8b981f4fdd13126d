//! The install plan: everything one node's install will place, generate,
//! import and start, computed once from the options, the host root and the
//! bundle's verified head. `--dry-run` prints it and the real install carries
//! it out, so the two cannot drift apart. Pure: nothing here touches the
//! host but reads (is a file already in place, which init system runs).

use super::options::{InstallOptions, Runtime};
use super::space::space_needs;
use crate::cluster::CriticalConfig;
use crate::layout::{self, Role};
use crate::preflight::SpaceNeed;
use crate::root::HostRoot;
use crate::service::{self, Init};
use crate::stage::Placement;
use airgap_bundle::digest::Digest;
use airgap_bundle::meta::{BundleMeta, FileRole};
use airgap_bundle::read::Header;
use airgap_bundle::reference::ImageRef;
use anyhow::Context as _;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A file the install writes from its own content (config, units, env).
#[derive(Debug, Clone)]
pub struct GeneratedFile {
    pub host_path: String,
    pub content: String,
    pub mode: u32,
    /// What the file is, for the plan's listing.
    pub what: String,
}

/// An image of the bundle, as the install treats it.
#[derive(Debug, Clone)]
pub struct PlannedImage {
    pub reference: ImageRef,
    pub digest: Digest,
    /// The bundle carries a manifest for this host's platform: the image is
    /// named and unpacked; otherwise it is skipped.
    pub runs_here: bool,
}

/// Where a k3s started without an init system keeps its pid and log.
#[derive(Debug, Clone)]
pub struct DetachedFiles {
    pub pid_file: String,
    pub log_file: String,
}

/// One node's install, decided.
#[derive(Debug, Clone)]
pub struct Plan {
    pub role: Role,
    pub init: Init,
    pub runtime: Runtime,
    pub k3s_version: String,
    /// The digest of the bundle's `SHA256SUMS`: names its whole content.
    pub bundle: Digest,
    /// The bundle's build time (unix seconds), as signed.
    pub created: u64,
    /// Bundle entries placed on the host, by entry path.
    pub placements: BTreeMap<String, Placement>,
    /// The embedded runtime's image archive.
    pub archive: Option<Placement>,
    pub generated: Vec<GeneratedFile>,
    /// `kubectl`, `crictl`, `ctr` links to the k3s binary, made when absent.
    pub links: Vec<String>,
    /// The bundle's images: named in containerd (external runtime), or
    /// carried in the archive k3s imports (embedded).
    pub images: Vec<PlannedImage>,
    /// The containerd the images go to (external) or k3s's own (embedded).
    pub socket: PathBuf,
    pub snapshotter: String,
    /// `k3s server|agent` and its flags.
    pub exec_args: Vec<String>,
    /// Set when the init system is `none`.
    pub detached: Option<DetachedFiles>,
    pub start: bool,
    pub https_port: u16,
    /// What the install writes where, for the preflight's disk check.
    pub space: Vec<SpaceNeed>,
    /// Bytes reserved for the install record before anything is published.
    pub record_reserve: u64,
    /// A server's cluster-critical flags, recorded for joining servers.
    pub cluster: Option<CriticalConfig>,
}

impl Plan {
    pub fn new(
        opts: &InstallOptions,
        token: Option<&str>,
        root: &HostRoot,
        init: Init,
        header: &Header,
        arch: &str,
    ) -> anyhow::Result<Plan> {
        let meta = &header.meta;
        let placements = placements(meta, root, opts.role, arch)?;
        let socket = match (opts.runtime, &opts.containerd_socket) {
            (_, Some(s)) => s.clone(),
            (Runtime::External, None) => PathBuf::from(layout::EXTERNAL_SOCKET),
            (Runtime::Embedded, None) => root.path(layout::EMBEDDED_SOCKET),
        };
        let mut k3s_args = opts.extra_args.clone();
        if opts.runtime == Runtime::External {
            k3s_args.extend([
                "--container-runtime-endpoint".to_string(),
                socket.display().to_string(),
            ]);
        }
        let exec_args = service::exec_args(opts.role, &k3s_args);
        let archive = (opts.runtime == Runtime::Embedded).then(|| {
            let host_path = format!("{}/airgap-images.tar", layout::AGENT_IMAGES_DIR);
            Placement {
                dest: root.path(&host_path),
                host_path,
                mode: 0o644,
            }
        });
        let detached = (init == Init::None).then(|| DetachedFiles {
            pid_file: format!("/run/k3s-airgap/{}.pid", opts.role.service_name()),
            log_file: format!("/var/log/{}.log", opts.role.service_name()),
        });
        let platform = crate::import::host_platform();
        let images = meta
            .images
            .iter()
            .map(|i| PlannedImage {
                reference: i.reference.clone(),
                digest: i.digest,
                runs_here: i.platforms.iter().any(|p| platform.matches(&p.platform)),
            })
            .collect();
        let record_reserve = record_reserve(meta);
        Ok(Plan {
            role: opts.role,
            init,
            runtime: opts.runtime,
            k3s_version: meta.k3s_version.clone(),
            bundle: header.sums_digest,
            created: meta.created,
            space: space_needs(
                meta,
                &header.sums,
                root,
                &placements,
                opts.runtime,
                record_reserve,
            ),
            generated: generated_files(opts, token, meta, init, &exec_args),
            placements,
            archive,
            links: layout::K3S_LINKS.iter().map(|l| l.to_string()).collect(),
            images,
            socket,
            snapshotter: opts.snapshotter.clone(),
            exec_args,
            detached,
            start: !opts.no_start,
            https_port: opts.https_port(),
            record_reserve,
            cluster: (opts.role == Role::Server)
                .then(|| CriticalConfig::from_args(&opts.extra_args)),
        })
    }

    /// Every file the plan writes, by host path: placed, archived, generated.
    pub fn files(&self) -> Vec<String> {
        let mut files: Vec<String> = self
            .placements
            .values()
            .chain(self.archive.iter())
            .map(|p| p.host_path.clone())
            .collect();
        files.extend(self.generated.iter().map(|g| g.host_path.clone()));
        files
    }

    /// The plan, one step a line, as `--dry-run` prints it.
    pub fn steps(&self) -> Vec<String> {
        let mut steps = Vec::new();
        for (from, p) in &self.placements {
            steps.push(format!(
                "file  {} <- {from} (mode {:o})",
                p.host_path, p.mode
            ));
        }
        if let Some(a) = &self.archive {
            steps.push(format!(
                "file  {} <- images/ ({} images, one archive for k3s's containerd, mode {:o})",
                a.host_path,
                self.images.len(),
                a.mode
            ));
        }
        for g in &self.generated {
            steps.push(format!(
                "file  {} ({}, mode {:o})",
                g.host_path, g.what, g.mode
            ));
        }
        for l in &self.links {
            steps.push(format!("link  {l} -> {} (when absent)", layout::K3S_BIN));
        }
        for i in self.images.iter().filter(|_| self.archive.is_none()) {
            steps.push(if i.runs_here {
                format!(
                    "image {} {} -> containerd {} (k8s.io)",
                    i.reference,
                    i.digest.short(),
                    self.socket.display()
                )
            } else {
                format!(
                    "skip  {} (no {} manifest in the bundle)",
                    i.reference,
                    crate::import::host_platform()
                )
            });
        }
        if self.start {
            steps.push(match (&self.detached, self.init) {
                (Some(_), _) => {
                    format!("start {} {} detached", layout::K3S_BIN, self.role.as_str())
                }
                (None, init) => {
                    format!("start {} with {}", self.role.service_name(), init.as_str())
                }
            });
        }
        steps
    }
}

/// Bundle entries this install places, and where.
fn placements(
    meta: &BundleMeta,
    root: &HostRoot,
    role: Role,
    arch: &str,
) -> anyhow::Result<BTreeMap<String, Placement>> {
    let mut out = BTreeMap::new();
    let binary = meta
        .files
        .iter()
        .find(|f| f.role == FileRole::K3sBinary && f.arch.as_deref() == Some(arch))
        .with_context(|| {
            format!(
                "the bundle carries no k3s binary for {arch} (it has {})",
                meta.arches.join(", ")
            )
        })?;
    out.insert(
        binary.path.clone(),
        Placement {
            host_path: layout::K3S_BIN.to_string(),
            dest: root.path(layout::K3S_BIN),
            mode: 0o755,
        },
    );
    if role == Role::Server {
        for f in meta.files.iter().filter(|f| f.role == FileRole::Manifest) {
            let name = f.path.rsplit('/').next().unwrap_or(&f.path);
            let host_path = format!("{}/{name}", layout::MANIFESTS_DIR);
            out.insert(
                f.path.clone(),
                Placement {
                    dest: root.path(&host_path),
                    host_path,
                    mode: 0o600,
                },
            );
        }
    }
    Ok(out)
}

/// The files generated from the options: k3s's config, the registries that
/// go nowhere, the kernel module and sysctl files, and the service's unit
/// and env file (K3S_URL, K3S_TOKEN; 0600).
fn generated_files(
    opts: &InstallOptions,
    token: Option<&str>,
    meta: &BundleMeta,
    init: Init,
    exec_args: &[String],
) -> Vec<GeneratedFile> {
    let file = |host_path: &str, content: String, mode: u32, what: &str| GeneratedFile {
        host_path: host_path.to_string(),
        content,
        mode,
        what: what.to_string(),
    };
    let cfg = layout::K3sConfig {
        node_name: opts.node_name.clone(),
        cluster_init: opts.cluster_init,
        container_runtime_endpoint: None,
        write_kubeconfig_mode: None,
    };
    let mut files = vec![
        file(
            layout::CONFIG_YAML,
            layout::config_yaml(&cfg),
            0o644,
            "k3s's config",
        ),
        file(
            layout::REGISTRIES_YAML,
            layout::registries_yaml(meta),
            0o644,
            "every registry mirrored to nowhere",
        ),
        file(
            layout::MODULES_FILE,
            layout::modules_load().to_string(),
            0o644,
            "kernel modules",
        ),
        file(
            layout::SYSCTL_FILE,
            layout::sysctl_conf().to_string(),
            0o644,
            "sysctls",
        ),
    ];
    let env_content = service::env_file(opts.server.as_deref(), token);
    match service::service_files(opts.role, init) {
        Some(sf) => {
            let unit = match init {
                Init::Systemd => service::systemd_unit(opts.role, &sf.env, exec_args),
                _ => service::openrc_script(opts.role, &sf.env, exec_args),
            };
            files.push(file(&sf.unit, unit, sf.unit_mode, init.as_str()));
            files.push(file(&sf.env, env_content, 0o600, "K3S_URL, K3S_TOKEN"));
        }
        None => files.push(file(
            &format!("{}/{}.env", layout::AIRGAP_DIR, opts.role.service_name()),
            env_content,
            0o600,
            "K3S_URL, K3S_TOKEN",
        )),
    }
    files
}

/// Bytes reserved for the install record, which is written last.
fn record_reserve(meta: &BundleMeta) -> u64 {
    // About twice what a record of this many images and files takes.
    (8 << 10) + (2 << 10) * meta.images.len() as u64 + 512 * meta.files.len() as u64
}
