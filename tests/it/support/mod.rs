//! Shared helpers of the end-to-end tests: a seeded testbed (real registry,
//! release server, copied manifests and lock, a signing key) per test, the
//! `airgap` binary run with a timeout and stdin closed, and assertions on
//! what it printed. Tar-level crafting of hostile bundles is in [`tarball`].

pub mod cache;
pub mod cluster;
pub mod hostile;
pub mod install;
pub mod lock;
pub mod split;
pub mod tarball;
pub mod tmpfs;

use airgap_testbed::containerd::output_with_timeout;
use airgap_testbed::{seed, Registry, ReleaseServer, Seeded};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The version the tests ask for (the demo release is v1.20.6+k3s1).
pub const VERSION: &str = "v1.20.6";
/// How long one `airgap` run may take before the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// The `airgap` binary under test, with no password in its environment.
pub fn airgap() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_airgap"));
    cmd.env_remove("AIRGAP_KEY_PASSWORD")
        .env_remove("AIRGAP_LOG")
        .env_remove("SOURCE_DATE_EPOCH");
    cmd
}

/// Runs `cmd` with stdin closed (it must never prompt) and a timeout.
pub fn run(cmd: &mut Command) -> Output {
    output_with_timeout(cmd, RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e:#}"))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Panics with the program's output unless it succeeded.
#[track_caller]
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// Asserts that the program failed and that its stderr names every one of
/// `needles`; returns stderr.
#[track_caller]
pub fn assert_fails_naming(out: &Output, what: &str, needles: &[&str]) -> String {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "{what} should have failed but succeeded:\nstdout:\n{}\nstderr:\n{err}",
        stdout(out)
    );
    for needle in needles {
        assert!(
            err.contains(needle),
            "{what}: stderr does not name {needle:?}:\n{err}"
        );
    }
    eprintln!("{what}: {}", err.trim());
    err
}

/// Runs a real program (minisign, sha256sum, skopeo, tar) and panics with
/// its output unless it succeeds; returns stdout.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let out = run(cmd);
    assert_ok(&out, &what);
    stdout(&out)
}

/// Extracts a bundle (plain or zstd; GNU tar detects which) into `dir`.
#[track_caller]
pub fn extract(bundle: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(dir)
            .arg("-xf")
            .arg(bundle),
    );
}

/// Names in `dir` (not recursive), sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A seeded registry and k3s release server, and a work dir holding copies of
/// the repo's `manifests/` and `images.lock`, a key pair (`site.key`,
/// `site.pub`, no password) and an empty `out/` for bundles. Everything is
/// stopped and removed on drop.
pub struct Testbed {
    pub registry: Registry,
    pub seeded: Seeded,
    pub release: ReleaseServer,
    pub release_root: tempfile::TempDir,
    pub work: tempfile::TempDir,
}

impl Testbed {
    /// The demo set, with the stand-in k3s binary.
    pub fn start() -> Testbed {
        Self::start_with_k3s(seed::K3S_STAND_IN.as_bytes())
    }

