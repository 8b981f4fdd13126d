//! Checks before any write, from the seed's checklist: kernel, memory, disk
//! for what the bundle will write, memory cgroup, br_netfilter, swap,
//! firewalld, SELinux, port 6443, an existing k3s, and the host's arch in the
//! bundle. Each check reports what it found, what is needed and a verdict; a
//! failure names the fix. Reads only `/proc`, `/sys` and the root's files.
//!
//! The disk check sums what the install will write ([`SpaceNeed`], predicted
//! from `bundle.json`) per file system and compares it with what is free
//! there; [`shortfalls`] is the same sum, for explaining a file system that
//! filled up during an install all the same.

use crate::layout::{Role, K3S_BIN};
use crate::root::HostRoot;
use airgap_bundle::space::{self, human};
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// A file system block: every file takes whole ones.
pub const BLOCK: u64 = 4096;

/// Bytes an install will write under one path.
#[derive(Debug, Clone)]
pub struct SpaceNeed {
    /// Where (under the root); need not exist yet.
    pub path: PathBuf,
    /// Bytes, in whole blocks.
    pub bytes: u64,
    /// What, for messages: `the k3s binary`.
    pub what: String,
}

impl SpaceNeed {
    /// `files` of these sizes, each rounded up to whole blocks.
    pub fn files(path: PathBuf, sizes: &[u64], what: impl Into<String>) -> SpaceNeed {
        SpaceNeed {
            path,
            bytes: sizes.iter().map(|s| s.div_ceil(BLOCK).max(1) * BLOCK).sum(),
            what: what.into(),
        }
    }
}

/// One file system without room for what the install writes on it.
#[derive(Debug, Clone)]
pub struct Shortfall {
    /// The file system's mount point (the topmost directory on it above the
    /// first path that needs space).
    pub mount: PathBuf,
    pub needed: u64,
    pub free: u64,
    pub what: Vec<String>,
}

impl Shortfall {
    pub fn missing(&self) -> u64 {
        self.needed.saturating_sub(self.free)
    }
}

/// The topmost directory on the same file system as `path` (its nearest
/// existing ancestor): where the user looks for the space.
fn mount_point(path: &Path) -> PathBuf {
    let Some(mut p) = space::existing_ancestor(path) else {
        return path.to_path_buf();
    };
    let dev = space::device(p);
    while let Some(parent) = p.parent() {
        if space::device(parent) != dev {
            break;
        }
        p = parent;
    }
    p.to_path_buf()
}

/// The needs summed per file system, each with what is free there now;
/// `(all, short)`: every file system, and those without room.
pub fn shortfalls(needs: &[SpaceNeed]) -> (Vec<Shortfall>, Vec<Shortfall>) {
    let mut all: Vec<(Option<u64>, Shortfall)> = Vec::new();
    for need in needs.iter().filter(|n| n.bytes > 0) {
        let dev = space::device(&need.path);
        match all.iter_mut().find(|(d, _)| d.is_some() && *d == dev) {
            Some((_, s)) => {
                s.needed += need.bytes;
                if !s.what.contains(&need.what) {
                    s.what.push(need.what.clone());
                }
            }
            None => all.push((
                dev,
                Shortfall {
                    mount: mount_point(&need.path),
                    needed: need.bytes,
                    free: space::free_bytes(&need.path).unwrap_or(u64::MAX),
                    what: vec![need.what.clone()],
                },
            )),
        }
    }
    let all: Vec<Shortfall> = all.into_iter().map(|(_, s)| s).collect();
    let short = all.iter().filter(|s| s.missing() > 0).cloned().collect();
    (all, short)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub found: String,
    pub needed: String,
    pub verdict: Verdict,
    /// What to do about a warning or failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Every check's name, for `--skip-preflight`.
pub const CHECKS: &[&str] = &[
    "kernel",
    "memory",
    "disk",
    "cgroups",
    "br_netfilter",
    "swap",
    "firewalld",
    "selinux",
    "port",
    "existing",
    "arch",
];

/// What the checks need to know.
pub struct PreflightInput<'a> {
    pub root: &'a HostRoot,
    pub role: Role,
    /// The k3s architecture name of this host.
    pub host_arch: &'a str,
    pub bundle_arches: &'a [String],
    /// What the install will write, and where.
    pub space: &'a [SpaceNeed],
    pub https_port: u16,
    /// Checks to skip (`all` skips every one).
    pub skip: &'a [String],
    /// k3s is already installed by a previous airgap run of this bundle.
    pub reinstall: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failed(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<13} {:<28} {:<22} verdict",
            "check", "found", "needed"
        )?;
        for c in &self.checks {
            let verdict = match c.verdict {
                Verdict::Pass => "ok",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
                Verdict::Skipped => "skipped",
            };
            writeln!(
                f,
                "{:<13} {:<28} {:<22} {verdict}",
                c.name, c.found, c.needed
            )?;
            if let Some(fix) = &c.fix {
                if c.verdict != Verdict::Pass {
                    writeln!(f, "{:<13} -> {fix}", "")?;
                }
            }
        }
        Ok(())
    }
}

