//! The k3s stand-in (a test double) run as a real process on 127.0.0.1: the
//! token file, `/cacerts`, agents and joining servers, signals. Every process
//! is killed on drop, so a failing assertion leaves nothing running.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use airgap_testbed::standin::{request, Trust};
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_k3s-standin");
const TIMEOUT: Duration = Duration::from_secs(20);

struct Standin {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Standin {
    /// Starts `k3s-standin <args>` with only `env`, its own data dir and an
    /// explicit config file, so nothing of the host's k3s setup leaks in.
    fn start(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Standin {
        let log = dir.join(format!("{name}.log"));
        let config = dir.join(format!("{name}.yaml"));
        if !config.exists() {
            std::fs::write(&config, "").unwrap();
        }
        let data = dir.join(name);
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("--data-dir")
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("starting k3s-standin");
        Standin {
            name: name.into(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "{} did not exit:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn sigterm(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        self.wait_exit()
    }

    /// Waits until `path` exists, failing early if the process exits.
    fn wait_for_file(&mut self, path: &Path) -> String {
        let start = Instant::now();
        while !path.exists() {
            assert!(self.running(), "{} exited:\n{}", self.name, self.log());
            assert!(
                start.elapsed() < TIMEOUT,
                "no {}:\n{}",
                path.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::read_to_string(path).unwrap()
    }

    /// Runs to its end; returns the exit status and its log.
    fn exit(mut self) -> (ExitStatus, String) {
        let status = self.wait_exit();
        (status, self.log())
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

struct Server {
    proc: Standin,
    url: String,
    token: String,
    password: String,
}

/// Starts a server on 127.0.0.1 and waits for `/ping`.
fn server(dir: &Path, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let port = free_port().to_string();
    let mut args = vec![
        "server",
        "--bind-address",
        "127.0.0.1",
        "--https-listen-port",
        &port,
    ];
    args.extend(["--node-name", name]);
    args.extend(extra);
    let mut proc = Standin::start(dir, name, &args, env);
    let url = format!("https://127.0.0.1:{port}");
    let start = Instant::now();
    loop {
        let ping = request(&url, "GET", "/ping", None, None, Trust::AnyForCacerts);
        if ping.is_ok_and(|r| r.status == 200) {
            break;
        }
        assert!(proc.running(), "{name} exited:\n{}", proc.log());
        assert!(
            start.elapsed() < TIMEOUT,
            "{name} never answered /ping:\n{}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = std::fs::read_to_string(dir.join(name).join("server/node-token")).unwrap();
    let token = token.trim().to_string();
    let password = token.rsplit_once(':').unwrap().1.to_string();
    Server {
        proc,
        url,
        token,
        password,
    }
}

fn cacerts(url: &str) -> String {
    let r = request(url, "GET", "/cacerts", None, None, Trust::AnyForCacerts).unwrap();
    assert_eq!(r.status, 200);
    r.text()
}

fn nodes(url: &str, ca: &str, auth: &str) -> Vec<serde_json::Value> {
    let r = request(url, "GET", "/v1-k3s/nodes", Some(auth), None, Trust::Ca(ca)).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

/// "name role" of each node, sorted: registration order is not fixed.
fn node_names(nodes: &[serde_json::Value]) -> Vec<String> {
    let mut names: Vec<_> = nodes
        .iter()
        .map(|n| {
            format!(
                "{} {}",
                n["name"].as_str().unwrap(),
                n["role"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    names
}

#[test]
fn server_token_cacerts_agents_and_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(TIMEOUT)).unwrap();
    let notify_env = [("NOTIFY_SOCKET", notify_path.to_str().unwrap())];
    let mut s1 = server(dir, "s1", &["--cluster-init"], &notify_env);
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("READY=1 on NOTIFY_SOCKET");
    assert_eq!(&buf[..n], b"READY=1");

    let ping = request(&s1.url, "GET", "/ping", None, None, Trust::AnyForCacerts).unwrap();
    assert_eq!((ping.status, ping.text().as_str()), (200, "pong"));
    let missing = request(&s1.url, "GET", "/nope", None, None, Trust::AnyForCacerts).unwrap();
    assert_eq!(missing.status, 404);

    // The token file: K10<sha256 of /cacerts>::server:<32 hex>, mode 0600.
    let ca = cacerts(&s1.url);
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    let hash = hex::encode(Sha256::digest(ca.as_bytes()));
    assert_eq!(s1.token, format!("K10{hash}::server:{}", s1.password));
    assert_eq!(s1.password.len(), 32);
    assert!(s1.password.bytes().all(|b| b.is_ascii_hexdigit()));
    for file in ["node-token", "token"] {
        let path = dir.join("s1/server").join(file);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), s1.token);
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("s1/server/tls/server-ca.crt")).unwrap(),
        ca
    );

    // The API needs the token; TLS verifies against the served CA.
    let unauth = request(&s1.url, "GET", "/v1-k3s/nodes", None, None, Trust::Ca(&ca)).unwrap();
    assert_eq!(unauth.status, 401);
    let wrong = request(
        &s1.url,
        "GET",
        "/v1-k3s/nodes",
        Some("Bearer nope"),
        None,
        Trust::Ca(&ca),
    );
    assert_eq!(wrong.unwrap().status, 401);
    let bearer = format!("Bearer {}", s1.password);
    let listed = nodes(&s1.url, &ca, &bearer);
    assert_eq!(
        listed,
        [
            serde_json::json!({"name": "s1", "role": "server", "address": "127.0.0.1", "cluster_init": true})
        ]
    );
    let localhost = s1.url.replace("127.0.0.1", "localhost");
    assert_eq!(
        nodes(&localhost, &ca, &bearer).len(),
        1,
        "certificate valid for localhost"
    );

    // An agent from flags, one from config.yaml + K3S_TOKEN.
    let mut a1 = Standin::start(
        dir,
        "a1",
        &[
            "agent",
            "--server",
            &s1.url,
            "--token",
            &s1.token,
            "--node-name",
            "a1",
            "--kubelet-arg",
            "max-pods=5",
        ],
        &[],
    );
    std::fs::write(
        dir.join("a2.yaml"),
        format!(
            "server: {}\nnode-name: a2\nnode-label:\n  - zone=a\n  - rack=1\n",
            s1.url
        ),
    )
    .unwrap();
    let mut a2 = Standin::start(dir, "a2", &["agent"], &[("K3S_TOKEN", &s1.token)]);
    assert_eq!(
        a1.wait_for_file(&dir.join("a1/agent/registered")).trim(),
        s1.url
    );
    assert_eq!(
        a2.wait_for_file(&dir.join("a2/agent/registered")).trim(),
        s1.url
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("a1/agent/server-ca.crt")).unwrap(),
        ca
    );
    let basic = format!(
        "Basic {}",
        base64_encode(&format!("server:{}", s1.password))
    );
    let names = node_names(&nodes(&s1.url, &ca, &basic));
    assert_eq!(names, ["a1 agent", "a2 agent", "s1 server"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        a1.running() && a2.running(),
        "agents stay running:\n{}",
        a1.log()
    );

    // standin.json: how it was started, never a token value.
    let record = std::fs::read_to_string(dir.join("a2/standin.json")).unwrap();
    assert!(!record.contains(&s1.password), "{record}");
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["role"], "agent");
    assert_eq!(record["env"], serde_json::json!(["K3S_TOKEN"]));
    assert_eq!(
        record["flags"]["node-label"],
        serde_json::json!(["zone=a", "rack=1"])
    );
    let a1_record = std::fs::read_to_string(dir.join("a1/standin.json")).unwrap();
    assert!(
        !a1_record.contains(&s1.password) && a1_record.contains("kubelet-arg"),
        "{a1_record}"
    );

    // A token for another CA: refused before registering.
    let other = format!("K10{}::server:{}", "0".repeat(64), s1.password);
    let bad = Standin::start(
        dir,
        "bad-hash",
        &["agent", "--server", &s1.url, "--token", &other],
        &[],
    );
    let (status, log) = bad.exit();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("token CA hash does not match the Cluster CA certificate hash"),
        "{log}"
    );
    assert!(!dir.join("bad-hash/agent/registered").exists());
    // The right CA but the wrong password: the server says 401.
    let wrong = format!("K10{hash}::server:0123");
    let bad = Standin::start(
        dir,
        "bad-pw",
        &["agent", "--server", &s1.url, "--token", &wrong],
        &[("K3S_NODE_NAME", "bad-pw")],
    );
    let (status, log) = bad.exit();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("rejected the token (401)"), "{log}");
    // Another host under a taken name: refused as k3s refuses duplicate hostnames.
    let dup = Standin::start(
        dir,
        "dup",
        &[
            "agent",
            "--server",
            &s1.url,
            "--token",
            &s1.token,
            "--node-name",
            "a1",
            "--node-ip",
            "127.0.0.9",
        ],
        &[],
    );
    let (status, log) = dup.exit();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("duplicate hostname a1"), "{log}");

    for proc in [&mut a1, &mut a2, &mut s1.proc] {
        let status = proc.sigterm();
        assert!(status.success(), "{status}:\n{}", proc.log());
        assert!(proc
            .log()
            .contains("k3s-standin (test double): received SIGTERM, exiting"));
    }
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn joining_server_must_match_critical_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let first = server(
        dir,
        "s1",
        &[
            "--cluster-init",
            "--disable",
            "traefik",
            "--disable=servicelb",
        ],
        &[],
    );
    let join = |name: &str, extra: &[&str]| {
        let port = free_port().to_string();
        let mut args = vec![
            "server",
            "--server",
            &first.url,
            "--token",
            &first.token,
            "--node-name",
            name,
        ];
        args.extend(["--bind-address", "127.0.0.1", "--https-listen-port", &port]);
        args.extend(extra);
        (
            Standin::start(dir, name, &args, &[]),
            format!("https://127.0.0.1:{port}"),
        )
    };

    let (cidr, _) = join(
        "s2",
        &[
            "--cluster-cidr",
            "10.99.0.0/16",
            "--disable",
            "traefik,servicelb",
        ],
    );
    let (status, log) = cidr.exit();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("critical configuration value mismatch: cluster-cidr"),
        "{log}"
    );
    let (disable, _) = join("s3", &["--disable", "traefik"]);
    let (status, log) = disable.exit();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("critical configuration value mismatch: disable"),
        "{log}"
    );

    // Same flags (the disable list in another order, from config.yaml): joins,
    // shares the CA and the token, and agents can join through it.
    std::fs::write(dir.join("s4.yaml"), "disable: [servicelb, traefik]\n").unwrap();
    let (mut s4, s4_url) = join("s4", &[]);
    let token_path = dir.join("s4/server/node-token");
    assert_eq!(s4.wait_for_file(&token_path).trim(), first.token);
    let start = Instant::now();
    while request(&s4_url, "GET", "/ping", None, None, Trust::AnyForCacerts).is_err() {
        assert!(s4.running() && start.elapsed() < TIMEOUT, "{}", s4.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let ca = cacerts(&first.url);
    assert_eq!(cacerts(&s4_url), ca);
    let bearer = format!("Bearer {}", first.password);
    let names = node_names(&nodes(&first.url, &ca, &bearer));
    assert_eq!(names, ["s1 server", "s4 server"]);
    let mut agent = Standin::start(
        dir,
        "a1",
        &["agent", "--node-name", "a1"],
        &[("K3S_URL", &s4_url), ("K3S_TOKEN", &first.token)],
    );
    agent.wait_for_file(&dir.join("a1/agent/registered"));
    let names = node_names(&nodes(&s4_url, &ca, &bearer));
    assert_eq!(names, ["a1 agent", "s4 server"]);
    assert!(s4.sigterm().success());
}

#[test]
fn restart_keeps_ca_and_token_and_a_given_token_is_the_password() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut first = server(dir, "s1", &[], &[]);
    let ca = cacerts(&first.url);
    assert!(first.proc.sigterm().success());
    let again = server(dir, "s1", &[], &[]);
    assert_eq!(again.token, first.token);
    assert_eq!(cacerts(&again.url), ca);

    // `--token` becomes the password; a bare token skips the CA hash check.
    let token_file = dir.join("token.txt");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let kubeconfig = dir.join("kube/k3s.yaml");
    let args = [
        "--token-file",
        token_file.to_str().unwrap(),
        "--write-kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--write-kubeconfig-mode",
        "644",
    ];
    let given = server(dir, "s2", &args, &[]);
    let mode = std::fs::metadata(&kubeconfig).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    let kubeconfig = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(
        kubeconfig.contains(&format!("server: {}", given.url)),
        "{kubeconfig}"
    );
    assert_eq!(given.password, "s3cret-token");
    assert!(given.token.starts_with("K10") && given.token.ends_with("::server:s3cret-token"));
    let mut agent = Standin::start(
        dir,
        "a1",
        &["agent", "-s", &given.url, "-t", "s3cret-token"],
        &[],
    );
    agent.wait_for_file(&dir.join("a1/agent/registered"));
}

#[test]
fn agent_retries_until_the_server_is_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port().to_string();
    let url = format!("https://127.0.0.1:{port}");
    let mut agent = Standin::start(
        dir,
        "a1",
        &["agent", "--node-name", "a1"],
        &[("K3S_URL", &url), ("K3S_TOKEN", "early")],
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(agent.running(), "{}", agent.log());
    assert!(
        agent.log().contains("waiting for the server"),
        "{}",
        agent.log()
    );
    let args = [
        "server",
        "--bind-address",
        "127.0.0.1",
        "--https-listen-port",
        &port,
        "--token",
        "early",
    ];
    let _server = Standin::start(dir, "s1", &args, &[]);
    assert_eq!(
        agent.wait_for_file(&dir.join("a1/agent/registered")).trim(),
        url
    );
}

#[test]
fn agent_needs_server_and_token() {
    let tmp = tempfile::tempdir().unwrap();
    let (status, log) = Standin::start(tmp.path(), "a1", &["agent", "--token", "x"], &[]).exit();
    assert_eq!(status.code(), Some(1));
    assert!(log.contains("--server is required"), "{log}");
    let args = ["agent", "--server", "https://127.0.0.1:1"];
    let (status, log) = Standin::start(tmp.path(), "a2", &args, &[]).exit();
    assert_eq!(status.code(), Some(1));
    assert!(log.contains("--token is required"), "{log}");
}

#[test]
fn version_help_and_check_config() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "k3s version v1.20.6+k3s1 (stand-in test double)"
    );
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("TEST DOUBLE"));
    assert!(Command::new(BIN)
        .arg("check-config")
        .status()
        .unwrap()
        .success());
}
