//! Helpers of the `airgap install` end-to-end tests: a bed per test (the
//! seeded testbed, a bundle whose k3s is the `k3s-standin` test double, a
//! private containerd, an empty root dir and a free port), the install and
//! uninstall commands under that root, and snapshots to compare before and
//! after: the root's file tree (modes, hashes, mtimes, links) and containerd's
//! images, content and leases as the real `ctr` lists them.
//!
//! A bed stops every stand-in it started (by the pid files under its root)
//! when dropped, also when a test panics.

use super::{airgap, run, Testbed};
use airgap_bundle::digest::{hash_file, Digest};
use airgap_bundle::meta::BundleMeta;
use airgap_bundle::read::{read_header, Trust};
use airgap_bundle::source::open_bundle;
use airgap_testbed::containerd::Containerd;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// Where a detached k3s keeps its pid files under the root.
pub const PID_DIR: &str = "run/k3s-airgap";
/// The server's join token under the root.
pub const NODE_TOKEN: &str = "var/lib/rancher/k3s/server/node-token";

/// The `k3s-standin` binary (a test double for k3s), built next to `airgap`.
/// Built here when missing (a `cargo test -p airgap` that did not build the
/// testbed's binaries).
pub fn standin_binary() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_airgap"))
            .parent()
            .expect("the airgap binary has a directory")
            .to_path_buf();
        let path = bin_dir.join("k3s-standin");
        if !path.is_file() {
            let target_dir = bin_dir.parent().expect("a target dir").to_path_buf();
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
                .args(["build", "-p", "airgap-testbed", "--bin", "k3s-standin"])
                .env("CARGO_TARGET_DIR", &target_dir);
            if bin_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("running cargo build for k3s-standin");
            assert!(status.success(), "building k3s-standin failed");
        }
        assert!(path.is_file(), "{} is missing", path.display());
        path
    })
}

/// One file-system node as a test compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory's mode (its mtime moves whenever a temp file comes and
    /// goes; what is in it is listed on its own).
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        sha256: Digest,
        mtime: SystemTime,
    },
    Link {
        target: PathBuf,
    },
    Other {
        mode: u32,
    },
}

impl Node {
    /// The same node without its mtime (for comparing two installs).
    pub fn timeless(&self) -> Node {
        match self {
            Node::File { mode, sha256, .. } => Node::File {
                mode: *mode,
                sha256: *sha256,
                mtime: SystemTime::UNIX_EPOCH,
            },
            other => other.clone(),
        }
    }
}

/// Every node under `root` (not `root` itself), by path relative to it.
pub fn tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        let node = if ft.is_symlink() {
            Node::Link {
                target: std::fs::read_link(&path).unwrap(),
            }
        } else if ft.is_dir() {
            walk(root, &path, out);
            Node::Dir { mode }
        } else if ft.is_file() {
            Node::File {
                mode,
                sha256: hash_file(&path).unwrap().digest,
                mtime: meta.modified().unwrap(),
            }
        } else {
            Node::Other { mode }
        };
        out.insert(rel, node);
    }
}

/// What changed between two trees: (added, removed, changed) paths.
pub fn tree_diff(
    before: &BTreeMap<String, Node>,
    after: &BTreeMap<String, Node>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let added = after
        .keys()
        .filter(|k| !before.contains_key(*k))
        .cloned()
        .collect();
    let removed = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .cloned()
        .collect();
    let changed = after
        .iter()
        .filter(|(k, v)| before.get(*k).is_some_and(|b| b != *v))
        .map(|(k, _)| k.clone())
        .collect();
    (added, removed, changed)
}

/// Asserts that `after` is `before`, naming every difference.
#[track_caller]
pub fn assert_same_tree(
    before: &BTreeMap<String, Node>,
    after: &BTreeMap<String, Node>,
    what: &str,
) {
    let (added, removed, changed) = tree_diff(before, after);
    assert!(
        added.is_empty() && removed.is_empty() && changed.is_empty(),
        "{what}: added {added:?}, removed {removed:?}, changed {:?}",
        changed
            .iter()
            .map(|k| (k, before.get(k), after.get(k)))
            .collect::<Vec<_>>()
    );
}

