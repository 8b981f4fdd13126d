//! A real CNCF distribution registry (Debian's `docker-registry`) on a
//! loopback port, with its storage, config and log in a temp dir of its own.
//!
//! The registry runs under a small `sh` watchdog whose stdin is a pipe held by
//! [`Registry`]: when the handle is dropped, stopped, or this process dies for
//! any reason (even SIGKILL), the pipe closes and the watchdog kills the
//! registry, so no registry outlives its test.

use airgap_bundle::digest::Digest;
use anyhow::{bail, Context, Result};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The registry program (Debian package `docker-registry`).
pub const REGISTRY_PROGRAM: &str = "docker-registry";

/// How long [`Registry::start_with`] waits for `GET /v2/` to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the registry, and kills it when this shell's stdin reaches end of
/// file. `$1` config, `$2` log file, `$3` program.
const WATCHDOG: &str = r#"
exec 3<&0
"$3" serve "$1" </dev/null 3<&- >>"$2" 2>&1 &
pid=$!
( read -r _ <&3; kill -KILL "$pid" ) 2>/dev/null &
exec 3<&-
wait "$pid"
"#;

/// How to run the registry. Built with the methods below; `Default` is a
/// plain-HTTP registry without auth, deletes enabled, logging at `warn`.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    log_level: String,
    delete_enabled: bool,
    parent_dir: Option<PathBuf>,
    program: String,
    htpasswd: Option<(String, String)>,
    tls_self_signed: bool,
    storage: Option<PathBuf>,
    token: Option<TokenAuth>,
}

/// What the registry needs to check a token server's tokens.
#[derive(Debug, Clone)]
struct TokenAuth {
    realm: String,
    root_cert_bundle: PathBuf,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            log_level: "warn".into(),
            delete_enabled: true,
            parent_dir: None,
            program: REGISTRY_PROGRAM.into(),
            htpasswd: None,
            tls_self_signed: false,
            storage: None,
            token: None,
        }
    }
}

impl RegistryOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registry log level (`error`, `warn`, `info`, `debug`).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// Whether `DELETE` of manifests and blobs is allowed (default: yes).
    pub fn delete_enabled(mut self, enabled: bool) -> Self {
        self.delete_enabled = enabled;
        self
    }

    /// Creates the registry's temp dir inside `dir` instead of the system temp
    /// dir (it is still removed on drop).
    pub fn in_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.parent_dir = Some(dir.into());
        self
    }

    /// The registry program to run (default `docker-registry` from `PATH`).
    pub fn program(mut self, program: &str) -> Self {
        self.program = program.to_string();
        self
    }

    /// Requires HTTP basic auth for one htpasswd user (a bcrypt entry, as
    /// the registry wants). [`Registry::client`] then sends the credentials.
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        self.htpasswd = Some((user.to_string(), password.to_string()));
        self
    }

    /// Requires bearer tokens from `server` (distribution's `auth: token:`,
    /// with the server's realm, service, issuer and CA). The rig's client
    /// cannot push to it: seed a plain registry and serve its storage
    /// ([`RegistryOptions::serve_storage_of`]).
    pub fn token_auth(mut self, server: &crate::token::TokenServer) -> Self {
        self.token = Some(TokenAuth {
            realm: server.realm(),
            root_cert_bundle: server.root_cert_bundle(),
        });
        self
    }

    /// Serves HTTPS only, with a certificate for 127.0.0.1 and localhost
    /// issued by a CA of its own ([`Registry::ca_path`]). The rig's plain
    /// HTTP client cannot push to it: seed a plain registry and serve its
    /// storage ([`RegistryOptions::serve_storage_of`]).
    pub fn tls_self_signed(mut self) -> Self {
        self.tls_self_signed = true;
        self
    }

    /// Serves the storage of another (running or stopped) registry instead
    /// of a fresh one: the same images behind different options.
    pub fn serve_storage_of(mut self, other: &Registry) -> Self {
        self.storage = Some(other.storage_root());
        self
    }

    fn config_yaml(
        &self,
        root: &Path,
        addr: &str,
        htpasswd: Option<&Path>,
        tls: Option<(&Path, &Path)>,
    ) -> String {
        // Paths are our own temp paths; quote them anyway for YAML.
        let mut auth = htpasswd.map_or(String::new(), |p| {
            format!(
                "auth:\n  htpasswd:\n    realm: airgap-testbed\n    path: \"{}\"\n",
                p.display()
            )
        });
        if let Some(token) = &self.token {
            auth = format!(
                "auth:\n  token:\n    realm: \"{}\"\n    service: \"{}\"\n    \
                 issuer: \"{}\"\n    rootcertbundle: \"{}\"\n",
                token.realm,
                crate::token::SERVICE,
                crate::token::ISSUER,
                token.root_cert_bundle.display()
            );
        }
        let tls = tls.map_or(String::new(), |(cert, key)| {
            format!(
                "  tls:\n    certificate: \"{}\"\n    key: \"{}\"\n",
                cert.display(),
                key.display()
            )
        });
        format!(
            "version: 0.1\n\
             log:\n  level: {level}\n  formatter: text\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: \"{root}\"\n  delete:\n    enabled: {delete}\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {addr}\n  headers:\n    X-Content-Type-Options: [nosniff]\n{tls}\
             health:\n  storagedriver:\n    enabled: false\n{auth}",
            level = self.log_level,
            root = root.display(),
            delete = self.delete_enabled,
        )
    }
}

