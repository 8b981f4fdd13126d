//! What the bundle holds of the images: every blob once (the layers
//! redis-master and redis-slave share are stored a single time, and `inspect`
//! reports what that saved), Docker v2 manifests byte for byte as the registry
//! serves them, and a `--json` build summary that names every image with its
//! digest.

use crate::support;

use airgap_bundle::digest::Digest;
use airgap_testbed::seed::GUESTBOOK_REFS;
use std::collections::{BTreeMap, BTreeSet};
use support::tarball::Bundle;
use support::{airgap, assert_ok, run, stdout, Testbed};

const MASTER: &str = GUESTBOOK_REFS[0];
const SLAVE: &str = GUESTBOOK_REFS[1];
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

fn blob_entry(d: &Digest) -> String {
    format!("images/{}", d.blob_path())
}

#[test]
fn shared_layers_are_stored_once_and_inspect_reports_the_saving() {
    let tb = Testbed::start();
    let path = tb.build_ok("site.airgap.tar.zst", &[]);
    let bundle = Bundle::read(&path);

    // No entry twice, and each shared layer exactly once.
    let names = bundle.names();
    let unique: BTreeSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "duplicate entries: {names:?}");
    let shared = tb.seeded.shared_layers();
    let master = tb.seeded.get(MASTER).platform("amd64").unwrap();
    let slave = tb.seeded.get(SLAVE).platform("amd64").unwrap();
    let master_layers: BTreeSet<Digest> = master.layers.iter().map(|l| l.digest).collect();
    let slave_layers: BTreeSet<Digest> = slave.layers.iter().map(|l| l.digest).collect();
    let between: BTreeSet<Digest> = master_layers.intersection(&slave_layers).copied().collect();
    assert!(!between.is_empty(), "redis-master and -slave share layers");
    assert_eq!(shared, between, "only the redis images share layers");
    for d in &shared {
        assert_eq!(bundle.count(&blob_entry(d)), 1, "shared layer {d}");
    }

    // Exactly the blobs the amd64 images need: every top manifest, every
    // amd64 manifest, config and layer.
    let mut want: BTreeMap<Digest, u64> = BTreeMap::new();
    for image in &tb.seeded.images {
        want.insert(image.digest, image.size);
        let p = image.platform("amd64").unwrap();
        want.insert(p.digest, p.size);
        for b in std::iter::once(&p.config).chain(&p.layers) {
            want.insert(b.digest, b.size);
        }
    }
    let blobs: BTreeSet<String> = bundle.blob_names().into_iter().collect();
    let want_names: BTreeSet<String> = want.keys().map(blob_entry).collect();
    assert_eq!(blobs, want_names);

    // What sharing saved: each shared layer once, and nothing else.
    let shared_bytes: u64 = master
        .layers
        .iter()
        .filter(|l| shared.contains(&l.digest))
        .map(|l| l.size)
        .sum();
    assert!(shared_bytes > 0);
    let out = run(airgap()
        .args(["bundle", "inspect", "--json"])
        .arg(&path)
        .arg("--key")
        .arg(tb.pub_key()));
    assert_ok(&out, "inspect --json");
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["dedup_saved_bytes"].as_u64(), Some(shared_bytes), "{v:#}");
    let totals = &v["meta"]["totals"];
    assert_eq!(totals["blobs"].as_u64(), Some(want.len() as u64));
    assert_eq!(totals["blob_bytes"].as_u64(), Some(want.values().sum()));
    assert_eq!(
        totals["image_bytes_undeduplicated"].as_u64(),
        Some(want.values().sum::<u64>() + shared_bytes)
    );
    // bundle.json lists the shared layers under both images.
    for reference in [MASTER, SLAVE] {
        let image = v["meta"]["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["reference"] == reference)
            .unwrap_or_else(|| panic!("{reference} in bundle.json"));
        let blobs = image["platforms"][0]["blobs"].to_string();
        for d in &shared {
            assert!(blobs.contains(&d.to_string()), "{reference}: {blobs}");
        }
    }

    // And people are told too.
    let out = run(airgap().args(["bundle", "inspect"]).arg(&path));
    assert_ok(&out, "inspect");
    let text = stdout(&out);
    let saved = airgap_bundle::inspect::human_bytes(shared_bytes);
    let line = text
        .lines()
        .find(|l| l.starts_with("dedup"))
        .unwrap_or_else(|| panic!("no dedup line in:\n{text}"));
    assert!(line.contains(&format!("{saved} saved")), "{line}");
    assert!(text.contains(MASTER) && text.contains(SLAVE), "{text}");
}

