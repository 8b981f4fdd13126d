//! `airgap install --offline`: one node's install, as a short driver over
//! its stages.
//!
//! options (checks that need nothing else) -> stream (one pass over the
//! bundle: when its verified head arrives, lock, [plan](plan::Plan),
//! preflight, the server to join and containerd are checked before anything
//! is written; then every entry is verified while blobs go into containerd
//! under a lease and files are staged beside their destinations) ->
//! generate (config, units, env files staged; the record's space reserved)
//! -> publish (images named and unpacked, everything renamed into place) ->
//! record (install.json) -> start (init system, or detached) and wait.
//! Any failure before publish leaves the host as it was. Everything that
//! takes space is written before publish, so a file system that fills up
//! fails the run while it can be undone, with the same prediction the
//! preflight's disk check makes. `--dry-run` reads only the bundle's head
//! and prints the same plan.

mod generate;
mod options;
pub mod plan;
mod publish;
mod record;
mod rollback;
mod space;
mod start;
mod stream;

pub use options::{https_port, read_token, InstallOptions, JoinToken, Runtime, Verification};
pub use rollback::parse_k3s_version;

use crate::import::sink::ImportReport;
use crate::import::ImageOutcome;
use crate::layout::Role;
use crate::preflight;
use crate::root::HostRoot;
use crate::run::Runner;
use crate::service::Init;
use airgap_bundle::digest::Digest;
use airgap_bundle::read::{read_bundle, read_header};
use airgap_bundle::space::is_full;
use anyhow::Context as _;
use serde::Serialize;
use space::{explain_full, SpaceState};
use std::fmt;
use std::path::PathBuf;
use stream::{abort_import, Node, Pass};
use tokio::runtime::Handle;

/// What an install did (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    pub root: PathBuf,
    pub role: Role,
    pub k3s_version: String,
    pub bundle: Digest,
    /// The id of the key the bundle's signature was checked with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `--dry-run`: nothing was changed; `plan` is what would be done.
    pub dry_run: bool,
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
    /// The plan, one step a line: what was (or, dry run, would be) done.
    pub plan: Vec<String>,
}

impl fmt::Display for InstallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            writeln!(f, "dry run: nothing was changed. The plan:")?;
            for step in &self.plan {
                writeln!(f, "  {step}")?;
            }
            return write!(f, "\npreflight:\n{}", self.preflight);
        }
        writeln!(f, "{}", self.preflight)?;
        if let Some(id) = &self.key_id {
            writeln!(
                f,
                "signature: checked with key id {id} (fingerprint {})",
                airgap_bundle::sign::fingerprint(id)
            )?;
        }
        if let Some(images) = &self.images {
            writeln!(
                f,
                "images: {} in containerd ({} blobs written, {} already present)",
                images.images.len(),
                images.blobs_written,
                images.blobs_present
            )?;
        }
        if let Some(e) = &self.embedded_images {
            writeln!(f, "images: {e}")?;
        }
        for file in &self.files_written {
            writeln!(f, "wrote {file}")?;
        }
        if self.changed {
            write!(
                f,
                "installed k3s {} as {}: {}",
                self.k3s_version,
                self.role.as_str(),
                self.service
            )
        } else {
            write!(
                f,
                "nothing to do: k3s {} from this bundle is already installed as {} ({} files unchanged); {}",
                self.k3s_version,
                self.role.as_str(),
                self.files_unchanged.len(),
                self.service
            )
        }
    }
}

/// Runs the whole install. `handle` is the runtime the containerd and HTTP
/// clients run on; call from a thread outside it.
pub fn install(
    opts: &InstallOptions,
    runner: &dyn Runner,
    handle: &Handle,
) -> anyhow::Result<InstallReport> {
    let mut space = SpaceState::default();
    run(opts, runner, handle, &mut space).map_err(|e| explain_full(e, &space))
}

