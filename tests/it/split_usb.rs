//! A bundle split for FAT32 (`bundle build --split SIZE`) and a ready USB
//! stick (`bundle build --usb DIR`, `bundle export --usb DIR`): every part at
//! most SIZE, `verify`, `inspect` and `install` reading the parts as one
//! stream by the bundle's name or by any part, a missing, swapped or damaged
//! part named, and a stick holding the bundle, a runnable `airgap`, the key
//! and a README with the exact commands.

use crate::support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::install::{no_start_embedded_args, strings, tempdir};
use support::split::{concatenated, copy_split, file_name, flip_middle_byte, list, parts, swap};
use support::{airgap, assert_fails_naming, assert_ok, dir_names, run, run_ok, stdout, Testbed};

const PART: u64 = 64 * 1024;
const NAME: &str = "k3s.airgap.tar.zst";

/// Builds `out/NAME` in parts of [`PART`] bytes; returns its base path.
fn build_split(tb: &Testbed, extra: &[&str]) -> PathBuf {
    let mut args = vec!["--split", "64K"];
    args.extend(extra);
    let out = tb.build(NAME, &args);
    assert_ok(&out, "airgap bundle build --split 64K");
    tb.out_dir().join(NAME)
}

#[test]
fn split_bundle_is_read_as_one_by_verify_inspect_and_install() {
    let tb = Testbed::start();
    let base = build_split(&tb, &[]);
    let parts = parts(&base);
    assert!(parts.len() >= 3, "expected several parts: {parts:?}");
    for p in &parts {
        let size = std::fs::metadata(p).unwrap().len();
        assert!(size <= PART, "{} is {size} bytes", p.display());
    }
    // Only the parts and their list, no unsplit file and no temporary.
    let mut expected: Vec<String> = parts.iter().map(|p| file_name(p)).collect();
    expected.push(format!("{NAME}.parts"));
    expected.sort();
    assert_eq!(dir_names(&tb.out_dir()), expected);
    // The list names each part with its sha256, and the whole.
    let listed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(list(&base)).unwrap()).unwrap();
    assert_eq!(listed["parts"].as_array().unwrap().len(), parts.len());
    let whole = concatenated(&base);
    assert_eq!(
        listed["sha256"].as_str().unwrap(),
        format!("sha256:{}", sha256_hex(&whole))
    );
    // `cat parts > bundle` is the bundle, which GNU tar reads.
    let joined = tb.work().join("joined.airgap.tar.zst");
    std::fs::write(&joined, &whole).unwrap();
    assert_ok(&tb.verify(&joined), "verify of the concatenated parts");

    for (how, path) in [
        ("the bundle's name", base.clone()),
        ("the first part", parts[0].clone()),
        ("a middle part", parts[1].clone()),
        ("the list", list(&base)),
    ] {
        let out = tb.verify(&path);
        assert_ok(&out, &format!("verify by {how}"));
        assert!(stdout(&out).contains("OK"), "{}", stdout(&out));
    }
    let out = run(airgap()
        .args(["bundle", "inspect", "--json"])
        .arg(&parts[0])
        .arg("--key")
        .arg(tb.pub_key()));
    assert_ok(&out, "inspect of the first part");
    let inspected: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(inspected["meta"]["k3s_version"], "v1.20.6+k3s1");

    // install --dry-run reads the head through the parts.
    let root = tempdir("airgap-split-root-");
    let install = |args: &[String]| {
        run(airgap()
            .env_remove("K3S_URL")
            .env_remove("K3S_TOKEN")
            .env_remove("K3S_TOKEN_FILE")
            .args(["install", "--offline"])
            .arg(&base)
            .arg("--key")
            .arg(tb.pub_key())
            .arg("--root")
            .arg(root.path())
            .args(args))
    };
    let out = install(&strings(&[
        "--role",
        "server",
        "--init",
        "none",
        "--dry-run",
    ]));
    assert_ok(&out, "install --dry-run of a split bundle");
    let plan = stdout(&out);
    assert!(plan.contains("dry run"), "{plan}");
    assert!(plan.contains("/usr/local/bin/k3s"), "{plan}");
    assert!(plan.contains("docker.io/rancher/pause"), "{plan}");
    // And a real install (embedded runtime, not started) reads every part.
    let args = no_start_embedded_args(airgap_testbed::registry::free_port().unwrap());
    let out = install(&args);
    assert_ok(
        &out,
        "install --runtime embedded --no-start of a split bundle",
    );
    let k3s = root.path().join("usr/local/bin/k3s");
    assert!(k3s.is_file(), "{} was not installed", k3s.display());
    let archive = root
        .path()
        .join("var/lib/rancher/k3s/agent/images/airgap-images.tar");
    assert!(archive.is_file(), "{} was not written", archive.display());
}

