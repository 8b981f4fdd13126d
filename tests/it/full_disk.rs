//! Full disks: `bundle build` into, and `install` onto, a tmpfs of a few
//! hundred KiB or MiB made by the test (it runs as root), too small for what
//! is written. Each failure says "no space left on <path>, needed N more",
//! leaves no output, temporary or `.partial` file behind, and changes
//! nothing else: the lock, the install root (compared tree by tree) and the
//! private containerd (no image, no lease, its content as it was).
//! k3s is the `k3s-standin` TEST DOUBLE; installs use `--no-start`. The
//! embedded runtime's image archive is counted and undone the same way.

use crate::support;

use support::install::*;
use support::tmpfs::Tmpfs;
use support::{assert_fails_naming, dir_names, Testbed, RUN_TIMEOUT};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// The amount a "needed N more" names, in bytes (from `37 KiB`, `3.2 MiB`).
#[track_caller]
fn needed_more(err: &str) -> u64 {
    err.split("needed ")
        .skip(1)
        .find_map(amount_more)
        .unwrap_or_else(|| panic!("no \"needed N more\" in: {err}"))
}

/// `about 3.2 MiB more …` -> bytes.
fn amount_more(text: &str) -> Option<u64> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = match *words.first()? {
        "about" => 1,
        "up" | "at" => 2, // "up to", "at least"
        _ => 0,
    };
    let n: f64 = words.get(at)?.parse().ok()?;
    let unit = match *words.get(at + 1)? {
        "bytes" => 1,
        "KiB" => KIB,
        "MiB" => MIB,
        "GiB" => 1 << 30,
        _ => return None,
    };
    (*words.get(at + 2)? == "more").then_some((n * unit as f64) as u64)
}

#[test]
fn a_bundle_too_large_for_its_file_system_leaves_nothing_and_says_how_much_more() {
    let tb = Testbed::start();
    let lock = std::fs::read(tb.lock_path()).unwrap();
    // A bundle this small needs about 1.1 MiB; the output dir holds 512 KiB.
    let out = Tmpfs::mount(&tb.out_dir(), 512 * KIB);
    let bundle = out.path().join("k3s.airgap.tar.zst");
    let res = tb.build("k3s.airgap.tar.zst", &[]);
    let dir = out.path().display().to_string();
    let err = assert_fails_naming(
        &res,
        "a build into a 512 KiB file system",
        &[
            &format!("no space left on {dir}, needed up to"),
            &bundle.display().to_string(),
            "nothing was written",
        ],
    );
    let more = needed_more(&err);
    assert!(
        (256 * KIB..2 * MIB).contains(&more),
        "needed {more} bytes more: {err}"
    );
    tb.assert_no_output(&lock);

    // Uncompressed, the size is exact: what is missing is named as such.
    let res = tb.build("k3s.airgap.tar", &["--compress", "none"]);
    let err = assert_fails_naming(
        &res,
        "an uncompressed build into a 512 KiB file system",
        &[&format!("no space left on {dir}, needed about")],
    );
    let more = needed_more(&err);
    assert!(
        (256 * KIB..2 * MIB).contains(&more),
        "needed {more} bytes more: {err}"
    );
    tb.assert_no_output(&lock);

    // Once there is room, the same build succeeds.
    drop(out);
    let _big = Tmpfs::mount(&tb.out_dir(), 8 * MIB);
    tb.build_ok("k3s.airgap.tar", &["--compress", "none"]);
}

#[test]
fn a_split_bundle_too_large_for_its_file_system_leaves_no_part() {
    let tb = Testbed::start();
    let lock = std::fs::read(tb.lock_path()).unwrap();
    let out = Tmpfs::mount(&tb.out_dir(), 512 * KIB);
    let res = tb.build("k3s.airgap.tar.zst", &["--split", "128K"]);
    assert_fails_naming(
        &res,
        "a split build into a 512 KiB file system",
        &[
            &format!("no space left on {}, needed up to", out.path().display()),
            "k3s.airgap.tar.zst",
        ],
    );
    tb.assert_no_output(&lock);
}

