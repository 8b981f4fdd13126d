//! A bundle built from the local registry and release server checks out with
//! the standard tools, not only with airgap: the real `minisign`,
//! `sha256sum -c`, `skopeo inspect oci:` and a private containerd's
//! `ctr images import`, which names every image by its full reference and the
//! registry's digest and can run the busybox image from it.

use crate::support;

use airgap_testbed::containerd::Containerd;
use airgap_testbed::seed::{BUSYBOX_GREETING, BUSYBOX_REF};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use support::{extract, run_ok, Testbed};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// `images/index.json` of an extracted bundle: reference -> (media type,
/// digest).
fn layout_index(dir: &Path) -> BTreeMap<String, (String, String)> {
    let text = std::fs::read_to_string(dir.join("images/index.json")).unwrap();
    let index: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = BTreeMap::new();
    for m in index["manifests"]
        .as_array()
        .expect("index.json has manifests")
    {
        let name = m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap_or_else(|| panic!("index.json entry without a ref name: {m}"));
        assert_eq!(
            m["annotations"]["io.containerd.image.name"].as_str(),
            Some(name),
            "both names of {name} agree"
        );
        let mt = m["mediaType"].as_str().unwrap().to_string();
        let digest = m["digest"].as_str().unwrap().to_string();
        assert!(
            out.insert(name.to_string(), (mt, digest)).is_none(),
            "{name} is named twice in index.json"
        );
    }
    out
}

/// Extracts `bundle` into `dir` and checks it with minisign, sha256sum and
/// skopeo; returns the layout's index.
fn check_with_standard_tools(
    tb: &Testbed,
    bundle: &Path,
    dir: &Path,
) -> BTreeMap<String, (String, String)> {
    extract(bundle, dir);

    let out = run_ok(
        Command::new("minisign")
            .current_dir(dir)
            .args(["-Vm", "SHA256SUMS", "-p"])
            .arg(tb.pub_key()),
    );
    assert!(out.contains("k3s=v1.20.6+k3s1"), "trusted comment: {out}");

    let listed = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let out =
        run_ok(
            Command::new("sha256sum")
                .current_dir(dir)
                .args(["--strict", "-c", "SHA256SUMS"]),
        );
    let ok = out.lines().filter(|l| l.ends_with(": OK")).count();
    assert_eq!(ok, listed.lines().count(), "sha256sum -c:\n{out}");
    assert!(listed.contains("  bin/amd64/k3s\n"), "{listed}");

    // Every seeded image is in the layout, named by its full reference and
    // pinned to the registry's digest.
    let index = layout_index(dir);
    let refs: Vec<&String> = index.keys().collect();
    let mut want = tb.seeded.references();
    want.sort();
    assert_eq!(refs, want.iter().collect::<Vec<_>>());
    for (name, (_, digest)) in &index {
        assert_eq!(
            digest,
            &tb.seeded.get(name).digest.to_string(),
            "digest of {name}"
        );
    }

    // skopeo 1.9's oci: transport finds only OCI-typed entries by name.
    let layout = dir.join("images");
    let mut oci_typed = 0;
    for (name, (media_type, _)) in &index {
        if !media_type.starts_with("application/vnd.oci.") {
            continue;
        }
        oci_typed += 1;
        let out = run_ok(
            Command::new("skopeo")
                .arg("inspect")
                .arg(format!("oci:{}:{name}", layout.display())),
        );
        let info: serde_json::Value = serde_json::from_str(&out).unwrap();
        let seeded = tb.seeded.get(name);
        assert_eq!(info["Digest"], seeded.digest.to_string(), "skopeo: {name}");
        assert_eq!(info["Architecture"], "amd64", "skopeo: {name}");
        let amd64 = seeded.platform("amd64").unwrap();
        let layers: Vec<String> = amd64.layers.iter().map(|l| l.digest.to_string()).collect();
        assert_eq!(info["Layers"], serde_json::json!(layers), "skopeo: {name}");
    }
    assert!(
        oci_typed >= 7,
        "only {oci_typed} OCI-typed images: {index:?}"
    );
    index
}

#[test]
fn zstd_bundle_checks_out_with_minisign_sha256sum_and_skopeo() {
    let tb = Testbed::start();
    let bundle = tb.build_ok("site.airgap.tar.zst", &[]);
    let head = std::fs::read(&bundle).unwrap();
    assert_eq!(head[..4], ZSTD_MAGIC, "the default is zstd");
    let dir = tb.work().join("extracted");
    let index = check_with_standard_tools(&tb, &bundle, &dir);
    // The Docker-typed images are there too, with their Docker media types.
    let docker: Vec<&String> = index
        .iter()
        .filter(|(_, (mt, _))| mt.starts_with("application/vnd.docker."))
        .map(|(n, _)| n)
        .collect();
    assert!(
        docker
            .iter()
            .any(|n| *n == "docker.io/kubeguide/redis-master:latest"),
        "{docker:?}"
    );
    assert!(
        docker
            .iter()
            .any(|n| *n == "docker.io/rancher/klipper-lb:v0.1.2"),
        "{docker:?}"
    );
}

/// `ctr -n k8s.io images ls`: reference -> digest.
fn ctr_images(cd: &Containerd) -> BTreeMap<String, String> {
    let out = cd.ctr_ok(&["-n", "k8s.io", "images", "ls"]).unwrap();
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 3).then(|| (cols[0].to_string(), cols[2].to_string()))
        })
        .collect()
}

#[test]
fn uncompressed_bundle_imports_into_containerd_and_runs() {
    let tb = Testbed::start();
    let bundle = tb.build_ok("site.airgap.tar", &["--compress", "none"]);
    let head = std::fs::read(&bundle).unwrap();
    assert_eq!(
        &head[257..263],
        b"ustar\0",
        "--compress none writes a plain tar"
    );
    let dir = tb.work().join("extracted");
    check_with_standard_tools(&tb, &bundle, &dir);

    // The layout as an image archive, the way `ctr images import` takes it.
    let archive = tb.work().join("images.tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(dir.join("images"))
            .arg("-cf")
            .arg(&archive)
            .args(["oci-layout", "index.json", "blobs"]),
    );
    let cd = Containerd::start().unwrap();
    // Without --all-platforms: the bundle holds only the amd64 manifests of
    // multi-platform indexes, and ctr's --all-platforms wants every one.
    let archive_arg = archive.to_str().unwrap();
    let out = cd
        .ctr_ok(&["-n", "k8s.io", "images", "import", archive_arg])
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", cd.log_tail(30)));
    assert!(out.contains("unpacking"), "{out}");

    let images = ctr_images(&cd);
    for seeded in &tb.seeded.images {
        assert_eq!(
            images.get(&seeded.reference),
            Some(&seeded.digest.to_string()),
            "{} in containerd's k8s.io namespace; it has {images:#?}",
            seeded.reference
        );
    }
    assert_eq!(images.len(), tb.seeded.images.len(), "{images:#?}");

    // The runnable image runs from what was imported (needs runc and overlayfs).
    let id = Containerd::unique_id("airgap-busybox");
    let out = cd
        .ctr(&["-n", "k8s.io", "run", "--rm", BUSYBOX_REF, &id])
        .unwrap();
    assert!(
        out.status.success(),
        "ctr run {BUSYBOX_REF} failed ({}); this needs runc and overlayfs on the host:\n\
         stdout: {}\nstderr: {}\ncontainerd log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        cd.log_tail(30)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        BUSYBOX_GREETING
    );
}
