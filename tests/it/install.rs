//! `airgap install --offline` end to end: every host path under `--root` (a
//! temp dir), the images into a private containerd, checked with the real
//! `ctr`, `systemd-analyze` and `sh`; k3s is the `k3s-standin` TEST DOUBLE,
//! which writes the K10 join token and serves `/ping` and `/cacerts`.
//!
//! The demo bundle is built once per test binary (support::install); each
//! test has its own containerd, root dir and port. None of these installs
//! skips a preflight check: the port is a free one, and the host checks pass
//! on the test machines (a check that fails here fails the test, loudly).

use crate::support;

use airgap_bundle::meta::FileRole;
use airgap_testbed::containerd::Containerd;
use airgap_testbed::seed::{BUSYBOX_GREETING, BUSYBOX_REF};
use airgap_testbed::standin::{self, Token};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::install::*;
use support::tarball::Bundle;
use support::{assert_fails_naming, assert_ok, run, stderr, stdout};

const MANIFESTS_DIR: &str = "var/lib/rancher/k3s/server/manifests";
const RECORD: &str = "var/lib/rancher/k3s/airgap/install.json";
const EMBEDDED_ARCHIVE: &str = "var/lib/rancher/k3s/agent/images/airgap-images.tar";

/// Asserts that containerd holds exactly the bundle's images, each by its
/// full reference with its digest and the CRI labels (the sandbox image also
/// pinned), all complete and unpacked.
#[track_caller]
fn assert_images_imported(bed: &InstallBed, cd: &Containerd) {
    let listed = images(cd);
    let mut sandbox = 0;
    for image in &bed.meta.images {
        let name = image.reference.to_string();
        let row = listed
            .get(&name)
            .unwrap_or_else(|| panic!("{name} is not in containerd: {listed:#?}"));
        assert_eq!(row.digest, image.digest.to_string(), "{name}");
        assert!(
            row.labels.contains("io.cri-containerd.image=managed"),
            "{name}: {row:?}"
        );
        let is_sandbox = image.sources.iter().any(|s| s == "sandbox");
        sandbox += usize::from(is_sandbox);
        assert_eq!(
            row.labels.contains("io.cri-containerd.pinned=pinned"),
            is_sandbox,
            "{name} (sandbox: {is_sandbox}): {row:?}"
        );
    }
    assert_eq!(sandbox, 1, "the bundle carries one sandbox (pause) image");
    assert_eq!(listed.len(), bed.meta.images.len(), "{listed:#?}");
    for row in rows(&ctr(cd, &["-n", "k8s.io", "images", "check"])) {
        let line = row.join(" ");
        assert!(line.contains("complete"), "{line}");
        assert_eq!(
            row.last().map(String::as_str),
            Some("true"),
            "not unpacked: {line}"
        );
    }
}

/// The containerd side of "nothing happened": no image, no lease, and no
/// content but what was there before.
#[track_caller]
pub(crate) fn assert_containerd_untouched(
    cd: &Containerd,
    content_before: &std::collections::BTreeMap<String, String>,
    what: &str,
) {
    assert!(
        images(cd).is_empty(),
        "{what}: images appeared: {:#?}",
        images(cd)
    );
    assert!(
        leases(cd).is_empty(),
        "{what}: leases left: {:?}",
        leases(cd)
    );
    assert_eq!(&content(cd), content_before, "{what}: content changed");
}

