//! Crafted archives against `airgap bundle verify` and `airgap install`: path
//! traversal, links, devices, duplicates, unlisted and missing entries, lying
//! sizes, truncation at every structural point (plain and zstd), zstd bombs,
//! PAX and GNU extension headers, bad signatures, and documents that
//! disagree with each other. Every case is generated here from a good bundle
//! (no binary fixtures). Each must make both commands fail with a message
//! naming the entry, leave the install root as it was, and name no image in
//! containerd. Some cases are re-signed with the site key, so that only the
//! structural rules stand between them and the host.

use crate::support;

use airgap_bundle::sums::{SIGNATURE_NAME, SUMS_NAME};
use std::path::Path;
use std::time::Duration;
use support::hostile::*;
use support::install::*;
use support::tarball::{self, Bundle, TarEntry};
use support::{assert_ok, run, stderr};

/// A name no honest bundle or host holds: a traversal that worked would
/// leave a file of this name somewhere outside the root.
const EVIL: &str = "airgap-hostile-evil";

struct Case {
    what: String,
    /// The bundle file's bytes (plain tar, or zstd).
    bytes: Vec<u8>,
    /// What stderr must contain; an empty list means "some entry of the
    /// bundle by name" (zstd truncations, where the cut falls in an entry
    /// that depends on the compressor).
    needles: Vec<String>,
}

struct Cases {
    list: Vec<Case>,
}

impl Cases {
    fn add(&mut self, what: &str, bundle: &Bundle, needles: &[&str]) {
        self.raw(what, tarball::serialize(&bundle.entries), needles);
    }
    fn raw(&mut self, what: &str, bytes: Vec<u8>, needles: &[&str]) {
        self.list.push(Case {
            what: what.to_string(),
            bytes,
            needles: needles.iter().map(|s| s.to_string()).collect(),
        });
    }
}

/// The tar bytes of `entries` without the end-of-archive blocks.
fn body(entries: &[TarEntry]) -> Vec<u8> {
    let mut bytes = tarball::serialize(entries);
    bytes.truncate(bytes.len() - 2 * tarball::BLOCK);
    bytes
}

fn json_of(bundle: &Bundle, name: &str) -> serde_json::Value {
    serde_json::from_slice(bundle.data(name)).unwrap()
}

fn set_json(bundle: &mut Bundle, name: &str, v: &serde_json::Value) {
    bundle
        .get_mut(name)
        .set_data(serde_json::to_vec_pretty(v).unwrap());
}

