//! Attacks on the trust around the verified reader that need no broken
//! signature (issue 11), each as it would succeed on a weaker installer:
//! a pipe that serves the bundle twice (installing one bundle while
//! recording another), a token written over a file others can read or
//! through a link, and directories made under `umask 000`. k3s is the
//! `k3s-standin` TEST DOUBLE.

use crate::support;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::install::*;
use support::{airgap, assert_ok, run, run_ok};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// A FIFO in place of the bundle that serves it on the first open and
/// counts every later open (an installer that reads its source twice, as
/// one that takes its plan from a first read did, would get whatever the
/// pipe serves then: another bundle).
#[test]
fn a_pipe_is_read_once_so_what_is_recorded_is_what_was_installed() {
    let bed = InstallBed::start();
    let fifo = bed.scratch.path().join("bundle.fifo");
    run_ok(std::process::Command::new("mkfifo").arg(&fifo));
    let bundle = std::fs::read(&bed.bundle).unwrap();
    let later_opens = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let server = {
        let (fifo, later_opens, done) = (fifo.clone(), later_opens.clone(), done.clone());
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut first = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let _ = first.write_all(&bundle);
            drop(first);
            // Any further reader gets the same bytes again (a stick that
            // changes would serve another bundle here). A writer's
            // non-blocking open succeeds while a reader has the pipe open:
            // first wait until the installer closed its first read, then
            // count every reader that opens it anew.
            let open_writer = || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                    .open(&fifo)
            };
            let mut first_reader_gone = false;
            while !done.load(Ordering::SeqCst) {
                match open_writer() {
                    Ok(mut again) if first_reader_gone => {
                        later_opens.fetch_add(1, Ordering::SeqCst);
                        let _ = again.write_all(&bundle);
                    }
                    Ok(_) => std::thread::sleep(Duration::from_millis(2)),
                    Err(_) => {
                        first_reader_gone = true;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            }
        })
    };
    let out =
        run(&mut bed.install_cmd(&fifo, bed.root(), &no_start_server_args(&bed.cd, bed.port)));
    done.store(true, Ordering::SeqCst);
    server.join().unwrap();
    assert_ok(&out, "airgap install from a FIFO");
    assert_eq!(
        later_opens.load(Ordering::SeqCst),
        0,
        "the installer opened its source more than once"
    );
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bed.path(INSTALL_RECORD)).unwrap()).unwrap();
    let header = airgap_bundle::read::read_header(
        airgap_bundle::source::open_bundle(&bed.bundle).unwrap(),
        &airgap_bundle::read::Trust::SkipSignature,
    )
    .unwrap();
    assert_eq!(record["bundle"], header.sums_digest.to_string());
}

/// `airgap token --out FILE` where FILE exists with mode 0644, or is a
/// link to a file elsewhere: the token ends up 0600 in FILE itself (an
/// `open(O_TRUNC)` kept the old mode, and followed the link).
#[test]
fn a_token_never_lands_in_a_readable_file_or_through_a_link() {
    let dir = tempdir("airgap-token-");
    let root = dir.path().join("root");
    let token_path = root.join("var/lib/rancher/k3s/server/node-token");
    std::fs::create_dir_all(token_path.parent().unwrap()).unwrap();
    let token = format!("K10{}::server:{}", "ab".repeat(32), "s3cret-password");
    std::fs::write(&token_path, format!("{token}\n")).unwrap();

    let out_file = dir.path().join("t");
    std::fs::write(&out_file, "old").unwrap();
    std::fs::set_permissions(&out_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(airgap()
        .args(["token", "--root"])
        .arg(&root)
        .arg("--out")
        .arg(&out_file));
    assert_ok(&out, "airgap token --out onto a 0644 file");
    assert_eq!(mode(&out_file), 0o600, "the token file is private");
    assert_eq!(std::fs::read_to_string(&out_file).unwrap().trim(), token);

    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, "untouched").unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let out = run(airgap()
        .args(["token", "--root"])
        .arg(&root)
        .arg("--out")
        .arg(&link));
    assert_ok(&out, "airgap token --out onto a link");
    assert!(!std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(mode(&link), 0o600);
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "untouched");
}