#[test]
fn a_full_download_cache_is_named_with_what_to_do() {
    let tb = Testbed::start();
    let lock = std::fs::read(tb.lock_path()).unwrap();
    let scratch = tempdir("airgap-cache-mount-");
    let cache = Tmpfs::mount(scratch.path(), 256 * KIB);
    let res = tb.build(
        "k3s.airgap.tar.zst",
        &["--cache", cache.path().to_str().unwrap()],
    );
    let err = assert_fails_naming(
        &res,
        "a build whose cache is on a 256 KiB file system",
        &[
            &format!(
                "no space left on {}, needed at least",
                cache.path().display()
            ),
            "--cache DIR on a larger file system",
            "--no-cache",
        ],
    );
    assert!(needed_more(&err) > 0, "{err}");
    tb.assert_no_output(&lock);
}

// ------------------------------------------------------------------ install

/// `--no-start` server arguments against the bed's containerd.
#[test]
fn a_usb_stick_too_small_is_refused_before_anything_is_written() {
    let tb = Testbed::start();
    let bundle = tb.build_ok("k3s.airgap.tar.zst", &[]);
    let binary = std::fs::metadata(env!("CARGO_BIN_EXE_airgap"))
        .unwrap()
        .len();
    let bundle_size = std::fs::metadata(&bundle).unwrap().len();
    // Room for the bundle but not for the binary as well.
    let stick_dir = tempdir("airgap-small-stick-");
    let stick = Tmpfs::mount(stick_dir.path(), bundle_size + binary / 2);
    let res = support::run(
        support::airgap()
            .args(["bundle", "export", "--usb"])
            .arg(stick.path())
            .arg("--key")
            .arg(tb.pub_key())
            .arg(&bundle),
    );
    let dir = stick.path().display().to_string();
    let err = assert_fails_naming(
        &res,
        "export onto a stick too small",
        &[
            &format!("no space left on {dir}, needed about"),
            "airgap (",
            "nothing was written",
        ],
    );
    let more = needed_more(&err);
    assert!(
        (binary / 4..binary).contains(&more),
        "needed {more} bytes more with a {binary}-byte binary: {err}"
    );
    assert!(
        dir_names(stick.path()).is_empty(),
        "{:?}",
        dir_names(stick.path())
    );
}

fn server_args(bed: &InstallBed, extra: &[&str]) -> Vec<String> {
    let mut a = strings(&["--role", "server", "--init", "none", "--no-start"]);
    a.extend(strings(extra));
    a.extend(bed.socket_args());
    a.extend(port_args(bed.port));
    a
}

/// The containerd side of "nothing happened": no image, no lease, and (once
/// the garbage collector ran) no content but what was there before.
#[track_caller]
fn assert_containerd_as_before(
    bed: &InstallBed,
    content_before: &std::collections::BTreeMap<String, String>,
    what: &str,
) {
    assert!(images(&bed.cd).is_empty(), "{what}: {:?}", images(&bed.cd));
    assert!(leases(&bed.cd).is_empty(), "{what}: {:?}", leases(&bed.cd));
    assert!(
        eventually(std::time::Duration::from_secs(20), || &content(&bed.cd)
            == content_before),
        "{what}: content changed: {:?}",
        content(&bed.cd)
    );
}

/// Bytes of the files an install places under the root, for sizing.
fn placed_bytes(bed: &InstallBed) -> u64 {
    use airgap_bundle::meta::FileRole;
    bed.meta
        .files
        .iter()
        .filter(|f| matches!(f.role, FileRole::K3sBinary | FileRole::Manifest))
        .map(|f| f.size.div_ceil(4096) * 4096)
        .sum()
}

