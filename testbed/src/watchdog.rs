//! What the rig's daemons (the registry, containerd) share: each runs under
//! a watchdog child that kills it when the test process dies, logs to a file,
//! and is waited for on teardown without letting a stuck one hang a test.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// Waits up to `timeout` for a watchdog to finish its cleanup and exit, then
/// kills it: a test's teardown must not hang on a stuck one.
pub(crate) fn wait_or_kill(child: &mut Child, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Whether the watchdog (and so its daemon) is still running.
pub(crate) fn running(watchdog: Option<&mut Child>) -> bool {
    watchdog.is_some_and(|child| matches!(child.try_wait(), Ok(None)))
}

/// Fails, with the tail of its log, when the watchdog of daemon `what` has
/// exited while the rig waits for the daemon to answer.
pub(crate) fn still_starting(
    watchdog: Option<&mut Child>,
    what: &str,
    log: &Path,
) -> anyhow::Result<()> {
    if let Some(child) = watchdog {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "{what} exited ({status}) before answering; log tail:\n{}",
                log_tail(log, 30)
            );
        }
    }
    Ok(())
}

/// The last `lines` lines of a daemon's log file (empty when unreadable).
pub(crate) fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