#[test]
fn missing_swapped_and_damaged_parts_are_named() {
    let tb = Testbed::start();
    let base = build_split(&tb, &["--compress", "none"]);
    let n = parts(&base).len();
    assert!(n >= 4, "expected several parts, got {n}");
    let mut case = 0;
    let mut copy = || {
        case += 1;
        copy_split(&base, &tb.work().join(format!("case{case}")))
    };
    let part = |b: &Path, i: usize| PathBuf::from(format!("{}.part{i:03}", b.display()));

    // A part in the middle missing.
    let b = copy();
    std::fs::remove_file(part(&b, 1)).unwrap();
    assert_fails_naming(
        &tb.verify(&b),
        "verify without part001",
        &[&format!("{NAME}.part001 is missing")],
    );
    // The last part missing: the list still knows it.
    let b = copy();
    let last = format!("{NAME}.part{:03}", n - 1);
    std::fs::remove_file(b.with_file_name(&last)).unwrap();
    assert_fails_naming(
        &tb.verify(&b),
        "verify without the last part",
        &[&format!("{last} is missing")],
    );
    // Two parts swapped (same size, so only their bytes tell).
    let b = copy();
    swap(&part(&b, 1), &part(&b, 2));
    assert_fails_naming(
        &tb.verify(&part(&b, 0)),
        "verify with part001 and part002 swapped",
        &[
            &format!("{NAME}.part001 holds {NAME}.part002's bytes"),
            &format!("{NAME}.part002 holds {NAME}.part001's bytes"),
        ],
    );
    // A part truncated.
    let b = copy();
    let p = part(&b, 2);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    assert_fails_naming(
        &tb.verify(&b),
        "verify with part002 truncated",
        &[&format!("{NAME}.part002 is"), "truncated"],
    );
    // A byte flipped inside a part (size unchanged): its head no longer
    // matches (past the head, its sha256 would not; see bundle::split).
    let b = copy();
    let victim = n - 2;
    flip_middle_byte(&part(&b, victim));
    assert_fails_naming(
        &tb.verify(&b),
        "verify with a flipped byte",
        &[&format!("{NAME}.part{victim:03} starts with other bytes")],
    );
    // The list missing.
    let b = copy();
    std::fs::remove_file(list(&b)).unwrap();
    assert_fails_naming(
        &tb.verify(&b),
        "verify without the list",
        &[
            &format!("{NAME}.parts is missing"),
            &format!("{NAME}.part000"),
        ],
    );
}

