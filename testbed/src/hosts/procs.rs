//! Finding and stopping the processes of a test host, and removing what a
//! test process that died without its destructors left behind.
//!
//! A host's processes are the ones whose network namespace (`/proc/<pid>/
//! ns/net`) is the host's, plus their descendants (a container's processes
//! sit in a network namespace of their own under a shim). Stale namespaces
//! and dirs carry the pid of the test process that made them in their names;
//! they are removed once that process is gone, by a reaper shell each test
//! process starts, and by a sweep before a network is created.

use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where `ip netns add` keeps its namespaces.
pub(super) const NETNS_DIR: &str = "/run/netns";
/// Every namespace and dir of the rig starts with this, then the owning
/// test process's pid and a `.`.
pub(super) const NETNS_PREFIX: &str = "airgap-";
/// Host dirs: `airgap-host-<pid>-<name>-XXXXXX` in the system temp dir.
pub(super) const DIR_PREFIX: &str = "airgap-host-";

/// The inode of a named network namespace (what `/proc/<pid>/ns/net` names).
pub(super) fn netns_inode(name: &str) -> Result<u64> {
    let path = Path::new(NETNS_DIR).join(name);
    Ok(std::fs::metadata(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .ino())
}

/// Every pid in /proc.
fn all_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// `(state, ppid)` from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = text.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// Live processes in the network namespace with inode `ino`, and their
/// descendants wherever they are. Never this process.
pub fn processes_in(ino: u64) -> Vec<u32> {
    let me = std::process::id();
    let want = format!("net:[{ino}]");
    let pids = all_pids();
    let mut found: BTreeSet<u32> = pids
        .iter()
        .copied()
        .filter(|&pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|l| l.as_os_str() == want.as_str())
        })
        .collect();
    let parents: Vec<(u32, u32)> = pids
        .iter()
        .filter_map(|&pid| stat(pid).map(|(_, ppid)| (pid, ppid)))
        .collect();
    loop {
        let before = found.len();
        for (pid, ppid) in &parents {
            if found.contains(ppid) {
                found.insert(*pid);
            }
        }
        if found.len() == before {
            break;
        }
    }
    found.into_iter().filter(|&p| p != me && alive(p)).collect()
}

/// Sends `signal` (`TERM`, `KILL`) to `pid` with the real `kill`.
pub(super) fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// TERM to `pid`, KILL after `grace`; returns once it is gone (or 5 s more).
pub(super) fn stop(pid: u32, grace: Duration) {
    if !alive(pid) {
        return;
    }
    signal(pid, "TERM");
    if !wait_gone(&[pid], grace) {
        signal(pid, "KILL");
        wait_gone(&[pid], Duration::from_secs(5));
    }
}

fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|&p| !alive(p)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// KILLs every process of the namespace with inode `ino` (and their
/// descendants) until none is left; returns what could not be killed.
pub(super) fn kill_all_in(ino: u64) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = processes_in(ino);
        if pids.is_empty() || Instant::now() > deadline {
            return pids;
        }
        for &pid in &pids {
            signal(pid, "KILL");
        }
        wait_gone(&pids, Duration::from_secs(2));
    }
}

/// Stops the detached k3s of a host by the pid files in `pid_dir` (its
/// `/run/k3s-airgap`): TERM, KILL after 5 s. Only pids of the host's
/// namespace (a stale pid file may name another process by now).
pub(super) fn stop_pid_files(pid_dir: &Path, ino: u64) {
    let Ok(entries) = std::fs::read_dir(pid_dir) else {
        return;
    };
    let ours = processes_in(ino);
    for entry in entries.flatten() {
        let pid = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        if let Some(pid) = pid.filter(|p| ours.contains(p)) {
            stop(pid, Duration::from_secs(5));
        }
    }
}

/// The pid in a rig name `<prefix><pid>[.-]...`.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    let sep = rest[end..].chars().next()?;
    (sep == '.' || sep == '-').then(|| rest[..end].parse().ok())?
}

/// Removes the namespaces and host dirs of test processes that are gone.
pub(super) fn sweep_stale() {
    let dead = |pid: u32| !Path::new(&format!("/proc/{pid}")).exists();
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !owner_pid(&name, NETNS_PREFIX).is_some_and(dead) {
                continue;
            }
            if let Ok(ino) = netns_inode(&name) {
                kill_all_in(ino);
            }
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if owner_pid(&name, DIR_PREFIX).is_some_and(dead) {
                let path = entry.path();
                crate::containerd::unmount_under(&path);
                if crate::containerd::mounts_under(&path).is_empty() {
                    let _ = std::fs::remove_dir_all(&path);
                }
            }
        }
    }
}

/// Waits for this process to end (its end of the pipe closes), then kills
/// what is left in its namespaces, deletes them and removes its host dirs.
/// `$1` the test process's pid, `$2` the temp dir.
const REAPER: &str = r#"
while read -r _; do :; done
for ns in /run/netns/airgap-"$1".*; do
  [ -e "$ns" ] || continue
  for i in 1 2 3; do
    ip netns pids "${ns##*/}" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
    sleep 0.2
  done
  ip netns del "${ns##*/}" 2>/dev/null
done
for d in "$2"/airgap-host-"$1"-*; do
  [ -d "$d" ] || continue
  awk -v d="$d/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null; done
  rm -rf --one-file-system "$d"
done
"#;

/// Starts this test process's reaper once (see [`REAPER`]); it outlives a
/// SIGKILL of the test process and of its process group.
pub(super) fn ensure_reaper() -> Result<()> {
    static REAPER_STDIN: OnceLock<Mutex<Option<ChildStdin>>> = OnceLock::new();
    let slot = REAPER_STDIN.get_or_init(|| Mutex::new(None));
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_some() {
        return Ok(());
    }
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(REAPER)
        .arg("airgap-hosts-reaper")
        .arg(std::process::id().to_string())
        .arg(std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting the test hosts' reaper")?;
    let mut stdin = child.stdin.take().context("the reaper's stdin")?;
    // Nothing is ever written but this; the pipe's end of file is the signal.
    let _ = stdin.write_all(b"started\n");
    *slot = Some(stdin);
    // The reaper is not waited for: it must outlive this process.
    drop(child);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pids_from_names() {
        assert_eq!(owner_pid("airgap-123.4-server", NETNS_PREFIX), Some(123));
        assert_eq!(owner_pid("airgap-host-77-a-xYz", DIR_PREFIX), Some(77));
        assert_eq!(owner_pid("airgap-x-1", NETNS_PREFIX), None);
        assert_eq!(owner_pid("airgap-12", NETNS_PREFIX), None);
        assert_eq!(owner_pid("other-1.2", NETNS_PREFIX), None);
    }

    #[test]
    fn finds_only_live_processes() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
    }
}
