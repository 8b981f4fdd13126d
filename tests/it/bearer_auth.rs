//! Registries behind the bearer-token flow, as Docker Hub and most private
//! registries run: the real docker-registry with `auth: token:` and the rig's
//! token server. The demo set is seeded into a plain registry whose storage
//! the token-auth registry then serves. Credentials from `--registry-auth`
//! or the docker config are exchanged for tokens scoped to each repository
//! pulled; a wrong password fails naming the registry and the image, and
//! writes nothing.

use crate::support;

use airgap_testbed::token::{TokenRequest, TokenServer, SERVICE};
use airgap_testbed::{Registry, RegistryOptions};
use std::collections::BTreeSet;
use std::path::PathBuf;
use support::{assert_fails_naming, assert_ok, Testbed};

const USER: &str = "tester";
const PASSWORD: &str = "s3cret";

/// The testbed, a token server for `tester`/`s3cret`, and a registry with
/// token auth serving the testbed registry's storage.
struct Bearer {
    tb: Testbed,
    tokens: TokenServer,
    registry: Registry,
    /// An empty docker config dir, unless a test writes one.
    docker: PathBuf,
}

impl Bearer {
    fn start() -> Bearer {
        let tb = Testbed::start();
        let tokens = TokenServer::start(USER, PASSWORD).unwrap();
        let registry = Registry::start_with(
            RegistryOptions::new()
                .token_auth(&tokens)
                .serve_storage_of(&tb.registry),
        )
        .unwrap();
        let docker = tb.work().join("docker");
        std::fs::create_dir_all(&docker).unwrap();
        Bearer {
            tb,
            tokens,
            registry,
            docker,
        }
    }

    fn host(&self) -> &str {
        self.registry.addr()
    }

    /// `--registry-auth HOST=tester:FILE` with `password` in FILE.
    fn auth_flag(&self, password: &str) -> String {
        let file = self.tb.work().join(format!("password-{password}"));
        std::fs::write(&file, format!("{password}\n")).unwrap();
        format!("{}={USER}:{}", self.host(), file.display())
    }

    /// A build of `name` against the token-auth registry, with the docker
    /// config dir and `extra` flags.
    fn build(&self, name: &str, extra: &[&str]) -> std::process::Output {
        let mirror = format!("docker.io={}", self.registry.url());
        let mut args = vec!["--registry-mirror", mirror.as_str()];
        args.extend_from_slice(extra);
        let mut cmd = self.tb.build_command(name, &args);
        support::run(cmd.env("DOCKER_CONFIG", &self.docker))
    }

    /// `repository:NAME:pull` for each repository of the demo set.
    fn pull_scopes(&self) -> BTreeSet<String> {
        self.tb
            .seeded
            .images
            .iter()
            .map(|i| format!("repository:{}:pull", i.repository))
            .collect()
    }

    /// Asserts that every token request since the last reset was granted
    /// to tester for the registry's service, and that together they asked
    /// for pull on each repository of the demo set and nothing else.
    #[track_caller]
    fn assert_tokens_for_each_repository(&self, what: &str) {
        let seen = self.tokens.requests();
        assert!(!seen.is_empty(), "{what}: no token was asked for");
        for request in &seen {
            assert_eq!(
                (
                    request.user.as_deref(),
                    request.service.as_deref(),
                    request.status
                ),
                (Some(USER), Some(SERVICE), 200),
                "{what}: {request:?}"
            );
        }
        let scopes: BTreeSet<String> = seen.iter().flat_map(|r| r.scopes.clone()).collect();
        assert_eq!(scopes, self.pull_scopes(), "{what}: {seen:#?}");
        self.tokens.reset();
    }
}

#[test]
fn bearer_tokens_from_the_flag_or_the_docker_config() {
    let b = Bearer::start();

    // The flag: each repository pulled through a token scoped to it.
    let flag = b.auth_flag(PASSWORD);
    let out = b.build("flag.airgap.tar.zst", &["--registry-auth", &flag]);
    assert_ok(&out, "a build with --registry-auth through the token flow");
    b.assert_tokens_for_each_repository("--registry-auth");
    assert_ok(
        &b.tb.verify(&b.tb.out_dir().join("flag.airgap.tar.zst")),
        "verify",
    );

    // The docker config (base64 of tester:s3cret), with a fresh download
    // so that the registry is asked again.
    std::fs::write(
        b.docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"dGVzdGVyOnMzY3JldA=="}}}}}}"#,
            b.host()
        ),
    )
    .unwrap();
    let out = b.build("docker.airgap.tar.zst", &["--no-cache"]);
    assert_ok(
        &out,
        "a build with the docker config through the token flow",
    );
    b.assert_tokens_for_each_repository("docker config");

    // `bundle lock` resolves through tokens as well.
    let mirror = format!("docker.io={}", b.registry.url());
    let mut cmd =
        support::lock::lock_command(&b.tb, "amd64", &["--check", "--registry-mirror", &mirror]);
    assert_ok(
        &support::run(cmd.env("DOCKER_CONFIG", &b.docker)),
        "bundle lock --check through the token flow",
    );
    let seen = b.tokens.requests();
    assert!(
        !seen.is_empty() && seen.iter().all(|r| r.status == 200),
        "{seen:#?}"
    );
}

#[test]
fn a_wrong_password_fails_naming_registry_and_image_and_writes_nothing() {
    let b = Bearer::start();
    let lock = std::fs::read(b.tb.lock_path()).unwrap();

    let flag = b.auth_flag("wrong-password");
    let out = b.build("wrong.airgap.tar.zst", &["--registry-auth", &flag]);
    let err = assert_fails_naming(
        &out,
        "a build with the wrong password",
        &[
            b.host(),
            "refused the credentials",
            "as tester",
            "pulling docker.io/",
        ],
    );
    let references = b.tb.seeded.references();
    assert!(
        references.iter().any(|r| err.contains(r.as_str())),
        "the error names none of {references:?}:\n{err}"
    );
    assert!(
        !err.contains("wrong-password"),
        "the password is shown: {err}"
    );
    b.tb.assert_no_output(&lock);
    let seen = b.tokens.requests();
    assert!(
        seen.iter()
            .any(|r| r.status == 401 && r.user.as_deref() == Some(USER)),
        "the token server refused tester: {seen:#?}"
    );
    assert!(
        seen.iter().all(|r: &TokenRequest| r.status != 200),
        "{seen:#?}"
    );

    // Without credentials it says that some are wanted.
    let out = b.build("anon.airgap.tar.zst", &[]);
    assert_fails_naming(
        &out,
        "an anonymous build",
        &[b.host(), "wants credentials", "pulling docker.io/"],
    );
    b.tb.assert_no_output(&lock);
}
