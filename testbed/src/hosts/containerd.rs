//! The containerd of a test host: Debian's `/usr/bin/containerd` started
//! inside the host, so its socket is the installer's default
//! (`/run/containerd/containerd.sock` in the host's private `/run`), with its
//! root and config in the host's dir and the CRI plugin off; driven with the
//! real `ctr` run inside the host. Like [`crate::containerd`], but at the
//! paths a real node uses.

use super::{procs, tail, TestHost, CONTAINERD_SOCKET};
use crate::containerd::{CONTAINERD_PROGRAM, CTR_PROGRAM, CTR_TIMEOUT};
use anyhow::{bail, Result};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

/// How long [`TestHost::start_containerd`] waits for `ctr version`.
const CONTAINERD_READY: Duration = Duration::from_secs(30);

impl TestHost {
    /// Starts Debian's containerd in this host: socket and state in the
    /// host's `/run/containerd` (the installer's default socket), root and
    /// config in `containerd/` of the host's dir, the CRI plugin off. Waits
    /// until `ctr version` answers. Stopped by teardown.
    pub fn start_containerd(&self) -> Result<()> {
        let mut slot = self.containerd.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            bail!("containerd already runs in host {}", self.name);
        }
        let config = self.path.join("containerd/config.toml");
        std::fs::write(&config, self.containerd_config())?;
        let mut child = self.spawn_logged(
            OsStr::new(CONTAINERD_PROGRAM),
            [OsStr::new("--config"), config.as_os_str()],
            &self.containerd_log(),
        )?;
        let deadline = Instant::now() + CONTAINERD_READY;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "containerd exited ({status}) in host {} before answering; log tail:\n{}",
                    self.name,
                    self.containerd_log_tail(30)
                );
            }
            if self.path(CONTAINERD_SOCKET).exists() {
                let out = self.ctr_with_timeout(&["version"], Duration::from_secs(5));
                if out.is_ok_and(|o| o.status.success()) {
                    break;
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "containerd in host {} did not answer `ctr version` within {CONTAINERD_READY:?}; log tail:\n{}",
                    self.name,
                    self.containerd_log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        *slot = Some(child);
        Ok(())
    }

    fn containerd_config(&self) -> String {
        let d = self.path.join("containerd");
        let q = |p: PathBuf| format!("{:?}", p.display().to_string());
        format!(
            "version = 2\n\
             root = {root}\n\
             state = \"/run/containerd\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             \n\
             [grpc]\n  address = \"{CONTAINERD_SOCKET}\"\n\
             \n\
             [ttrpc]\n  address = \"{CONTAINERD_SOCKET}.ttrpc\"\n\
             \n\
             [plugins]\n\
             \x20 [plugins.\"io.containerd.internal.v1.opt\"]\n    path = {opt}\n\
             \x20 [plugins.\"io.containerd.service.v1.diff-service\"]\n    default = [\"walking\"]\n",
            root = q(d.join("root")),
            opt = q(d.join("opt")),
        )
    }

    /// containerd's log file.
    pub fn containerd_log(&self) -> PathBuf {
        self.path.join("containerd/containerd.log")
    }

    /// The last `lines` lines of containerd's log.
    pub fn containerd_log_tail(&self, lines: usize) -> String {
        tail(
            &std::fs::read_to_string(self.containerd_log()).unwrap_or_default(),
            lines,
        )
    }

    /// Runs the real `ctr --address /run/containerd/containerd.sock ARGS`
    /// in this host (`/usr/bin/ctr`: the installer links a `ctr` into the
    /// host's `/usr/local/bin` that is k3s's). A failing `ctr` is an `Ok`.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        self.ctr_with_timeout(args, CTR_TIMEOUT)
    }

    fn ctr_with_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut all = vec!["--address", CONTAINERD_SOCKET];
        all.extend_from_slice(args);
        self.run_with_timeout(CTR_PROGRAM, &all, timeout)
    }

    /// [`TestHost::ctr`] that must succeed; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args)?;
        if !out.status.success() {
            bail!(
                "ctr {} failed in host {} ({}):\n{}",
                args.join(" "),
                self.name,
                out.status,
                tail(&String::from_utf8_lossy(&out.stderr), 20)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The image names in containerd's `k8s.io` namespace, sorted.
    pub fn images(&self) -> Result<Vec<String>> {
        let out = self.ctr_ok(&["-n", "k8s.io", "images", "ls", "-q"])?;
        let mut names: Vec<String> = out.lines().map(str::trim).map(String::from).collect();
        names.retain(|n| !n.is_empty());
        names.sort();
        Ok(names)
    }

    /// Stops this host's containerd (TERM, KILL after 10 s). Idempotent.
    pub fn stop_containerd(&self) {
        let child = self
            .containerd
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut child) = child {
            procs::stop(child.id(), Duration::from_secs(10));
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
