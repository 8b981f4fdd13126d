//! Staging what the install writes from its own content (config, units,
//! env files) and the space for its record, after the bundle verified and
//! before anything is published: a file system that fills up fails here,
//! while the run can still be undone.

use super::plan::{GeneratedFile, Plan};
use crate::layout;
use crate::root::{reserve_file, stage_file, Changes, HostRoot};
use airgap_bundle::atomic::AtomicFile;
use airgap_bundle::digest::Digest;
use anyhow::Context as _;

/// A generated file, staged beside its destination unless already in place.
pub(super) struct StagedFile {
    pub file: GeneratedFile,
    pub digest: Digest,
    /// `None` when the destination already holds exactly this.
    pub staged: Option<AtomicFile>,
}

/// Everything staged for publishing, and the record's reserved space.
pub(super) struct Generated {
    pub files: Vec<StagedFile>,
    pub record: AtomicFile,
}

/// Stages the plan's generated files and reserves the record.
pub(super) fn stage(
    plan: &Plan,
    root: &HostRoot,
    changes: &mut Changes,
) -> anyhow::Result<Generated> {
    let mut files = Vec::new();
    for g in &plan.generated {
        let staged = stage_file(
            changes,
            &root.path(&g.host_path),
            g.content.as_bytes(),
            g.mode,
        )
        .with_context(|| format!("writing {}", g.host_path))?;
        files.push(StagedFile {
            file: g.clone(),
            digest: Digest::of(g.content.as_bytes()),
            staged,
        });
    }
    let record_path = root.path(layout::INSTALL_RECORD);
    changes.create_dir_all(record_path.parent().expect("record has a parent"))?;
    // The detached k3s's pid and log directories are this install's too.
    if plan.start {
        if let Some(d) = &plan.detached {
            for f in [&d.pid_file, &d.log_file] {
                if let Some(dir) = root.path(f).parent() {
                    changes.create_dir_all(dir)?;
                }
            }
        }
    }
    let record = reserve_file(&record_path, plan.record_reserve, 0o600)
        .with_context(|| format!("writing {}", layout::INSTALL_RECORD))?;
    Ok(Generated { files, record })
}