#[test]
fn usb_stick_holds_bundle_binary_key_and_readme() {
    let tb = Testbed::start();
    let stick = tempdir("airgap-stick-");
    let out = tb.build(
        NAME,
        &["--split", "64K", "--usb", stick.path().to_str().unwrap()],
    );
    assert_ok(&out, "airgap bundle build --split 64K --usb DIR");
    let s = stick.path();
    let base = s.join(NAME);
    let stick_parts = parts(&base);
    assert!(stick_parts.len() >= 2, "{:?}", dir_names(s));
    for p in &stick_parts {
        assert!(std::fs::metadata(p).unwrap().len() <= PART);
    }
    assert!(!base.exists(), "an unsplit bundle on the stick");
    assert_eq!(concatenated(&base), concatenated(&tb.out_dir().join(NAME)));

    // The binary runs, and verifies the stick's bundle with the stick's key.
    let bin = s.join("airgap");
    let mode = std::fs::metadata(&bin).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "airgap on the stick is not executable");
    let version = run_ok(Command::new(&bin).arg("--version"));
    assert!(version.starts_with("airgap "), "{version}");
    let key = s.join("site.pub");
    assert_eq!(
        std::fs::read_to_string(&key).unwrap().trim(),
        std::fs::read_to_string(tb.pub_key()).unwrap().trim()
    );
    assert_ok(
        &run(Command::new(&bin)
            .current_dir(s)
            .args(["bundle", "verify", NAME, "--key", "site.pub"])),
        "the stick's airgap verifying the stick's bundle",
    );

    // The README gives the exact commands with these names.
    let readme = std::fs::read_to_string(s.join("README.txt")).unwrap();
    for needle in [
        format!(
            "airgap install --offline /media/usb/{NAME} --key /media/usb/site.pub --role server"
        ),
        "--role agent".to_string(),
        "--token-file /media/usb/node-token".to_string(),
        "airgap token --out /media/usb/node-token".to_string(),
        format!("{NAME}.part000"),
        "install -m 0755 /media/usb/airgap /usr/local/bin/airgap".to_string(),
    ] {
        assert!(
            readme.contains(&needle),
            "README.txt lacks {needle:?}:\n{readme}"
        );
    }
    // SHA256SUMS covers every other file on the stick.
    run_ok(
        Command::new("sha256sum")
            .current_dir(s)
            .args(["-c", "--strict", "SHA256SUMS"]),
    );
    let sums = std::fs::read_to_string(s.join("SHA256SUMS")).unwrap();
    let mut listed: Vec<&str> = sums
        .lines()
        .map(|l| l.split_once("  ").unwrap().1)
        .collect();
    listed.push("SHA256SUMS");
    listed.sort();
    assert_eq!(listed, dir_names(s));

    // export: the same from a built bundle, unsplit where the stick allows.
    let stick2 = tempdir("airgap-stick-");
    let out = run(airgap()
        .args(["bundle", "export", "--json", "--usb"])
        .arg(stick2.path())
        .arg("--key")
        .arg(tb.pub_key())
        .arg(tb.out_dir().join(format!("{NAME}.part001"))));
    assert_ok(&out, "airgap bundle export --usb DIR");
    let exported: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(exported["bundle"], NAME);
    let single = stick2.path().join(NAME);
    assert!(single.is_file(), "{:?}", dir_names(stick2.path()));
    assert_eq!(std::fs::read(&single).unwrap(), concatenated(&base));
    assert_ok(&tb.verify(&single), "verify of the exported bundle");

    // A key that did not sign the bundle: nothing is published.
    let (_, other_pub) = tb.keygen("other");
    let stick3 = tempdir("airgap-stick-");
    let out = run(airgap()
        .args(["bundle", "export", "--usb"])
        .arg(stick3.path())
        .arg("--key")
        .arg(&other_pub)
        .arg(&base));
    assert_fails_naming(&out, "export with another key", &["does not verify"]);
    assert!(
        dir_names(stick3.path()).is_empty(),
        "{:?}",
        dir_names(stick3.path())
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    airgap_bundle::digest::Digest::of(bytes).hex()
}

/// A FAT32 file system in an image file, mounted with the FUSE driver
/// `fusefat` (the kernel here has no vfat module); unmounted on drop.
struct FatStick {
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

impl FatStick {
    fn new() -> FatStick {
        let dir = tempdir("airgap-fat-");
        let image = dir.path().join("stick.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        // 256 MiB, sparse: room for the (debug) airgap binary and the bundle.
        run_ok(
            Command::new("mkfs.vfat")
                .args(["-F", "32", "-n", "AIRGAP", "-C"])
                .arg(&image)
                .arg("262144"),
        );
        run_ok(
            Command::new("fusefat")
                .args(["-o", "rw+"])
                .arg(&image)
                .arg(&mount),
        );
        FatStick { _dir: dir, mount }
    }
}

impl Drop for FatStick {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

#[test]
fn usb_export_onto_a_real_fat32_file_system() {
    let tb = Testbed::start();
    let bundle = tb.build_ok(NAME, &[]);
    let stick = FatStick::new();
    let s = &stick.mount;
    let out = run(airgap()
        .args(["bundle", "export", "--json", "--usb"])
        .arg(s)
        .arg("--key")
        .arg(tb.pub_key())
        .arg(&bundle));
    assert_ok(&out, "airgap bundle export --usb onto FAT32");
    let exported: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(exported["bundle"], NAME);

    // FAT is recognised through the mount table: the bundle goes in parts
    // of at most 4 GiB - 1 (one part here) with their list, and the modes
    // FAT cannot keep are not an error.
    let base = s.join(NAME);
    assert!(
        !base.exists(),
        "an unsplit bundle on FAT: {:?}",
        dir_names(s)
    );
    let stick_parts = parts(&base);
    assert_eq!(stick_parts.len(), 1, "{:?}", dir_names(s));
    assert_eq!(concatenated(&base), std::fs::read(&bundle).unwrap());

    // Everything on the stick checks out, read back through the FAT driver.
    run_ok(
        Command::new("sha256sum")
            .current_dir(s)
            .args(["-c", "--strict", "SHA256SUMS"]),
    );
    assert_ok(
        &run(Command::new(s.join("airgap"))
            .current_dir(s)
            .args(["bundle", "verify", NAME, "--key", "site.pub"])),
        "the stick's airgap verifying the stick's bundle on FAT32",
    );
}
