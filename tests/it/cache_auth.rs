//! The download cache, resumed downloads and registries as users have them,
//! against the real registry and the release server: a second build with
//! the same lock downloads nothing (it works with both servers stopped) and
//! with `SOURCE_DATE_EPOCH` gives the same bytes; a build whose inputs did
//! not change keeps the bundle already there; a cached blob that changed
//! is fetched again; a blob download cut off midway resumes with a Range
//! request; the China mirror layout of the release assets; basic auth from
//! the flag and the docker config; a registry with a private CA.

use crate::support;

use airgap_testbed::proxy::Proxy;
use airgap_testbed::seed::DEMO_VERSION;
use airgap_testbed::{Registry, RegistryOptions};
use support::cache::{
    assert_same_bundle, biggest_layer, build_at_epoch_ok, cache_dir, swap_registry, EPOCH,
};
use support::{assert_fails_naming, assert_ok, Testbed};

#[test]
fn second_build_comes_from_the_cache_even_with_both_servers_down() {
    let mut tb = Testbed::start();
    build_at_epoch_ok(&tb, "first.airgap.tar.zst", &[]);
    let cache = cache_dir(&tb);
    assert!(cache.join("blobs/sha256").is_dir(), "the cache is used");

    // A cached layer that no longer matches is fetched again.
    let (_, layer) = biggest_layer(&tb);
    let cached = cache.join("blobs/sha256").join(layer.digest.hex());
    let mut bytes = std::fs::read(&cached).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&cached, &bytes).unwrap();
    tb.release.reset_counters();
    // The first build pinned the lock; from here on it stays the same.
    build_at_epoch_ok(&tb, "second.airgap.tar.zst", &[]);
    assert_eq!(
        tb.release.bytes_served(),
        0,
        "release assets come from the cache: {:?}",
        tb.release.all_requests()
    );

    // Neither server is needed any more.
    tb.registry.stop();
    tb.release.stop();
    build_at_epoch_ok(&tb, "third.airgap.tar.zst", &[]);
    assert_same_bundle(&tb, "second.airgap.tar.zst", "third.airgap.tar.zst");
    assert_ok(
        &tb.verify(&tb.out_dir().join("third.airgap.tar.zst")),
        "verify",
    );

    // Without the cache it needs the registry again, and says so.
    let out = support::run(&mut tb.build_command("fourth.airgap.tar.zst", &["--no-cache"]));
    assert_fails_naming(
        &out,
        "a --no-cache build with the servers down",
        &["sha256sum-amd64.txt", "Connection refused"],
    );
}

/// `--json` of a build that must succeed.
#[track_caller]
fn build_json(tb: &Testbed, name: &str, extra: &[&str], epoch: &str) -> serde_json::Value {
    let mut cmd = tb.build_command(name, extra);
    let out = support::run(cmd.arg("--json").env("SOURCE_DATE_EPOCH", epoch));
    assert_ok(&out, &format!("airgap bundle build -o {name} {extra:?}"));
    serde_json::from_slice(&out.stdout).expect("build --json prints JSON")
}

fn stat(path: &std::path::Path) -> (u64, std::time::SystemTime, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).unwrap();
    (m.len(), m.modified().unwrap(), m.ino())
}