fn check(
    name: &'static str,
    found: impl Into<String>,
    needed: impl Into<String>,
    verdict: Verdict,
    fix: Option<&str>,
) -> Check {
    Check {
        name,
        found: found.into(),
        needed: needed.into(),
        verdict,
        fix: fix.map(str::to_string),
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn kernel() -> Check {
    let release = read("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let ok = version >= (3, 10);
    check(
        "kernel",
        release,
        ">= 3.10",
        if ok { Verdict::Pass } else { Verdict::Fail },
        Some("upgrade the kernel to 3.10 or later"),
    )
}

fn meminfo(key: &str) -> Option<u64> {
    read("/proc/meminfo")?.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024)
    })
}

fn memory(role: Role) -> Check {
    let total = meminfo("MemTotal").unwrap_or(0);
    let (min, rec) = match role {
        Role::Server => (512 << 20, 1 << 30),
        Role::Agent => (256 << 20, 512 << 20),
    };
    let verdict = if total < min {
        Verdict::Fail
    } else if total < rec {
        Verdict::Warn
    } else {
        Verdict::Pass
    };
    check(
        "memory",
        format!("{} MiB", total >> 20),
        format!(">= {} MiB (rec. {} MiB)", min >> 20, rec >> 20),
        verdict,
        Some("give the node more memory"),
    )
}

fn disk(needs: &[SpaceNeed]) -> Check {
    let (all, short) = shortfalls(needs);
    let needed: u64 = all.iter().map(|s| s.needed).sum();
    let Some(first) = short.first().or(all.first()) else {
        return check("disk", "nothing to write", "-", Verdict::Pass, None);
    };
    if first.free == u64::MAX {
        return check(
            "disk",
            "unknown",
            format!(">= {}", human(needed)),
            Verdict::Warn,
            Some(&format!(
                "could not measure the free space on {}",
                first.mount.display()
            )),
        );
    }
    let fix = short
        .iter()
        .map(|s| {
            format!(
                "no space left on {}, needed {} more ({} free; {} need {}): free that \
                 much there, or install onto a larger file system",
                s.mount.display(),
                human(s.missing()),
                human(s.free),
                s.what.join(", "),
                human(s.needed)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    check(
        "disk",
        format!("{} free on {}", human(first.free), first.mount.display()),
        format!(">= {}", human(first.needed)),
        if short.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        (!short.is_empty()).then_some(fix.as_str()),
    )
}

fn cgroups() -> Check {
    let v2 = read("/sys/fs/cgroup/cgroup.controllers");
    let (found, ok) = match v2 {
        Some(c) => (
            format!("v2: {}", c.trim()),
            c.split_whitespace().any(|x| x == "memory"),
        ),
        None => {
            let v1 = read("/proc/cgroups").unwrap_or_default();
            let mem = v1.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&"memory") && f.get(3) == Some(&"1")
            });
            ("v1".to_string(), mem)
        }
    };
    check("cgroups", found, "memory controller", if ok { Verdict::Pass } else { Verdict::Fail }, Some("enable the memory cgroup (cgroup_memory=1 cgroup_enable=memory on the kernel command line)"))
}

fn br_netfilter() -> Check {
    let loaded = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists();
    let release = read("/proc/sys/kernel/osrelease").unwrap_or_default();
    let module = format!(
        "/lib/modules/{}/kernel/net/bridge/br_netfilter.ko",
        release.trim()
    );
    let available = loaded
        || Path::new(&module).exists()
        || Path::new(&format!("{module}.xz")).exists()
        || Path::new(&format!("{module}.zst")).exists()
        || read(&format!("/lib/modules/{}/modules.builtin", release.trim()))
            .is_some_and(|b| b.contains("br_netfilter"));
    let (found, verdict) = if loaded {
        ("loaded", Verdict::Pass)
    } else if available {
        ("available", Verdict::Pass)
    } else {
        ("not found", Verdict::Warn)
    };
    check("br_netfilter", found, "loadable", verdict, Some("install the kernel's br_netfilter module; the sysctl.d and modules-load.d files load it at boot"))
}

fn swap() -> Check {
    let total = meminfo("SwapTotal").unwrap_or(0);
    check(
        "swap",
        if total == 0 {
            "off".to_string()
        } else {
            format!("{} MiB", total >> 20)
        },
        "off (recommended)",
        if total == 0 {
            Verdict::Pass
        } else {
            Verdict::Warn
        },
        Some("swapoff -a and remove swap from /etc/fstab"),
    )
}

