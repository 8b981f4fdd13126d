//! The k3s stand-in, a TEST DOUBLE for k3s: the parts of k3s's interface that
//! airgap's installer relies on, and nothing more (the `k3s-standin` binary is
//! its command line). A server keeps a self-signed cluster CA and the join
//! token in k3s's `K10<sha256 of CA>::server:<password>` format under its data
//! dir and serves `/cacerts`, `/ping` and a small `/v1-k3s/…` JSON API over
//! HTTPS; agents and joining servers check the token's CA hash and register.
//! It trusts its own files; from the network it trusts only a matching token.
//! No kubelet, no containerd, no Kubernetes API: tests check the installer's
//! work around it, not a cluster.
//!
//! Stages: [`flags`] (k3s's command line, env and config.yaml),
//! [`crate::pki`] (the cluster CA and serving certificates, shared with the
//! rig's other TLS), [`api`] (the HTTPS server),
//! [`client`] (the HTTPS client agents and tests use), [`roles`] (what
//! `server` and `agent` do).

pub mod api;
pub mod client;
pub mod flags;
pub mod misbehave;
pub mod roles;

use std::fmt::Display;

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use api::{serve, ServerState};
pub use client::{request, Response, Trust};
pub use flags::{Flags, Settings};

use crate::pki::write_file;

/// Which k3s command is standing in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Agent,
}

/// The k3s version the stand-in claims to be (the one the bundles carry).
pub const K3S_VERSION: &str = "v1.20.6+k3s1";

/// Logs one line to stderr, marked as coming from the test double.
pub fn log(msg: impl Display) {
    eprintln!(
        "{} k3s-standin (test double): {msg}",
        airgap_bundle::time::now_rfc3339()
    );
}

/// A k3s join token: `K10<ca hash>::<user>:<password>`, or a bare password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub ca_hash: Option<String>,
    pub password: String,
}

impl Token {
    /// Parses as k3s does: the full form carries the CA hash, anything else is
    /// the password itself.
    pub fn parse(s: &str) -> Token {
        let s = s.trim();
        if let Some((hash, creds)) = s.strip_prefix("K10").and_then(|r| r.split_once("::")) {
            let password = creds.split_once(':').map_or(creds, |(_, p)| p);
            return Token {
                ca_hash: Some(hash.to_string()),
                password: password.to_string(),
            };
        }
        Token {
            ca_hash: None,
            password: s.to_string(),
        }
    }

    /// The form k3s writes to `server/node-token`.
    pub fn full(ca_hash: &str, password: &str) -> String {
        format!("K10{ca_hash}::server:{password}")
    }
}

/// sha256 hex of the CA bundle exactly as `/cacerts` serves it.
pub fn ca_hash(ca_pem: &[u8]) -> String {
    hex::encode(Sha256::digest(ca_pem))
}

/// The flags that must be equal on every server of a cluster (k3s refuses to
/// join otherwise), with k3s's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CriticalConfig {
    pub cluster_cidr: String,
    pub service_cidr: String,
    pub cluster_dns: String,
    pub cluster_domain: String,
    pub disable: Vec<String>,
}

impl Default for CriticalConfig {
    fn default() -> Self {
        CriticalConfig {
            cluster_cidr: "10.42.0.0/16".into(),
            service_cidr: "10.43.0.0/16".into(),
            cluster_dns: "10.43.0.10".into(),
            cluster_domain: "cluster.local".into(),
            disable: Vec::new(),
        }
    }
}

impl CriticalConfig {
    /// The flag name of the first value that differs (`disable` as a set).
    pub fn first_mismatch(&self, other: &CriticalConfig) -> Option<&'static str> {
        let set = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v.dedup();
            v
        };
        [
            ("cluster-cidr", self.cluster_cidr == other.cluster_cidr),
            ("service-cidr", self.service_cidr == other.service_cidr),
            ("cluster-dns", self.cluster_dns == other.cluster_dns),
            (
                "cluster-domain",
                self.cluster_domain == other.cluster_domain,
            ),
            ("disable", set(&self.disable) == set(&other.disable)),
        ]
        .into_iter()
        .find(|(_, same)| !same)
        .map(|(name, _)| name)
    }
}

/// A cluster member as `GET /v1-k3s/nodes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub role: String,
    pub address: String,
    pub cluster_init: bool,
}

/// The body of `POST /v1-k3s/register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub node_name: String,
    pub role: String,
    pub address: String,
    pub token: String,
}

/// What `GET /v1-k3s/server-bootstrap` hands a joining server (k3s has an
/// endpoint of that name for the same purpose): the cluster CA, so every
/// server serves certificates that the one `/cacerts` bundle verifies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bootstrap {
    pub server_ca_crt: String,
    pub server_ca_key: String,
}

/// 32 random hex digits, the shape of a k3s-generated password.
pub fn random_password() -> Result<String> {
    let mut buf = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut buf)
        .map_err(|_| anyhow!("no system randomness"))?;
    Ok(hex::encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_forms() {
        let t = Token::parse("K10abc::server:s3cret\n");
        assert_eq!(
            t,
            Token {
                ca_hash: Some("abc".into()),
                password: "s3cret".into()
            }
        );
        assert_eq!(Token::parse(&Token::full("abc", "s3cret")), t);
        assert_eq!(
            Token::parse("plain"),
            Token {
                ca_hash: None,
                password: "plain".into()
            }
        );
    }

    #[test]
    fn critical_mismatch_names_the_flag() {
        let a = CriticalConfig {
            disable: vec!["traefik".into(), "servicelb".into()],
            ..Default::default()
        };
        let mut b = CriticalConfig {
            disable: vec!["servicelb".into(), "traefik".into()],
            ..Default::default()
        };
        assert_eq!(a.first_mismatch(&b), None);
        b.cluster_dns = "10.43.0.53".into();
        assert_eq!(a.first_mismatch(&b), Some("cluster-dns"));
    }
}
