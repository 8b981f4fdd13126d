//! `airgap install --offline`: the disconnected-side pipeline, stage by stage.
//!
//! check (options, key, the bundle's verified head, preflight) -> connect
//! (containerd, before anything is written) -> stream (one pass over the
//! bundle: every entry verified, blobs into containerd under a lease, files
//! staged beside their destinations) -> publish (images named and unpacked,
//! staged files renamed into place, config and service files written) ->
//! record (install.json) -> start (init system, or detached) and wait.
//! Any failure before publish leaves the host as it was. Everything that
//! takes space (staged and generated files, the record's reservation) is
//! written before publish, so a file system that fills up fails the run
//! while it can be undone: "no space left on <path>, needed N more", from
//! the same prediction the preflight disk check makes.

use crate::cluster::CriticalConfig;
use crate::import::sink::{ImportReport, ImportSink};
use crate::import::{ImportOptions, Importer};
use crate::layout::{self, Role};
use crate::preflight::{self, PreflightInput, SpaceNeed};
use crate::record::{InstallRecord, RecordedFile, RecordedImage, RecordedLink, RECORD_SCHEMA};
use crate::root::{file_matches, fill_reserved, reserve_file, stage_file, Changes, HostRoot};
use crate::run::Runner;
use crate::service::{self, Detached, Init};
use crate::stage::{ArchiveStager, Fanout, FileStager, Placement};
use crate::wait;
use airgap_bundle::digest::Digest;
use airgap_bundle::meta::{BundleMeta, FileRole};
use airgap_bundle::read::{read_bundle, read_header, EntrySink, Trust};
use airgap_bundle::source::open_bundle;
use airgap_bundle::space::{self, human, Needed, NoSpace};
use airgap_bundle::sums::Sums;
use anyhow::{bail, Context as _};
use serde::Serialize;
use std::collections::BTreeMap;
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

/// Everything `airgap install` needs to know.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub bundle: PathBuf,
    /// Public key the bundle must be signed with; `None` only together
    /// with `insecure_skip_signature`.
    pub key: Option<PathBuf>,
    pub insecure_skip_signature: bool,
    pub role: Role,
    pub server: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
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
    pub wait: Duration,
    /// Extra k3s flags (after `--`).
    pub extra_args: Vec<String>,
}

/// What an install did (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    pub root: PathBuf,
    pub role: Role,
    pub k3s_version: String,
    pub bundle: Digest,
    /// False when a second identical run found everything in place.
    pub changed: bool,
    pub files_written: Vec<String>,
    pub files_unchanged: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<ImportReport>,
    pub service: String,
    /// For a server: the command that joins an agent to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_command: Option<String>,
    /// Embedded runtime: whether k3s's containerd holds every image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedded_images: Option<String>,
    pub preflight: preflight::Report,
    /// `--dry-run`: what would be done.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<String>,
}

/// The join token, from `--token` or `--token-file` (k3s's K3S_TOKEN and
/// K3S_TOKEN_FILE).
pub fn read_token(opts: &InstallOptions) -> anyhow::Result<Option<String>> {
    if let Some(t) = &opts.token {
        return Ok(Some(t.trim().to_string()));
    }
    if let Some(f) = &opts.token_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading token file {}", f.display()))?;
        let token = text.trim().to_string();
        if token.is_empty() {
            bail!("token file {} is empty", f.display());
        }
        return Ok(Some(token));
    }
    Ok(None)
}

