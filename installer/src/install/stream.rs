//! The one pass over the bundle. The verifying reader hands over the
//! bundle's head (signature, `SHA256SUMS`, `bundle.json`, all checked) and
//! then every entry; when the head arrives, the install takes its lock,
//! plans, runs the preflight, checks the server it joins and connects to
//! containerd, all before the first byte is written; then blobs stream
//! into containerd under a lease and files are staged beside their
//! destinations. Nothing is published here, and the bundle is read once:
//! what is planned and recorded is what was verified and staged.

use super::options::{check_cluster_flags, InstallOptions, Runtime};
use super::plan::Plan;
use crate::import::sink::ImportSink;
use crate::import::{ImportOptions, Importer};
use crate::install_lock::InstallLock;
use crate::layout::{self, Role};
use crate::preflight::{self, PreflightInput, SpaceNeed};
use crate::record::InstallRecord;
use crate::root::{Changes, HostRoot};
use crate::service::Init;
use crate::stage::{ArchiveStager, Fanout, FileStager};
use airgap_bundle::digest::Hashed;
use airgap_bundle::read::{EntrySink, Header};
use anyhow::bail;
use std::io::Read;
use std::time::Duration;
use tokio::runtime::Handle;

/// The fixed inputs of one install run.
pub(super) struct Node<'a> {
    pub opts: &'a InstallOptions,
    pub token: Option<&'a str>,
    pub root: &'a HostRoot,
    pub init: Init,
    /// The k3s architecture name of this host.
    pub arch: &'a str,
    pub handle: &'a Handle,
}

impl Node<'_> {
    /// The plan for this bundle head on this node.
    pub fn plan(&self, header: &Header) -> anyhow::Result<Plan> {
        Plan::new(
            self.opts, self.token, self.root, self.init, header, self.arch,
        )
    }

    /// The preflight table for a plan, given the install record found.
    pub fn preflight(
        &self,
        plan: &Plan,
        header: &Header,
        previous: Option<&InstallRecord>,
    ) -> preflight::Report {
        // A run killed after it published k3s but before it wrote the
        // record left its journal: that k3s is airgap's own, not another's.
        let reinstall = previous.is_some() || self.root.path(layout::INSTALL_JOURNAL).exists();
        preflight::run(&PreflightInput {
            root: self.root,
            role: self.opts.role,
            host_arch: self.arch,
            bundle_arches: &header.meta.arches,
            space: &plan.space,
            https_port: plan.https_port,
            skip: &self.opts.skip_preflight,
            reinstall,
        })
    }
}

/// What streaming left ready to publish.
pub(super) struct Streamed {
    // Fields drop in order: the import's lease and the staged files go
    // before the undo log (in the stager) removes their directories, and
    // the lock goes last.
    pub import: Option<ImportSink>,
    pub archive: Option<ArchiveStager>,
    pub stager: FileStager,
    pub plan: Plan,
    pub preflight: preflight::Report,
    pub previous: Option<InstallRecord>,
    pub _lock: InstallLock,
}

/// The sink the reader streams the bundle into.
pub(super) struct Pass<'a> {
    node: &'a Node<'a>,
    streamed: Option<Streamed>,
    /// The plan's space prediction, for explaining a full disk.
    pub space: Vec<SpaceNeed>,
    /// Set when the failure came from this node (preflight, the server to
    /// join, containerd), not from the bundle.
    pub node_failed: bool,
}

impl<'a> Pass<'a> {
    pub fn new(node: &'a Node<'a>) -> Self {
        Pass {
            node,
            streamed: None,
            space: Vec::new(),
            node_failed: false,
        }
    }

    /// What streamed, once the reader finished the whole bundle.
    pub fn finish(mut self) -> anyhow::Result<Streamed> {
        match self.streamed.take() {
            Some(s) => Ok(s),
            None => bail!("internal error: the bundle ended before its head"),
        }
    }

    /// Drops what a failed pass wrote, containerd's content included.
    pub fn abort(mut self) {
        if let Some(mut s) = self.streamed.take() {
            abort_import(s.import.take(), self.node.handle);
        }
    }

    /// Everything between the verified head and the first entry: lock,
    /// plan, preflight, the server to join, containerd, the sinks.
    fn prepare(&mut self, header: &Header) -> anyhow::Result<Streamed> {
        let node = self.node;
        let (opts, root) = (node.opts, node.root);
        // One install at a time per root, from before the previous record
        // is read: a second install that read it before the first finished
        // would plan from a stale record (and forget the directories the
        // first made).
        let lock = InstallLock::acquire(root)?;
        let previous = InstallRecord::load(root)?;
        let plan = node.plan(header)?;
        super::rollback::check(previous.as_ref(), &plan, opts.allow_downgrade)?;
        self.space = plan.space.clone();
        let report = node.preflight(&plan, header, previous.as_ref());
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
        // A join checks the server before anything is written: reachable,
        // and holding the CA the token was issued by.
        if let (Some(url), Some(t)) = (&opts.server, node.token) {
            let parsed = crate::join::parse_token(t)?;
            crate::join::check_server(url, &parsed, Duration::from_secs(15), node.handle)?;
            if opts.role == Role::Server {
                check_cluster_flags(opts)?;
            }
        }
        let mut changes = Changes::with_journal(root, &root.path(layout::INSTALL_JOURNAL))?;
        // Connect before writing anything: a missing containerd must leave
        // the host untouched.
        let import = match opts.runtime {
            Runtime::External => {
                let mut iopts = ImportOptions::new(&plan.socket);
                iopts.snapshotter = plan.snapshotter.clone();
                let importer = node.handle.block_on(Importer::connect(iopts))?;
                Some(ImportSink::new(importer, node.handle.clone()))
            }
            Runtime::Embedded => None,
        };
        let archive = match &plan.archive {
            Some(p) => Some(ArchiveStager::new(p.clone(), &mut changes)?),
            None => None,
        };
        let stager = FileStager::new(plan.placements.clone(), changes);
        Ok(Streamed {
            import,
            archive,
            stager,
            plan,
            preflight: report,
            previous,
            _lock: lock,
        })
    }

    fn sinks(&mut self) -> anyhow::Result<Fanout<'_>> {
        let Some(s) = self.streamed.as_mut() else {
            bail!("internal error: an entry before the bundle's head");
        };
        let mut sinks: Vec<&mut dyn EntrySink> = vec![&mut s.stager];
        if let Some(i) = s.import.as_mut() {
            sinks.push(i);
        }
        if let Some(a) = s.archive.as_mut() {
            sinks.push(a);
        }
        Ok(Fanout { sinks })
    }
}

impl EntrySink for Pass<'_> {
    fn begin(&mut self, header: &Header) -> anyhow::Result<()> {
        let streamed = self
            .prepare(header)
            .inspect_err(|_| self.node_failed = true)?;
        self.streamed = Some(streamed);
        self.sinks()?.begin(header)
    }

    fn entry(&mut self, path: &str, size: u64, body: &mut dyn Read) -> anyhow::Result<()> {
        self.sinks()?.entry(path, size, body)
    }

    fn verified(&mut self, path: &str, hashed: Hashed) -> anyhow::Result<()> {
        self.sinks()?.verified(path, hashed)
    }
}

/// Drops an unfinished import: its lease, and with it the content written
/// under it. A failure to do so is only logged: the error that made the
/// install stop is the one to report.
pub(super) fn abort_import(import: Option<ImportSink>, handle: &Handle) {
    if let Some(sink) = import {
        if let Err(abort) = handle.block_on(sink.abort()) {
            tracing::warn!("dropping the failed import's content: {abort:#}");
        }
    }
}