    /// The demo set, serving `k3s_amd64` as the amd64 k3s binary.
    pub fn start_with_k3s(k3s_amd64: &[u8]) -> Testbed {
        let registry = Registry::start().expect("starting the registry");
        let seeded = seed::seed_demo(&registry).expect("seeding the registry");
        let release_root = tempfile::Builder::new()
            .prefix("airgap-test-release-")
            .tempdir()
            .unwrap();
        seed::write_demo_release(release_root.path(), k3s_amd64).expect("writing the release");
        let release = ReleaseServer::start(release_root.path()).expect("starting releases");
        let work = tempfile::Builder::new()
            .prefix("airgap-test-")
            .tempdir()
            .unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let manifests = work.path().join("manifests");
        std::fs::create_dir(&manifests).unwrap();
        for entry in std::fs::read_dir(repo.join("manifests")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), manifests.join(entry.file_name())).unwrap();
        }
        std::fs::copy(repo.join("images.lock"), work.path().join("images.lock")).unwrap();
        std::fs::create_dir(work.path().join("out")).unwrap();
        let tb = Testbed {
            registry,
            seeded,
            release,
            release_root,
            work,
        };
        tb.keygen("site");
        tb
    }

    pub fn work(&self) -> &Path {
        self.work.path()
    }

    /// The (empty until a build succeeds) dir bundles are written to.
    pub fn out_dir(&self) -> PathBuf {
        self.work().join("out")
    }

    pub fn lock_path(&self) -> PathBuf {
        self.work().join("images.lock")
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.work().join("manifests")
    }

    /// `site.key`, unencrypted.
    pub fn key(&self) -> PathBuf {
        self.work().join("site.key")
    }

    /// `site.pub`.
    pub fn pub_key(&self) -> PathBuf {
        self.work().join("site.pub")
    }

    /// Generates an unencrypted key pair `NAME.key`/`NAME.pub` in the work dir.
    pub fn keygen(&self, name: &str) -> (PathBuf, PathBuf) {
        let base = self.work().join(name);
        let out = run(airgap()
            .arg("keygen")
            .arg("--out")
            .arg(&base)
            .arg("--no-password"));
        assert_ok(&out, "airgap keygen --no-password");
        (
            self.work().join(format!("{name}.key")),
            self.work().join(format!("{name}.pub")),
        )
    }

    /// `airgap bundle build` against this testbed for amd64, `--quiet`,
    /// writing `out/<name>`; `extra` adds or overrides flags.
    pub fn build_command(&self, name: &str, extra: &[&str]) -> Command {
        self.build_command_signed(name, &self.key(), extra)
    }

    /// [`Testbed::build_command`] signing with `key` instead of `site.key`.
    pub fn build_command_signed(&self, name: &str, key: &Path, extra: &[&str]) -> Command {
        self.build_command_for("amd64", name, key, extra)
    }

    /// [`Testbed::build_command_signed`] for `arches` (comma-separated).
    pub fn build_command_for(
        &self,
        arches: &str,
        name: &str,
        key: &Path,
        extra: &[&str],
    ) -> Command {
        let mut cmd =
            self.rig_command(&["bundle", "build", "--version", VERSION, "--arch", arches]);
        cmd.arg("--sign-key")
            .arg(key)
            .arg("-o")
            .arg(self.out_dir().join(name))
            .arg("--quiet")
            .args(extra);
        cmd
    }

    /// `airgap SUBCOMMAND…` run in the work dir with this testbed's own
    /// download cache (never the user's), pointed at its registry, release
    /// server, manifests and lock.
    pub fn rig_command(&self, subcommand: &[&str]) -> Command {
        let mut cmd = airgap();
        cmd.current_dir(self.work())
            .env("XDG_CACHE_HOME", self.work().join("cache"))
            .args(subcommand)
            .arg("--registry-mirror")
            .arg(format!("docker.io={}", self.registry.url()))
            .arg("--release-url")
            .arg(self.release.url())
            .arg("--manifests")
            .arg(self.manifests_dir())
            .arg("--lock")
            .arg(self.lock_path());
        cmd
    }

    /// Runs a build and returns what it did.
    pub fn build(&self, name: &str, extra: &[&str]) -> Output {
        run(&mut self.build_command(name, extra))
    }

    /// Runs a build that must succeed; returns the bundle's path.
    #[track_caller]
    pub fn build_ok(&self, name: &str, extra: &[&str]) -> PathBuf {
        let out = self.build(name, extra);
        assert_ok(&out, "airgap bundle build");
        let path = self.out_dir().join(name);
        assert!(path.is_file(), "{} was not written", path.display());
        path
    }

    /// Asserts that a failed build left nothing behind: no file (and no
    /// staging dir or temp file) in `out/`, and the lock as it was.
    #[track_caller]
    pub fn assert_no_output(&self, lock_before: &[u8]) {
        let left = dir_names(&self.out_dir());
        assert!(left.is_empty(), "a failed build left {left:?} in out/");
        let lock_after = std::fs::read(self.lock_path()).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&lock_after),
            String::from_utf8_lossy(lock_before),
            "a failed build changed images.lock"
        );
    }

    /// `airgap bundle verify FILE --key site.pub`.
    pub fn verify(&self, bundle: &Path) -> Output {
        run(airgap()
            .args(["bundle", "verify"])
            .arg(bundle)
            .arg("--key")
            .arg(self.pub_key()))
    }
}