fn build_cases(good: &Bundle, zst: &[u8], sk: &Path, other_key: &Path) -> Vec<Case> {
    let mut c = Cases { list: Vec::new() };
    let names = good.names();
    let blobs = good.blob_names();
    let blob = blobs[blobs.len() / 2].clone();
    let last_blob = blobs.last().unwrap().clone();
    let k3s = "bin/amd64/k3s";
    let lock = "images.lock";
    let after = "bundle.json";
    let with = |e: TarEntry| {
        let mut b = good.clone();
        b.insert_after(after, e);
        b
    };
    let file = |name: &str| TarEntry::file(name, b"pwned\n".to_vec(), 0o644);

    // Names.
    for (name, needle) in [
        (format!("../{EVIL}"), format!("../{EVIL}")),
        (
            format!("../../../../../../tmp/{EVIL}"),
            "tmp/".to_string() + EVIL,
        ),
        (format!("/tmp/{EVIL}"), format!("/tmp/{EVIL}")),
        (format!("./../{EVIL}"), format!("./../{EVIL}")),
        (
            format!("manifests/../../{EVIL}"),
            format!("manifests/../../{EVIL}"),
        ),
        (format!("//tmp/{EVIL}"), format!("//tmp/{EVIL}")),
        (format!("manifests/./{EVIL}"), format!("manifests/./{EVIL}")),
        (format!("..\\..\\{EVIL}"), EVIL.to_string()),
        (format!("manifests\\..\\..\\{EVIL}"), EVIL.to_string()),
        (format!("\u{2025}/{EVIL}"), format!("\u{2025}/{EVIL}")),
        (
            format!("\u{ff0e}\u{ff0e}/{EVIL}"),
            format!("\u{ff0e}\u{ff0e}/{EVIL}"),
        ),
        (
            format!("manifests\u{2215}..\u{2215}{EVIL}"),
            format!("\u{2215}{EVIL}"),
        ),
        (format!("manifests/{EVIL}\n"), EVIL.to_string()),
    ] {
        c.add(
            &format!("an entry named {name:?}"),
            &with(file(&name)),
            &[&needle],
        );
    }
    let mut e = file("x");
    e.set_name_raw(b"manifests/ev\xffil.yaml");
    c.add(
        "an entry whose name is not UTF-8",
        &with(e),
        &["not UTF-8", "manifests/ev"],
    );

    // Links, devices, FIFOs.
    c.add(
        "a symlink to outside the root",
        &with(TarEntry::symlink("manifests/escape", "/tmp")),
        &["manifests/escape", "symlink"],
    );
    let mut b = with(TarEntry::symlink("manifests/escape", "../../../../tmp"));
    b.insert_after(
        "manifests/escape",
        file(&format!("manifests/escape/{EVIL}")),
    );
    relist(&mut b, sk);
    c.add(
        "a symlink, then a listed entry written through it",
        &b,
        &["manifests/escape", "symlink"],
    );
    let mut b = good.clone();
    let at = b.position(k3s);
    b.entries[at] = TarEntry::symlink(k3s, "/etc/shadow");
    c.add(
        "the k3s binary as a symlink to /etc/shadow",
        &b,
        &[k3s, "symlink"],
    );
    c.add(
        "a hard link to /etc/passwd",
        &with(TarEntry::hard_link(
            &format!("manifests/{EVIL}"),
            "/etc/passwd",
        )),
        &[EVIL, "hard link"],
    );
    let mut b = good.clone();
    b.insert_after(lock, TarEntry::hard_link("manifests/lock-link.yaml", lock));
    b.insert_after("manifests/lock-link.yaml", file("manifests/lock-link.yaml"));
    c.add(
        "a hard link to an earlier entry, then an entry written through it",
        &b,
        &["manifests/lock-link.yaml", "hard link"],
    );
    for (kind, what) in [
        (b'3', "character device"),
        (b'4', "block device"),
        (b'6', "FIFO"),
        (b'7', "contiguous file"),
    ] {
        let mut e = file(&format!("manifests/{EVIL}"));
        e.set_kind(kind);
        c.add(&format!("a {what} entry"), &with(e), &[EVIL, what]);
    }

    // Duplicates.
    let mut b = good.clone();
    b.insert_after(lock, TarEntry::file(lock, b"images: []\n".to_vec(), 0o644));
    c.add(
        "a verified entry followed by another of the same name",
        &b,
        &[lock, "duplicate"],
    );
    let mut b = good.clone();
    let again = b.get(k3s).clone();
    b.insert_after(k3s, again);
    c.add("the k3s binary twice, identical", &b, &[k3s, "duplicate"]);
    let mut b = good.clone();
    let again = b.get(SUMS_NAME).clone();
    b.push(again);
    c.add(
        "a second SHA256SUMS at the end",
        &b,
        &[SUMS_NAME, "duplicate"],
    );
    let mut b = good.clone();
    let again = b.get("bundle.json").clone();
    b.insert_after(lock, again);
    c.add("a second bundle.json", &b, &["bundle.json", "duplicate"]);
    let mut b = good.clone();
    let mut dir = TarEntry::file(&format!("{lock}/"), Vec::new(), 0o755);
    dir.set_kind(tarball::DIRECTORY);
    b.insert_after(lock, dir);
    c.add(
        "a directory named like a file before it",
        &b,
        &[lock, "duplicate"],
    );

    // Listing.
    c.add(
        "an entry not in SHA256SUMS",
        &with(file(&format!("manifests/{EVIL}.yaml"))),
        &[EVIL, "not listed"],
    );
    let sums = String::from_utf8(good.data(SUMS_NAME).to_vec()).unwrap();
    let first_line = sums.lines().next().unwrap().to_string();
    let mut b = good.clone();
    set_sums_signed(&mut b, &format!("{sums}{first_line}\n"), sk);
    c.add(
        "SHA256SUMS listing a file twice (signed)",
        &b,
        &["bundle.json", "twice"],
    );
    let fake = "0".repeat(64);
    for path in [
        format!("../{EVIL}"),
        format!("images/../../{EVIL}"),
        format!("/tmp/{EVIL}"),
    ] {
        let mut b = good.clone();
        set_sums_signed(&mut b, &format!("{sums}{fake}  {path}\n"), sk);
        c.add(
            &format!("SHA256SUMS listing {path:?} (signed)"),
            &b,
            &[&path],
        );
    }
    let mut b = good.clone();
    b.remove(&blob);
    c.add("a listed blob missing", &b, &[&blob, "missing"]);

    // Sizes.
    let mut b = good.clone();
    set_size_raw(b.get_mut(&blob), 1 << 40);
    c.add("a blob declaring 1 TiB with a short body", &b, &[&blob]);
    let mut b = good.clone();
    set_size_raw(b.get_mut("bundle.json"), 17 << 20);
    c.add(
        "bundle.json declaring 17 MiB",
        &b,
        &["bundle.json", "allowed"],
    );
    let mut b = good.clone();
    set_size_raw(b.get_mut(SUMS_NAME), 1 << 30);
    c.add("SHA256SUMS declaring 1 GiB", &b, &[SUMS_NAME, "allowed"]);
    let mut b = good.clone();
    set_size_raw(b.get_mut(SIGNATURE_NAME), 1 << 20);
    c.add(
        "a signature declaring 1 MiB",
        &b,
        &[SIGNATURE_NAME, "allowed"],
    );
    let mut b = good.clone();
    let mut data = b.data(k3s).to_vec();
    data.push(0);
    b.get_mut(k3s).set_data(data);
    relist(&mut b, sk);
    c.add(
        "a k3s binary longer than bundle.json declares (signed)",
        &b,
        &[k3s, "declares"],
    );
    c.add(
        "a directory entry carrying data",
        &with(raw_entry(tarball::DIRECTORY, "manifests/", &[0u8; 1024])),
        &["manifests", "directory"],
    );
    let mut b = good.clone();
    for i in 0..5000 {
        let mut d = TarEntry::file(&format!("d/{i:05}/"), Vec::new(), 0o755);
        d.set_kind(tarball::DIRECTORY);
        b.insert_after(after, d);
    }
    c.add("5000 directory entries", &b, &["d/", "directory entries"]);

    // Truncation, uncompressed.
    let plain = tarball::serialize(&good.entries);
    let off = offsets(good);
    let at_entry = |name: &str| off[good.position(name)];
    let k = good.position(&blob);
    for (what, cut, needle) in [
        ("an empty file", 0, SIGNATURE_NAME.to_string()),
        (
            "inside the signature",
            at_entry(SIGNATURE_NAME).1 + 10,
            SIGNATURE_NAME.to_string(),
        ),
        (
            "inside SHA256SUMS's header",
            at_entry(SUMS_NAME).0 + 100,
            SUMS_NAME.to_string(),
        ),
        (
            "inside SHA256SUMS",
            at_entry(SUMS_NAME).1 + 70,
            SUMS_NAME.to_string(),
        ),
        (
            "inside bundle.json",
            at_entry("bundle.json").1 + 50,
            "bundle.json".to_string(),
        ),
        ("between two entries", off[k].0, blob.clone()),
        (
            "inside a blob's header",
            off[k].0 + 200,
            names[k - 1].clone(),
        ),
        (
            "between a blob's header and its data",
            off[k].1,
            blob.clone(),
        ),
        ("inside a blob", off[k].1 + off[k].2 / 2, blob.clone()),
        (
            "inside the k3s binary",
            at_entry(k3s).1 + 4096,
            k3s.to_string(),
        ),
        (
            "inside the last blob",
            off[good.position(&last_blob)].1 + 1,
            last_blob.clone(),
        ),
    ] {
        c.raw(
            &format!("truncation {what}"),
            plain[..cut].to_vec(),
            &[&needle],
        );
    }

    // Truncation, zstd.
    for (what, cut) in [
        ("inside the first frame", 100),
        ("in the middle of the stream", zst.len() / 2),
        ("three quarters in", zst.len() * 3 / 4),
    ] {
        c.raw(
            &format!("a zstd bundle cut {what}"),
            zst[..cut].to_vec(),
            &[],
        );
    }
    let mut corrupt = zst.to_vec();
    let mid = corrupt.len() / 3;
    for byte in &mut corrupt[mid..mid + 64] {
        *byte ^= 0x5a;
    }
    c.raw("64 garbled bytes inside a zstd frame", corrupt, &[]);

    // zstd bombs: a few KiB that decompress to a TiB.
    let head = body(&good.entries[..good.position(lock) + 1]);
    let mut e = good.get(&blob).clone();
    set_size_raw(&mut e, 1 << 40);
    let mut bytes = zstd(&[head.clone(), e.header.to_vec()].concat());
    bytes.extend(rle_frame(0, 1 << 40));
    c.raw(
        "a zstd bomb: a listed blob of 1 TiB of zeros",
        bytes,
        &[&blob],
    );
    let mut e = file(&format!("manifests/{EVIL}.yaml"));
    set_size_raw(&mut e, 1 << 40);
    let mut bytes = zstd(&[head.clone(), e.header.to_vec()].concat());
    bytes.extend(rle_frame(b'a', 1 << 40));
    c.raw("a zstd bomb: an unlisted entry of 1 TiB", bytes, &[EVIL]);
    let mut e = good.get(SIGNATURE_NAME).clone();
    set_size_raw(&mut e, 1 << 40);
    let mut bytes = zstd(&e.header);
    bytes.extend(rle_frame(b'a', 1 << 40));
    c.raw("a zstd bomb inside the signature", bytes, &[SIGNATURE_NAME]);
    let mut e = raw_entry(tarball::DIRECTORY, "manifests/", &[]);
    set_size_raw(&mut e, 1 << 40);
    let mut bytes = zstd(&[head.clone(), e.header.to_vec()].concat());
    bytes.extend(rle_frame(0, 1 << 40));
    c.raw(
        "a zstd bomb in a directory entry's data",
        bytes,
        &["manifests", "directory"],
    );

    // Extension headers.
    let hex = blob.rsplit('/').next().unwrap().to_string();
    let mut b = good.clone();
    let at = b.position(&blob);
    b.entries.insert(
        at,
        pax_header(&format!("PaxHeaders.0/{hex}"), &[("size", "1")]),
    );
    c.add(
        "a PAX size that disagrees with the ustar size",
        &b,
        &[&hex, "PAX"],
    );
    let mut b = good.clone();
    let at = b.position(lock);
    b.entries.insert(
        at,
        pax_header(
            &format!("PaxHeaders.0/{EVIL}"),
            &[("path", &format!("../../{EVIL}"))],
        ),
    );
    c.add("a PAX path of ../../", &b, &[EVIL, "PAX"]);
    let mut b = good.clone();
    let at = b.position(lock);
    b.entries.insert(
        at,
        raw_entry(b'g', "pax_global_header", b"22 path=../../evil\n"),
    );
    c.add("a PAX global header", &b, &["pax_global_header", "PAX"]);
    let long = format!("manifests/{}.yaml", "a".repeat(150));
    let mut b = with(file(&long[..100]));
    let at = b.position(&long[..100]);
    b.entries.insert(at, gnu_long_name(&long));
    c.add("a GNU long-name entry", &b, &["@LongLink", "GNU long-name"]);

    // Signatures and order.
    let mut b = good.clone();
    let other_sums = sums.replacen(&first_line[..64], &"1".repeat(64), 1);
    set_sums_signed(&mut b, &other_sums, sk);
    b.get_mut(SUMS_NAME).set_data(sums.clone().into_bytes());
    c.add("a signature over a different SHA256SUMS", &b, &[SUMS_NAME]);
    let mut b = good.clone();
    b.resign(other_key);
    c.add("a valid signature from an untrusted key", &b, &[SUMS_NAME]);
    let mut b = good.clone();
    b.get_mut(SIGNATURE_NAME)
        .set_data(b"untrusted comment: x\nnot a signature\n".to_vec());
    c.add("a signature that is not one", &b, &[SUMS_NAME]);
    let mut b = good.clone();
    b.remove(SIGNATURE_NAME);
    c.add("no signature", &b, &[SIGNATURE_NAME]);

    // Documents that disagree.
    let mut b = good.clone();
    let mut meta = json_of(&b, "bundle.json");
    meta["images"][0]["platforms"][0]["blobs"]
        .as_array_mut()
        .unwrap()
        .push(format!("sha256:{fake}").into());
    set_json(&mut b, "bundle.json", &meta);
    relist(&mut b, sk);
    c.add(
        "bundle.json naming a blob not in the bundle (signed)",
        &b,
        &["bundle.json", &fake],
    );
    let mut b = good.clone();
    set_json(&mut b, "bundle.json", &meta);
    let text = format!("{}{fake}  images/blobs/sha256/{fake}\n", sums_of(&b));
    set_sums_signed(&mut b, &text, sk);
    c.add(
        "bundle.json and SHA256SUMS naming a blob the stream lacks (signed)",
        &b,
        &[&fake, "missing"],
    );
    let mut b = good.clone();
    let mut meta = json_of(&b, "bundle.json");
    let size = meta["images"][0]["size"].as_u64().unwrap();
    meta["images"][0]["size"] = (size + 1).into();
    let manifest = format!(
        "images/blobs/sha256/{}",
        meta["images"][0]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
    );
    set_json(&mut b, "bundle.json", &meta);
    relist(&mut b, sk);
    c.add(
        "bundle.json with an image's size off by one (signed)",
        &b,
        &[&manifest, "declares"],
    );
    let mut b = good.clone();
    let mut index = json_of(&b, "images/index.json");
    let mut twin = index["manifests"][0].clone();
    twin["digest"] = index["manifests"][1]["digest"].clone();
    index["manifests"].as_array_mut().unwrap().push(twin);
    set_json(&mut b, "images/index.json", &index);
    relist(&mut b, sk);
    c.add(
        "index.json naming an image twice with different digests (signed)",
        &b,
        &["images/index.json", "twice"],
    );
    let mut b = good.clone();
    let mut index = json_of(&b, "images/index.json");
    index["manifests"][0]["digest"] = index["manifests"][1]["digest"].clone();
    set_json(&mut b, "images/index.json", &index);
    relist(&mut b, sk);
    c.add(
        "index.json naming an image by another digest (signed)",
        &b,
        &["images/index.json", "bundle.json says"],
    );
    c.list
}