/// A running registry. Stopped and its temp dir removed on drop.
pub struct Registry {
    dir: tempfile::TempDir,
    addr: String,
    watchdog: Option<Child>,
    stdin: Option<ChildStdin>,
    credentials: Option<(String, String)>,
    /// The CA's PEM file, when serving HTTPS.
    ca: Option<PathBuf>,
    storage: Option<PathBuf>,
    /// Whether it answers 401 until a client authenticates.
    requires_auth: bool,
}

impl Registry {
    /// Starts a plain-HTTP registry with default options.
    pub fn start() -> Result<Registry> {
        Self::start_with(RegistryOptions::default())
    }

    /// Starts a registry and waits until `GET /v2/` answers 200.
    pub fn start_with(options: RegistryOptions) -> Result<Registry> {
        let dir = match &options.parent_dir {
            Some(p) => tempfile::Builder::new().prefix("registry-").tempdir_in(p),
            None => tempfile::Builder::new()
                .prefix("airgap-registry-")
                .tempdir(),
        }
        .context("creating the registry's temp dir")?;
        // Another process may take the port between our probe and the
        // registry's bind; try a few ports before giving up.
        let mut last_err = None;
        let mut registry = Registry {
            dir,
            addr: String::new(),
            watchdog: None,
            stdin: None,
            credentials: options.htpasswd.clone(),
            ca: None,
            storage: options.storage.clone(),
            requires_auth: options.htpasswd.is_some() || options.token.is_some(),
        };
        let tls = if options.tls_self_signed {
            let files = crate::pki::write_loopback_tls(registry.dir.path())?;
            registry.ca = Some(files.ca.clone());
            Some(files)
        } else {
            None
        };
        for _ in 0..3 {
            let tls = tls.as_ref().map(|t| (t.cert.as_path(), t.key.as_path()));
            match registry.spawn(&options, tls) {
                Ok(()) => return Ok(registry),
                Err(e) => {
                    registry.stop();
                    let in_use = e.to_string().contains("address already in use");
                    last_err = Some(e);
                    if !in_use {
                        break;
                    }
                }
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    fn spawn(&mut self, options: &RegistryOptions, tls: Option<(&Path, &Path)>) -> Result<()> {
        let port = free_port()?;
        self.addr = format!("127.0.0.1:{port}");
        let root = self.storage_root();
        std::fs::create_dir_all(&root)?;
        let config = self.dir.path().join("config.yml");
        let htpasswd = match &options.htpasswd {
            Some((user, password)) => {
                let path = self.dir.path().join("htpasswd");
                // Lowest cost: this guards a test registry, and speed matters.
                let hash = bcrypt::hash_with_salt(password, 4, *b"airgap-testbed!!")
                    .context("hashing the htpasswd password")?;
                std::fs::write(
                    &path,
                    format!(
                        "{user}:{}\n",
                        hash.format_for_version(bcrypt::Version::TwoY)
                    ),
                )?;
                Some(path)
            }
            None => None,
        };
        std::fs::write(
            &config,
            options.config_yaml(&root, &self.addr, htpasswd.as_deref(), tls),
        )?;
        let log = self.log_path();
        std::fs::write(&log, b"")?;

        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg("airgap-registry-watchdog")
            .arg(&config)
            .arg(&log)
            .arg(&options.program)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // The registry reads REGISTRY_* variables as config overrides; a
        // script that sourced testbed.env must not reconfigure it.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} under /bin/sh", options.program))?;
        self.stdin = child.stdin.take();
        self.watchdog = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let log = self.log_path();
            crate::watchdog::still_starting(self.watchdog.as_mut(), "registry", &log)?;
            let status = match &self.ca {
                Some(ca) => tls_status(&self.addr, ca, "/v2/").ok(),
                None => self.client().get("/v2/").ok().map(|r| r.status),
            };
            // With basic or token auth, 401 also says it is up.
            if status == Some(200) || (status == Some(401) && self.requires_auth) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "registry on {} did not answer GET /v2/ within {:?}; log tail:\n{}",
                    self.addr,
                    READY_TIMEOUT,
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT` (`https://` when serving TLS).
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The PEM file of the CA that issued its certificate, when serving TLS.
    pub fn ca_path(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// The registry's temp dir (config, log, storage).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The filesystem storage root.
    pub fn storage_root(&self) -> PathBuf {
        self.storage
            .clone()
            .unwrap_or_else(|| self.dir.path().join("storage"))
    }

    /// Where the registry keeps the bytes of blob `digest`, for tests that
    /// tamper with stored content.
    pub fn blob_data_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.storage_root()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(&hex)
            .join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The last `lines` lines of the registry's log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::watchdog::log_tail(&self.log_path(), lines)
    }

    /// Whether the registry process is still running.
    pub fn is_running(&mut self) -> bool {
        crate::watchdog::running(self.watchdog.as_mut())
    }

    /// Kills the registry and waits for it (tests use this to simulate a dead
    /// registry). The storage stays until drop. Idempotent.
    pub fn stop(&mut self) {
        // Closing the pipe makes the watchdog kill the registry and exit.
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        if let Some(mut child) = self.watchdog.take() {
            crate::watchdog::wait_or_kill(&mut child, Duration::from_secs(5));
        }
    }

    /// A client for pushing to and reading from this registry (with its
    /// credentials when it requires basic auth).
    pub fn client(&self) -> crate::push::RegistryClient {
        let client = crate::push::RegistryClient::new(&self.addr);
        match &self.credentials {
            Some((user, password)) => client.with_basic_auth(user, password),
            None => client,
        }
    }

    /// The basic-auth user and password, when the registry requires them.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The status of `GET path` over HTTPS to `addr`, trusting only `ca`.
fn tls_status(addr: &str, ca: &Path, path: &str) -> Result<u16> {
    use std::io::{BufRead as _, BufReader};
    use std::sync::Arc;
    let config = crate::pki::trusting(&std::fs::read_to_string(ca)?)?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let sock = std::net::TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut line = String::new();
    BufReader::new(tls).read_line(&mut line)?;
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http;

    #[test]
    fn starts_answers_and_stops() {
        let mut reg = Registry::start().unwrap();
        assert!(reg.url().starts_with("http://127.0.0.1:"));
        let resp = http::get(&format!("{}/v2/", reg.url()), &[]).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
        let d = Digest::of(b"x");
        let p = reg.blob_data_path(&d);
        assert!(p.ends_with(format!("blobs/sha256/{}/{}/data", &d.hex()[..2], d.hex())));
        assert!(reg.is_running());
        reg.stop();
        assert!(!reg.is_running());
        assert!(http::get(&format!("{}/v2/", reg.url()), &[]).is_err());
        let dir = reg.dir().to_path_buf();
        drop(reg);
        assert!(!dir.exists());
    }

    #[test]
    fn basic_auth_guards_the_registry() {
        let reg =
            Registry::start_with(RegistryOptions::new().basic_auth("tester", "s3cret")).unwrap();
        let anonymous = http::get(&format!("{}/v2/", reg.url()), &[]).unwrap();
        assert_eq!(anonymous.status, 401);
        let wrong = crate::push::RegistryClient::new(reg.addr()).with_basic_auth("tester", "nope");
        assert_eq!(wrong.get("/v2/").unwrap().status, 401);
        assert_eq!(reg.client().get("/v2/").unwrap().status, 200);
        let layer = crate::image::note_layer("/x", "x").unwrap();
        assert!(reg.client().push_blob("auth/test", &layer.blob).unwrap());
        assert_eq!(reg.credentials(), Some(("tester", "s3cret")));
    }

    #[test]
    fn token_auth_accepts_the_token_servers_tokens() {
        let plain = Registry::start().unwrap();
        let layer = crate::image::note_layer("/x", "x").unwrap();
        assert!(plain.client().push_blob("token/test", &layer.blob).unwrap());
        let tokens = crate::token::TokenServer::start("tester", "s3cret").unwrap();
        let reg = Registry::start_with(
            RegistryOptions::new()
                .token_auth(&tokens)
                .serve_storage_of(&plain),
        )
        .unwrap();
        let path = format!("{}/v2/token/test/blobs/{}", reg.url(), layer.blob.digest);
        let anonymous = http::get(&path, &[]).unwrap();
        assert_eq!(anonymous.status, 401);
        let challenge = anonymous.header("www-authenticate").unwrap();
        assert!(
            challenge.starts_with("Bearer ")
                && challenge.contains(&tokens.realm())
                && challenge.contains("scope=\"repository:token/test:pull\""),
            "{challenge}"
        );
        let url = format!(
            "{}?service={}&scope=repository%3Atoken%2Ftest%3Apull",
            tokens.realm(),
            crate::token::SERVICE
        );
        let auth = http::basic_auth("tester", "s3cret");
        let resp = http::get(&url, &[("Authorization", &auth)]).unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        let body: serde_json::Value = serde_json::from_str(&resp.text()).unwrap();
        let bearer = format!("Bearer {}", body["token"].as_str().unwrap());
        let resp = http::get(&path, &[("Authorization", &bearer)]).unwrap();
        assert_eq!(resp.status, 200, "{}\n{}", resp.text(), reg.log_tail(20));
        // The token is for that repository only.
        let other = format!("{}/v2/token/other/tags/list", reg.url());
        let resp = http::get(&other, &[("Authorization", &bearer)]).unwrap();
        assert_eq!(resp.status, 401);
    }

    #[test]
    fn serves_tls_with_its_own_ca() {
        let plain = Registry::start().unwrap();
        let layer = crate::image::note_layer("/x", "x").unwrap();
        assert!(plain.client().push_blob("tls/test", &layer.blob).unwrap());
        let reg = Registry::start_with(
            RegistryOptions::new()
                .tls_self_signed()
                .serve_storage_of(&plain),
        )
        .unwrap();
        assert!(reg.url().starts_with("https://127.0.0.1:"));
        let ca = reg.ca_path().unwrap();
        let path = format!("/v2/tls/test/blobs/{}", layer.blob.digest);
        assert_eq!(tls_status(reg.addr(), ca, &path).unwrap(), 200);
        // Another CA is not trusted.
        let other = tempfile::tempdir().unwrap();
        let other_ca = crate::pki::write_loopback_tls(other.path()).unwrap().ca;
        assert!(tls_status(reg.addr(), &other_ca, "/v2/").is_err());
    }

    #[test]
    fn reports_a_registry_that_cannot_start() {
        let err = Registry::start_with(RegistryOptions::new().program("/bin/false"))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("registry exited"), "{err:#}");
    }
}
