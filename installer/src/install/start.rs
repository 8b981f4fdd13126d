//! Starting k3s and waiting for it: through the init system (systemd or
//! openrc), or detached (`--init none`: containers, test hosts), where a
//! k3s already running from an unchanged install is left alone. For the
//! embedded runtime, the images k3s imported at start are then confirmed
//! over its own containerd socket.

use super::plan::{Plan, PlannedImage};
use super::InstallOptions;
use crate::import::{ImportOptions, Importer};
use crate::layout;
use crate::root::HostRoot;
use crate::run::Runner;
use crate::service::{self, Detached, Init};
use crate::wait;
use anyhow::bail;
use std::path::Path;
use std::time::Duration;
use tokio::runtime::Handle;

/// What starting did.
pub(super) struct Started {
    /// The service's state, in words.
    pub service: String,
    /// A detached k3s was (re)started.
    pub restarted: bool,
}

/// Starts k3s as the plan says; `changed` tells whether this run changed
/// anything (a running detached k3s is then restarted).
pub(super) fn start(
    plan: &Plan,
    opts: &InstallOptions,
    token: Option<&str>,
    root: &HostRoot,
    runner: &dyn Runner,
    handle: &Handle,
    changed: bool,
) -> anyhow::Result<Started> {
    if !plan.start {
        return Ok(Started {
            service: "not started (--no-start)".into(),
            restarted: false,
        });
    }
    let Some(files) = &plan.detached else {
        service::enable_and_start(runner, plan.role, plan.init)?;
        return Ok(Started {
            service: format!(
                "{} started with {}",
                plan.role.service_name(),
                plan.init.as_str()
            ),
            restarted: false,
        });
    };
    debug_assert_eq!(plan.init, Init::None);
    let pid_file = root.path(&files.pid_file);
    let running = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .filter(|pid| service::process_alive(*pid) && service::is_k3s_of(*pid, root));
    if let (Some(pid), false) = (running, changed) {
        return Ok(Started {
            service: format!("already running (pid {pid})"),
            restarted: false,
        });
    }
    if running.is_some() {
        service::stop_detached(runner, &pid_file, root)?;
    }
    let mut args = plan.exec_args.clone();
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
    if let Some(t) = token {
        env.push(("K3S_TOKEN".to_string(), t.to_string()));
    }
    let detached = Detached {
        pid_file,
        log_file: root.path(&files.log_file),
    };
    let pid = service::start_detached(&root.path(layout::K3S_BIN), &args, &env, &detached)?;
    wait::ready(
        root,
        plan.role,
        pid,
        plan.https_port,
        opts.wait,
        &detached.log_file,
        handle,
    )?;
    Ok(Started {
        service: format!("running (pid {pid}, log {})", detached.log_file.display()),
        restarted: true,
    })
}

/// Checks, over k3s's own containerd socket, that every image of the bundle
/// is there. The socket comes up some time after k3s: without it, say so.
pub(super) fn confirm_embedded(
    handle: &Handle,
    socket: &Path,
    images: &[PlannedImage],
) -> anyhow::Result<String> {
    if !socket.exists() {
        return Ok(format!(
            "not confirmed: k3s's containerd ({}) is not up yet; `airgap status` checks later",
            socket.display()
        ));
    }
    let mut iopts = ImportOptions::new(socket);
    iopts.timeout = Duration::from_secs(5);
    let present = handle.block_on(async {
        let importer = Importer::connect(iopts).await?;
        importer.images().await
    })?;
    let missing: Vec<String> = images
        .iter()
        .map(|i| i.reference.to_string())
        .filter(|r| !present.iter().any(|p| &p.name == r))
        .collect();
    if missing.is_empty() {
        Ok(format!(
            "all {} images present in k3s's containerd",
            images.len()
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
