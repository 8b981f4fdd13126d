//! Helpers of the cluster tests: nodes that are test hosts (network
//! namespaces with their own address and private /etc/rancher, /var/lib/
//! rancher, /usr/local/bin, /run, ...: `airgap_testbed::hosts`), each with
//! its own containerd; `airgap` run inside them as on a real node (no
//! `--root`, `--init none`); and the k3s stand-in's (a TEST DOUBLE's) list of
//! registered nodes, read over the hosts' network.
//!
//! The bundle is the shared demo bundle of [`super::install`], whose k3s is
//! the stand-in. Hosts tear themselves down on drop.

use super::install::{demo_bundle, BundleFixture};
use super::{assert_ok, stderr, stdout};
use airgap_testbed::hosts::{TestHost, TestNetwork};
use airgap_testbed::standin::{self, Token};
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// The seed scenario's subnet (it exists only inside the test network).
pub const SUBNET: &str = "192.168.40";
/// Host paths a server's install and its k3s write.
pub const NODE_TOKEN: &str = "/var/lib/rancher/k3s/server/node-token";
pub const SERVER_CA: &str = "/var/lib/rancher/k3s/server/tls/server-ca.crt";
pub const GUESTBOOK: &str = "/var/lib/rancher/k3s/server/manifests/guestbook.yaml";
/// How long one `airgap` run in a host may take.
pub const AIRGAP_TIMEOUT: Duration = Duration::from_secs(180);

/// The `airgap` binary under test, by its absolute path: a host's
/// `/usr/local/bin` is its own.
pub fn airgap_bin() -> &'static str {
    env!("CARGO_BIN_EXE_airgap")
}

/// One test's network and the bundle its nodes install.
pub struct Cluster {
    pub net: TestNetwork,
    pub bundle: &'static BundleFixture,
}

impl Cluster {
    pub fn new() -> Cluster {
        let bundle = demo_bundle();
        Cluster {
            net: TestNetwork::create().unwrap_or_else(|e| panic!("creating a test network: {e:#}")),
            bundle,
        }
    }

    /// A host `name` at `192.168.40.<octet>` running its own containerd.
    pub fn node(&self, name: &str, octet: u8) -> Node {
        let node = self.bare_node(name, octet);
        node.host
            .start_containerd()
            .unwrap_or_else(|e| panic!("containerd in {name}: {e:#}"));
        node
    }

    /// A host without containerd (an address with nothing listening).
    pub fn bare_node(&self, name: &str, octet: u8) -> Node {
        let host = self
            .net
            .host(name, &format!("{SUBNET}.{octet}"))
            .unwrap_or_else(|e| panic!("creating host {name}: {e:#}"));
        Node {
            host,
            bundle: self.bundle,
        }
    }
}

/// A test host used as a cluster node; its node name is the host's name.
pub struct Node {
    pub host: TestHost,
    bundle: &'static BundleFixture,
}

impl Node {
    pub fn name(&self) -> &str {
        self.host.name()
    }

    /// `https://<address>:6443`.
    pub fn url(&self) -> String {
        format!("https://{}:6443", self.host.address())
    }

    /// Runs `airgap ARGS` in this host.
    pub fn airgap(&self, args: &[&str]) -> Output {
        let out = self
            .host
            .run_with_timeout(airgap_bin(), args, AIRGAP_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!(
            "[{}] airgap {}: {}\n{}",
            self.name(),
            args.first().copied().unwrap_or_default(),
            out.status,
            stderr(&out).trim_end()
        );
        out
    }

    /// `airgap install --offline BUNDLE --key site.pub --role ROLE --init
    /// none --node-name NAME --wait 60` and then `extra` (join flags, `--`
    /// and k3s flags).
    pub fn install(&self, role: &str, extra: &[&str]) -> Output {
        let bundle = self.bundle.bundle.display().to_string();
        let key = self.bundle.pub_key.display().to_string();
        let mut args = vec![
            "install",
            "--offline",
            &bundle,
            "--key",
            &key,
            "--role",
            role,
            "--init",
            "none",
            "--node-name",
            self.name(),
            "--wait",
            "60",
        ];
        args.extend_from_slice(extra);
        self.airgap(&args)
    }

    /// [`Node::install`] that must succeed.
    #[track_caller]
    pub fn install_ok(&self, role: &str, extra: &[&str]) {
        let out = self.install(role, extra);
        assert_ok(
            &out,
            &format!("airgap install --role {role} on {}", self.name()),
        );
    }

    /// Joins `server` as `role` with the token file `token` (on this host).
    #[track_caller]
    pub fn join_ok(&self, role: &str, server: &Node, token: &Path, k3s: &[&str]) {
        let url = server.url();
        let token = token.display().to_string();
        let mut extra = vec!["--server", &url, "--token-file", &token];
        if !k3s.is_empty() {
            extra.push("--");
            extra.extend_from_slice(k3s);
        }
        self.install_ok(role, &extra);
    }

    /// `airgap token --out <scratch>/node-token` on this server; returns the
    /// file (mode 0600, the server's K10 token).
    #[track_caller]
    pub fn token_file(&self) -> PathBuf {
        let file = self.host.scratch_dir().join("node-token");
        let out = self.airgap(&["token", "--out", &file.display().to_string()]);
        assert_ok(&out, &format!("airgap token --out on {}", self.name()));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} should be 0600", file.display());
        assert_eq!(
            std::fs::read_to_string(&file).unwrap().trim(),
            self.token().trim(),
            "airgap token wrote something else than the server's node-token"
        );
        file
    }