/// Paths where a traversal that got through would have written.
fn evil_paths(root: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs = vec![
        Path::new("/").to_path_buf(),
        Path::new("/tmp").to_path_buf(),
        std::env::current_dir().unwrap(),
        std::env::temp_dir(),
    ];
    let mut p = root.to_path_buf();
    while let Some(parent) = p.parent() {
        dirs.push(parent.to_path_buf());
        p = parent.to_path_buf();
    }
    dirs.into_iter()
        .flat_map(|d| [d.join(EVIL), d.join(format!("{EVIL}.yaml"))])
        .filter(|p| p.symlink_metadata().is_ok())
        .collect()
}

#[test]
fn hostile_bundles_are_rejected_by_verify_and_install() {
    let keys = tempdir("airgap-hostile-keys-");
    let sk = keys.path().join("site.key");
    let bed = InstallBed::start_with(|tb| {
        std::fs::copy(tb.key(), &sk).unwrap();
    });
    let good = Bundle::read(&bed.bundle);
    let zst = std::fs::read(&bed.bundle).unwrap();
    let names = good.names();

    // The rules and limits let an honest bundle through, also rewritten.
    let plain = bed.scratch.path().join("good.airgap.tar");
    good.write(&plain);
    let verify = |path: &Path| {
        run(support::airgap()
            .args(["bundle", "verify"])
            .arg(path)
            .arg("--key")
            .arg(&bed.pub_key))
    };
    assert_ok(&verify(&plain), "verify of the good bundle, rewritten");
    let mut resigned = good.clone();
    relist(&mut resigned, &sk);
    let resigned_path = bed.scratch.path().join("resigned.airgap.tar");
    resigned.write(&resigned_path);
    assert_ok(
        &verify(&resigned_path),
        "verify of the good bundle, re-signed",
    );

    let cases = build_cases(&good, &zst, &sk, &bed.other_key);
    let before = tree(bed.root());
    let evil_before = evil_paths(bed.root());
    let mut failures = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let path = bed.scratch.path().join(format!("case-{n}.bundle"));
        std::fs::write(&path, &case.bytes).unwrap();
        let mut problems = Vec::new();
        let names_it = |err: &str| -> Vec<String> {
            if case.needles.is_empty() {
                if names.iter().any(|n| err.contains(n.as_str())) {
                    vec![]
                } else {
                    vec!["names no entry".to_string()]
                }
            } else {
                case.needles
                    .iter()
                    .filter(|n| !err.contains(n.as_str()))
                    .map(|n| format!("does not name {n:?}"))
                    .collect()
            }
        };
        let out = verify(&path);
        let verify_err = stderr(&out);
        if out.status.success() {
            problems.push("verify succeeded".to_string());
        }
        problems.extend(
            names_it(&verify_err)
                .into_iter()
                .map(|p| format!("verify {p}")),
        );

        let out = run(&mut bed.install_cmd(&path, bed.root(), &bed.server_args()));
        let install_err = stderr(&out);
        if out.status.success() {
            problems.push("install succeeded".to_string());
        }
        problems.extend(
            names_it(&install_err)
                .into_iter()
                .map(|p| format!("install {p}")),
        );
        let (added, removed, changed) = tree_diff(&before, &tree(bed.root()));
        if !(added.is_empty() && removed.is_empty() && changed.is_empty()) {
            problems.push(format!(
                "root changed: added {added:?}, removed {removed:?}, changed {changed:?}"
            ));
        }
        let listed = images(&bed.cd);
        if !listed.is_empty() {
            problems.push(format!("images named: {:?}", listed.keys()));
        }
        if !eventually(Duration::from_secs(5), || leases(&bed.cd).is_empty()) {
            problems.push(format!("leases left: {:?}", leases(&bed.cd)));
        }
        let evil = evil_paths(bed.root());
        if evil != evil_before {
            problems.push(format!("written outside the root: {evil:?}"));
        }
        eprintln!(
            "case {n}: {}: {}\n  verify: {}\n  install: {}",
            case.what,
            if problems.is_empty() {
                "rejected"
            } else {
                "FAILED"
            },
            verify_err.trim().lines().last().unwrap_or(""),
            install_err.trim().lines().last().unwrap_or(""),
        );
        if !problems.is_empty() {
            failures.push(format!("{}: {}", case.what, problems.join("; ")));
        }
        std::fs::remove_file(&path).unwrap();
    }
    let total = cases.len();
    eprintln!(
        "hostile cases rejected: {} of {total}",
        total - failures.len()
    );
    println!(
        "hostile cases rejected: {} of {total}",
        total - failures.len()
    );
    assert!(total >= 40, "only {total} cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
