//! Test hosts: network namespaces that stand in for the machines of a site,
//! so k3s's installer can run "on" several hosts of one machine at once.
//!
//! A [`TestNetwork`] is a bridge in a namespace of its own (the "switch"; the
//! root namespace is never touched). Each [`TestHost`] is a namespace with
//! loopback up and a veth to that bridge carrying its own address (the seed
//! scenario's 192.168.40.160/24 and so on; they exist only in these
//! namespaces), and its own view of the paths the installer writes: every
//! command runs as `ip netns exec NS unshare --mount --propagation private sh
//! -c '<mounts>; exec "$@"' -- CMD ARGS`, where the mounts put the host's
//! backing dirs (under a temp dir per host) over [`PRIVATE_PATHS`]. `/etc`
//! and `/var/lib` become read-only overlays first, which both provides the
//! mount points the machine lacks (`/etc/rancher`, `/var/lib/rancher`) and
//! makes any write outside the private paths fail instead of landing on the
//! machine. Other paths (`/tmp`, the workspace) are the machine's.
//!
//! Teardown, on drop and so also when a test panics: the detached k3s by its
//! pid files, the host's containerd, then every process left in the host's
//! namespace (and their descendants) are killed; the veth and namespaces are
//! deleted and the dirs removed. A reaper shell per test process does the
//! same when the test process dies without running destructors, and stale
//! leftovers of dead test processes are swept before a network is created.
//! It is test code: it trusts what runs in the hosts.

mod containerd;
mod https;
mod procs;

pub use https::{HttpsResponse, Relay, REQUEST_TIMEOUT};
pub use procs::{alive as process_alive, processes_in};

use crate::containerd::{mounts_under, output_with_timeout, unmount_under};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The host paths each host has to itself: every path the installer writes
/// with `--init none` and no `--root` (layout.rs, service.rs: the binary and
/// its links, config, data, the sysctl and module files, the detached k3s's
/// log and pid file), the unit dirs, and `/run` (containerd's socket and
/// state, `/run/lock`).
pub const PRIVATE_PATHS: &[&str] = &[
    "/etc/rancher",
    "/etc/systemd/system",
    "/etc/sysctl.d",
    "/etc/modules-load.d",
    "/var/lib/rancher",
    "/usr/local/bin",
    "/var/log",
    "/run",
];

/// Mounted as read-only overlays (the machine's dir under an empty layer
/// holding the mount points) before the private paths are bound.
const OVERLAID: &[&str] = &["/etc", "/var/lib"];

/// Entries kept in the private paths that are not the install's: the rig's
/// own, and the installer's lock directory (its lock files stay, as lock
/// files in `/run` do, until the host restarts).
const RIG_ENTRIES: &[&str] = &["/run/lock", "/run/containerd", "/run/airgap"];

/// Where containerd listens inside a host (the installer's default).
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// How long [`TestHost::run`] lets a command take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// The prefix length of host addresses given without one.
pub const DEFAULT_PREFIX: u8 = 24;
/// `PATH` of commands run in a host (nothing else of the test's environment
/// goes in: no `K3S_*`, no `AIRGAP_*`).
pub const HOST_PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const BRIDGE: &str = "br0";

/// A process-wide sequence number for unique names.
fn next_seq() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// `airgap-<pid>.<seq>-<name>`: unique among concurrent tests and test
/// processes, and sweepable once the pid is gone.
fn netns_name(name: &str) -> String {
    format!(
        "{}{}.{}-{name}",
        procs::NETNS_PREFIX,
        std::process::id(),
        next_seq()
    )
}

