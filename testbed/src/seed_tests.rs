//! Tests of the seeded sets against a real registry and skopeo.

use super::*;
use airgap_bundle::oci::{self, AnyManifest};
use std::process::Command;

#[test]
fn demo_manifests_come_back_byte_exact() {
    let registry = Registry::start().unwrap();
    let seeded = seed_demo(&registry).unwrap();
    let client = registry.client();
    let mut want: Vec<String> = GUESTBOOK_REFS.iter().map(|s| s.to_string()).collect();
    want.extend(k3s_images_txt());
    assert_eq!(seeded.references(), want);

    for image in &seeded.images {
        let got = client
            .get_manifest(&image.repository, &image.tag, &[&image.media_type])
            .unwrap();
        assert_eq!(got.media_type, image.media_type, "{}", image.reference);
        assert_eq!(got.digest, image.digest, "{}", image.reference);
        assert_eq!(got.registry_digest, Some(image.digest));
        assert_eq!(got.bytes.len() as u64, image.size);
        for p in &image.platforms {
            let m = client
                .get_manifest(&image.repository, &p.digest.to_string(), &[&p.media_type])
                .unwrap();
            assert_eq!(
                (m.digest, m.media_type.as_str()),
                (p.digest, p.media_type.as_str())
            );
            let AnyManifest::Image(parsed) =
                AnyManifest::parse("m", Some(&m.media_type), &m.bytes).unwrap()
            else {
                panic!("{} {}: not an image manifest", image.reference, p.platform);
            };
            assert_eq!(parsed.config.digest, p.config.digest);
            for b in std::iter::once(&p.config).chain(&p.layers) {
                assert!(client.has_blob(&image.repository, &b.digest).unwrap());
                let stored = std::fs::metadata(registry.blob_data_path(&b.digest)).unwrap();
                assert_eq!(stored.len(), b.size);
            }
        }
    }

    let master = seeded.get(GUESTBOOK_REFS[0]);
    let slave = seeded.get(GUESTBOOK_REFS[1]);
    let frontend = seeded.get(GUESTBOOK_REFS[2]);
    assert_eq!(master.media_type, oci::DOCKER_MANIFEST);
    assert_eq!(
        master.platforms[0].layers[..2],
        slave.platforms[0].layers[..2]
    );
    assert_ne!(master.platforms[0].layers[2], slave.platforms[0].layers[2]);
    let shared = seeded.shared_layers();
    assert_eq!(shared.len(), 2, "debian base and redis layers");
    assert!(frontend.blobs().iter().all(|b| !shared.contains(&b.digest)));

    let pause = seeded.get("docker.io/rancher/pause:3.1");
    assert_eq!(pause.media_type, oci::OCI_INDEX);
    assert!(pause.platform("amd64").is_some() && pause.platform("arm64").is_some());
    assert_eq!(
        pause.platform("arm64").unwrap().media_type,
        oci::OCI_MANIFEST
    );
    let lb = seeded.get("docker.io/rancher/klipper-lb:v0.1.2");
    assert_eq!(lb.media_type, oci::DOCKER_LIST);
    // A Docker client that only takes schema 2 manifests cannot get a list.
    assert!(client
        .get_manifest("rancher/pause", "3.1", &[oci::DOCKER_MANIFEST])
        .is_err());
}

#[test]
fn seeding_is_deterministic() {
    let a = guestbook_images().unwrap();
    let b = guestbook_images().unwrap();
    let digests = |v: &[(String, Image)]| v.iter().map(|(_, i)| i.digest()).collect::<Vec<_>>();
    assert_eq!(digests(&a), digests(&b));
    let x = k3s_system_images().unwrap();
    let y = k3s_system_images().unwrap();
    assert!(x
        .iter()
        .zip(&y)
        .all(|((_, i), (_, j))| i.digest() == j.digest()));
}

#[test]
fn skopeo_reads_the_runnable_busybox() {
    let registry = Registry::start().unwrap();
    let seeded = seed_demo(&registry).unwrap();
    let busybox = seeded.get(BUSYBOX_REF);
    let target = format!(
        "docker://{}/rancher/library-busybox:1.32.1",
        registry.addr()
    );
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--override-arch",
            "amd64",
            "--override-os",
            "linux",
            &target,
        ])
        .output()
        .expect("running skopeo");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let amd64 = busybox.platform("amd64").unwrap();
    // skopeo names the image by the digest of what the tag points at: the index.
    assert_eq!(v["Digest"], busybox.digest.to_string());
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["Layers"][0], amd64.layers[0].digest.to_string());

    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw", &target])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        airgap_bundle::digest::Digest::of(&out.stdout),
        busybox.digest
    );

    let config = registry
        .client()
        .get_blob("rancher/library-busybox", &amd64.config.digest)
        .unwrap();
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["/bin/echo", BUSYBOX_GREETING])
    );
}

#[test]
fn bench_set_is_big_shared_and_incompressible() {
    let registry = Registry::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let total = 6 << 20;
    let seeded = seed_bench_in(&registry, total, tmp.path()).unwrap();
    assert_eq!(seeded.references(), BENCH_REFS);
    let layer_bytes: u64 = {
        let mut seen = BTreeMap::new();
        for i in &seeded.images {
            for l in &i.platforms[0].layers {
                seen.insert(l.digest, l.size);
            }
        }
        seen.values().sum()
    };
    assert!(layer_bytes >= total, "{layer_bytes} < {total}");
    let shared = seeded.shared_layers();
    assert_eq!(shared.len(), 1);
    let base = shared.iter().next().unwrap();
    assert!(
        std::fs::metadata(registry.blob_data_path(base))
            .unwrap()
            .len()
            >= total * 2 / 5
    );
    let kinds: BTreeSet<&str> = seeded
        .images
        .iter()
        .map(|i| i.media_type.as_str())
        .collect();
    assert_eq!(kinds.len(), 2, "Docker and OCI");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "temp layers freed"
    );
    let client = registry.client();
    for i in &seeded.images {
        assert_eq!(
            client
                .get_manifest(&i.repository, &i.tag, &[])
                .unwrap()
                .digest,
            i.digest
        );
    }
}

#[test]
fn demo_release_has_both_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let gh = write_demo_release(dir.path(), b"k3s bytes").unwrap();
    assert!(gh.ends_with("v1.20.6+k3s1"));
    let sums = std::fs::read_to_string(gh.join("sha256sum-amd64.txt")).unwrap();
    assert!(sums.contains(&format!("{}  k3s\n", Digest::of(b"k3s bytes").hex())));
    let images = std::fs::read_to_string(gh.join("k3s-images.txt")).unwrap();
    assert_eq!(images.lines().count(), 8);
    assert!(images.lines().all(|l| l.starts_with("docker.io/rancher/")));
    let mirror = dir.path().join("k3s/v1.20.6-k3s1");
    assert_eq!(
        std::fs::read(mirror.join("k3s-arm64")).unwrap(),
        std::fs::read(gh.join("k3s-arm64")).unwrap()
    );
    let status = Command::new("sha256sum")
        .args(["-c", "sha256sum-arm64.txt"])
        .current_dir(&gh)
        .output()
        .unwrap();
    assert!(status.status.success());
}
