//! Waiting for k3s to come up after a start, with a deadline: a server is
//! ready when its join token file exists and `https://127.0.0.1:<port>/ping`
//! answers `pong`; an agent when its process stays up. A k3s that exits while
//! being waited for fails the wait at once with its log's last lines.

use crate::layout::{Role, NODE_TOKEN};
use crate::root::HostRoot;
use crate::service::process_alive;
use anyhow::bail;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// How long an agent must stay up to count as started.
const AGENT_SETTLE: Duration = Duration::from_secs(2);

fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One local liveness probe; certificate checks are off because this only
/// asks the local k3s whether it answers, and sends nothing secret.
fn ping(port: u16, handle: &Handle) -> bool {
    handle.block_on(async {
        let Ok(client) = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
        else {
            return false;
        };
        match client
            .get(format!("https://127.0.0.1:{port}/ping"))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => r.text().await.is_ok_and(|t| t.trim() == "pong"),
            _ => false,
        }
    })
}

/// Waits until k3s (process `pid`) is ready or `timeout` passes.
pub fn ready(
    root: &HostRoot,
    role: Role,
    pid: u32,
    port: u16,
    timeout: Duration,
    log: &Path,
    handle: &Handle,
) -> anyhow::Result<()> {
    // reqwest is built without a default crypto provider: use ring's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let start = Instant::now();
    let token = root.path(NODE_TOKEN);
    loop {
        if !process_alive(pid) {
            bail!(
                "k3s (pid {pid}) exited while starting; last lines of {}:\n{}",
                log.display(),
                log_tail(log, 20)
            );
        }
        let elapsed = start.elapsed();
        let is_ready = match role {
            Role::Server => token.exists() && ping(port, handle),
            Role::Agent => elapsed >= AGENT_SETTLE,
        };
        if is_ready {
            return Ok(());
        }
        if elapsed >= timeout {
            bail!(
                "k3s (pid {pid}) was not ready after {}s ({}); last lines of {}:\n{}",
                timeout.as_secs(),
                match role {
                    Role::Server => format!(
                        "waiting for {} and https://127.0.0.1:{port}/ping",
                        token.display()
                    ),
                    Role::Agent => "waiting for the agent to stay up".to_string(),
                },
                log.display(),
                log_tail(log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
