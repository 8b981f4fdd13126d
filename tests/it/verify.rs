//! `airgap bundle verify` rejects every bundle that breaks a reader rule, and
//! says which entry: a flipped byte anywhere (bundle.json, a layer, the k3s
//! binary, SHA256SUMS itself), a missing, extra or duplicate entry, `..` and
//! absolute names, links, and a signature made with another key. Each hostile
//! bundle is the good one rewritten at the tar level (support::tarball).

use crate::support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::tarball::{self, Bundle, TarEntry};
use support::{assert_fails_naming, assert_ok, run, run_ok, stdout, Testbed};

/// A testbed and the entries of a good, uncompressed bundle built from it.
fn good() -> (Testbed, Bundle) {
    let tb = Testbed::start();
    let path = tb.build_ok("good.airgap.tar", &["--compress", "none"]);
    let bundle = Bundle::read(&path);
    (tb, bundle)
}

/// Writes `bundle` beside the good one and verifies it with the site key;
/// it must fail and stderr must name `entry`. Returns stderr.
#[track_caller]
fn assert_rejected(tb: &Testbed, bundle: &Bundle, case: &str, entry: &str) -> String {
    let path = write_hostile(tb, bundle, case);
    let out = tb.verify(&path);
    let err = assert_fails_naming(&out, &format!("verify of a bundle with {case}"), &[entry]);
    eprintln!("{case}: {}", err.trim());
    err
}