#[test]
fn docker_v2_manifests_stay_docker_v2_byte_for_byte() {
    let tb = Testbed::start();
    let path = tb.build_ok("site.airgap.tar", &["--compress", "none"]);
    let bundle = Bundle::read(&path);
    let client = tb.registry.client();
    let index: serde_json::Value =
        serde_json::from_slice(bundle.data("images/index.json")).unwrap();
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tb.lock_path()).unwrap()).unwrap();

    for (reference, media_type) in [
        (MASTER, DOCKER_MANIFEST),
        ("docker.io/rancher/klipper-lb:v0.1.2", DOCKER_LIST),
    ] {
        let seeded = tb.seeded.get(reference);
        assert_eq!(seeded.media_type, media_type);
        let served = client
            .get_manifest(&seeded.repository, &seeded.tag, &[media_type])
            .unwrap();
        assert_eq!(served.media_type, media_type, "{reference}");
        assert_eq!(served.digest, seeded.digest, "{reference}");

        // The blob is the registry's bytes, so its digest is the seeded one.
        let stored = bundle.data(&blob_entry(&seeded.digest));
        assert!(
            stored == served.bytes.as_slice(),
            "{reference}: the bundle's manifest differs from the registry's:\n{}\n---\n{}",
            String::from_utf8_lossy(stored),
            String::from_utf8_lossy(&served.bytes)
        );
        assert_eq!(Digest::of(stored), seeded.digest);
        let parsed: serde_json::Value = serde_json::from_slice(stored).unwrap();
        assert_eq!(parsed["mediaType"], media_type, "{reference}");

        // index.json and the lock name that digest and type.
        let entry = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == reference)
            .unwrap_or_else(|| panic!("{reference} in index.json"));
        assert_eq!(entry["mediaType"], media_type, "{reference}");
        assert_eq!(entry["digest"], seeded.digest.to_string(), "{reference}");
        assert_eq!(entry["size"].as_u64(), Some(seeded.size), "{reference}");
        let pinned = lock["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["reference"] == reference)
            .unwrap_or_else(|| panic!("{reference} pinned in images.lock"));
        assert_eq!(pinned["digest"], seeded.digest.to_string(), "{reference}");

        // The amd64 manifest under it is Docker v2 and byte-exact too.
        let amd64 = seeded.platform("amd64").unwrap();
        let stored = bundle.data(&blob_entry(&amd64.digest));
        assert_eq!(Digest::of(stored), amd64.digest);
        let served = client
            .get_manifest(&seeded.repository, &amd64.digest.to_string(), &[])
            .unwrap();
        assert!(stored == served.bytes.as_slice(), "{reference} amd64");
        let parsed: serde_json::Value = serde_json::from_slice(stored).unwrap();
        assert_eq!(parsed["mediaType"], DOCKER_MANIFEST, "{reference} amd64");
    }
}

#[test]
fn json_summary_lists_every_image_with_digests() {
    let tb = Testbed::start();
    let out = tb.build("site.airgap.tar.zst", &["--json"]);
    assert_ok(&out, "bundle build --json");
    let text = stdout(&out);
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{text}"));
    let path = tb.out_dir().join("site.airgap.tar.zst");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(v["k3s_version"], "v1.20.6+k3s1");
    assert_eq!(v["arches"], serde_json::json!(["amd64"]));
    assert_eq!(v["size"].as_u64(), Some(bytes.len() as u64));
    assert_eq!(v["sha256"], Digest::of(&bytes).to_string());
    assert!(v["dedup_saved_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["lock_updated"], true, "the copied lock had no pins");

    let images: BTreeMap<String, String> = v["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| {
            (
                i["reference"].as_str().unwrap().to_string(),
                i["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: BTreeMap<String, String> = tb
        .seeded
        .images
        .iter()
        .map(|i| (i.reference.clone(), i.digest.to_string()))
        .collect();
    assert_eq!(images, want);
    assert_eq!(v["images"].as_array().unwrap().len(), want.len());

    // A second build from the pinned lock changes nothing in it.
    let lock = std::fs::read(tb.lock_path()).unwrap();
    let out = tb.build("again.airgap.tar.zst", &["--json"]);
    assert_ok(&out, "second bundle build --json");
    let again: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(again["lock_updated"], false);
    assert_eq!(again["images"], v["images"]);
    assert_eq!(std::fs::read(tb.lock_path()).unwrap(), lock);
}
