//! The command line as a user meets it: help that names the key options, and
//! `keygen` with and without a password, never prompting when nobody is at a
//! terminal (every run here has stdin closed and a timeout).

use crate::support;

use std::path::Path;
use std::process::Command;
use support::{airgap, assert_fails_naming, assert_ok, run, run_ok, stderr, stdout, Testbed};

/// `airgap ARGS` (a help page) printed exactly the snapshot `expected`.
/// `SNAPSHOTS=overwrite cargo test help` rewrites the snapshots.
#[track_caller]
fn help_is(args: &[&str], expected: snapbox::Data) {
    // A fixed width: help is wrapped to the terminal's, up to 100 columns.
    let out = run(airgap().args(args).env("COLUMNS", "100"));
    assert_ok(&out, &format!("airgap {}", args.join(" ")));
    snapbox::assert_data_eq!(stdout(&out), expected.raw());
}

#[test]
fn help_pages_match_their_snapshots() {
    help_is(&["--help"], snapbox::file!["snapshots/help.txt"]);
    help_is(
        &["bundle", "--help"],
        snapbox::file!["snapshots/bundle.txt"],
    );
    help_is(
        &["bundle", "build", "--help"],
        snapbox::file!["snapshots/bundle-build.txt"],
    );
    help_is(
        &["bundle", "verify", "--help"],
        snapbox::file!["snapshots/bundle-verify.txt"],
    );
    help_is(
        &["bundle", "inspect", "--help"],
        snapbox::file!["snapshots/bundle-inspect.txt"],
    );
    help_is(
        &["bundle", "lock", "--help"],
        snapbox::file!["snapshots/bundle-lock.txt"],
    );
    help_is(
        &["bundle", "lint", "--help"],
        snapbox::file!["snapshots/bundle-lint.txt"],
    );
    help_is(
        &["bundle", "export", "--help"],
        snapbox::file!["snapshots/bundle-export.txt"],
    );
    help_is(
        &["keygen", "--help"],
        snapbox::file!["snapshots/keygen.txt"],
    );
    help_is(
        &["install", "--help"],
        snapbox::file!["snapshots/install.txt"],
    );
    help_is(&["token", "--help"], snapbox::file!["snapshots/token.txt"]);
    help_is(
        &["status", "--help"],
        snapbox::file!["snapshots/status.txt"],
    );
    help_is(
        &["uninstall", "--help"],
        snapbox::file!["snapshots/uninstall.txt"],
    );
    // `help CMD` is the same page.
    help_is(
        &["help", "bundle", "build"],
        snapbox::file!["snapshots/bundle-build.txt"],
    );
}

#[test]
fn version_and_usage_errors() {
    let out = run(airgap().arg("--version"));
    assert_ok(&out, "airgap --version");
    assert!(stdout(&out).starts_with("airgap "), "{}", stdout(&out));

    // A usage error is an error, with a hint.
    let out = run(airgap().args(["bundle", "build"]));
    assert_fails_naming(
        &out,
        "bundle build without arguments",
        &["--version", "--sign-key"],
    );
}

/// The KDF algorithm of a minisign secret key file: `Sc` (scrypt, encrypted)
/// or two zero bytes (stored in the clear). Decoded with coreutils' base64.
fn kdf_algorithm(secret_key: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(secret_key).unwrap();
    let line = text.lines().nth(1).expect("a minisign key has two lines");
    let dir = secret_key.parent().unwrap();
    let b64 = dir.join("key.b64");
    std::fs::write(&b64, line).unwrap();
    let out = run(Command::new("base64").arg("-d").arg(&b64));
    assert_ok(&out, "base64 -d");
    out.stdout[2..4].to_vec()
}

#[test]
fn keygen_without_password_writes_a_key_pair_minisign_can_use() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("site");
    let out = run(airgap()
        .arg("keygen")
        .arg("--out")
        .arg(&base)
        .arg("--no-password"));
    assert_ok(&out, "keygen --no-password");
    let (sk, pk) = (dir.path().join("site.key"), dir.path().join("site.pub"));
    assert!(stderr(&out).contains("site.pub"), "{}", stderr(&out));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&sk).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the secret key is private");
    assert_eq!(kdf_algorithm(&sk), b"\0\0", "stored in the clear");

    // The real minisign signs with it and verifies with the public key.
    let file = dir.path().join("note.txt");
    std::fs::write(&file, "signed by an airgap key\n").unwrap();
    run_ok(
        Command::new("minisign")
            .arg("-S")
            .arg("-s")
            .arg(&sk)
            .arg("-m")
            .arg(&file),
    );
    let out = run_ok(
        Command::new("minisign")
            .arg("-Vm")
            .arg(&file)
            .arg("-p")
            .arg(&pk),
    );
    assert!(out.contains("verified"), "{out}");

    // It does not overwrite a key without --force.
    let out = run(airgap()
        .arg("keygen")
        .arg("--out")
        .arg(&base)
        .arg("--no-password"));
    assert_fails_naming(
        &out,
        "keygen over an existing key",
        &["site.key", "--force"],
    );
    let out = run(airgap()
        .arg("keygen")
        .arg("--out")
        .arg(&base)
        .args(["--no-password", "--force"]));
    assert_ok(&out, "keygen --force");
}