/// Writes `bundle` under a neutral name (an entry name in the file name
/// would make every "names the entry" check pass).
fn write_hostile(tb: &Testbed, bundle: &Bundle, case: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let path = tb.work().join(format!(
        "hostile-{}.airgap.tar",
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    eprintln!("{}: {case}", path.display());
    bundle.write(&path);
    path
}

/// The layer redis-master and redis-slave share (the biggest one).
fn shared_layer(tb: &Testbed) -> String {
    let shared = tb.seeded.shared_layers();
    let master = tb
        .seeded
        .get("docker.io/kubeguide/redis-master:latest")
        .platform("amd64")
        .unwrap();
    let layer = master
        .layers
        .iter()
        .filter(|l| shared.contains(&l.digest))
        .max_by_key(|l| l.size)
        .expect("redis-master shares a layer");
    format!("images/{}", layer.digest.blob_path())
}

#[test]
fn good_bundle_verifies_also_after_a_rewrite() {
    let (tb, bundle) = good();
    let original = tb.out_dir().join("good.airgap.tar");
    let out = support::run(
        support::airgap()
            .args(["bundle", "verify", "--json"])
            .arg(&original)
            .arg("--key")
            .arg(tb.pub_key()),
    );
    assert_ok(&out, "verify --json of a good bundle");
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["k3s_version"], "v1.20.6+k3s1");
    assert_eq!(
        v["entries"].as_u64().unwrap() as usize,
        bundle.entries.len()
    );

    // The rewriting helpers change nothing by themselves: the same entries
    // written again give the same bytes, which GNU tar and airgap accept.
    let rewritten = write_hostile(&tb, &bundle, "nothing changed");
    assert_eq!(
        std::fs::read(&rewritten).unwrap(),
        std::fs::read(&original).unwrap()
    );
    assert_ok(&tb.verify(&rewritten), "verify of the rewritten bundle");

    // Raw names and links survive a round trip and GNU tar reads them.
    let mut e = TarEntry::file("a/b.txt", b"hello".to_vec(), 0o644);
    let link = TarEntry::symlink("a/c", "/etc/passwd");
    let back = tarball::parse(&tarball::serialize(&[e.clone(), link]));
    assert_eq!(
        (back[0].name(), back[0].data.as_slice()),
        ("a/b.txt".into(), &b"hello"[..])
    );
    assert_eq!(
        (back[1].kind(), back[1].link_name()),
        (tarball::SYMLINK, "/etc/passwd".into())
    );
    e.set_name_raw(b"../../x");
    let raw = tb.work().join("raw.tar");
    std::fs::write(&raw, tarball::serialize(&[e])).unwrap();
    let listing = run_ok(Command::new("tar").arg("-tf").arg(&raw));
    assert_eq!(listing.trim(), "../../x");
}

#[test]
fn flipped_byte_in_bundle_json_is_rejected() {
    let (tb, mut bundle) = good();
    bundle.get_mut("bundle.json").flip_byte(None);
    let err = assert_rejected(&tb, &bundle, "a flipped byte in bundle.json", "bundle.json");
    assert!(err.contains("mismatch"), "{err}");
}

#[test]
fn flipped_byte_in_a_layer_blob_is_rejected() {
    let (tb, mut bundle) = good();
    let layer = shared_layer(&tb);
    bundle.get_mut(&layer).flip_byte(None);
    assert_rejected(&tb, &bundle, "a flipped byte in a layer", &layer);
    // The last byte instead (the gzip trailer).
    bundle.get_mut(&layer).flip_byte(None);
    let len = bundle.data(&layer).len();
    bundle.get_mut(&layer).flip_byte(Some(len - 1));
    assert_rejected(&tb, &bundle, "a flipped last byte in a layer", &layer);
}

#[test]
fn flipped_byte_in_the_k3s_binary_is_rejected() {
    let (tb, mut bundle) = good();
    bundle.get_mut("bin/amd64/k3s").flip_byte(Some(0));
    assert_rejected(&tb, &bundle, "a flipped byte in k3s", "bin/amd64/k3s");
}

#[test]
fn flipped_byte_in_sha256sums_is_rejected() {
    let (tb, mut bundle) = good();
    bundle.get_mut("SHA256SUMS").flip_byte(None);
    let err = assert_rejected(&tb, &bundle, "a flipped byte in SHA256SUMS", "SHA256SUMS");
    assert!(err.contains("signature"), "{err}");
}

#[test]
fn missing_entry_is_rejected() {
    let (tb, good) = good();
    let layer = shared_layer(&tb);
    let mut bundle = good.clone();
    bundle.remove(&layer);
    let err = assert_rejected(&tb, &bundle, "a missing layer", &layer);
    assert!(err.contains("missing"), "{err}");
    let mut bundle = good;
    bundle.remove("scripts/install.sh");
    assert_rejected(&tb, &bundle, "a missing install.sh", "scripts/install.sh");
}

#[test]
fn extra_entry_is_rejected() {
    let (tb, mut bundle) = good();
    let extra = "manifests/zz-extra.yaml";
    bundle.insert_after(
        "manifests/guestbook.yaml",
        TarEntry::file(extra, b"apiVersion: v1\nkind: Namespace\n".to_vec(), 0o644),
    );
    let err = assert_rejected(&tb, &bundle, "an extra entry", extra);
    assert!(err.contains("not listed"), "{err}");
}

#[test]
fn duplicate_entry_is_rejected() {
    let (tb, good) = good();
    // The same bytes again: each copy matches SHA256SUMS, only the rule
    // against duplicates catches it.
    let mut bundle = good.clone();
    let copy = bundle.get("bin/amd64/k3s").clone();
    bundle.push(copy);
    let err = assert_rejected(&tb, &bundle, "a duplicate entry", "bin/amd64/k3s");
    assert!(err.contains("duplicate"), "{err}");
    // A second SHA256SUMS later in the stream.
    let mut bundle = good;
    let sums = bundle.get("SHA256SUMS").clone();
    bundle.push(sums);
    assert_rejected(&tb, &bundle, "a second SHA256SUMS", "SHA256SUMS");
}

#[test]
fn parent_dir_entry_is_rejected() {
    let (tb, good) = good();
    for name in ["../etc/cron.d/airgap", "images/../../etc/cron.d/airgap"] {
        let mut bundle = good.clone();
        let mut evil = TarEntry::file("placeholder", b"* * * * * root id\n".to_vec(), 0o644);
        evil.set_name_raw(name.as_bytes());
        assert_eq!(evil.name(), name);
        bundle.insert_after("bundle.json", evil);
        assert_rejected(&tb, &bundle, &format!("an entry named {name}"), name);
    }
}

#[test]
fn absolute_path_entry_is_rejected() {
    let (tb, mut bundle) = good();
    let name = "/etc/cron.d/airgap";
    let mut evil = TarEntry::file("placeholder", b"* * * * * root id\n".to_vec(), 0o644);
    evil.set_name_raw(name.as_bytes());
    bundle.insert_after("bundle.json", evil);
    let err = assert_rejected(&tb, &bundle, "an absolute path", name);
    assert!(err.contains("absolute"), "{err}");
}

#[test]
fn symlink_entry_is_rejected() {
    let (tb, good) = good();
    let mut bundle = good.clone();
    // install.sh replaced by a link to a host file, in its place.
    let at = bundle.position("scripts/install.sh");
    bundle.entries[at] = TarEntry::symlink("scripts/install.sh", "/etc/passwd");
    let err = assert_rejected(&tb, &bundle, "a symlink", "scripts/install.sh");
    assert!(err.contains("symlink"), "{err}");
    // A hard link to an earlier entry, likewise.
    let mut bundle = good;
    let at = bundle.position("bin/amd64/k3s");
    bundle.entries[at] = TarEntry::hard_link("bin/amd64/k3s", "images.lock");
    let err = assert_rejected(&tb, &bundle, "a hard link", "bin/amd64/k3s");
    assert!(err.contains("link"), "{err}");
}

#[test]
fn signature_by_another_key_is_rejected() {
    let (tb, mut bundle) = good();
    let (other_key, _) = tb.keygen("other");
    bundle.resign(&other_key);
    let err = assert_rejected(&tb, &bundle, "another key's signature", "SHA256SUMS");
    assert!(err.contains("key"), "{err}");
    // The same bundle verifies with the other key: only the key differs.
    let path = write_hostile(&tb, &bundle, "another key's signature");
    let out = run(support::airgap()
        .args(["bundle", "verify"])
        .arg(&path)
        .arg("--key")
        .arg(tb.work().join("other.pub")));
    assert_ok(&out, "verify with the key that signed it");
}
