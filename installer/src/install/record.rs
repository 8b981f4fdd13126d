//! Recording what the install owns in `install.json` (into the space
//! reserved before publishing): every file with its hash and mode, the
//! links, the directories it created (with those of earlier runs), the
//! images, the service. Then the journal of this run is no longer needed.

use super::publish::Published;
use crate::import::DEFAULT_NAMESPACE;
use crate::layout;
use crate::record::{InstallRecord, RecordedFile, RecordedImage, RECORD_SCHEMA};
use crate::root::{fill_reserved, HostRoot};
use anyhow::Context as _;
use std::path::Path;

/// Writes the record; returns whether it changed.
pub(super) fn write(published: &mut Published, root: &HostRoot) -> anyhow::Result<bool> {
    let plan = &published.plan;
    let mut dirs: Vec<String> = published
        .previous
        .as_ref()
        .map(|p| p.dirs.clone())
        .unwrap_or_default();
    let changes = std::mem::take(&mut published.changes);
    for d in changes.keep() {
        let h = host_path(root, &d);
        if !dirs.contains(&h) {
            dirs.push(h);
        }
    }
    let record = InstallRecord {
        schema: RECORD_SCHEMA,
        role: plan.role,
        init: plan.init,
        k3s_version: plan.k3s_version.clone(),
        bundle: plan.bundle,
        created: Some(plan.created),
        runtime: plan.runtime.as_str().to_string(),
        containerd_socket: (plan.runtime == super::Runtime::External)
            .then(|| plan.socket.display().to_string()),
        namespace: DEFAULT_NAMESPACE.into(),
        files: published
            .files
            .iter()
            .map(|f| RecordedFile {
                path: f.host_path.clone(),
                sha256: f.digest,
                mode: f.mode,
            })
            .collect(),
        links: published.links.clone(),
        dirs,
        images: published
            .images
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
        cluster: plan.cluster.clone(),
        https_port: plan.https_port,
        pid_file: plan.detached.as_ref().map(|d| d.pid_file.clone()),
        log_file: plan.detached.as_ref().map(|d| d.log_file.clone()),
    };
    let reserved = published
        .record
        .take()
        .context("internal error: the record was written twice")?;
    let written = fill_reserved(reserved, record.to_json().as_bytes(), 0o600)
        .with_context(|| format!("writing {}", layout::INSTALL_RECORD))?;
    // The record now holds every directory the journal listed.
    let _ = std::fs::remove_file(root.path(layout::INSTALL_JOURNAL));
    Ok(written)
}

/// The host path (as on the host) of a path under the root.
fn host_path(root: &HostRoot, p: &Path) -> String {
    let rel = p.strip_prefix(root.root()).unwrap_or(p);
    format!("/{}", rel.display())
}
