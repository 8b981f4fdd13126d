//! Tests of the image builders: determinism, real tars, media types.

use super::*;
use flate2::read::GzDecoder;

#[test]
fn layers_are_deterministic_and_real_tars() {
    let build = || {
        LayerBuilder::new()
            .file("/etc/app/conf", "a=1\n", 0o600)
            .symlink("/usr/bin/app", "../../etc/app/conf")
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    assert_eq!(a.blob.digest, b.blob.digest);
    let mut tar = Vec::new();
    GzDecoder::new(a.blob.bytes().unwrap())
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(Digest::of(&tar), a.diff_id);
    let mut archive = tar::Archive::new(&tar[..]);
    let names: Vec<(String, tar::EntryType, u32)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path()
                    .unwrap()
                    .display()
                    .to_string()
                    .trim_end_matches('/')
                    .to_string(),
                h.entry_type(),
                h.mode().unwrap(),
            )
        })
        .collect();
    assert_eq!(names[0], ("etc".into(), tar::EntryType::Directory, 0o755));
    assert_eq!(
        names[2],
        ("etc/app/conf".into(), tar::EntryType::Regular, 0o600)
    );
    assert_eq!(names[5].1, tar::EntryType::Symlink);
}

#[test]
fn manifests_and_indexes_use_the_kind_media_types() {
    let layer = note_layer("/hello.txt", "hi").unwrap();
    for kind in [Kind::Docker, Kind::Oci] {
        let img = ImageSpec::new(kind, "arm")
            .cmd(&["/hello"])
            .build(vec![layer.clone()]);
        let m: Manifest = serde_json::from_slice(img.manifest.bytes().unwrap()).unwrap();
        assert_eq!(m.media_type.as_deref(), Some(kind.manifest_type()));
        assert_eq!(m.config.media_type, kind.config_type());
        assert_eq!(m.layers[0].media_type, kind.layer_type());
        let config: serde_json::Value =
            serde_json::from_slice(img.config.bytes().unwrap()).unwrap();
        assert_eq!(config["variant"], "v7");
        assert_eq!(config["rootfs"]["diff_ids"][0], layer.diff_id.to_string());
        let idx = ImageIndex::new(kind, vec![img.clone()]);
        let i: Index = serde_json::from_slice(idx.manifest.bytes().unwrap()).unwrap();
        assert_eq!(i.manifests[0].digest, img.digest());
        assert_eq!(
            i.manifests[0].platform.as_ref().unwrap().to_string(),
            "linux/arm/v7"
        );
    }
}

#[test]
fn random_layers_stream_to_disk_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let a = random_layer(dir.path(), "/data/blob", 3 << 20, 7).unwrap();
    let b = random_layer(dir.path(), "/data/blob", 3 << 20, 7).unwrap();
    let c = random_layer(dir.path(), "/data/blob", 3 << 20, 8).unwrap();
    assert_eq!(a.blob.digest, b.blob.digest);
    assert_ne!(a.blob.digest, c.blob.digest);
    assert!(a.blob.size > 3 << 20, "incompressible");
    let path = a.blob.path().unwrap().to_path_buf();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), a.blob.size);
    let hashed = airgap_bundle::digest::hash_file(&path).unwrap();
    assert_eq!(hashed.digest, a.blob.digest);
    let mut tar = HashingWriter::new(io::sink());
    io::copy(&mut GzDecoder::new(a.blob.open().unwrap()), &mut tar).unwrap();
    assert_eq!(tar.finish().1.digest, a.diff_id);
    drop(a);
    assert!(!path.exists());
}

#[test]
fn busybox_layer_links_applets() {
    let layer = busybox_layer().unwrap();
    let mut archive = tar::Archive::new(GzDecoder::new(layer.blob.bytes().unwrap()));
    let mut links = BTreeMap::new();
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        if let Some(target) = e.link_name().unwrap() {
            links.insert(
                e.path().unwrap().display().to_string(),
                target.display().to_string(),
            );
        }
    }
    assert_eq!(links.get("bin/echo").map(String::as_str), Some("busybox"));
    assert_eq!(links.len(), BUSYBOX_APPLETS.len());
    assert_eq!(busybox_layer().unwrap().blob.digest, layer.blob.digest);
}
