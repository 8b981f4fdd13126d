//! `airgap status`: what the install record says this node is (role, k3s
//! version, bundle), whether k3s runs, and whether every image the install
//! put into containerd is still there (missing ones named).

use crate::import::{ImportOptions, Importer};
use crate::layout::{self, Role};
use crate::record::InstallRecord;
use crate::root::HostRoot;
use crate::service::{self, Init};
use airgap_bundle::digest::Digest;
use serde::Serialize;
use std::fmt;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub root: String,
    pub role: Role,
    pub k3s_version: String,
    pub bundle: Digest,
    pub init: Init,
    pub service: String,
    pub images_expected: usize,
    pub images_present: usize,
    pub images_missing: Vec<String>,
    /// A server's join URL (port from its k3s flags), with the token's path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "role      {}", self.role.as_str())?;
        writeln!(f, "k3s       {}", self.k3s_version)?;
        writeln!(f, "bundle    {}", self.bundle)?;
        writeln!(f, "service   {} ({})", self.service, self.init.as_str())?;
        write!(
            f,
            "images    {}/{} present",
            self.images_present, self.images_expected
        )?;
        for m in &self.images_missing {
            write!(f, "\n  missing {m}")?;
        }
        if let Some(j) = &self.join {
            write!(f, "\njoin      {j}")?;
        }
        Ok(())
    }
}

fn service_state(root: &HostRoot, record: &InstallRecord) -> String {
    match (record.init, &record.pid_file) {
        (Init::None, Some(pid_file)) => {
            match std::fs::read_to_string(root.path(pid_file))
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
            {
                Some(pid) if service::process_alive(pid) => format!("running (pid {pid})"),
                _ => "not running".to_string(),
            }
        }
        (Init::Systemd, _) if root.is_host() => {
            let out = std::process::Command::new("systemctl")
                .args([
                    "is-active",
                    &format!("{}.service", record.role.service_name()),
                ])
                .output();
            match out {
                Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
                Err(e) => format!("unknown ({e})"),
            }
        }
        _ => "unknown (not this host's init system)".to_string(),
    }
}

/// The address agents should use: the host's first global IPv4 address.
fn host_address() -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    Some(cidr.split('/').next()?.to_string())
}

/// The install under `root`; containerd is asked over `handle`'s runtime.
pub fn status(root: &Path, handle: &tokio::runtime::Handle) -> anyhow::Result<Status> {
    let root = HostRoot::new(root)?;
    let Some(record) = InstallRecord::load(&root)? else {
        anyhow::bail!(
            "no airgap install on {} ({} is missing)",
            root.root().display(),
            root.path(layout::INSTALL_RECORD).display()
        );
    };
    let mut missing = Vec::new();
    if let Some(socket) = &record.containerd_socket {
        let mut opts = ImportOptions::new(socket);
        opts.namespace = record.namespace.clone();
        let importer = handle.block_on(Importer::connect(opts))?;
        let present = handle.block_on(importer.images())?;
        for image in &record.images {
            if !present
                .iter()
                .any(|p| p.name == image.name && p.target == image.digest)
            {
                missing.push(image.name.clone());
            }
        }
    }
    let join = (record.role == Role::Server).then(|| {
        let port = record.https_port;
        format!(
            "https://{}:{port} with the token in {}",
            host_address().unwrap_or_else(|| "<this server's address>".into()),
            layout::NODE_TOKEN
        )
    });
    Ok(Status {
        root: root.root().display().to_string(),
        role: record.role,
        k3s_version: record.k3s_version.clone(),
        bundle: record.bundle,
        init: record.init,
        service: service_state(&root, &record),
        images_expected: record.images.len(),
        images_present: record.images.len() - missing.len(),
        images_missing: missing,
        join,
    })
}