#[test]
fn preflight_refuses_a_root_too_small_naming_the_path_and_the_mib_missing() {
    let bed = InstallBed::start();
    let need = placed_bytes(&bed);
    let root = Tmpfs::mount(bed.root(), need / 2);
    let before = tree(root.path());
    let content_before = content(&bed.cd);
    let out = bed.install(&server_args(&bed, &[]));
    let err = assert_fails_naming(
        &out,
        "an install onto a root of half the size it needs",
        &[
            "preflight check disk failed",
            &format!("no space left on {}", root.path().display()),
            "MiB more",
        ],
    );
    let more = needed_more(&err);
    assert!(
        more >= need / 2 && more < need,
        "needed {more} more of {need}: {err}"
    );
    assert_same_tree(&before, &tree(root.path()), "a refused install");
    assert_containerd_as_before(&bed, &content_before, "a refused install");
}

#[test]
fn an_install_that_fills_the_root_mid_way_restores_it() {
    let bed = InstallBed::start();
    let need = placed_bytes(&bed);
    let root = Tmpfs::mount(bed.root(), need / 2);
    // Something of the host's own on the root, which must stay as it was.
    std::fs::create_dir_all(root.path().join("etc/rancher")).unwrap();
    std::fs::write(root.path().join("etc/hostname"), "node-1\n").unwrap();
    let before = tree(root.path());
    let content_before = content(&bed.cd);
    // Preflight skipped: the k3s binary fills the file system as it streams.
    let out = bed.install(&server_args(&bed, &["--skip-preflight", "disk"]));
    let err = assert_fails_naming(
        &out,
        "an install whose root fills while k3s is staged",
        &[
            &format!("no space left on {}", root.path().display()),
            "nothing was installed",
        ],
    );
    assert!(!err.contains("not valid"), "{err}");
    let more = needed_more(&err);
    assert!(
        more > 0 && more < need,
        "needed {more} more of {need}: {err}"
    );
    assert_same_tree(
        &before,
        &tree(root.path()),
        "an install that filled the root",
    );
    assert_containerd_as_before(&bed, &content_before, "an install that filled the root");
}

#[test]
fn an_install_whose_root_fills_at_any_later_write_restores_it() {
    let bed = InstallBed::start();
    // Room for the staged files, then two pages more per round: each round
    // runs out at a later write (the journal, generated files, the record's
    // reservation), until one has room enough and completes.
    let base = placed_bytes(&bed);
    // The writes that ran out of space, in order.
    let mut stages: Vec<&str> = Vec::new();
    for extra_pages in (0..64u64).step_by(2) {
        let root = Tmpfs::mount(bed.root(), base + extra_pages * 4096);
        let before = tree(root.path());
        let content_before = content(&bed.cd);
        let out = bed.install(&server_args(&bed, &["--skip-preflight", "disk"]));
        if out.status.success() {
            eprintln!("{extra_pages} pages beyond the staged files: the install completes");
            assert!(root.path().join("usr/local/bin/k3s").is_file());
            // The bundle's entries, the generated files, the record.
            assert!(stages.len() >= 3, "ran out of space only at {stages:?}");
            return;
        }
        let what = format!("an install with {extra_pages} pages to spare");
        let err = assert_fails_naming(
            &out,
            &what,
            &[
                &format!("no space left on {}", root.path().display()),
                "the root is as it was",
            ],
        );
        let stage = if err.contains("install.json") {
            "the record"
        } else if err.contains("writing /etc/") || err.contains("writing /var/") {
            "a generated file"
        } else if err.contains("entry ") {
            "a bundle entry"
        } else {
            "elsewhere"
        };
        if stages.last() != Some(&stage) {
            stages.push(stage);
        }
        assert_same_tree(&before, &tree(root.path()), &what);
        assert_containerd_as_before(&bed, &content_before, &what);
        drop(root);
        assert!(dir_names(bed.root()).is_empty());
    }
    panic!("no install completed with up to 64 pages to spare");
}