/// Pings the stand-in server and checks the token file against its CA.
#[track_caller]
pub(crate) fn assert_server_ready(root: &Path, port: u16) {
    let url = format!("https://127.0.0.1:{port}");
    let ping = standin::request(
        &url,
        "GET",
        "/ping",
        None,
        None,
        standin::Trust::AnyForCacerts,
    )
    .unwrap_or_else(|e| panic!("GET {url}/ping: {e:#}"));
    assert_eq!(ping.text().trim(), "pong");
    let token = std::fs::read_to_string(root.join(NODE_TOKEN)).unwrap();
    let token = token.trim();
    let (hash, rest) = token
        .strip_prefix("K10")
        .and_then(|t| t.split_once("::"))
        .unwrap_or_else(|| panic!("node-token is not K10<hash>::server:<password>: {token}"));
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{token}"
    );
    let password = rest
        .strip_prefix("server:")
        .unwrap_or_else(|| panic!("{token}"));
    assert!(!password.is_empty(), "{token}");
    let cacerts = standin::request(
        &url,
        "GET",
        "/cacerts",
        None,
        None,
        standin::Trust::AnyForCacerts,
    )
    .unwrap();
    assert_eq!(
        Token::parse(token).ca_hash.as_deref(),
        Some(standin::ca_hash(&cacerts.body).as_str()),
        "the token's CA hash is the served CA's"
    );
}

