//! Where k3s's files go and what the generated ones say, as k3s's own
//! install.sh lays them out: the binary and its kubectl/crictl/ctr links,
//! `/etc/rancher/k3s/config.yaml` and `registries.yaml`, the auto-deploy
//! manifests, and the kernel module and sysctl files the checklist asks for.
//! Pure functions of the install options: nothing here touches the host.

use airgap_bundle::meta::BundleMeta;
use std::collections::BTreeSet;

pub const K3S_BIN: &str = "/usr/local/bin/k3s";
pub const K3S_LINKS: &[&str] = &[
    "/usr/local/bin/kubectl",
    "/usr/local/bin/crictl",
    "/usr/local/bin/ctr",
];
pub const CONFIG_DIR: &str = "/etc/rancher/k3s";
pub const CONFIG_YAML: &str = "/etc/rancher/k3s/config.yaml";
pub const REGISTRIES_YAML: &str = "/etc/rancher/k3s/registries.yaml";
pub const DATA_DIR: &str = "/var/lib/rancher/k3s";
pub const MANIFESTS_DIR: &str = "/var/lib/rancher/k3s/server/manifests";
pub const NODE_TOKEN: &str = "/var/lib/rancher/k3s/server/node-token";
pub const AGENT_IMAGES_DIR: &str = "/var/lib/rancher/k3s/agent/images";
pub const AIRGAP_DIR: &str = "/var/lib/rancher/k3s/airgap";
pub const INSTALL_RECORD: &str = "/var/lib/rancher/k3s/airgap/install.json";
pub const INSTALL_JOURNAL: &str = "/var/lib/rancher/k3s/airgap/install.journal";
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/90-k3s-airgap.conf";
pub const MODULES_FILE: &str = "/etc/modules-load.d/k3s-airgap.conf";
/// k3s's embedded containerd's socket.
pub const EMBEDDED_SOCKET: &str = "/run/k3s/containerd/containerd.sock";
/// A packaged containerd's own socket (`--runtime external`).
pub const EXTERNAL_SOCKET: &str = "/run/containerd/containerd.sock";

/// Server or agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Server,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
        }
    }

    /// The service name install.sh uses: `k3s` or `k3s-agent`.
    pub fn service_name(self) -> &'static str {
        match self {
            Role::Server => "k3s",
            Role::Agent => "k3s-agent",
        }
    }
}

/// The flags that go into config.yaml (k3s reads it at start; command-line
/// flags and the unit's ExecStart stay short and stable).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct K3sConfig {
    pub node_name: Option<String>,
    pub cluster_init: bool,
    pub container_runtime_endpoint: Option<String>,
    pub write_kubeconfig_mode: Option<String>,
}

/// A YAML scalar holding exactly `s`: a JSON string is a valid YAML
/// double-quoted scalar, with newlines and quotes escaped, so no value can
/// break the file or add keys to it.
fn yaml_quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}

/// `/etc/rancher/k3s/config.yaml`.
pub fn config_yaml(cfg: &K3sConfig) -> String {
    let mut out = String::from(
        "# Written by airgap install. k3s reads this at start; see `k3s server --help`.\n",
    );
    if let Some(n) = &cfg.node_name {
        out.push_str(&format!("node-name: {}\n", yaml_quote(n)));
    }
    if cfg.cluster_init {
        out.push_str("cluster-init: true\n");
    }
    if let Some(e) = &cfg.container_runtime_endpoint {
        out.push_str(&format!("container-runtime-endpoint: {}\n", yaml_quote(e)));
    }
    if let Some(m) = &cfg.write_kubeconfig_mode {
        out.push_str(&format!("write-kubeconfig-mode: {}\n", yaml_quote(m)));
    }
    out
}

/// `/etc/rancher/k3s/registries.yaml`: every registry the bundle's images
/// come from is mirrored to an endpoint that cannot be reached, so a pod
/// whose image is missing fails at once with a clear pull error rather than
/// trying the internet for minutes; images in the bundle are already
/// present and never pulled.
pub fn registries_yaml(meta: &BundleMeta) -> String {
    let hosts: BTreeSet<&str> = meta
        .images
        .iter()
        .map(|i| i.reference.registry.as_str())
        .collect();
    let mut out = String::from(
        "# Written by airgap install: this node is offline. Every image it needs\n\
         # came in the bundle; pulls from these registries go nowhere.\n\
         mirrors:\n",
    );
    for host in hosts {
        out.push_str(&format!(
            "  {}:\n    endpoint:\n      - \"http://127.0.0.1:1\"\n",
            yaml_quote(host)
        ));
    }
    out
}

/// `/etc/modules-load.d/` content: what k3s's checklist needs loaded at boot.
pub fn modules_load() -> &'static str {
    "# Written by airgap install: kernel modules k3s needs.\nbr_netfilter\noverlay\n"
}

/// `/etc/sysctl.d/` content: bridged traffic through iptables, forwarding on.
pub fn sysctl_conf() -> &'static str {
    "# Written by airgap install: settings k3s needs.\n\
     net.bridge.bridge-nf-call-iptables = 1\n\
     net.bridge.bridge-nf-call-ip6tables = 1\n\
     net.ipv4.ip_forward = 1\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_yaml_quotes_values() {
        let y = config_yaml(&K3sConfig {
            node_name: Some("edge-\"1\"".into()),
            cluster_init: true,
            container_runtime_endpoint: Some(EXTERNAL_SOCKET.into()),
            write_kubeconfig_mode: None,
        });
        assert!(y.contains("node-name: \"edge-\\\"1\\\"\"\n"));
        assert!(y.contains("cluster-init: true\n"));
        assert!(y.contains("container-runtime-endpoint: \"/run/containerd/containerd.sock\""));
    }

    #[test]
    fn config_yaml_values_cannot_add_keys() {
        let y = config_yaml(&K3sConfig {
            node_name: Some("edge\ncluster-init: true".into()),
            ..Default::default()
        });
        assert!(
            y.contains("node-name: \"edge\\ncluster-init: true\"\n"),
            "{y}"
        );
        assert!(!y.contains("\ncluster-init: true\n"), "{y}");
    }
}
