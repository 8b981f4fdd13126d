//! Publishing, once the whole bundle verified and everything is staged:
//! images first (named in containerd only now), then the staged bundle
//! files, the image archive and the generated files, all by rename, then
//! the kubectl/crictl/ctr links. Past this point the install is not undone.

use super::generate::Generated;
use super::plan::Plan;
use super::stream::Streamed;
use crate::import::sink::ImportReport;
use crate::install_lock::InstallLock;
use crate::layout;
use crate::preflight;
use crate::record::{InstallRecord, RecordedLink};
use crate::root::{Changes, HostRoot};
use airgap_bundle::atomic::AtomicFile;
use airgap_bundle::digest::Digest;
use anyhow::Context as _;
use tokio::runtime::Handle;

/// One file the install owns, and whether this run wrote it.
#[derive(Debug, Clone)]
pub(super) struct FileOutcome {
    pub host_path: String,
    pub digest: Digest,
    pub mode: u32,
    pub written: bool,
}

/// What publishing put in place, with what the record needs of the run.
pub(super) struct Published {
    pub files: Vec<FileOutcome>,
    pub links: Vec<RecordedLink>,
    pub images: Option<ImportReport>,
    /// The undo log, now to be kept: its directories go into the record.
    pub changes: Changes,
    /// The record's reserved space, filled last (and taken then).
    pub record: Option<AtomicFile>,
    pub plan: Plan,
    pub preflight: preflight::Report,
    pub previous: Option<InstallRecord>,
    pub _lock: InstallLock,
}

/// Names the images, renames everything staged into place and makes the
/// links. `published` is set once the first thing is past undoing.
pub(super) fn publish(
    streamed: Streamed,
    generated: Generated,
    root: &HostRoot,
    handle: &Handle,
    published: &mut bool,
) -> anyhow::Result<Published> {
    let Streamed {
        import,
        archive,
        stager,
        plan,
        preflight,
        previous,
        _lock: lock,
    } = streamed;
    let images = match import {
        Some(sink) => match handle.block_on(sink.finish()) {
            Ok(report) => Some(report),
            Err(e) => {
                // Undo in order: staged files, then the directories made
                // for them (the stager's undo log).
                drop(generated);
                drop(archive);
                drop(stager);
                return Err(e.context("importing the images into containerd"));
            }
        },
        None => None,
    };
    *published = true;
    let (mut placed, changes) = stager.publish()?;
    if let Some(a) = archive {
        placed.push(a.publish()?);
    }
    let mut files: Vec<FileOutcome> = placed
        .into_iter()
        .map(|p| FileOutcome {
            host_path: p.placement.host_path,
            digest: p.digest,
            mode: p.placement.mode,
            written: p.written,
        })
        .collect();
    for s in generated.files {
        let written = s.staged.is_some();
        if let Some(f) = s.staged {
            f.commit()
                .with_context(|| format!("writing {}", s.file.host_path))?;
        }
        files.push(FileOutcome {
            host_path: s.file.host_path,
            digest: s.digest,
            mode: s.file.mode,
            written,
        });
    }
    let links = link(&plan.links, root)?;
    Ok(Published {
        files,
        links,
        images,
        changes,
        record: Some(generated.record),
        plan,
        preflight,
        previous,
        _lock: lock,
    })
}

/// Links each of `links` to the k3s binary where nothing is there yet;
/// returns the links that point at it (made now or before).
fn link(links: &[String], root: &HostRoot) -> anyhow::Result<Vec<RecordedLink>> {
    let mut out = Vec::new();
    for link in links {
        let path = root.path(link);
        if crate::record::link_is(&path, layout::K3S_BIN) {
            out.push(RecordedLink {
                path: link.clone(),
                target: layout::K3S_BIN.to_string(),
            });
        } else if std::fs::symlink_metadata(&path).is_err() {
            std::os::unix::fs::symlink(layout::K3S_BIN, &path)
                .with_context(|| format!("linking {link}"))?;
            out.push(RecordedLink {
                path: link.clone(),
                target: layout::K3S_BIN.to_string(),
            });
        }
    }
    Ok(out)
}