#[test]
fn an_install_whose_root_something_else_fills_after_preflight_restores_it() {
    let bed = InstallBed::start();
    // Room enough: the preflight passes.
    let root = Tmpfs::mount(bed.root(), placed_bytes(&bed) + MIB);
    let before = tree(root.path());
    let content_before = content(&bed.cd);
    let args = server_args(&bed, &[]);
    let mut cmd = bed.install_cmd(&bed.bundle, root.path(), &args);
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The journal is written after the preflight, before the bundle streams:
    // then another writer takes every free byte.
    let journal = root
        .path()
        .join("var/lib/rancher/k3s/airgap/install.journal");
    let deadline = std::time::Instant::now() + RUN_TIMEOUT;
    while !journal.exists() {
        assert!(std::time::Instant::now() < deadline, "no journal appeared");
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let filler = root.fill("filler", 0);
    let out = child.wait_with_output().unwrap();
    let err = assert_fails_naming(
        &out,
        "an install whose root another writer filled",
        &[
            &format!("no space left on {}, needed", root.path().display()),
            "the root is as it was",
        ],
    );
    assert!(needed_more(&err) > 0, "{err}");
    std::fs::remove_file(&filler).unwrap();
    assert_same_tree(
        &before,
        &tree(root.path()),
        "an install filled by another writer",
    );
    assert_containerd_as_before(&bed, &content_before, "an install filled by another writer");
}

#[test]
fn the_embedded_runtimes_image_archive_is_counted_and_undone_when_it_fills() {
    let bed = InstallBed::start();
    let archive = bed.meta.totals.blob_bytes;
    // Room for k3s and the manifests, and half the image archive.
    let root = Tmpfs::mount(bed.root(), placed_bytes(&bed) + archive / 2);
    let before = tree(root.path());
    let args = |extra: &[&str]| {
        let mut a = strings(&["--role", "server", "--runtime", "embedded"]);
        a.extend(strings(&["--init", "none", "--no-start"]));
        a.extend(strings(extra));
        a.extend(port_args(bed.port));
        a
    };
    let out = bed.install(&args(&[]));
    let err = assert_fails_naming(
        &out,
        "an embedded-runtime install onto a root without room for its image archive",
        &[
            "preflight check disk failed",
            &format!("no space left on {}", root.path().display()),
            "the image archive",
        ],
    );
    let more = needed_more(&err);
    assert!(
        more >= archive / 2 && more < 2 * archive,
        "needed {more} more with a {archive}-byte archive: {err}"
    );
    assert_same_tree(&before, &tree(root.path()), "a refused embedded install");

    // Preflight skipped: the archive fills the file system as the images stream.
    let out = bed.install(&args(&["--skip-preflight", "disk"]));
    assert_fails_naming(
        &out,
        "an embedded-runtime install whose image archive fills the root",
        &[
            &format!("no space left on {}", root.path().display()),
            "airgap-images.tar",
            "the root is as it was",
        ],
    );
    assert_same_tree(
        &before,
        &tree(root.path()),
        "an embedded install that filled the root",
    );
}

#[test]
fn a_no_cache_build_whose_downloads_fill_the_output_directory_says_so() {
    let tb = Testbed::start();
    let lock = std::fs::read(tb.lock_path()).unwrap();
    // --no-cache downloads into a staging directory beside the output.
    let out = Tmpfs::mount(&tb.out_dir(), 256 * KIB);
    let res = tb.build("k3s.airgap.tar.zst", &["--no-cache"]);
    let err = assert_fails_naming(
        &res,
        "a --no-cache build into a 256 KiB file system",
        &[
            &format!("no space left on {}, needed at least", out.path().display()),
            "staging directory (--no-cache)",
        ],
    );
    assert!(needed_more(&err) > 0, "{err}");
    tb.assert_no_output(&lock);
}
