//! `airgap uninstall`: stop the service and remove exactly what the install
//! record says this installer wrote: files still holding the bytes it wrote,
//! its links, the directories it created once they are empty, and, with
//! `--purge-images`, its image records. Anything else is left alone. The
//! record may have been edited: every path in it must resolve inside the
//! root ([`HostRoot::resolve`]) or nothing is done, and the pid in the pid
//! file is signalled only if it is the root's k3s.

use crate::import::{ImportOptions, Importer};
use crate::layout;
use crate::record::{link_is, InstallRecord};
use crate::root::{file_matches, HostRoot};
use crate::run::Runner;
use crate::service::{self, Init};
use anyhow::Context as _;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct UninstallOptions {
    pub root: PathBuf,
    pub purge_images: bool,
    /// Also delete k3s's own state (`/var/lib/rancher/k3s`: its CA, token,
    /// datastore), as k3s-uninstall.sh does.
    pub purge_data: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct UninstallReport {
    pub removed: Vec<String>,
    /// Files the install wrote that were changed since: kept.
    pub kept_modified: Vec<String>,
    pub images_removed: Vec<String>,
    pub service: String,
}

impl std::fmt::Display for UninstallReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.removed {
            writeln!(f, "removed {r}")?;
        }
        for k in &self.kept_modified {
            writeln!(f, "kept {k} (changed since it was installed)")?;
        }
        for i in &self.images_removed {
            writeln!(f, "removed image {i}")?;
        }
        write!(f, "k3s: {}", self.service)
    }
}

/// Removes what the install under `opts.root` recorded; containerd is
/// asked over `handle`'s runtime.
pub fn uninstall(
    opts: &UninstallOptions,
    runner: &dyn Runner,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<UninstallReport> {
    let root = HostRoot::new(&opts.root)?;
    let _lock = crate::install_lock::InstallLock::acquire(&root)?;
    let Some(record) = InstallRecord::load(&root)? else {
        anyhow::bail!(
            "no airgap install on {} ({} is missing): nothing to remove",
            root.root().display(),
            root.path(layout::INSTALL_RECORD).display()
        );
    };
    // Every path first, before anything is stopped or removed.
    let record_path = root.path(layout::INSTALL_RECORD);
    let check = |p: &str| {
        root.resolve(p).with_context(|| {
            format!(
                "{}: refusing the entry {p:?}, which is not a path inside the root",
                record_path.display()
            )
        })
    };
    let links = record
        .links
        .iter()
        .map(|l| Ok((check(&l.path)?, l)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let files = record
        .files
        .iter()
        .map(|f| Ok((check(&f.path)?, f)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut dirs = record
        .dirs
        .iter()
        .map(|d| Ok((check(d)?, d.clone())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pid_file = record.pid_file.as_deref().map(check).transpose()?;
    let log_file = record.log_file.as_deref().map(check).transpose()?;
    let data = opts
        .purge_data
        .then(|| check(layout::DATA_DIR))
        .transpose()?;
    let mut report = UninstallReport::default();

    // Stop k3s first, so nothing it runs holds the files.
    match record.init {
        Init::None => {
            if let Some(pid_file) = &pid_file {
                service::stop_detached(runner, pid_file, &root)?;
            }
            report.service = "stopped".into();
        }
        init if root.is_host() => {
            service::stop_and_disable(runner, record.role, init)?;
            report.service = format!("{} stopped and disabled", record.role.service_name());
        }
        _ => report.service = "not stopped (--root: the service is not this host's)".into(),
    }

    if opts.purge_images && !record.images.is_empty() {
        if let Some(socket) = &record.containerd_socket {
            let importer = handle.block_on(Importer::connect(ImportOptions::new(socket)))?;
            for image in &record.images {
                handle
                    .block_on(importer.delete_image(&image.name))
                    .with_context(|| format!("removing image {}", image.name))?;
                report.images_removed.push(image.name.clone());
            }
        }
    }

    for (path, link) in links {
        if link_is(&path, &link.target) {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", link.path))?;
            report.removed.push(link.path.clone());
        }
    }
    for (path, file) in files {
        if !path.exists() {
            continue;
        }
        if file_matches(&path, &file.sha256, file.mode) {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", file.path))?;
            report.removed.push(file.path.clone());
        } else {
            report.kept_modified.push(file.path.clone());
        }
    }
    std::fs::remove_file(&record_path)
        .with_context(|| format!("removing {}", record_path.display()))?;
    report.removed.push(layout::INSTALL_RECORD.to_string());
    // The detached k3s's log (its pid file went with the stop).
    if let (Some(path), Some(log)) = (&log_file, &record.log_file) {
        if std::fs::remove_file(path).is_ok() {
            report.removed.push(log.clone());
        }
    }
    if let Some(data) = data.filter(|d| d.exists()) {
        std::fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
        report
            .removed
            .push(format!("{}/ (k3s's state)", layout::DATA_DIR));
    }
    // Directories the install created, deepest first, when empty.
    dirs.sort_by_key(|(_, d)| std::cmp::Reverse(d.len()));
    for (path, d) in dirs {
        if std::fs::remove_dir(&path).is_ok() {
            report.removed.push(d);
        }
    }
    Ok(report)
}