#[test]
fn server_install_imports_every_image_lays_k3s_down_and_starts_it() {
    let bed = InstallBed::start();
    let out = bed.install(&bed.server_args());
    assert_ok(&out, "airgap install --role server --init none");

    // containerd: every image, named, labelled, unpacked, and runnable.
    assert_images_imported(&bed, &bed.cd);
    assert!(leases(&bed.cd).is_empty(), "{:?}", leases(&bed.cd));
    let id = Containerd::unique_id("install-busybox");
    let ran = ctr(&bed.cd, &["-n", "k8s.io", "run", "--rm", BUSYBOX_REF, &id]);
    assert!(ran.contains(BUSYBOX_GREETING), "{ran}");

    // The files install.sh would write, under the root.
    let k3s = bed.path("usr/local/bin/k3s");
    assert_eq!(mode(&k3s), 0o755);
    assert!(
        std::fs::read(&k3s).unwrap() == std::fs::read(standin_binary()).unwrap(),
        "{} is not the bundle's k3s",
        k3s.display()
    );
    for link in ["kubectl", "crictl", "ctr"] {
        let path = bed.path(&format!("usr/local/bin/{link}"));
        assert_eq!(
            std::fs::read_link(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            Path::new("/usr/local/bin/k3s")
        );
    }
    let config = std::fs::read_to_string(bed.path("etc/rancher/k3s/config.yaml")).unwrap();
    assert!(config.starts_with('#'), "{config}");
    let registries = std::fs::read_to_string(bed.path("etc/rancher/k3s/registries.yaml")).unwrap();
    assert!(
        registries.contains("mirrors:") && registries.contains("\"docker.io\""),
        "{registries}"
    );
    // --init none: the env file is the installer's own (no unit to hold it).
    let env = bed.path("var/lib/rancher/k3s/airgap/k3s.env");
    assert_eq!(mode(&env), 0o600, "{}", env.display());
    assert!(bed.path(RECORD).is_file());
    let bundle = Bundle::read(&bed.bundle);
    let manifests: Vec<_> = bed
        .meta
        .files
        .iter()
        .filter(|f| f.role == FileRole::Manifest)
        .collect();
    assert!(!manifests.is_empty());
    for f in manifests {
        let name = f.path.rsplit('/').next().unwrap();
        let placed = bed.path(&format!("{MANIFESTS_DIR}/{name}"));
        assert_eq!(
            std::fs::read(&placed).unwrap_or_else(|e| panic!("{}: {e}", placed.display())),
            bundle.data(&f.path),
            "{}",
            placed.display()
        );
    }

    // The stand-in server is up, on this test's port, with its token.
    let pid = bed.pid("k3s").expect("a pid file for the detached k3s");
    assert!(process_alive(pid));
    assert_server_ready(bed.root(), bed.port);
    assert!(
        stderr(&out).contains(&format!(
            "--server https://<this server's address>:{}",
            bed.port
        )),
        "the join command names the port:\n{}",
        stderr(&out)
    );

    stop_standins(bed.root());
    assert!(!process_alive(pid), "the stand-in (pid {pid}) did not stop");
}

/// A throwaway root for `systemd-analyze verify --root`: systemd's own units
/// (so `multi-user.target`, `network-online.target` resolve), the unit under
/// test, and `/usr/local/bin/k3s` hard-linked to the installed one (the
/// unit's `ExecStart` must name an executable that exists in the root).
fn systemd_verify_root(root: &Path, unit: &str, dir: &Path) -> PathBuf {
    let v = dir.join(format!("verify-{unit}"));
    std::fs::create_dir_all(v.join("usr/lib/systemd")).unwrap();
    std::fs::create_dir_all(v.join("etc/systemd/system")).unwrap();
    std::fs::create_dir_all(v.join("usr/local/bin")).unwrap();
    support::run_ok(
        Command::new("cp")
            .arg("-a")
            .arg("/usr/lib/systemd/system")
            .arg(v.join("usr/lib/systemd/")),
    );
    let rel = format!("etc/systemd/system/{unit}");
    std::fs::copy(root.join(&rel), v.join(&rel)).unwrap();
    std::fs::hard_link(root.join("usr/local/bin/k3s"), v.join("usr/local/bin/k3s")).unwrap();
    v
}

fn systemd_analyze_verify(v: &Path, unit: &str) -> std::process::Output {
    run(Command::new("systemd-analyze")
        .arg("verify")
        .arg("--root")
        .arg(v)
        .arg(format!("/etc/systemd/system/{unit}")))
}

/// `systemd-analyze verify` must pass without a word: it exits 0 on unknown
/// keys and bad values and only warns, so a warning fails the check too.
#[track_caller]
fn assert_unit_verifies(root: &Path, unit: &str, dir: &Path) {
    let v = systemd_verify_root(root, unit, dir);
    let out = systemd_analyze_verify(&v, unit);
    assert!(
        out.status.success() && stderr(&out).trim().is_empty(),
        "systemd-analyze verify {unit} ({}):\n{}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    // The check is real: without the binary the same unit fails.
    std::fs::remove_file(v.join("usr/local/bin/k3s")).unwrap();
    let out = systemd_analyze_verify(&v, unit);
    assert!(
        !out.status.success() && stderr(&out).contains("/usr/local/bin/k3s"),
        "systemd-analyze verify accepted {unit} without its binary:\n{}",
        stderr(&out)
    );
}

/// An agent's arguments to join `server` (a running stand-in) with its real
/// token, from a token file; returns them and the token's password.
fn agent_args(bed: &InstallBed, init: &str, server: &StandinServer) -> (Vec<String>, String) {
    let token_file = bed.scratch.path().join("node-token");
    std::fs::write(&token_file, format!("{}\n", server.token)).unwrap();
    let mut args = strings(&["--role", "agent", "--init", init, "--no-start"]);
    args.extend(bed.socket_args());
    args.extend(strings(&["--server", &server.url, "--token-file"]));
    args.push(token_file.display().to_string());
    let password = server.token.rsplit(':').next().unwrap().to_string();
    (args, password)
}

/// Nothing was started: no pid file, nobody listening on the port.
#[track_caller]
pub(crate) fn assert_not_started(root: &Path, port: u16) {
    assert!(
        !root.join(PID_DIR).exists(),
        "a pid dir under {}",
        root.display()
    );
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "something listens on {port}"
    );
}

#[test]
fn systemd_units_pass_systemd_analyze_verify_and_hold_the_join_settings() {
    let bed = InstallBed::start();
    let mut args = strings(&["--role", "server", "--init", "systemd", "--no-start"]);
    args.extend(bed.socket_args());
    args.extend(port_args(bed.port));
    let out = bed.install(&args);
    assert_ok(&out, "airgap install --init systemd --no-start (server)");
    assert_not_started(bed.root(), bed.port);
    let unit_path = bed.path("etc/systemd/system/k3s.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    assert!(unit.contains("Type=notify\n"), "{unit}");
    assert!(
        unit.contains("EnvironmentFile=-/etc/systemd/system/k3s.service.env\n"),
        "{unit}"
    );
    assert!(unit.contains(&bed.port.to_string()), "{unit}");
    assert_eq!(mode(&bed.path("etc/systemd/system/k3s.service.env")), 0o600);
    assert_unit_verifies(bed.root(), "k3s.service", bed.scratch.path());

    // An agent, in a root of its own and the same containerd, joining a
    // running stand-in server (the installer checks its CA before writing).
    let server_port = airgap_testbed::registry::free_port().unwrap();
    let server = StandinServer::start(bed.scratch.path(), server_port);
    let agent_root = tempdir("airgap-root-agent-");
    let (args, password) = agent_args(&bed, "systemd", &server);
    let out = run(&mut bed.install_cmd(&bed.bundle, agent_root.path(), &args));
    assert_ok(
        &out,
        "airgap install --role agent --init systemd --no-start",
    );
    assert_not_started(agent_root.path(), bed.port);
    let unit_path = agent_root
        .path()
        .join("etc/systemd/system/k3s-agent.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    assert!(
        unit.contains("EnvironmentFile=-/etc/systemd/system/k3s-agent.service.env\n"),
        "{unit}"
    );
    assert!(
        !unit.contains(&password),
        "the token is in the unit:\n{unit}"
    );
    let env_path = agent_root
        .path()
        .join("etc/systemd/system/k3s-agent.service.env");
    assert_eq!(mode(&env_path), 0o600);
    let env = std::fs::read_to_string(&env_path).unwrap();
    assert!(
        env.contains(&format!("K3S_URL='{}'\n", server.url)),
        "{env}"
    );
    assert!(
        env.contains(&format!("K3S_TOKEN='{}'\n", server.token)),
        "{env}"
    );
    assert!(
        !agent_root.path().join(MANIFESTS_DIR).exists(),
        "an agent got manifests"
    );
    assert_unit_verifies(agent_root.path(), "k3s-agent.service", bed.scratch.path());
}

#[test]
fn openrc_scripts_are_executable_shell_naming_their_env_file() {
    let bed = InstallBed::start();
    let mut args = strings(&["--role", "server", "--init", "openrc", "--no-start"]);
    args.extend(bed.socket_args());
    args.extend(port_args(bed.port));
    let out = bed.install(&args);
    assert_ok(&out, "airgap install --init openrc --no-start (server)");
    let server_port = airgap_testbed::registry::free_port().unwrap();
    let server = StandinServer::start(bed.scratch.path(), server_port);
    let agent_root = tempdir("airgap-root-agent-");
    let (agent, password) = agent_args(&bed, "openrc", &server);
    let out = run(&mut bed.install_cmd(&bed.bundle, agent_root.path(), &agent));
    assert_ok(&out, "airgap install --role agent --init openrc --no-start");

    for (root, name, env_needles) in [
        (bed.root(), "k3s", vec![]),
        (
            agent_root.path(),
            "k3s-agent",
            vec![
                format!("K3S_URL='{}'\n", server.url),
                format!("K3S_TOKEN='{}'\n", server.token),
            ],
        ),
    ] {
        assert_not_started(root, bed.port);
        let script_path = root.join(format!("etc/init.d/{name}"));
        assert_eq!(mode(&script_path), 0o755, "{}", script_path.display());
        let script = std::fs::read_to_string(&script_path).unwrap();
        assert!(script.starts_with("#!/sbin/openrc-run\n"), "{script}");
        let env_host = format!("/etc/rancher/k3s/{name}.env");
        assert!(
            script.contains(&env_host),
            "{name} does not name {env_host}:\n{script}"
        );
        assert!(
            !script.contains(&password),
            "the token is in the script:\n{script}"
        );
        // openrc-run scripts are sh: the real sh must parse it.
        support::run_ok(Command::new("sh").arg("-n").arg(&script_path));
        let env_path = root.join(env_host.trim_start_matches('/'));
        assert_eq!(mode(&env_path), 0o600, "{}", env_path.display());
        let env = std::fs::read_to_string(&env_path).unwrap();
        for needle in env_needles {
            assert!(env.contains(&needle), "{name}: {env}");
        }
    }
}

#[test]
fn a_second_identical_run_changes_nothing_and_says_so() {
    let bed = InstallBed::start();
    let out = bed.install(&bed.server_args());
    assert_ok(&out, "first airgap install");
    let pid = bed.pid("k3s").unwrap();
    let files = tree(bed.root());
    let content_before = content(&bed.cd);
    let images_before = images(&bed.cd);

    let mut args = bed.server_args();
    args.insert(0, "--json".into());
    let out = bed.install(&args);
    assert_ok(&out, "second airgap install");
    let report: serde_json::Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("--json printed no JSON ({e}):\n{}", stdout(&out)));
    assert_eq!(report["changed"], false, "{report:#}");
    assert_eq!(report["files_written"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["images"]["blobs_written"], 0, "{report:#}");

    assert_same_tree(&files, &tree(bed.root()), "the second run");
    assert_eq!(
        content(&bed.cd),
        content_before,
        "the second run changed content"
    );
    assert_eq!(images(&bed.cd), images_before);
    assert!(leases(&bed.cd).is_empty(), "{:?}", leases(&bed.cd));
    assert_eq!(bed.pid("k3s"), Some(pid), "k3s was restarted");
    assert!(process_alive(pid));
}

/// Writes a rewritten bundle under a neutral name (an entry name in the file
/// name would make "the message names the entry" pass by itself).
fn write_tampered(bed: &InstallBed, bundle: &Bundle, n: usize) -> PathBuf {
    let path = bed.scratch.path().join(format!("case-{n}.airgap.tar"));
    bundle.write(&path);
    path
}

#[test]
fn tampered_bundles_fail_naming_the_entry_and_leave_nothing_behind() {
    let bed = InstallBed::start();
    let good = Bundle::read(&bed.bundle);
    let blobs = good.blob_names();
    let last_blob = blobs.last().unwrap().clone();
    // The last blob of the stream is a layer (manifests and configs come first).
    let layers: BTreeSet<String> = bed
        .meta
        .images
        .iter()
        .flat_map(|i| &i.platforms)
        .flat_map(|p| p.blobs.iter().skip(2))
        .map(|d| format!("images/{}", d.blob_path()))
        .collect();
    assert!(layers.contains(&last_blob), "{last_blob} is not a layer");

    let mut layer = good.clone();
    let data_len = layer.get(&last_blob).data.len();
    layer.get_mut(&last_blob).flip_byte(Some(data_len - 10));
    let mut k3s = good.clone();
    k3s.get_mut("bin/amd64/k3s").flip_byte(None);
    let mut resigned = good.clone();
    resigned.resign(&bed.other_key);

    let cases = [
        (
            "a flipped byte in the last layer",
            layer,
            vec![last_blob.clone()],
        ),
        (
            "a flipped byte in the k3s binary",
            k3s,
            vec!["bin/amd64/k3s".to_string()],
        ),
        (
            "a signature by another key",
            resigned,
            vec!["signature".to_string()],
        ),
    ];
    for (n, (case, bundle, needles)) in cases.into_iter().enumerate() {
        let path = write_tampered(&bed, &bundle, n);
        let files = tree(bed.root());
        let content_before = content(&bed.cd);
        let out = run(&mut bed.install_cmd(&path, bed.root(), &bed.server_args()));
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        assert_fails_naming(&out, &format!("install of a bundle with {case}"), &needles);

        assert!(images(&bed.cd).is_empty(), "{case}: {:#?}", images(&bed.cd));
        assert!(
            leases(&bed.cd).is_empty(),
            "{case}: lease left: {:?}",
            leases(&bed.cd)
        );
        // Blobs committed under the dropped lease go at containerd's next
        // garbage collection; until then, only blobs that were verified (those
        // before the bad entry in the stream) may be there.
        let verified: BTreeSet<String> = bundle
            .names()
            .into_iter()
            .take_while(|n| !needles.contains(&n.as_str()))
            .filter_map(|n| {
                n.strip_prefix("images/blobs/sha256/")
                    .map(|h| format!("sha256:{h}"))
            })
            .collect();
        let settled = eventually(Duration::from_secs(5), || {
            content(&bed.cd) == content_before
        });
        if !settled {
            let after = content(&bed.cd);
            eprintln!("{case}: {} blobs linger after the lease went", after.len());
            let unverified: Vec<&String> = after
                .keys()
                .filter(|d| !content_before.contains_key(*d) && !verified.contains(*d))
                .collect();
            assert!(
                unverified.is_empty(),
                "{case}: unverified blobs in containerd: {unverified:?}"
            );
        }
        assert_same_tree(&files, &tree(bed.root()), case);
        assert!(
            !bed.root().join(PID_DIR).exists(),
            "{case}: k3s was started"
        );
    }
}

#[test]
fn a_missing_containerd_is_named_before_anything_is_written() {
    let bed = InstallBed::start();
    let missing = bed.scratch.path().join("no-containerd.sock");
    let mut args = strings(&["--role", "server", "--init", "none", "--containerd-socket"]);
    args.push(missing.display().to_string());
    args.extend(port_args(bed.port));
    let before = tree(bed.root());
    let out = run(&mut bed.install_cmd(&bed.bundle, bed.root(), &args));
    assert_fails_naming(
        &out,
        "install with no containerd",
        &[&missing.display().to_string()],
    );
    assert_same_tree(&before, &tree(bed.root()), "install with no containerd");
}

/// A manifest running the four bench images, so that the bundle carries
/// tens of MiB of incompressible layers (an import that takes a moment).
const BENCH_MANIFEST: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: bench
spec:
  containers:
    - {name: a, image: docker.io/airgap-bench/app-a:v1, imagePullPolicy: IfNotPresent}
    - {name: b, image: docker.io/airgap-bench/app-b:v1, imagePullPolicy: IfNotPresent}
    - {name: c, image: docker.io/airgap-bench/app-c:v1, imagePullPolicy: IfNotPresent}
    - {name: d, image: docker.io/airgap-bench/app-d:v1, imagePullPolicy: IfNotPresent}
";

/// install.json with the containerd socket left out (two containerds,
/// two sockets; everything else must be equal).
fn record_without_socket(root: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join(RECORD)).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("containerd_socket");
    v
}

#[test]
fn an_install_killed_mid_import_completes_when_run_again_as_a_clean_one() {
    let bed = InstallBed::start_with(|tb| {
        airgap_testbed::seed_bench(&tb.registry, 32 << 20).expect("seeding the bench images");
        std::fs::write(tb.manifests_dir().join("bench.yaml"), BENCH_MANIFEST).unwrap();
    });
    assert!(bed.meta.image("docker.io/airgap-bench/app-a:v1").is_some());
    // --no-start: the comparison is of what the installer writes, not of a
    // stand-in's random CA and token.
    let mut args = strings(&["--role", "server", "--init", "none", "--no-start"]);
    args.extend(bed.socket_args());
    args.extend(port_args(bed.port));

    // Kill it once containerd has some of its content but before it ends.
    let killed_log = bed.scratch.path().join("killed-run.log");
    let log = || std::fs::read_to_string(&killed_log).unwrap_or_default();
    let mut child = KillOnDrop(
        bed.install_cmd(&bed.bundle, bed.root(), &args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&killed_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (content_at_kill, leases_at_kill) = loop {
        let c = content(&bed.cd);
        if !c.is_empty() {
            break (c, leases(&bed.cd));
        }
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the install ended before any content was written:\n{}",
            log()
        );
        assert!(Instant::now() < deadline, "no content after 60 s");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the install finished before it could be killed:\n{}",
        log()
    );
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    let images_at_kill = images(&bed.cd);
    eprintln!(
        "killed with {} blobs in containerd, leases {leases_at_kill:?}, {} of {} images named",
        content_at_kill.len(),
        images_at_kill.len(),
        bed.meta.images.len()
    );
    assert!(!leases_at_kill.is_empty(), "no lease while importing");
    assert!(
        images_at_kill.len() < bed.meta.images.len(),
        "killed after the import: {images_at_kill:#?}"
    );
    assert!(
        !bed.path(RECORD).exists(),
        "killed after the record was written"
    );

    let out = bed.install(&args);
    assert_ok(&out, "the install run again after SIGKILL");

    // The same install from scratch, in a root and containerd of its own.
    let clean_cd = Containerd::start().unwrap();
    let clean_root = tempdir("airgap-root-clean-");
    let mut clean_args = strings(&["--role", "server", "--init", "none", "--no-start"]);
    clean_args.extend(strings(&[
        "--containerd-socket",
        clean_cd.socket().to_str().unwrap(),
    ]));
    clean_args.extend(port_args(bed.port));
    let out = run(&mut bed.install_cmd(&bed.bundle, clean_root.path(), &clean_args));
    assert_ok(&out, "a clean install");

    // containerd first, then the record, then every file.
    assert_images_imported(&bed, &bed.cd);
    assert_eq!(images(&bed.cd), images(&clean_cd));
    let resumed: BTreeSet<String> = content(&bed.cd).into_keys().collect();
    let clean: BTreeSet<String> = content(&clean_cd).into_keys().collect();
    assert_eq!(
        resumed, clean,
        "content of the resumed install, against a clean one's"
    );
    // The killed run's lease expires by itself (containerd.io/gc.expire);
    // any other lease would be one the second run left behind.
    let left: Vec<String> = leases(&bed.cd)
        .into_iter()
        .filter(|l| !leases_at_kill.contains(l))
        .collect();
    assert!(left.is_empty(), "the second run left leases: {left:?}");
    let lease_rows = ctr(&bed.cd, &["-n", "k8s.io", "leases", "ls"]);
    for row in rows(&lease_rows) {
        assert!(
            row.join(" ").contains("containerd.io/gc.expire="),
            "a lease that never expires: {row:?}"
        );
    }
    let timeless = |root: &Path| -> std::collections::BTreeMap<String, Node> {
        tree(root)
            .into_iter()
            .filter(|(k, _)| k != RECORD)
            .map(|(k, v)| (k, v.timeless()))
            .collect()
    };
    let (resumed, clean) = (
        record_without_socket(bed.root()),
        record_without_socket(clean_root.path()),
    );
    let differ: Vec<String> = clean
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, v)| resumed.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: resumed {}, clean {v}", resumed[k]))
        .collect();
    assert!(
        differ.is_empty() && resumed == clean,
        "install.json of the resumed install differs from a clean one's:\n{}",
        differ.join("\n")
    );
    assert_same_tree(
        &timeless(clean_root.path()),
        &timeless(bed.root()),
        "the resumed install, against a clean one",
    );
}

#[test]
fn uninstall_restores_the_root_but_keeps_what_the_user_made() {
    let bed = InstallBed::start();
    // A root that already holds things of its own, in dirs the install uses.
    std::fs::create_dir_all(bed.path("usr/local/bin")).unwrap();
    std::fs::write(bed.path("usr/local/bin/site-tool"), "#!/bin/sh\n").unwrap();
    std::fs::create_dir_all(bed.path("etc")).unwrap();
    std::fs::write(bed.path("etc/hostname"), "edge-1\n").unwrap();
    std::fs::create_dir_all(bed.path("var/lib")).unwrap();
    let before = tree(bed.root());

    let out = bed.install(&bed.server_args());
    assert_ok(&out, "airgap install");
    let pid = bed.pid("k3s").unwrap();
    assert_images_imported(&bed, &bed.cd);
    // The user's own file inside a directory the install created.
    std::fs::write(bed.path("etc/rancher/k3s/site-notes.txt"), "ours\n").unwrap();

    // --purge-data: k3s's own state (its CA, token) goes too, as with
    // k3s-uninstall.sh; without it, only what airgap wrote is removed.
    let out = bed.uninstall(&["--purge-images", "--purge-data"]);
    assert_ok(&out, "airgap uninstall --purge-images --purge-data");
    assert!(
        !process_alive(pid),
        "uninstall left k3s (pid {pid}) running"
    );
    let mut expected = before.clone();
    let after = tree(bed.root());
    for kept in [
        "etc/rancher",
        "etc/rancher/k3s",
        "etc/rancher/k3s/site-notes.txt",
    ] {
        let node = after
            .get(kept)
            .unwrap_or_else(|| panic!("uninstall removed the user's {kept}"));
        expected.insert(kept.to_string(), node.clone());
    }
    assert_same_tree(
        &expected,
        &after,
        "the root after uninstall, against before install",
    );
    assert!(
        images(&bed.cd).is_empty(),
        "--purge-images left {:#?}",
        images(&bed.cd)
    );
}

#[test]
fn an_agent_without_server_or_token_fails_and_writes_nothing() {
    let bed = InstallBed::start();
    let before = tree(bed.root());
    let token = bed.scratch.path().join("node-token");
    std::fs::write(&token, format!("K10{}::server:pw\n", "cd".repeat(32))).unwrap();
    let base = || {
        let mut a = strings(&["--role", "agent", "--init", "none"]);
        a.extend(bed.socket_args());
        a
    };
    let mut no_server = base();
    no_server.extend(strings(&["--token-file", token.to_str().unwrap()]));
    let mut no_token = base();
    no_token.extend(strings(&["--server", "https://127.0.0.1:6443"]));
    for (case, args, needle) in [
        ("no --server", no_server, "--server"),
        ("no token", no_token, "--token"),
    ] {
        let out = bed.install(&args);
        assert_fails_naming(&out, &format!("an agent with {case}"), &[needle]);
        assert_same_tree(&before, &tree(bed.root()), case);
        assert_containerd_untouched(&bed.cd, &Default::default(), case);
    }
}

#[test]
fn embedded_runtime_writes_an_archive_ctr_imports_with_every_image() {
    let bed = InstallBed::start();
    let args = no_start_embedded_args(bed.port);
    let out = bed.install(&args);
    assert_ok(&out, "airgap install --runtime embedded --no-start");
    assert_not_started(bed.root(), bed.port);
    // Nothing went to the (external) containerd.
    assert_containerd_untouched(&bed.cd, &Default::default(), "--runtime embedded");
    let archive = bed.path(EMBEDDED_ARCHIVE);
    // k3s v1.20 imports plain .tar (and .tar.gz), not zstd.
    let head = std::fs::read(&archive).unwrap_or_else(|e| panic!("{}: {e}", archive.display()));
    assert_eq!(
        &head[257..262],
        b"ustar",
        "{} is not a plain tar",
        archive.display()
    );

    // What k3s's embedded containerd does with it at start.
    ctr(
        &bed.cd,
        &[
            "-n",
            "k8s.io",
            "images",
            "import",
            archive.to_str().unwrap(),
        ],
    );
    let listed = images(&bed.cd);
    for image in &bed.meta.images {
        let name = image.reference.to_string();
        let row = listed
            .get(&name)
            .unwrap_or_else(|| panic!("ctr import did not list {name}: {listed:#?}"));
        assert_eq!(row.digest, image.digest.to_string(), "{name}");
    }
    assert_eq!(listed.len(), bed.meta.images.len(), "{listed:#?}");
    let id = Containerd::unique_id("embedded-busybox");
    let ran = ctr(&bed.cd, &["-n", "k8s.io", "run", "--rm", BUSYBOX_REF, &id]);
    assert!(ran.contains(BUSYBOX_GREETING), "{ran}");
}