/// Runs `ip ARGS`; an error with its stderr when it fails.
fn ip(args: &[&str]) -> Result<()> {
    let out = output_with_timeout(Command::new("ip").args(args), Duration::from_secs(30))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The bridge's namespace; deleted (with the bridge and any veth left on
/// it) when the network and all its hosts are gone.
struct Switch {
    netns: String,
    addresses: Mutex<BTreeSet<Ipv4Addr>>,
    next_port: AtomicU32,
}

impl Switch {
    fn create() -> Result<Switch> {
        procs::sweep_stale();
        procs::ensure_reaper()?;
        let switch = Switch {
            netns: netns_name("switch"),
            addresses: Mutex::default(),
            next_port: AtomicU32::new(0),
        };
        ip(&["netns", "add", &switch.netns])
            .context("creating the switch namespace (test hosts need root and iproute2)")?;
        ip(&["-n", &switch.netns, "link", "set", "lo", "up"])?;
        ip(&["-n", &switch.netns, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &switch.netns, "link", "set", BRIDGE, "up"])?;
        Ok(switch)
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        if let Ok(ino) = procs::netns_inode(&self.netns) {
            procs::kill_all_in(ino);
        }
        if let Err(e) = ip(&["netns", "del", &self.netns]) {
            eprintln!("test hosts: {e:#}");
        }
    }
}

/// A bridge that hosts share: one subnet, one broadcast domain, reachable
/// only from the hosts on it.
pub struct TestNetwork {
    switch: Arc<Switch>,
}

impl TestNetwork {
    /// A new, empty network.
    pub fn create() -> Result<TestNetwork> {
        Ok(TestNetwork {
            switch: Arc::new(Switch::create()?),
        })
    }

    /// A new host on this network: `name` (lowercase letters, digits and
    /// `-`; unique within a test) with `address` (`192.168.40.160` or with a
    /// prefix length, `/24` when absent).
    pub fn host(&self, name: &str, address: &str) -> Result<TestHost> {
        TestHost::on(self.switch.clone(), name, address)
    }

    /// The namespace holding the bridge.
    pub fn switch_netns(&self) -> &str {
        &self.switch.netns
    }
}

/// One test host. Everything it ran is stopped and everything it had is
/// removed on drop.
pub struct TestHost {
    name: String,
    address: Ipv4Addr,
    prefix: u8,
    netns: String,
    /// The namespace's inode once it exists (0 before).
    ino: u64,
    /// The veth's end on the bridge, once it exists.
    veth: Option<String>,
    switch: Arc<Switch>,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    script: String,
    containerd: Mutex<Option<Child>>,
}

fn parse_address(address: &str) -> Result<(Ipv4Addr, u8)> {
    let (addr, prefix) = match address.split_once('/') {
        Some((a, p)) => (a, p.parse().ok().filter(|p| *p <= 32)),
        None => (address, Some(DEFAULT_PREFIX)),
    };
    let prefix = prefix.ok_or_else(|| anyhow!("bad prefix length in {address}"))?;
    let addr = addr
        .parse()
        .with_context(|| format!("{address} is not an IPv4 address"))?;
    Ok((addr, prefix))
}

/// `/etc/rancher` -> `etc-rancher`: a private path's backing dir under `fs/`.
fn backing_name(host_path: &str) -> String {
    host_path.trim_matches('/').replace('/', "-")
}

/// Quotes one word for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl TestHost {
    /// A host on a network of its own.
    pub fn create(name: &str, address: &str) -> Result<TestHost> {
        Self::on(Arc::new(Switch::create()?), name, address)
    }

    fn on(switch: Arc<Switch>, name: &str, address: &str) -> Result<TestHost> {
        if name.is_empty()
            || name.len() > 24
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            bail!("test host name {name:?}: use 1 to 24 of a-z, 0-9 and -");
        }
        let (addr, prefix) = parse_address(address)?;
        {
            let mut taken = switch.addresses.lock().unwrap_or_else(|e| e.into_inner());
            if !taken.insert(addr) {
                bail!("{addr} is already a host on this network");
            }
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!(
                "{}{}-{name}-",
                procs::DIR_PREFIX,
                std::process::id()
            ))
            .tempdir()
            .context("creating a test host's dir");
        let dir = match dir {
            Ok(d) => d,
            Err(e) => {
                switch
                    .addresses
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&addr);
                return Err(e);
            }
        };
        let path = dir.path().to_path_buf();
        // From here on, drop undoes whatever was done.
        let mut host = TestHost {
            name: name.to_string(),
            address: addr,
            prefix,
            netns: netns_name(name),
            ino: 0,
            veth: None,
            switch,
            dir: Some(dir),
            script: String::new(),
            path,
            containerd: Mutex::new(None),
        };
        host.script = host.prepare_dirs()?;
        host.plug_in()?;
        // Fails early and clearly if the mounts cannot be made here.
        host.run_ok("true", std::iter::empty::<&str>())
            .with_context(|| format!("entering test host {name}"))?;
        Ok(host)
    }

    /// Creates the backing, mount point and scratch dirs; returns the
    /// mount script.
    fn prepare_dirs(&self) -> Result<String> {
        let p = self.path.display().to_string();
        if p.contains([':', ',', '\\', '\n']) {
            bail!("temp dir {p} has characters overlayfs options cannot carry");
        }
        let mut script = String::from("set -e\n");
        for parent in OVERLAID {
            let layer = self.path.join("mnt").join(parent.trim_start_matches('/'));
            std::fs::create_dir_all(&layer)?;
            for private in PRIVATE_PATHS {
                if let Some(rest) = private
                    .strip_prefix(parent)
                    .and_then(|r| r.strip_prefix('/'))
                {
                    std::fs::create_dir_all(layer.join(rest))?;
                }
            }
            script.push_str(&format!(
                "mount -t overlay airgap-host -o {} {parent}\n",
                sh_quote(&format!("ro,lowerdir={}:{parent}", layer.display()))
            ));
        }
        for private in PRIVATE_PATHS {
            let backing = self.backing(private);
            std::fs::create_dir_all(&backing)?;
            if !Path::new(private).is_dir() && !OVERLAID.iter().any(|o| under(private, o)) {
                bail!("{private} is missing on this machine: nothing to mount over");
            }
            script.push_str(&format!(
                "mount --bind {} {private}\n",
                sh_quote(&backing.display().to_string())
            ));
        }
        std::fs::create_dir_all(self.backing("/run").join("lock"))?;
        for d in ["scratch", "logs", "containerd"] {
            std::fs::create_dir_all(self.path.join(d))?;
        }
        script.push_str("exec \"$@\"\n");
        Ok(script)
    }

    /// Creates the namespace and wires it to the bridge with its address.
    fn plug_in(&mut self) -> Result<()> {
        ip(&["netns", "add", &self.netns])?;
        self.ino = procs::netns_inode(&self.netns)?;
        let sw = self.switch.netns.clone();
        let veth = format!("vh{}", self.switch.next_port.fetch_add(1, Ordering::SeqCst));
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &self.netns,
        ])?;
        self.veth = Some(veth.clone());
        ip(&["-n", &sw, "link", "set", &veth, "master", BRIDGE, "up"])?;
        let cidr = format!("{}/{}", self.address, self.prefix);
        ip(&["-n", &self.netns, "link", "set", "lo", "up"])?;
        ip(&["-n", &self.netns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &self.netns, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    fn backing(&self, private: &str) -> PathBuf {
        self.path.join("fs").join(backing_name(private))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The network namespace's name (for `ip netns exec` by hand).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The host's temp dir: `fs/` (the backing dirs), `mnt/` (the mount
    /// point layers), `containerd/`, `logs/`, `scratch/`.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// A dir of this host at the same path inside it and outside: files are
    /// carried in and out through it (a token file, say). Not a private path.
    pub fn scratch_dir(&self) -> PathBuf {
        self.path.join("scratch")
    }

    /// The file behind `host_path` as this host sees it: under a private
    /// path, its backing file (to read what the installer wrote); anywhere
    /// else, the machine's own path.
    pub fn path(&self, host_path: &str) -> PathBuf {
        assert!(
            host_path.starts_with('/'),
            "host path {host_path} is not absolute"
        );
        let private = PRIVATE_PATHS
            .iter()
            .filter(|p| under(host_path, p))
            .max_by_key(|p| p.len());
        match private {
            Some(p) => {
                let rest = host_path[p.len()..].trim_start_matches('/');
                let base = self.backing(p);
                if rest.is_empty() {
                    base
                } else {
                    base.join(rest)
                }
            }
            None => PathBuf::from(host_path),
        }
    }

    /// Every entry (file, dir, link) in the host's private paths, as host
    /// paths, sorted; without what the rig keeps there itself (`/run/lock`,
    /// containerd's `/run/containerd`) and the installer's locks
    /// (`/run/airgap`). Empty on a host nothing was
    /// installed on.
    pub fn private_entries(&self) -> Vec<String> {
        let mut out = Vec::new();
        for private in PRIVATE_PATHS {
            walk(&self.backing(private), private, &mut out);
        }
        out.retain(|e| !RIG_ENTRIES.iter().any(|r| under(e, r)));
        out.sort();
        out
    }

    /// `program` run in this host (see the module header), with a clean
    /// environment: only `PATH` and `HOME`. Add arguments, stdio and env,
    /// then run or spawn it.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .args(["unshare", "--mount", "--propagation", "private"])
            .args(["/bin/sh", "-c", &self.script])
            .arg(format!("airgap-host-{}", self.name))
            .arg(program)
            .env_clear()
            .env("PATH", HOST_PATH_ENV)
            .env("HOME", "/root");
        cmd
    }

    /// Runs `program args` in this host with stdin closed, collecting its
    /// output; fails (after killing it) past [`RUN_TIMEOUT`]. A failing
    /// program is an `Ok` with its status.
    pub fn run<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_with_timeout(program, args, RUN_TIMEOUT)
    }

    /// [`TestHost::run`] with a timeout of its own.
    pub fn run_with_timeout<I, S>(
        &self,
        program: impl AsRef<OsStr>,
        args: I,
        timeout: Duration,
    ) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = program.as_ref();
        let mut cmd = self.command(program);
        cmd.args(args);
        output_with_timeout(&mut cmd, timeout)
            .with_context(|| format!("running {} in host {}", program.display(), self.name))
    }

    /// Runs a program that must succeed; returns its stdout, or an error
    /// with its status and the tail of its stderr.
    pub fn run_ok<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = program.as_ref();
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.run(program, &args)?;
        if !out.status.success() {
            bail!(
                "{} {} failed in host {} ({}):\n{}",
                program.display(),
                args.iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                self.name,
                out.status,
                tail(&String::from_utf8_lossy(&out.stderr), 20)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a long-running `program args` in this host, stdin closed,
    /// stdout and stderr appended to `logs/<program>-<n>.log` in the host's
    /// dir. Teardown kills it; wait for the child to reap it sooner.
    pub fn spawn<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = program.as_ref();
        let base = Path::new(program)
            .file_name()
            .unwrap_or(program)
            .to_string_lossy()
            .into_owned();
        let log = self
            .path
            .join("logs")
            .join(format!("{base}-{}.log", next_seq()));
        self.spawn_logged(program, args, &log)
    }

    fn spawn_logged<I, S>(&self, program: &OsStr, args: I, log: &Path) -> Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {} in host {}", program.display(), self.name))
    }

    /// Live processes of this host (its namespace and their descendants):
    /// pid and command line.
    pub fn processes(&self) -> Vec<(u32, String)> {
        procs::processes_in(self.ino)
            .into_iter()
            .map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                (pid, cmdline.trim().to_string())
            })
            .collect()
    }

    fn teardown(&mut self) {
        if self.ino != 0 {
            procs::stop_pid_files(&self.path("/run/k3s-airgap"), self.ino);
        }
        self.stop_containerd();
        if self.ino != 0 {
            let left = procs::kill_all_in(self.ino);
            if !left.is_empty() {
                eprintln!("test host {}: processes {left:?} would not die", self.name);
            }
        }
        if let Some(veth) = self.veth.take() {
            let _ = ip(&["-n", &self.switch.netns, "link", "del", &veth]);
        }
        if self.ino != 0 {
            if let Err(e) = ip(&["netns", "del", &self.netns]) {
                eprintln!("test host {}: {e:#}", self.name);
            }
            self.ino = 0;
        }
        self.switch
            .addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.address);
        if let Some(dir) = self.dir.take() {
            unmount_under(&self.path);
            if mounts_under(&self.path).is_empty() {
                if let Err(e) = dir.close() {
                    eprintln!("test host {}: removing its dir: {e}", self.name);
                }
            } else {
                eprintln!(
                    "test host {}: {} still has mounts; left in place",
                    self.name,
                    self.path.display()
                );
                let _ = dir.keep();
            }
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Whether `path` is `prefix` or below it (component-wise).
fn under(path: &str, prefix: &str) -> bool {
    Path::new(path).starts_with(prefix)
}

fn walk(dir: &Path, host_dir: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let host = format!(
            "{}/{}",
            host_dir.trim_end_matches('/'),
            entry.file_name().to_string_lossy()
        );
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&entry.path(), &host, out);
        }
        out.push(host);
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests;