fn check_options(opts: &InstallOptions, token: Option<&str>) -> anyhow::Result<()> {
    if opts.key.is_none() && !opts.insecure_skip_signature {
        bail!("a public key is required (--key FILE); --insecure-skip-signature installs an unverified bundle");
    }
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
fn check_cluster_flags(opts: &InstallOptions) -> anyhow::Result<()> {
    let cluster = match &opts.token_file {
        Some(f) => crate::cluster::load_cluster_file(f)?,
        None => None,
    };
    let Some(cluster) = cluster else {
        tracing::warn!(
            "no cluster file beside the token (`airgap token --out FILE` on the first server writes one): \
             this server's cluster-cidr, service-cidr, cluster-dns, cluster-domain and disable flags \
             are not checked before install; k3s refuses a mismatch when it starts"
        );
        return Ok(());
    };
    let diff = CriticalConfig::from_args(&opts.extra_args).differences(&cluster);
    if !diff.is_empty() {
        bail!(
            "this server's flags differ from the cluster's, and k3s would refuse to join it; nothing was installed:\n  {}",
            diff.join("\n  ")
        );
    }
    Ok(())
}

/// The HTTPS port k3s will listen on (`--https-listen-port` among the extra flags).
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

/// Bytes reserved for the install record, which is written last.
fn record_reserve(meta: &BundleMeta) -> u64 {
    // About twice what a record of this many images and files takes.
    (8 << 10) + (2 << 10) * meta.images.len() as u64 + 512 * meta.files.len() as u64
}

/// What the install writes, and where, predicted from `bundle.json`: the
/// staged files (but those already in place), the embedded runtime's image
/// archive, the generated files with the record's reservation and, for an
/// external containerd on this host, its content and snapshots (a
/// containerd under another root keeps its state where it was started).
fn space_needs(
    meta: &BundleMeta,
    sums: &Sums,
    root: &HostRoot,
    placements: &BTreeMap<String, Placement>,
    runtime: Runtime,
) -> Vec<SpaceNeed> {
    let mut needs: Vec<SpaceNeed> = Vec::new();
    for (entry, p) in placements {
        let Some(file) = meta.files.iter().find(|f| &f.path == entry) else {
            continue;
        };
        if sums
            .get(entry)
            .is_some_and(|d| file_matches(&p.dest, d, p.mode))
        {
            continue;
        }
        let what = match file.role {
            FileRole::K3sBinary => "the k3s binary",
            _ => "the manifests",
        };
        needs.push(SpaceNeed::files(p.dest.clone(), &[file.size], what));
    }
    let blobs = meta.totals.blob_bytes;
    match runtime {
        Runtime::Embedded => needs.push(SpaceNeed::files(
            root.path(&format!("{}/airgap-images.tar", layout::AGENT_IMAGES_DIR)),
            // Each blob's tar header and padding, the layout's index.
            &[blobs + 1024 * meta.totals.blobs + (64 << 10)],
            "the image archive",
        )),
        // Content plus, roughly, as much again unpacked (layers are compressed).
        Runtime::External if root.is_host() => needs.push(SpaceNeed {
            path: root.path("/var/lib/containerd"),
            bytes: blobs * 3,
            what: "containerd's content and snapshots".into(),
        }),
        Runtime::External => {}
    }
    // Config, registries, sysctl, modules, unit, env file, journal; record.
    needs.push(SpaceNeed {
        path: root.path(layout::AIRGAP_DIR),
        bytes: 10 * preflight::BLOCK + record_reserve(meta),
        what: "config, service and record files".into(),
    });
    needs
}

/// What the error handler of [`install`] needs to explain a full disk.
#[derive(Default)]
struct SpaceState {
    needs: Vec<SpaceNeed>,
    /// Files renamed into place or images named: past undoing.
    published: bool,
}

/// Puts "no space left on <path>, needed N more" on an error a full file
/// system caused, from the prediction and what is free now (after the run
/// undid what it wrote).
fn explain_full(err: anyhow::Error, state: &SpaceState) -> anyhow::Error {
    space::explain(err, || {
        let (all, short) = preflight::shortfalls(&state.needs);
        let outcome = if state.published {
            "the install was published but not recorded; run it again once there is room"
        } else {
            "nothing was installed, the root is as it was"
        };
        match (short.first(), all.first()) {
            (Some(s), _) => NoSpace {
                path: s.mount.clone(),
                needed: Needed::About(s.missing()),
                detail: format!(
                    "{} need {}, {} is free; {outcome}",
                    s.what.join(", "),
                    human(s.needed),
                    human(s.free)
                ),
            },
            // There was room for what the prediction counts: something else
            // took it meanwhile.
            (None, Some(s)) => NoSpace {
                path: s.mount.clone(),
                needed: Needed::AtLeast(preflight::BLOCK),
                detail: format!(
                    "the install writes about {} there and {} is free now: something else \
                     wrote there meanwhile; {outcome}",
                    human(s.needed),
                    human(s.free)
                ),
            },
            (None, None) => NoSpace {
                path: "/".into(),
                needed: Needed::AtLeast(preflight::BLOCK),
                detail: outcome.into(),
            },
        }
    })
}

/// Runs the whole install.
pub fn install(opts: &InstallOptions, runner: &dyn Runner) -> anyhow::Result<InstallReport> {
    let mut state = SpaceState::default();
    install_stages(opts, runner, &mut state).map_err(|e| explain_full(e, &state))
}

fn install_stages(
    opts: &InstallOptions,
    runner: &dyn Runner,
    space_state: &mut SpaceState,
) -> anyhow::Result<InstallReport> {
    let token = read_token(opts)?;
    check_options(opts, token.as_deref())?;
    if let Some(t) = &token {
        let source = match &opts.token_file {
            Some(f) => format!("the token in {}", f.display()),
            None => "the token given with --token".to_string(),
        };
        crate::join::parse_token(t).with_context(|| match &opts.server {
            Some(url) => format!("{source}, to join {url}, cannot be used"),
            None => format!("{source} cannot be used"),
        })?;
    }
    let root = HostRoot::new(&opts.root)?;
    let init = opts.init.unwrap_or_else(Init::detect);
    let arch = airgap_bundle::oci::host_arch();

    // The bundle's verified head: plan and preflight from it.
    let trust = || -> anyhow::Result<Trust> {
        Ok(match &opts.key {
            Some(k) => Trust::Key(airgap_bundle::sign::load_public_key(k)?),
            None => {
                tracing::warn!(
                    "installing {} without checking its signature (--insecure-skip-signature)",
                    opts.bundle.display()
                );
                Trust::SkipSignature
            }
        })
    };
    let header = read_header(open_bundle(&opts.bundle)?, &trust()?)
        .with_context(|| format!("bundle {} is not valid", opts.bundle.display()))?;
    let meta = &header.meta;
    // One install at a time per root, from before the previous record is
    // read: a second install that read it before the first finished would
    // plan from a stale record (and forget the directories the first made).
    let _lock = crate::lock::InstallLock::acquire(&root)?;
    let previous = InstallRecord::load(&root)?;
    let placements = placements(meta, &root, opts.role, arch)?;
    space_state.needs = space_needs(meta, &header.sums, &root, &placements, opts.runtime);
    let report = preflight::run(&PreflightInput {
        root: &root,
        role: opts.role,
        host_arch: arch,
        bundle_arches: &meta.arches,
        space: &space_state.needs,
        https_port: https_port(&opts.extra_args),
        skip: &opts.skip_preflight,
        // A run killed after it published k3s but before it wrote the
        // record left its journal: that k3s is airgap's own, not another's.
        reinstall: previous.is_some() || root.path(layout::INSTALL_JOURNAL).exists(),
    });
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
    if opts.dry_run {
        return Ok(dry_run_report(
            opts,
            &root,
            init,
            meta,
            header.sums_digest,
            &placements,
            &socket,
            report,
        ));
    }
    if let Some(first) = report.failed().first() {
        bail!(
            "preflight check {} failed: found {}, needed {}{}\n{report}",
            first.name,
            first.found,
            first.needed,
            first
                .fix
                .as_deref()
                .map(|f| format!(": {f}"))
                .unwrap_or_default()
        );
    }

    // A join checks the server before anything is written: reachable, and
    // holding the CA the token was issued by.
    if let (Some(url), Some(t)) = (&opts.server, &token) {
        let parsed = crate::join::parse_token(t)?;
        crate::join::check_server(url, &parsed, Duration::from_secs(15))?;
        if opts.role == Role::Server {
            check_cluster_flags(opts)?;
        }
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut changes = Changes::with_journal(&root.path(layout::INSTALL_JOURNAL))?;

    // Connect before writing anything: a missing containerd must leave the
    // host untouched.
    let importer = match opts.runtime {
        Runtime::External => {
            let mut iopts = ImportOptions::new(&socket);
            iopts.snapshotter = opts.snapshotter.clone();
            Some(runtime.block_on(Importer::connect(iopts))?)
        }
        Runtime::Embedded => None,
    };

    // Stream: one pass, every entry verified, nothing published yet.
    let mut import_sink = importer.map(|i| ImportSink::new(i, runtime.handle().clone()));
    let mut archive = match opts.runtime {
        Runtime::Embedded => {
            let host_path = format!("{}/airgap-images.tar", layout::AGENT_IMAGES_DIR);
            Some(ArchiveStager::new(
                Placement {
                    dest: root.path(&host_path),
                    host_path,
                    mode: 0o644,
                },
                &mut changes,
            )?)
        }
        Runtime::External => None,
    };
    let mut stager = FileStager::new(placements, &mut changes);
    let bundle_path = opts.bundle.clone();
    let key_trust = trust()?;
    let read = runtime.block_on(async {
        tokio::task::block_in_place(|| {
            let mut sinks: Vec<&mut dyn EntrySink> = vec![&mut stager];
            if let Some(s) = import_sink.as_mut() {
                sinks.push(s);
            }
            if let Some(a) = archive.as_mut() {
                sinks.push(a);
            }
            let input = open_bundle(&bundle_path)?;
            read_bundle(input, &key_trust, &mut Fanout { sinks })
        })
    });
    if let Err(e) = read {
        if let Some(sink) = import_sink.take() {
            if let Err(abort) = runtime.block_on(sink.abort()) {
                tracing::warn!("dropping the failed import's content: {abort:#}");
            }
        }
        if space::is_full(&e) {
            // Not the bundle's fault; explained in install().
            return Err(e.context(format!("installing {}", opts.bundle.display())));
        }
        // A containerd that went away is no fault of the bundle's.
        if e.downcast_ref::<crate::import::ContainerdLost>().is_some() {
            return Err(e.context("nothing was installed"));
        }
        return Err(e.context(format!(
            "bundle {} is not valid; nothing was installed",
            opts.bundle.display()
        )));
    }

    // Stage what is left to write while a failure (a full disk) can still
    // be undone: the generated files, the record's directory and space for
    // the record, whose content is known only once the images are named.
    let record_path = root.path(layout::INSTALL_RECORD);
    let pid_file =
        (init == Init::None).then(|| format!("/run/k3s-airgap/{}.pid", opts.role.service_name()));
    let log_file =
        (init == Init::None).then(|| format!("/var/log/{}.log", opts.role.service_name()));
    let mut generated = Vec::new();
    let prepared = (|| -> anyhow::Result<airgap_bundle::atomic::AtomicFile> {
        let changes = stager.changes();
        let mut generate = |host_path: &str, content: String, mode: u32| -> anyhow::Result<()> {
            let staged = stage_file(changes, &root.path(host_path), content.as_bytes(), mode)
                .with_context(|| format!("writing {host_path}"))?;
            generated.push((
                host_path.to_string(),
                Digest::of(content.as_bytes()),
                mode,
                staged,
            ));
            Ok(())
        };
        let cfg = layout::K3sConfig {
            node_name: opts.node_name.clone(),
            cluster_init: opts.cluster_init,
            container_runtime_endpoint: None,
            write_kubeconfig_mode: None,
        };
        generate(layout::CONFIG_YAML, layout::config_yaml(&cfg), 0o644)?;
        generate(
            layout::REGISTRIES_YAML,
            layout::registries_yaml(meta),
            0o644,
        )?;
        generate(
            layout::MODULES_FILE,
            layout::modules_load().to_string(),
            0o644,
        )?;
        generate(
            layout::SYSCTL_FILE,
            layout::sysctl_conf().to_string(),
            0o644,
        )?;
        let env_content = service::env_file(opts.server.as_deref(), token.as_deref());
        if let Some(sf) = service::service_files(opts.role, init) {
            let unit = match init {
                Init::Systemd => service::systemd_unit(opts.role, &sf.env, &exec_args),
                _ => service::openrc_script(opts.role, &sf.env, &exec_args),
            };
            generate(&sf.unit, unit, sf.unit_mode)?;
            generate(&sf.env, env_content, 0o600)?;
        } else {
            generate(
                &format!("{}/{}.env", layout::AIRGAP_DIR, opts.role.service_name()),
                env_content,
                0o600,
            )?;
        }
        changes.create_dir_all(record_path.parent().expect("record has a parent"))?;
        // The detached k3s's pid and log directories are this install's too.
        if !opts.no_start {
            for f in pid_file.iter().chain(log_file.iter()) {
                if let Some(dir) = root.path(f).parent() {
                    changes.create_dir_all(dir)?;
                }
            }
        }
        reserve_file(&record_path, record_reserve(meta), 0o600)
            .with_context(|| format!("writing {}", layout::INSTALL_RECORD))
    })();
    let reserved = match prepared {
        Ok(r) => r,
        Err(e) => {
            if let Some(sink) = import_sink.take() {
                if let Err(abort) = runtime.block_on(sink.abort()) {
                    tracing::warn!("dropping the failed import's content: {abort:#}");
                }
            }
            return Err(if space::is_full(&e) {
                e
            } else {
                e.context("nothing was installed")
            });
        }
    };

    // Publish: images first (named only now that every blob is verified),
    // then the staged files, then the generated ones: renames only.
    let images = match import_sink.take() {
        Some(sink) => Some(
            runtime
                .block_on(sink.finish())
                .context("importing the images into containerd")?,
        ),
        None => None,
    };
    space_state.published = true;
    let mut placed = stager.publish()?;
    if let Some(a) = archive.take() {
        placed.push(a.publish()?);
    }
    let mut files: Vec<(String, Digest, u32, bool)> = placed
        .iter()
        .map(|p| {
            (
                p.placement.host_path.clone(),
                p.digest,
                p.placement.mode,
                p.written,
            )
        })
        .collect();
    for (host_path, digest, mode, staged) in generated {
        let written = staged.is_some();
        if let Some(f) = staged {
            f.commit().with_context(|| format!("writing {host_path}"))?;
        }
        files.push((host_path, digest, mode, written));
    }
    let mut links = Vec::new();
    for link in layout::K3S_LINKS {
        let path = root.path(link);
        if crate::record::link_is(&path, layout::K3S_BIN) {
            links.push(RecordedLink {
                path: link.to_string(),
                target: layout::K3S_BIN.to_string(),
            });
        } else if std::fs::symlink_metadata(&path).is_err() {
            std::os::unix::fs::symlink(layout::K3S_BIN, &path)
                .with_context(|| format!("linking {link}"))?;
            links.push(RecordedLink {
                path: link.to_string(),
                target: layout::K3S_BIN.to_string(),
            });
        }
    }

    // Record what this install owns (keeping what an earlier run created).
    let mut dirs: Vec<String> = previous
        .as_ref()
        .map(|p| p.dirs.clone())
        .unwrap_or_default();
    let root_prefix = root.root().to_path_buf();
    let host = |p: &std::path::Path| -> String {
        let rel = p.strip_prefix(&root_prefix).unwrap_or(p);
        format!("/{}", rel.display())
    };
    for d in changes.keep() {
        let h = host(&d);
        if !dirs.contains(&h) {
            dirs.push(h);
        }
    }
    let record = InstallRecord {
        schema: RECORD_SCHEMA,
        role: opts.role,
        init,
        k3s_version: meta.k3s_version.clone(),
        bundle: header.sums_digest,
        runtime: match opts.runtime {
            Runtime::External => "external".into(),
            Runtime::Embedded => "embedded".into(),
        },
        containerd_socket: (opts.runtime == Runtime::External)
            .then(|| socket.display().to_string()),
        namespace: "k8s.io".into(),
        files: files
            .iter()
            .map(|(path, sha256, mode, _)| RecordedFile {
                path: path.clone(),
                sha256: *sha256,
                mode: *mode,
            })
            .collect(),
        links,
        dirs,
        images: images
            .as_ref()
            .map(|r| {
                r.images
                    .iter()
                    .flat_map(|i| {
                        i.names.iter().map(|n| RecordedImage {
                            name: n.clone(),
                            digest: i.digest,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
        cluster: (opts.role == Role::Server).then(|| CriticalConfig::from_args(&opts.extra_args)),
        https_port: https_port(&opts.extra_args),
        pid_file: pid_file.clone(),
        log_file: log_file.clone(),
    };
    let record_written = fill_reserved(reserved, record.to_json().as_bytes(), 0o600)
        .with_context(|| format!("writing {}", layout::INSTALL_RECORD))?;
    // The record now holds every directory the journal listed.
    let _ = std::fs::remove_file(root.path(layout::INSTALL_JOURNAL));

    let files_written: Vec<String> = files.iter().filter(|f| f.3).map(|f| f.0.clone()).collect();
    let files_unchanged: Vec<String> = files.iter().filter(|f| !f.3).map(|f| f.0.clone()).collect();
    let images_changed = images.as_ref().is_some_and(|r| {
        r.blobs_written > 0
            || r.images
                .iter()
                .any(|i| i.outcome != crate::import::ImageOutcome::Unchanged)
    });
    let mut changed = !files_written.is_empty() || images_changed || record_written;

    // Start and wait.
    let service_state = if opts.no_start {
        "not started (--no-start)".to_string()
    } else {
        match init {
            Init::None => {
                let pid_file = root.path(pid_file.as_deref().expect("none has a pid file"));
                let running = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok())
                    .filter(|pid| service::process_alive(*pid));
                if let (Some(pid), false) = (running, changed) {
                    format!("already running (pid {pid})")
                } else {
                    if running.is_some() {
                        service::stop_detached(runner, &pid_file)?;
                    }
                    let mut args = exec_args.clone();
                    if !root.is_host() {
                        // Under --root, k3s keeps its data and config there too.
                        args.extend([
                            "--data-dir".to_string(),
                            root.path(layout::DATA_DIR).display().to_string(),
                            "--config".to_string(),
                            root.path(layout::CONFIG_YAML).display().to_string(),
                        ]);
                    }
                    let mut env = Vec::new();
                    if let Some(url) = &opts.server {
                        env.push(("K3S_URL".to_string(), url.clone()));
                    }
                    if let Some(t) = &token {
                        env.push(("K3S_TOKEN".to_string(), t.clone()));
                    }
                    let detached = Detached {
                        pid_file: pid_file.clone(),
                        log_file: root.path(log_file.as_deref().expect("none has a log file")),
                    };
                    let pid = service::start_detached(
                        &root.path(layout::K3S_BIN),
                        &args,
                        &env,
                        &detached,
                    )?;
                    changed = true;
                    wait::ready(
                        &root,
                        opts.role,
                        pid,
                        https_port(&opts.extra_args),
                        opts.wait,
                        &detached.log_file,
                    )?;
                    format!("running (pid {pid}, log {})", detached.log_file.display())
                }
            }
            _ => {
                service::enable_and_start(runner, opts.role, init)?;
                format!(
                    "{} started with {}",
                    opts.role.service_name(),
                    init.as_str()
                )
            }
        }
    };

    // Embedded runtime: k3s imports the archive when it starts; once its
    // containerd answers, confirm every image arrived.
    let embedded_check = (opts.runtime == Runtime::Embedded && !opts.no_start)
        .then(|| confirm_embedded(&runtime, &socket, meta))
        .transpose()?;

    let join_command = (opts.role == Role::Server).then(|| {
        format!(
            "airgap install --offline {} --key <site.pub> --role agent --server https://<this server's address>:{} --token-file <copy of {}>",
            opts.bundle.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            https_port(&opts.extra_args),
            layout::NODE_TOKEN
        )
    });
    Ok(InstallReport {
        root: root.root().to_path_buf(),
        role: opts.role,
        k3s_version: meta.k3s_version.clone(),
        bundle: header.sums_digest,
        changed,
        files_written,
        files_unchanged,
        images,
        service: service_state,
        join_command,
        embedded_images: embedded_check,
        preflight: report,
        plan: Vec::new(),
    })
}

/// Checks, over k3s's own containerd socket, that every image of the bundle
/// is there. The socket comes up some time after k3s: without it, say so.
fn confirm_embedded(
    runtime: &tokio::runtime::Runtime,
    socket: &std::path::Path,
    meta: &BundleMeta,
) -> anyhow::Result<String> {
    if !socket.exists() {
        return Ok(format!(
            "not confirmed: k3s's containerd ({}) is not up yet; `airgap status` checks later",
            socket.display()
        ));
    }
    let mut iopts = ImportOptions::new(socket);
    iopts.timeout = Duration::from_secs(5);
    let present = runtime.block_on(async {
        let importer = Importer::connect(iopts).await?;
        importer.images().await
    })?;
    let missing: Vec<String> = meta
        .images
        .iter()
        .map(|i| i.reference.to_string())
        .filter(|r| !present.iter().any(|p| &p.name == r))
        .collect();
    if missing.is_empty() {
        Ok(format!(
            "all {} images present in k3s's containerd",
            meta.images.len()
        ))
    } else {
        bail!(
            "k3s's containerd at {} is missing {} of the bundle's images: {}",
            socket.display(),
            missing.len(),
            missing.join(", ")
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn dry_run_report(
    opts: &InstallOptions,
    root: &HostRoot,
    init: Init,
    meta: &BundleMeta,
    bundle: Digest,
    placements: &BTreeMap<String, Placement>,
    socket: &std::path::Path,
    preflight: preflight::Report,
) -> InstallReport {
    let mut plan = Vec::new();
    for (from, p) in placements {
        plan.push(format!(
            "file  {} <- {from} (mode {:o})",
            p.host_path, p.mode
        ));
    }
    for f in [
        layout::CONFIG_YAML,
        layout::REGISTRIES_YAML,
        layout::MODULES_FILE,
        layout::SYSCTL_FILE,
    ] {
        plan.push(format!("file  {f}"));
    }
    if let Some(sf) = service::service_files(opts.role, init) {
        plan.push(format!("file  {} ({})", sf.unit, init.as_str()));
        plan.push(format!("file  {} (mode 600: K3S_URL, K3S_TOKEN)", sf.env));
    }
    for l in layout::K3S_LINKS {
        plan.push(format!("link  {l} -> {} (when absent)", layout::K3S_BIN));
    }
    match opts.runtime {
        Runtime::External => {
            for i in &meta.images {
                plan.push(format!(
                    "image {} {} -> containerd {} (k8s.io)",
                    i.reference,
                    i.digest.short(),
                    socket.display()
                ));
            }
        }
        Runtime::Embedded => plan.push(format!(
            "file  {}/airgap-images.tar ({} images)",
            layout::AGENT_IMAGES_DIR,
            meta.images.len()
        )),
    }
    if !opts.no_start {
        plan.push(match init {
            Init::None => format!("start {} {} detached", layout::K3S_BIN, opts.role.as_str()),
            _ => format!("start {} with {}", opts.role.service_name(), init.as_str()),
        });
    }
    InstallReport {
        root: root.root().to_path_buf(),
        role: opts.role,
        k3s_version: meta.k3s_version.clone(),
        bundle,
        changed: false,
        files_written: Vec::new(),
        files_unchanged: Vec::new(),
        images: None,
        service: "dry run: nothing changed".into(),
        join_command: None,
        embedded_images: None,
        preflight,
        plan,
    }
}