/// `ctr ... ls` output split into rows of words, without its header line.
pub fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// Runs `ctr` against the private containerd; panics unless it succeeds.
#[track_caller]
pub fn ctr(cd: &Containerd, args: &[&str]) -> String {
    cd.ctr_ok(args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// One image as `ctr -n k8s.io images ls` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedImage {
    pub media_type: String,
    pub digest: String,
    /// Sorted (`ctr` prints a map in random order).
    pub labels: BTreeSet<String>,
}

/// The `k8s.io` images by reference.
pub fn images(cd: &Containerd) -> BTreeMap<String, ListedImage> {
    rows(&ctr(cd, &["-n", "k8s.io", "images", "ls"]))
        .into_iter()
        .map(|r| {
            let labels = r.last().unwrap();
            let labels = if labels == "-" {
                BTreeSet::new()
            } else {
                labels.split(',').map(str::to_string).collect()
            };
            (
                r[0].clone(),
                ListedImage {
                    media_type: r[1].clone(),
                    digest: r[2].clone(),
                    labels,
                },
            )
        })
        .collect()
}

/// Content in `k8s.io`: digest -> sorted labels.
pub fn content(cd: &Containerd) -> BTreeMap<String, String> {
    rows(&ctr(cd, &["-n", "k8s.io", "content", "ls"]))
        .into_iter()
        .map(|r| {
            let mut labels: Vec<&str> = r.last().unwrap().split(',').collect();
            labels.sort();
            (r[0].clone(), labels.join(","))
        })
        .collect()
}

/// Lease ids in `k8s.io`.
pub fn leases(cd: &Containerd) -> Vec<String> {
    rows(&ctr(cd, &["-n", "k8s.io", "leases", "ls"]))
        .into_iter()
        .map(|r| r[0].clone())
        .collect()
}

/// Polls `check` for up to `timeout` (containerd's garbage collector runs
/// shortly after a lease goes, not at once); returns its last answer.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub use airgap_installer::service::process_alive;

/// Stops every detached k3s (stand-in) whose pid file is under `root`:
/// TERM, then KILL after 5 s. Only pids this bed's installs started.
pub fn stop_standins(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root.join(PID_DIR)) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        else {
            continue;
        };
        // The pid file may be stale: only a stand-in is ours to stop.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !process_alive(pid)
            || !String::from_utf8_lossy(&cmdline).contains(root.to_str().unwrap())
        {
            continue;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        if !eventually(Duration::from_secs(5), || !process_alive(pid)) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// The extra k3s flags that keep a test's stand-in server off 6443.
pub fn port_args(port: u16) -> Vec<String> {
    vec![
        "--".to_string(),
        "--https-listen-port".to_string(),
        port.to_string(),
    ]
}

/// `--no-start` server arguments with the embedded runtime (no containerd
/// needed), on `port`.
pub fn no_start_embedded_args(port: u16) -> Vec<String> {
    let mut a = strings(&[
        "--role",
        "server",
        "--runtime",
        "embedded",
        "--init",
        "none",
        "--no-start",
    ]);
    a.extend(port_args(port));
    a
}

/// `--no-start` server arguments against `cd` (runs a test disturbs).
pub fn no_start_server_args(cd: &Containerd, port: u16) -> Vec<String> {
    let mut a = strings(&["--role", "server", "--init", "none", "--no-start"]);
    a.extend(strings(&[
        "--containerd-socket",
        cd.socket().to_str().unwrap(),
    ]));
    a.extend(port_args(port));
    a
}

/// A signed bundle whose k3s is the stand-in, copied out of the testbed that
/// built it (whose registry and release server are gone by then), with the
/// key that signed it and another key pair.
pub struct BundleFixture {
    pub bundle: PathBuf,
    /// `site.pub`, the key the bundle is signed with.
    pub pub_key: PathBuf,
    /// `other.key`, a secret key that did not sign it.
    pub other_key: PathBuf,
    pub meta: BundleMeta,
}

impl BundleFixture {
    /// Seeds a testbed (its own registry and release server), lets `prepare`
    /// change it, builds the bundle and copies it with the keys into `dir`.
    pub fn build(dir: &Path, prepare: impl FnOnce(&Testbed)) -> BundleFixture {
        let k3s = std::fs::read(standin_binary()).unwrap();
        let tb = Testbed::start_with_k3s(&k3s);
        prepare(&tb);
        let built = tb.build_ok("k3s.airgap.tar.zst", &[]);
        let (other_key, _) = tb.keygen("other");
        std::fs::create_dir_all(dir).unwrap();
        let copy = |from: &Path, name: &str| {
            let to = dir.join(name);
            std::fs::copy(from, &to).unwrap();
            to
        };
        let bundle = copy(&built, "k3s.airgap.tar.zst");
        let pub_key = copy(&tb.pub_key(), "site.pub");
        let other_key = copy(&other_key, "other.key");
        let meta = bundle_meta(&bundle, &pub_key);
        BundleFixture {
            bundle,
            pub_key,
            other_key,
            meta,
        }
    }
}

/// The demo bundle, built once per test binary: every test reads it and
/// none writes it (a tampered copy goes into the test's own dir). It lives
/// in `target/tmp/install-fixture-<pid>`; earlier runs' dirs are removed
/// once their process is gone.
pub fn demo_bundle() -> &'static BundleFixture {
    static FIXTURE: OnceLock<BundleFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(parent).unwrap();
        for entry in std::fs::read_dir(parent).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("install-fixture-") {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = parent.join(format!("install-fixture-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        BundleFixture::build(&dir, |_| {})
    })
}

/// One test's installation target: a bundle (the shared demo bundle, or one
/// of its own), its own private containerd, an empty root dir and a free
/// port. Stand-ins started under the root are stopped on drop.
pub struct InstallBed {
    pub bundle: PathBuf,
    pub pub_key: PathBuf,
    pub other_key: PathBuf,
    pub meta: BundleMeta,
    pub cd: Containerd,
    pub root: tempfile::TempDir,
    /// Scratch space for the test (tampered bundles, token files).
    pub scratch: tempfile::TempDir,
    pub port: u16,
}

impl InstallBed {
    /// The shared demo bundle.
    pub fn start() -> InstallBed {
        let f = demo_bundle();
        Self::with(f, tempdir("airgap-scratch-"))
    }

    /// A bundle of its own, built after `prepare` changed the testbed (more
    /// images in the registry and the manifests, say).
    pub fn start_with(prepare: impl FnOnce(&Testbed)) -> InstallBed {
        let scratch = tempdir("airgap-scratch-");
        let f = BundleFixture::build(&scratch.path().join("bundle"), prepare);
        Self::with(&f, scratch)
    }

    fn with(f: &BundleFixture, scratch: tempfile::TempDir) -> InstallBed {
        let cd = Containerd::start().expect("starting a private containerd");
        InstallBed {
            bundle: f.bundle.clone(),
            pub_key: f.pub_key.clone(),
            other_key: f.other_key.clone(),
            meta: f.meta.clone(),
            cd,
            root: tempdir("airgap-root-"),
            scratch,
            port: airgap_testbed::registry::free_port().unwrap(),
        }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A path under the root (`rel` without a leading slash).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel.trim_start_matches('/'))
    }

    /// `airgap install --offline BUNDLE --key site.pub --root R` and then
    /// `args`, without any K3S_* variable of the test's own environment.
    pub fn install_cmd(&self, bundle: &Path, root: &Path, args: &[String]) -> Command {
        let mut cmd = airgap();
        cmd.env_remove("K3S_URL")
            .env_remove("K3S_TOKEN")
            .env_remove("K3S_TOKEN_FILE")
            .args(["install", "--offline"])
            .arg(bundle)
            .arg("--key")
            .arg(&self.pub_key)
            .arg("--root")
            .arg(root)
            .args(args);
        cmd
    }

    /// Starts `install_cmd` in the background (a run a test means to
    /// disturb), its stderr going to `ROOT.log` beside the root; returns the
    /// child and the log's path.
    pub fn spawn_install(&self, root: &Path, args: &[String]) -> (KillOnDrop, PathBuf) {
        let log = root.with_extension("log");
        let child = self
            .install_cmd(&self.bundle, root, args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (KillOnDrop(child), log)
    }

    /// Installs this bed's bundle under its root with `args`.
    pub fn install(&self, args: &[String]) -> Output {
        run(&mut self.install_cmd(&self.bundle, self.root(), args))
    }

    /// `--containerd-socket <this bed's containerd>`.
    pub fn socket_args(&self) -> Vec<String> {
        vec![
            "--containerd-socket".to_string(),
            self.cd.socket().display().to_string(),
        ]
    }

    /// The arguments of a server importing into this bed's containerd and
    /// started detached on this bed's port.
    pub fn server_args(&self) -> Vec<String> {
        let mut a = strings(&["--role", "server", "--init", "none", "--wait", "60"]);
        a.extend(self.socket_args());
        a.extend(port_args(self.port));
        a
    }

    /// `airgap uninstall --root R` and then `args`.
    pub fn uninstall(&self, args: &[&str]) -> Output {
        run(airgap()
            .arg("uninstall")
            .arg("--root")
            .arg(self.root())
            .args(args))
    }

    /// The pid in the root's pid file for `service` (`k3s`, `k3s-agent`).
    pub fn pid(&self, service: &str) -> Option<u32> {
        std::fs::read_to_string(self.path(&format!("{PID_DIR}/{service}.pid")))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }
}

impl Drop for InstallBed {
    fn drop(&mut self) {
        stop_standins(self.root.path());
    }
}

/// The bundle's verified `bundle.json`.
pub fn bundle_meta(bundle: &Path, public_key: &Path) -> BundleMeta {
    let trust = Trust::Key(airgap_bundle::sign::load_public_key(public_key).unwrap());
    read_header(open_bundle(bundle).unwrap(), &trust)
        .unwrap()
        .meta
}

pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A file's permission bits.
pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// A stand-in k3s server (the TEST DOUBLE) started straight from the test,
/// for agents to join: its own data dir and port; killed on drop.
pub struct StandinServer {
    child: std::process::Child,
    pub url: String,
    /// The join token it wrote (`K10<CA hash>::server:<password>`).
    pub token: String,
}

impl StandinServer {
    /// Starts `k3s-standin server` with its data under `dir` on `port` and
    /// waits for its token file and `/ping`.
    pub fn start(dir: &Path, port: u16) -> StandinServer {
        let data = dir.join("standin-server");
        std::fs::create_dir_all(&data).unwrap();
        let log = std::fs::File::create(dir.join("standin-server.log")).unwrap();
        let child = Command::new(standin_binary())
            .arg("server")
            .arg("--data-dir")
            .arg(&data)
            .args(["--https-listen-port", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = StandinServer {
            child,
            url: format!("https://127.0.0.1:{port}"),
            token: String::new(),
        };
        let token_file = data.join("server/node-token");
        let ready = eventually(Duration::from_secs(30), || {
            token_file.is_file()
                && airgap_testbed::standin::request(
                    &server.url,
                    "GET",
                    "/ping",
                    None,
                    None,
                    airgap_testbed::standin::Trust::AnyForCacerts,
                )
                .is_ok_and(|r| r.text().trim() == "pong")
        });
        assert!(
            ready,
            "the stand-in server did not come up; its log:\n{}",
            std::fs::read_to_string(dir.join("standin-server.log")).unwrap_or_default()
        );
        server.token = std::fs::read_to_string(&token_file)
            .unwrap()
            .trim()
            .to_string();
        server
    }
}

impl Drop for StandinServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process (an install a test means to kill) that is killed and
/// reaped on drop, so a failing test leaves nothing running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The install record under the root (the containerd socket in it differs
/// between beds).
pub const INSTALL_RECORD: &str = "var/lib/rancher/k3s/airgap/install.json";

/// What an install leaves, in a form two installs (into two containerds) can
/// be compared by: the root's files without mtimes (install.json without the
/// socket), the images with their labels, and the content digests.
#[derive(Debug, PartialEq)]
pub struct EndState {
    pub files: BTreeMap<String, Node>,
    pub record: serde_json::Value,
    pub images: BTreeMap<String, ListedImage>,
    pub content: BTreeSet<String>,
}

/// The [`EndState`] of an install under `root` into `cd`.
pub fn end_state(root: &Path, cd: &Containerd) -> EndState {
    let files = tree(root)
        .into_iter()
        .filter(|(k, _)| k != INSTALL_RECORD)
        .map(|(k, v)| (k, v.timeless()))
        .collect();
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join(INSTALL_RECORD)).unwrap()).unwrap();
    record.as_object_mut().unwrap().remove("containerd_socket");
    EndState {
        files,
        record,
        images: images(cd),
        content: content(cd).into_keys().collect(),
    }
}

/// Asserts that two end states are the same, naming what differs.
#[track_caller]
pub fn assert_same_state(clean: &EndState, got: &EndState, what: &str) {
    assert_same_tree(&clean.files, &got.files, what);
    assert_eq!(clean.record, got.record, "{what}: install.json");
    assert_eq!(clean.images, got.images, "{what}: images");
    assert_eq!(clean.content, got.content, "{what}: content");
}
