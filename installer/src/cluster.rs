//! The flags every server of one HA cluster must agree on (k3s refuses a
//! server whose "critical configuration" differs, but only once it starts,
//! after the install wrote everything). The first server records its values;
//! `airgap token --out FILE` writes them beside the token as
//! `FILE.cluster.json`; a joining server's install compares its own against
//! them and refuses a mismatch before it writes anything.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// k3s's defaults, as `k3s server --help` gives them.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";
pub const DEFAULT_SERVICE_CIDR: &str = "10.43.0.0/16";
pub const DEFAULT_CLUSTER_DNS: &str = "10.43.0.10";
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriticalConfig {
    pub cluster_cidr: String,
    pub service_cidr: String,
    pub cluster_dns: String,
    pub cluster_domain: String,
    /// Disabled components, sorted.
    pub disable: Vec<String>,
}

impl Default for CriticalConfig {
    fn default() -> Self {
        Self {
            cluster_cidr: DEFAULT_CLUSTER_CIDR.into(),
            service_cidr: DEFAULT_SERVICE_CIDR.into(),
            cluster_dns: DEFAULT_CLUSTER_DNS.into(),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.into(),
            disable: Vec::new(),
        }
    }
}

impl CriticalConfig {
    /// The values the extra k3s flags set (`--flag value` or `--flag=value`;
    /// `--disable` repeatable and comma-separated), k3s's defaults otherwise.
    pub fn from_args(args: &[String]) -> Self {
        let mut cfg = CriticalConfig::default();
        let mut it = args.iter().peekable();
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                continue;
            };
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            let known = matches!(
                name,
                "cluster-cidr" | "service-cidr" | "cluster-dns" | "cluster-domain" | "disable"
            );
            if !known {
                continue;
            }
            let Some(value) = value.or_else(|| it.next().cloned()) else {
                continue;
            };
            match name {
                "cluster-cidr" => cfg.cluster_cidr = value,
                "service-cidr" => cfg.service_cidr = value,
                "cluster-dns" => cfg.cluster_dns = value,
                "cluster-domain" => cfg.cluster_domain = value,
                _ => cfg.disable.extend(
                    value
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                ),
            }
        }
        cfg.disable.sort();
        cfg.disable.dedup();
        cfg
    }

    /// Each flag whose value differs: `--cluster-cidr: this server 10.99.0.0/16, the cluster 10.42.0.0/16`.
    pub fn differences(&self, cluster: &CriticalConfig) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |flag: &str, mine: String, theirs: String| {
            if mine != theirs {
                out.push(format!(
                    "--{flag}: this server {mine}, the cluster {theirs}"
                ));
            }
        };
        cmp(
            "cluster-cidr",
            self.cluster_cidr.clone(),
            cluster.cluster_cidr.clone(),
        );
        cmp(
            "service-cidr",
            self.service_cidr.clone(),
            cluster.service_cidr.clone(),
        );
        cmp(
            "cluster-dns",
            self.cluster_dns.clone(),
            cluster.cluster_dns.clone(),
        );
        cmp(
            "cluster-domain",
            self.cluster_domain.clone(),
            cluster.cluster_domain.clone(),
        );
        cmp(
            "disable",
            format!("[{}]", self.disable.join(",")),
            format!("[{}]", cluster.disable.join(",")),
        );
        out
    }
}

/// Where the cluster file of a token file lives.
pub fn cluster_file_for(token_file: &Path) -> PathBuf {
    let mut name = token_file.as_os_str().to_os_string();
    name.push(".cluster.json");
    PathBuf::from(name)
}

/// Reads the cluster file beside a token file, if the first server wrote one.
pub fn load_cluster_file(token_file: &Path) -> anyhow::Result<Option<CriticalConfig>> {
    let path = cluster_file_for(token_file);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_flags_like_k3s() {
        let cfg = CriticalConfig::from_args(&args(&[
            "--cluster-cidr=10.99.0.0/16",
            "--disable",
            "traefik,servicelb",
            "--disable=metrics-server",
            "--node-name",
            "x",
        ]));
        assert_eq!(cfg.cluster_cidr, "10.99.0.0/16");
        assert_eq!(cfg.service_cidr, DEFAULT_SERVICE_CIDR);
        assert_eq!(cfg.disable, ["metrics-server", "servicelb", "traefik"]);
        let diff = cfg.differences(&CriticalConfig::default());
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(diff[0].starts_with("--cluster-cidr: this server 10.99.0.0/16"));
        assert!(CriticalConfig::default()
            .differences(&CriticalConfig::default())
            .is_empty());
    }
}