#[test]
fn unchanged_inputs_keep_the_bundle_and_any_change_rebuilds_it() {
    let mut tb = Testbed::start();
    let name = "kept.airgap.tar.zst";
    let path = tb.out_dir().join(name);
    let first = build_json(&tb, name, &[], EPOCH);
    assert_eq!(first["up_to_date"], false);
    let written = stat(&path);

    // Same inputs: the bundle is kept as it is, with both servers down.
    tb.registry.stop();
    tb.release.stop();
    let again = build_json(&tb, name, &[], EPOCH);
    assert_eq!(again["up_to_date"], true, "{again}");
    assert_eq!(again["sha256"], first["sha256"]);
    assert_eq!(stat(&path), written, "the kept bundle was not touched");

    // Each input that changes the bytes makes it write the bundle again
    // (from the cache: the servers are still down).
    let rebuilt = |tb: &Testbed, extra: &[&str], epoch: &str, why: &str| {
        let out = build_json(tb, name, extra, epoch);
        assert_eq!(out["up_to_date"], false, "{why}: {out}");
        out
    };
    let other_time = rebuilt(&tb, &[], "1700000000", "another SOURCE_DATE_EPOCH");
    assert_ne!(other_time["sha256"], first["sha256"]);
    let back = rebuilt(&tb, &[], EPOCH, "back to the first time");
    assert_eq!(back["sha256"], first["sha256"], "reproducible");
    rebuilt(&tb, &["--compress", "none"], EPOCH, "another compression");
    rebuilt(&tb, &[], EPOCH, "zstd again");
    assert_eq!(build_json(&tb, name, &[], EPOCH)["up_to_date"], true);
    rebuilt(&tb, &["--rebuild"], EPOCH, "--rebuild");

    // The output changed on disk: same size and contents, newer mtime.
    let now = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(now)
        .unwrap();
    rebuilt(&tb, &[], EPOCH, "the output was touched");

    // A manifest changed.
    let manifest = std::fs::read_dir(tb.manifests_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "yaml"))
        .expect("a manifest");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str("\n# a comment changes the bundle's copy of the manifest\n");
    std::fs::write(&manifest, text).unwrap();
    rebuilt(&tb, &[], EPOCH, "a manifest changed");

    // The lock changed (a moved pin would, too).
    let mut lock = std::fs::read_to_string(tb.lock_path()).unwrap();
    lock.push('\n');
    std::fs::write(tb.lock_path(), lock).unwrap();
    rebuilt(&tb, &[], EPOCH, "images.lock changed");

    // Another key.
    let other = tb.work().join("other");
    assert_ok(
        &support::run(
            support::airgap()
                .args(["keygen", "--no-password", "--out"])
                .arg(&other),
        ),
        "keygen",
    );
    let mut cmd = tb.build_command_signed(name, &other.with_extension("key"), &["--json"]);
    let out = support::run(cmd.env("SOURCE_DATE_EPOCH", EPOCH));
    assert_ok(&out, "build signed with another key");
    let out: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out["up_to_date"], false, "another key");

    // A deleted bundle is written again.
    std::fs::remove_file(&path).unwrap();
    rebuilt(&tb, &[], EPOCH, "the output was deleted");
    assert_ok(&tb.verify(&path), "verify the rebuilt bundle");
}

#[test]
fn interrupted_blob_download_resumes_with_a_range_request() {
    let tb = Testbed::start();
    let proxy = Proxy::start(tb.registry.addr()).unwrap();
    let (repo, layer) = biggest_layer(&tb);
    assert!(layer.size > 1000, "a layer worth cutting: {layer:?}");
    let cut_at = layer.size / 2;
    proxy.cut_once(&layer.digest.hex(), cut_at);
    let mirror = format!("docker.io={}", proxy.url());
    let bundle = build_at_epoch_ok(
        &tb,
        "resumed.airgap.tar.zst",
        &["--registry-mirror", &mirror],
    );
    assert!(!bundle.is_empty());
    assert_ok(
        &tb.verify(&tb.out_dir().join("resumed.airgap.tar.zst")),
        "verify",
    );

    let path = format!("/v2/{repo}/blobs/{}", layer.digest);
    let asked = proxy.forwarded_matching(&path);
    eprintln!("requests for {path}: {asked:#?}");
    assert!(asked.len() >= 2, "cut off, then asked again: {asked:?}");
    assert!(asked[0].cut && asked[0].range.is_none());
    assert_eq!(asked[0].body_bytes, cut_at);
    let rest = &asked[1];
    assert_eq!(
        rest.range.as_deref(),
        Some(format!("bytes={cut_at}-").as_str())
    );
    assert_eq!(rest.status, 206);
    let served: u64 = asked.iter().map(|f| f.body_bytes).sum();
    assert_eq!(served, layer.size, "each byte of the layer served once");
    let partial = cache_dir(&tb).join("partial").join(layer.digest.hex());
    assert!(!partial.exists(), "the partial file became the blob");
}

#[test]
fn release_assets_from_the_china_mirror_layout() {
    let tb = Testbed::start();
    build_at_epoch_ok(&tb, "cn.airgap.tar.zst", &["--release-layout", "cn"]);
    let version = DEMO_VERSION.replace('+', "-");
    for asset in ["sha256sum-amd64.txt", "k3s-images.txt", "install.sh", "k3s"] {
        let path = format!("/k3s/{version}/{asset}");
        assert_eq!(
            tb.release.requests(&path),
            1,
            "{path}: {:?}",
            tb.release.all_requests()
        );
    }
    assert_eq!(tb.release.requests(&format!("/{DEMO_VERSION}/k3s")), 0);
}

