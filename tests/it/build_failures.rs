//! A build that cannot be trusted or completed stops with an error naming what
//! failed, and leaves nothing behind: no bundle, no staging dir or temp file
//! in the output dir, and `images.lock` as it was. Cases: a blob altered in
//! the registry's storage, a registry that is down, an image the registry
//! does not have, and a k3s binary that does not match its checksum.

use crate::support;

use airgap_testbed::release;
use airgap_testbed::seed::{DEMO_VERSION, GUESTBOOK_REFS};
use support::{assert_fails_naming, Testbed};

/// Flips one byte in the middle of a file, keeping its size.
fn flip_middle_byte(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn tampered_registry_blob_fails_naming_image_and_digest() {
    let tb = Testbed::start();
    let lock = std::fs::read(tb.lock_path()).unwrap();
    let master = tb.seeded.get(GUESTBOOK_REFS[0]);
    // redis-master's own layer (not shared), altered where the registry keeps it.
    let shared = tb.seeded.shared_layers();
    let layer = master.platforms[0]
        .layers
        .iter()
        .find(|l| !shared.contains(&l.digest))
        .expect("redis-master has a layer of its own");
    flip_middle_byte(&tb.registry.blob_data_path(&layer.digest));

    let out = tb.build("site.airgap.tar.zst", &[]);
    let err = assert_fails_naming(
        &out,
        "a build pulling a tampered layer",
        &[GUESTBOOK_REFS[0], &layer.digest.to_string()],
    );
    assert!(err.contains("mismatch"), "{err}");
    tb.assert_no_output(&lock);
}

#[test]
fn tampered_registry_manifest_fails_naming_image_and_digest() {
    let tb = Testbed::start();
    let lock = std::fs::read(tb.lock_path()).unwrap();
    // The pause image's amd64 manifest, pulled by digest from its index.
    let pause = tb.seeded.get("docker.io/rancher/pause:3.1");
    let amd64 = pause.platform("amd64").unwrap();
    flip_middle_byte(&tb.registry.blob_data_path(&amd64.digest));

    let out = tb.build("site.airgap.tar.zst", &[]);
    assert_fails_naming(
        &out,
        "a build pulling a tampered manifest",
        &["docker.io/rancher/pause:3.1", &amd64.digest.to_string()],
    );
    tb.assert_no_output(&lock);
}

#[test]
fn stopped_registry_fails_naming_the_registry() {
    let mut tb = Testbed::start();
    let lock = std::fs::read(tb.lock_path()).unwrap();
    tb.registry.stop();
    let out = tb.build("site.airgap.tar.zst", &[]);
    let addr = tb.registry.addr().to_string();
    assert_fails_naming(&out, "a build against a stopped registry", &[&addr]);
    tb.assert_no_output(&lock);
}

#[test]
fn unknown_image_fails_naming_the_image() {
    let tb = Testbed::start();
    let missing = "docker.io/kubeguide/does-not-exist:1.0";
    let text = std::fs::read_to_string(tb.lock_path()).unwrap();
    std::fs::write(
        tb.manifests_dir().join("missing.yaml"),
        format!(
            "kind: Pod\nmetadata: {{name: m}}\nspec:\n  containers:\n    \
             - {{name: m, image: {missing}, imagePullPolicy: IfNotPresent}}\n"
        ),
    )
    .unwrap();

    let out = tb.build("site.airgap.tar.zst", &[]);
    let err = assert_fails_naming(&out, "a build wanting an unknown image", &[missing]);
    assert!(
        err.contains("not found") || err.contains("404") || err.contains("unknown"),
        "{err}"
    );
    tb.assert_no_output(text.as_bytes());
}

#[test]
fn corrupt_k3s_binary_fails_naming_the_asset() {
    let tb = Testbed::start();
    let lock = std::fs::read(tb.lock_path()).unwrap();
    release::corrupt_asset(tb.release_root.path(), DEMO_VERSION, "k3s").unwrap();
    let out = tb.build("site.airgap.tar.zst", &[]);
    assert_fails_naming(
        &out,
        "a build fetching a corrupt k3s binary",
        &["mismatch for k3s", "v1.20.6%2Bk3s1/k3s", "amd64"],
    );
    tb.assert_no_output(&lock);
}