fn firewalld() -> Check {
    let active = Path::new("/var/run/firewalld.pid").exists()
        || Path::new("/run/firewalld/firewalld.pid").exists();
    check(
        "firewalld",
        if active { "active" } else { "inactive" },
        "inactive (recommended)",
        if active { Verdict::Warn } else { Verdict::Pass },
        Some("systemctl disable --now firewalld, or open 6443/tcp, 8472/udp, 10250/tcp"),
    )
}

fn selinux() -> Check {
    let enforce = read("/sys/fs/selinux/enforce").map(|s| s.trim() == "1");
    let (found, verdict) = match enforce {
        Some(true) => ("enforcing", Verdict::Warn),
        Some(false) => ("permissive", Verdict::Pass),
        None => ("disabled", Verdict::Pass),
    };
    check("selinux", found, "k3s-selinux if enforcing", verdict, Some("install the k3s-selinux and container-selinux packages (carry their RPMs on the stick) or set SELinux to permissive"))
}

fn port(port: u16, reinstall: bool) -> Check {
    let free = std::net::TcpListener::bind(("0.0.0.0", port)).is_ok();
    if !free && reinstall {
        // The k3s this installer put here holds it: a rerun keeps it running.
        return check(
            "port",
            format!("{port}/tcp held by the installed k3s"),
            "free, or the installed k3s",
            Verdict::Pass,
            None,
        );
    }
    check("port", format!("{port}/tcp {}", if free { "free" } else { "in use" }), "free", if free { Verdict::Pass } else { Verdict::Fail }, Some(&format!("stop what listens on {port} (ss -ltnp sport = :{port}), or pass --https-listen-port after --")))
}

fn existing(root: &HostRoot, reinstall: bool) -> Check {
    let present = root.path(K3S_BIN).exists();
    let verdict = if present && !reinstall {
        Verdict::Fail
    } else {
        Verdict::Pass
    };
    let found = match (present, reinstall) {
        (false, _) => "none",
        (true, true) => "installed by airgap",
        (true, false) => "k3s installed by other means",
    };
    check("existing", found, "no other k3s", verdict, Some("uninstall it first (k3s-uninstall.sh), or skip this check to overwrite it (--skip-preflight existing)"))
}

fn arch(host: &str, bundle: &[String]) -> Check {
    let ok = bundle.iter().any(|a| a == host);
    check(
        "arch",
        host,
        format!("one of {}", bundle.join(",")),
        if ok { Verdict::Pass } else { Verdict::Fail },
        Some(&format!("build a bundle with --arch {host}")),
    )
}

/// Runs every check not skipped.
pub fn run(input: &PreflightInput<'_>) -> Report {
    let skip_all = input.skip.iter().any(|s| s == "all");
    let mut checks = Vec::new();
    for name in CHECKS {
        if skip_all || input.skip.iter().any(|s| s == name) {
            checks.push(check(name, "-", "-", Verdict::Skipped, None));
            continue;
        }
        checks.push(match *name {
            "kernel" => kernel(),
            "memory" => memory(input.role),
            "disk" => disk(input.space),
            "cgroups" => cgroups(),
            "br_netfilter" => br_netfilter(),
            "swap" => swap(),
            "firewalld" => firewalld(),
            "selinux" => selinux(),
            "port" if input.role == Role::Server => port(input.https_port, input.reinstall),
            "port" => check("port", "-", "agent: none", Verdict::Skipped, None),
            "existing" => existing(input.root, input.reinstall),
            "arch" => arch(input.host_arch, input.bundle_arches),
            _ => unreachable!("every check has a function"),
        });
    }
    Report { checks }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_and_skips() {
        let t = tempfile::tempdir().unwrap();
        let root = HostRoot::new(t.path()).unwrap();
        let arches = vec!["amd64".to_string()];
        let space = [SpaceNeed::files(
            root.path("/usr/local/bin/k3s"),
            &[u64::MAX / 4],
            "the k3s binary",
        )];
        let skip = vec!["port".to_string()];
        let report = run(&PreflightInput {
            root: &root,
            role: Role::Server,
            host_arch: "arm64",
            bundle_arches: &arches,
            space: &space,
            https_port: 6443,
            skip: &skip,
            reinstall: false,
        });
        let failed: Vec<_> = report.failed().iter().map(|c| c.name).collect();
        assert!(failed.contains(&"arch"), "{report}");
        assert!(failed.contains(&"disk"), "{report}");
        assert_eq!(
            report
                .checks
                .iter()
                .find(|c| c.name == "port")
                .unwrap()
                .verdict,
            Verdict::Skipped
        );
        let text = report.to_string();
        assert!(text.contains("build a bundle with --arch arm64"), "{text}");
        assert!(
            text.contains(&format!("no space left on {}", t.path().display()))
                || text.contains("no space left on /"),
            "{text}"
        );
    }
}