#[test]
fn keygen_without_a_password_source_fails_instead_of_prompting() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("site");
    // stdin is closed (not a terminal) and no password is given anyhow.
    let out = run(airgap().arg("keygen").arg("--out").arg(&base));
    assert_fails_naming(
        &out,
        "keygen with no password source",
        &["password", "--no-password", "AIRGAP_KEY_PASSWORD"],
    );
    assert!(
        support::dir_names(dir.path()).is_empty(),
        "keygen wrote files although it failed"
    );
}

/// `airgap keygen --out BASE` with the password "correct horse" from
/// `AIRGAP_KEY_PASSWORD`.
fn keygen_encrypted(base: &Path) {
    let out = run(airgap()
        .env("AIRGAP_KEY_PASSWORD", "correct horse")
        .arg("keygen")
        .arg("--out")
        .arg(base));
    assert_ok(&out, "keygen with AIRGAP_KEY_PASSWORD");
}

#[test]
fn keygen_with_env_password_encrypts_and_a_wrong_password_fails_the_build() {
    let tb = Testbed::start();
    let base = tb.work().join("locked");
    keygen_encrypted(&base);
    let sk = tb.work().join("locked.key");
    assert_eq!(kdf_algorithm(&sk), b"Sc", "encrypted with scrypt");
    let lock = std::fs::read(tb.lock_path()).unwrap();

    // The wrong password: a clear error naming the key, nothing written.
    let mut cmd = tb.build_command_signed("site.airgap.tar.zst", &sk, &[]);
    let out = run(cmd.env("AIRGAP_KEY_PASSWORD", "wrong horse"));
    assert_fails_naming(
        &out,
        "build with the wrong password",
        &["locked.key", "password"],
    );
    tb.assert_no_output(&lock);

    // No password at all (and no terminal): it fails, naming the key.
    let out = run(&mut tb.build_command_signed("site.airgap.tar.zst", &sk, &[]));
    assert_fails_naming(
        &out,
        "build with an encrypted key and no password",
        &["locked.key", "encrypted"],
    );
    tb.assert_no_output(&lock);

    // The right one, from the environment and from a file.
    let mut cmd = tb.build_command_signed("env.airgap.tar.zst", &sk, &[]);
    assert_ok(
        &run(cmd.env("AIRGAP_KEY_PASSWORD", "correct horse")),
        "build with the right password",
    );
    let pw = tb.work().join("password.txt");
    std::fs::write(&pw, "correct horse\n").unwrap();
    let pw_arg = pw.to_str().unwrap();
    let mut cmd = tb.build_command_signed("file.airgap.tar.zst", &sk, &["--password-file", pw_arg]);
    assert_ok(&run(&mut cmd), "build with --password-file");
    let out = run(airgap()
        .args(["bundle", "verify"])
        .arg(tb.out_dir().join("file.airgap.tar.zst"))
        .arg("--key")
        .arg(tb.work().join("locked.pub")));
    assert_ok(&out, "verify with the encrypted key's public key");
}

/// With an encrypted key and no password, the build stops at the key and
/// says how to give the password (`--password-file` or
/// `AIRGAP_KEY_PASSWORD`), not minisign's bare "key might be encrypted"
/// (`bundle/src/sign.rs` `load_secret_key`).
#[test]
fn encrypted_key_without_password_says_how_to_give_one() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("locked");
    keygen_encrypted(&base);
    // The key is read before anything is fetched, so nothing here needs to
    // answer: the build must stop at the key.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lock = dir.path().join("images.lock");
    std::fs::copy(repo.join("images.lock"), &lock).unwrap();
    let out = run(airgap()
        .current_dir(dir.path())
        .args([
            "bundle",
            "build",
            "--version",
            support::VERSION,
            "--arch",
            "amd64",
        ])
        .arg("--sign-key")
        .arg(dir.path().join("locked.key"))
        .args(["--registry-mirror", "docker.io=http://127.0.0.1:9"])
        .args(["--release-url", "http://127.0.0.1:9"])
        .arg("--manifests")
        .arg(repo.join("manifests"))
        .arg("--lock")
        .arg(&lock)
        .arg("-o")
        .arg(dir.path().join("never.airgap.tar.zst")));
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "built without the key's password:\n{err}"
    );
    assert!(
        err.contains("locked.key")
            && err.contains("--password-file")
            && err.contains("AIRGAP_KEY_PASSWORD"),
        "an encrypted key without a password should fail saying how to give one \
         (--password-file, AIRGAP_KEY_PASSWORD); it said:\n{err}"
    );
    assert!(!dir.path().join("never.airgap.tar.zst").exists());
}