/// An install started under `umask 000` makes no directory others can
/// write to (a world-writable auto-deploy manifests directory would let
/// anyone run anything as cluster-admin).
#[test]
fn an_install_under_umask_000_makes_no_directory_others_can_write() {
    let bed = InstallBed::start();
    let install = bed.install_cmd(
        &bed.bundle,
        bed.root(),
        &no_start_server_args(&bed.cd, bed.port),
    );
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("umask 000; exec \"$@\"")
        .arg("sh")
        .arg(install.get_program())
        .args(install.get_args());
    let out = run(&mut cmd);
    assert_ok(&out, "airgap install under umask 000");
    let mut dirs = 0;
    for (path, node) in tree(bed.root()) {
        if let Node::Dir { mode } = node {
            dirs += 1;
            assert_eq!(mode & 0o022, 0, "{path} is mode {mode:o}");
        }
        if let Node::File { mode, .. } = node {
            assert_eq!(mode & 0o022, 0, "{path} is mode {mode:o}");
        }
    }
    assert!(dirs > 5, "the install made only {dirs} directories");
}

/// An older signed bundle over a newer install: refused, nothing changed
/// (any bundle the key ever signed would otherwise roll a node back to
/// its old k3s and images); `--allow-downgrade` does it on purpose.
#[test]
fn an_older_bundle_is_not_installed_over_a_newer_one() {
    let older = demo_bundle();
    // Bundle times are in seconds: the newer one is built a second later.
    std::thread::sleep(Duration::from_millis(1100));
    let bed = InstallBed::start_with(|_| {});
    assert!(bed.meta.created > older.meta.created, "built in order");
    let args = no_start_server_args(&bed.cd, bed.port);
    assert_ok(&bed.install(&args), "the newer bundle");
    let before = tree(bed.root());

    let older_install = |extra: &[&str]| {
        let mut cmd = airgap();
        cmd.args(["install", "--offline"])
            .arg(&older.bundle)
            .arg("--key")
            .arg(&older.pub_key)
            .arg("--root")
            .arg(bed.root())
            // Before the arguments: they end with `-- <k3s flags>`.
            .args(extra)
            .args(&args);
        run(&mut cmd)
    };
    let out = older_install(&[]);
    support::assert_fails_naming(
        &out,
        "an older bundle over a newer one",
        &["older bundle", "--allow-downgrade"],
    );
    assert_same_tree(&before, &tree(bed.root()), "a refused downgrade");

    let out = older_install(&["--allow-downgrade"]);
    assert_ok(&out, "an older bundle with --allow-downgrade");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bed.path(INSTALL_RECORD)).unwrap()).unwrap();
    assert_eq!(record["created"], older.meta.created);
}

/// A stick whose key was swapped (with a bundle signed by it) passes every
/// check that trusts the stick; the key id the site was given out of band
/// does not match it, and the install is refused before anything is
/// written. The right id, in any spelling of it, installs.
#[test]
fn a_key_that_is_not_the_expected_one_is_refused() {
    let bed = InstallBed::start();
    let given = airgap_bundle::sign::public_key_id(
        &airgap_bundle::sign::load_public_key(&bed.pub_key).unwrap(),
    );
    let before = tree(bed.root());
    let args = no_start_server_args(&bed.cd, bed.port);
    let install = |expect: &str| {
        let mut cmd = bed.install_cmd(&bed.bundle, bed.root(), &[]);
        // Before the arguments: they end with `-- <k3s flags>`.
        cmd.args(["--expect-key-id", expect]).args(&args);
        run(&mut cmd)
    };
    let out = install("0123456789ABCDEF");
    support::assert_fails_naming(
        &out,
        "a key other than the expected one",
        &[&given, "0123456789ABCDEF"],
    );
    assert_same_tree(&before, &tree(bed.root()), "a refused key");

    let spaced = airgap_bundle::sign::fingerprint(&given.to_lowercase());
    let out = install(&spaced);
    assert_ok(&out, "the expected key, as a fingerprint");
    assert!(
        support::stdout(&out).contains(&format!("key id {given}")),
        "{}",
        support::stdout(&out)
    );
}