/// The demo set behind basic auth: the wrong password fails naming the
/// registry, the user and where the credentials came from, and writes
/// nothing; the right one from `--registry-auth` or the docker config works.
#[test]
fn basic_auth_from_the_flag_or_the_docker_config() {
    let mut tb = Testbed::start();
    let registry =
        Registry::start_with(RegistryOptions::new().basic_auth("tester", "s3cret")).unwrap();
    swap_registry(&mut tb, registry);
    let host = tb.registry.addr().to_string();
    let lock = std::fs::read(tb.lock_path()).unwrap();

    let out = support::run(&mut tb.build_command("anon.airgap.tar.zst", &[]));
    assert_fails_naming(&out, "an anonymous build", &[&host, "wants credentials"]);
    tb.assert_no_output(&lock);

    let docker = tb.work().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    // base64("tester:wrong")
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"dGVzdGVyOndyb25n"}}}}}}"#),
    )
    .unwrap();
    let mut cmd = tb.build_command("wrong.airgap.tar.zst", &[]);
    let out = support::run(cmd.env("DOCKER_CONFIG", &docker));
    let err = assert_fails_naming(
        &out,
        "a build with the wrong password",
        &[&host, "refused the credentials", "as tester", "config.json"],
    );
    assert!(!err.contains("wrong"), "the password is never shown: {err}");
    tb.assert_no_output(&lock);

    let pw = tb.work().join("registry-password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let flag = format!("{host}=tester:{}", pw.display());
    let mut cmd = tb.build_command("flag.airgap.tar.zst", &["--registry-auth", &flag]);
    assert_ok(
        &support::run(cmd.env("DOCKER_CONFIG", &docker)),
        "--registry-auth",
    );

    // base64("tester:s3cret"), with a fresh cache so that it is asked.
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"dGVzdGVyOnMzY3JldA=="}}}}}}"#),
    )
    .unwrap();
    let mut cmd = tb.build_command("docker.airgap.tar.zst", &["--no-cache"]);
    assert_ok(
        &support::run(cmd.env("DOCKER_CONFIG", &docker)),
        "docker config",
    );
}

/// A registry serving HTTPS with a private CA: trusted with
/// `--registry-ca`, refused clearly without it.
#[test]
fn private_ca_with_registry_ca() {
    let tb = Testbed::start();
    let tls = Registry::start_with(
        RegistryOptions::new()
            .tls_self_signed()
            .serve_storage_of(&tb.registry),
    )
    .unwrap();
    let ca = tls.ca_path().unwrap().to_str().unwrap().to_string();
    let mirror = format!("docker.io={}", tls.url());
    let lock = std::fs::read(tb.lock_path()).unwrap();

    let out = support::run(
        &mut tb.build_command("untrusted.airgap.tar.zst", &["--registry-mirror", &mirror]),
    );
    assert_fails_naming(
        &out,
        "a build against an untrusted certificate",
        &[tls.addr(), "certificate", "--registry-ca"],
    );
    tb.assert_no_output(&lock);

    let path = build_at_epoch_ok(
        &tb,
        "tls.airgap.tar.zst",
        &["--registry-mirror", &mirror, "--registry-ca", &ca],
    );
    assert!(!path.is_empty());
}

/// 503s are retried; a registry that keeps failing is given up on after 5
/// tries, naming the registry, the image and the last status.
#[test]
fn server_errors_are_retried_then_reported() {
    let tb = Testbed::start();
    let proxy = Proxy::start(tb.registry.addr()).unwrap();
    let (repo, layer) = biggest_layer(&tb);
    let path = format!("/v2/{repo}/blobs/{}", layer.digest);
    let mirror = format!("docker.io={}", proxy.url());
    proxy.fail(&layer.digest.hex(), 503, 2);
    build_at_epoch_ok(
        &tb,
        "retried.airgap.tar.zst",
        &["--registry-mirror", &mirror],
    );
    let statuses: Vec<u16> = proxy
        .forwarded_matching(&path)
        .iter()
        .map(|f| f.status)
        .collect();
    assert_eq!(statuses, [503, 503, 200]);
    std::fs::remove_file(tb.out_dir().join("retried.airgap.tar.zst")).unwrap();

    let lock = std::fs::read(tb.lock_path()).unwrap();
    proxy.fail(&layer.digest.hex(), 500, 100);
    let out = support::run(&mut tb.build_command(
        "failing.airgap.tar.zst",
        &["--registry-mirror", &mirror, "--no-cache"],
    ));
    assert_fails_naming(
        &out,
        "a build against a registry that keeps failing",
        &[&proxy.addr(), &repo, "HTTP 500", "after 5 attempts"],
    );
    tb.assert_no_output(&lock);
}