fn run(
    opts: &InstallOptions,
    runner: &dyn Runner,
    handle: &Handle,
    space: &mut SpaceState,
) -> anyhow::Result<InstallReport> {
    let checked = options::check(opts)?;
    let root = HostRoot::new(&opts.root)?;
    let node = Node {
        opts,
        token: checked.token.as_deref(),
        root: &root,
        init: opts.init.unwrap_or_else(Init::detect),
        arch: airgap_bundle::oci::host_arch(),
        handle,
    };
    let input = opts.bundle.open()?;
    if opts.dry_run {
        let header = read_header(input, &checked.trust)
            .with_context(|| format!("bundle {} is not valid", opts.bundle))?;
        let plan = node.plan(&header)?;
        let previous = crate::record::InstallRecord::load(&root)?;
        rollback::check(previous.as_ref(), &plan, opts.allow_downgrade)?;
        let preflight = node.preflight(&plan, &header, previous.as_ref());
        return Ok(InstallReport {
            root: root.root().to_path_buf(),
            role: opts.role,
            k3s_version: plan.k3s_version.clone(),
            bundle: plan.bundle,
            key_id: checked.key_id.clone(),
            dry_run: true,
            changed: false,
            files_written: Vec::new(),
            files_unchanged: Vec::new(),
            images: None,
            service: "dry run: nothing changed".into(),
            join_command: None,
            embedded_images: None,
            preflight,
            plan: plan.steps(),
        });
    }

    // Stream: one pass, every entry verified, nothing published yet.
    let mut pass = Pass::new(&node);
    let read = read_bundle(input, &checked.trust, &mut pass);
    space.needs = std::mem::take(&mut pass.space);
    if let Err(e) = read {
        let node_failed = pass.node_failed;
        pass.abort();
        return Err(if node_failed {
            // A failed preflight, join check or connect: said as it is.
            e
        } else if is_full(&e) {
            // Not the bundle's fault; explained in install().
            e.context(format!("installing {}", opts.bundle))
        } else if e.downcast_ref::<crate::import::ContainerdLost>().is_some() {
            // A containerd that went away is no fault of the bundle's.
            e.context("nothing was installed")
        } else {
            e.context(format!(
                "bundle {} is not valid; nothing was installed",
                opts.bundle
            ))
        });
    }
    let mut streamed = pass.finish()?;

    // Generate: what is left to write, while a failure can be undone.
    let generated = match generate::stage(&streamed.plan, &root, streamed.stager.changes()) {
        Ok(g) => g,
        Err(e) => {
            abort_import(streamed.import.take(), handle);
            return Err(if is_full(&e) {
                e
            } else {
                e.context("nothing was installed")
            });
        }
    };

    // Publish, then record what this install owns.
    let mut published = publish::publish(streamed, generated, &root, handle, &mut space.published)?;
    let record_written = record::write(&mut published, &root)?;

    let files_written: Vec<String> = published
        .files
        .iter()
        .filter(|f| f.written)
        .map(|f| f.host_path.clone())
        .collect();
    let files_unchanged: Vec<String> = published
        .files
        .iter()
        .filter(|f| !f.written)
        .map(|f| f.host_path.clone())
        .collect();
    let images_changed = published.images.as_ref().is_some_and(|r| {
        r.blobs_written > 0
            || r.images
                .iter()
                .any(|i| i.outcome != ImageOutcome::Unchanged)
    });
    let changed = !files_written.is_empty() || images_changed || record_written;

    // Start and wait.
    let plan = &published.plan;
    let started = start::start(plan, opts, node.token, &root, runner, handle, changed)?;
    // Embedded runtime: k3s imports the archive when it starts; once its
    // containerd answers, confirm every image arrived.
    let embedded_images = (plan.runtime == Runtime::Embedded && plan.start)
        .then(|| start::confirm_embedded(handle, &plan.socket, &plan.images))
        .transpose()?;
    let join_command = (plan.role == Role::Server).then(|| {
        crate::join::agent_command(
            &opts.bundle.file_name(),
            &format!("https://<this server's address>:{}", plan.https_port),
            &format!("--token-file <copy of {}>", crate::layout::NODE_TOKEN),
        )
    });
    Ok(InstallReport {
        root: root.root().to_path_buf(),
        role: plan.role,
        k3s_version: plan.k3s_version.clone(),
        bundle: plan.bundle,
        key_id: checked.key_id.clone(),
        dry_run: false,
        changed: changed || started.restarted,
        files_written,
        files_unchanged,
        images: published.images.clone(),
        service: started.service,
        join_command,
        embedded_images,
        preflight: published.preflight.clone(),
        plan: plan.steps(),
    })
}