    /// The server's token as its k3s wrote it.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.host.path(NODE_TOKEN))
            .unwrap_or_else(|e| panic!("{}'s node-token: {e}", self.name()))
    }

    /// Carries `file` (and the `FILE.cluster.json` beside it, when there is
    /// one) to `to`'s scratch dir, as on a USB stick; returns the copy.
    pub fn carry(file: &Path, to: &Node) -> PathBuf {
        let name = file.file_name().unwrap();
        let copy = to.host.scratch_dir().join(name);
        std::fs::copy(file, &copy).unwrap();
        let mut beside = file.as_os_str().to_os_string();
        beside.push(".cluster.json");
        if Path::new(&beside).exists() {
            let mut to_beside = copy.as_os_str().to_os_string();
            to_beside.push(".cluster.json");
            std::fs::copy(&beside, &to_beside).unwrap();
        }
        copy
    }

    /// `airgap status --json` in this host.
    #[track_caller]
    pub fn status(&self) -> serde_json::Value {
        let out = self.airgap(&["status", "--json"]);
        assert_ok(&out, &format!("airgap status on {}", self.name()));
        serde_json::from_str(&stdout(&out))
            .unwrap_or_else(|e| panic!("status --json: {e}\n{}", stdout(&out)))
    }

    /// The nodes this server's k3s (the stand-in) has registered, asked
    /// from host `from` over the test network (`GET /v1-k3s/nodes`, the
    /// token's password as bearer, TLS checked against the cluster CA).
    #[track_caller]
    pub fn nodes_seen_from(&self, from: &Node) -> Vec<standin::Node> {
        let ca = std::fs::read_to_string(self.host.path(SERVER_CA)).unwrap();
        let password = Token::parse(&self.token()).password;
        let r = from
            .host
            .https_request(
                &self.url(),
                "GET",
                "/v1-k3s/nodes",
                Some(&format!("Bearer {password}")),
                &ca,
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            r.status,
            200,
            "GET {}/v1-k3s/nodes: {}",
            self.url(),
            r.text()
        );
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
    }

    /// The nodes this server lists, once they are `want` (an agent
    /// registers shortly after its install returns); panics with the last
    /// list after 30 s.
    #[track_caller]
    pub fn wait_for_members(&self, from: &Node, want: &[(String, String)]) -> Vec<standin::Node> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let seen = self.nodes_seen_from(from);
            if members(&seen) == want || std::time::Instant::now() > deadline {
                assert_eq!(
                    members(&seen),
                    want,
                    "the nodes {}'s k3s lists",
                    self.name()
                );
                return seen;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The `k8s.io` images in this host's containerd.
    pub fn images(&self) -> BTreeSet<String> {
        self.host
            .images()
            .unwrap_or_else(|e| panic!("{e:#}"))
            .into_iter()
            .collect()
    }

    /// The references of the bundle's images.
    pub fn bundle_images(&self) -> BTreeSet<String> {
        self.bundle
            .meta
            .images
            .iter()
            .map(|i| i.reference.to_string())
            .collect()
    }

    /// Asserts that this host's containerd holds every image of the bundle
    /// and nothing else.
    #[track_caller]
    pub fn assert_all_images(&self) {
        assert_eq!(
            self.images(),
            self.bundle_images(),
            "images in {}'s containerd",
            self.name()
        );
    }

    /// The k3s processes of this host (the detached stand-in).
    pub fn k3s_processes(&self) -> Vec<(u32, String)> {
        self.host
            .processes()
            .into_iter()
            .filter(|(_, cmd)| {
                cmd.split_whitespace()
                    .next()
                    .is_some_and(|p| p.ends_with("/k3s") || p.ends_with("k3s-standin"))
            })
            .collect()
    }

    /// Asserts that nothing was installed on this host: no file in its
    /// private paths, no image in its containerd, no k3s running.
    #[track_caller]
    pub fn assert_untouched(&self, what: &str) {
        let entries = self.host.private_entries();
        assert!(
            entries.is_empty(),
            "{what}: {} has files: {entries:#?}",
            self.name()
        );
        let images = self.images();
        assert!(
            images.is_empty(),
            "{what}: {}'s containerd has images: {images:#?}",
            self.name()
        );
        let k3s = self.k3s_processes();
        assert!(
            k3s.is_empty(),
            "{what}: k3s runs on {}: {k3s:?}",
            self.name()
        );
    }
}

/// Asserts that the machine's own paths were never written by a host.
#[track_caller]
pub fn assert_machine_untouched() {
    for p in [
        "/etc/rancher",
        "/var/lib/rancher",
        "/usr/local/bin/k3s",
        "/etc/sysctl.d/90-k3s-airgap.conf",
        "/etc/modules-load.d/k3s-airgap.conf",
        "/run/k3s-airgap",
    ] {
        assert!(!Path::new(p).exists(), "{p} appeared on the machine itself");
    }
}

/// `(name, role)` of each registered node, sorted.
pub fn members(nodes: &[standin::Node]) -> Vec<(String, String)> {
    let mut m: Vec<_> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.role.clone()))
        .collect();
    m.sort();
    m
}

/// `(name, role)` for a node of this test.
pub fn member(node: &Node, role: &str) -> (String, String) {
    (node.name().to_string(), role.to_string())
}

/// Asserts that each of `joined` registered from its own host's address
/// (the first server lists itself without one: the stand-in announces
/// 127.0.0.1 when not given --node-ip).
#[track_caller]
pub fn assert_registered_from_their_hosts(nodes: &[standin::Node], joined: &[&Node]) {
    for node in joined {
        let entry = nodes
            .iter()
            .find(|n| n.name == node.name())
            .unwrap_or_else(|| panic!("{} is not registered: {nodes:?}", node.name()));
        assert_eq!(
            entry.address,
            node.host.address().to_string(),
            "{} registered from another address",
            node.name()
        );
    }
}
