//! Registry credentials: `--registry-auth HOST=USER:PASSFILE` and the
//! standard docker config (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`, its `auths.<host>.auth`: base64 of
//! `user:password`).
//!
//! Credentials are matched by the host actually contacted (a mirror's, when
//! one is configured) and handed to oci-client as basic auth, which it sends
//! as such or exchanges for a bearer token, as the registry asks. Passwords
//! are never printed; errors name the user and where the entry came from.

use anyhow::{anyhow, bail, Context as _, Result};
use oci_client::secrets::RegistryAuth;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Credentials by registry host.
#[derive(Clone, Default)]
pub struct Credentials {
    by_host: HashMap<String, Entry>,
}

#[derive(Clone)]
struct Entry {
    user: String,
    password: String,
    /// Where it came from, for error messages.
    source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the passwords.
        let hosts: Vec<(&String, &String)> =
            self.by_host.iter().map(|(h, e)| (h, &e.user)).collect();
        f.debug_struct("Credentials")
            .field("users", &hosts)
            .finish()
    }
}

/// The docker config directory: `$DOCKER_CONFIG`, else `$HOME/.docker`.
pub fn docker_config_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(".docker"))
}

/// The names Docker Hub goes by; credentials for one serve all.
const DOCKER_HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// A registry key as docker writes it (`https://index.docker.io/v1/`,
/// `quay.io`, `127.0.0.1:5000`) reduced to its host.
fn normalize_host(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = rest.split('/').next().unwrap_or(rest).to_ascii_lowercase();
    if DOCKER_HUB.contains(&host.as_str()) {
        "docker.io".to_string()
    } else {
        host
    }
}

impl Credentials {
    /// Reads the docker config in `docker_dir` (a missing file is no
    /// credentials), then the `--registry-auth` values, which win.
    pub fn load(flags: &[String], docker_dir: Option<&Path>) -> Result<Credentials> {
        let mut creds = Credentials::default();
        if let Some(dir) = docker_dir {
            let path = dir.join("config.json");
            match std::fs::read_to_string(&path) {
                Ok(text) => creds
                    .add_docker_config(&text, &path.display().to_string())
                    .with_context(|| format!("reading {}", path.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
        }
        for flag in flags {
            creds.add_flag(flag)?;
        }
        Ok(creds)
    }

    /// Adds `HOST=USER:PASSFILE`: the password is the file's first line.
    pub fn add_flag(&mut self, arg: &str) -> Result<()> {
        let bad = || {
            anyhow!("invalid --registry-auth {arg:?}: expected HOST=USER:PASSFILE, e.g. registry.local:5000=ci:/run/secrets/registry")
        };
        let (host, rest) = arg.split_once('=').ok_or_else(bad)?;
        let (user, file) = rest.split_once(':').ok_or_else(bad)?;
        if host.is_empty() || user.is_empty() || file.is_empty() {
            return Err(bad());
        }
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the password file {file} for {host}"))?;
        let password = text.lines().next().unwrap_or("").to_string();
        if password.is_empty() {
            bail!("the password file {file} for {host} is empty");
        }
        self.by_host.insert(
            normalize_host(host),
            Entry {
                user: user.to_string(),
                password,
                source: format!("--registry-auth {host}"),
            },
        );
        Ok(())
    }

    /// Adds the `auths` of a docker `config.json`. Entries without an
    /// `auth` (a credential helper's) are skipped.
    pub fn add_docker_config(&mut self, text: &str, source: &str) -> Result<()> {
        let config: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
        let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
            return Ok(());
        };
        for (key, value) in auths {
            let Some(encoded) = value.get("auth").and_then(|a| a.as_str()) else {
                continue;
            };
            if encoded.is_empty() {
                continue;
            }
            let decoded = base64_decode(encoded)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| anyhow!("auths.{key}.auth is not base64 of user:password"))?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or_else(|| anyhow!("auths.{key}.auth is not base64 of user:password"))?;
            self.by_host.insert(
                normalize_host(key),
                Entry {
                    user: user.to_string(),
                    password: password.to_string(),
                    source: source.to_string(),
                },
            );
        }
        Ok(())
    }

    fn get(&self, host: &str) -> Option<&Entry> {
        self.by_host.get(&normalize_host(host))
    }

    /// Whether there are credentials for `host`.
    pub fn has(&self, host: &str) -> bool {
        self.get(host).is_some()
    }

    /// What to hand oci-client for `host`.
    pub fn for_host(&self, host: &str) -> RegistryAuth {
        match self.get(host) {
            Some(e) => RegistryAuth::Basic(e.user.clone(), e.password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// `as USER, from SOURCE`, for messages; `None` when anonymous.
    pub fn describe(&self, host: &str) -> Option<String> {
        self.get(host)
            .map(|e| format!("as {}, from {}", e.user, e.source))
    }
}

/// Standard base64 (padding optional); `None` on anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_base64() {
        assert_eq!(base64_decode("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(base64_decode("YTpiYw==").unwrap(), b"a:bc");
        assert_eq!(base64_decode("YWI6Yw==").unwrap(), b"ab:c");
        assert!(base64_decode("a b").is_none());
    }

    #[test]
    fn reads_docker_config_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
                "127.0.0.1:5000":{"auth":"YTpiYw=="},"helper.io":{}}}"#,
        )
        .unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\nignored\n").unwrap();
        let flag = format!("quay.io=robot:{}", pw.display());
        let creds = Credentials::load(&[flag], Some(dir.path())).unwrap();
        assert!(matches!(creds.for_host("index.docker.io"),
            RegistryAuth::Basic(u, p) if u == "user" && p == "pass"));
        assert!(matches!(creds.for_host("127.0.0.1:5000"),
            RegistryAuth::Basic(u, p) if u == "a" && p == "bc"));
        assert!(matches!(creds.for_host("quay.io"),
            RegistryAuth::Basic(u, p) if u == "robot" && p == "s3cret"));
        assert!(matches!(
            creds.for_host("helper.io"),
            RegistryAuth::Anonymous
        ));
        assert_eq!(
            creds.describe("quay.io").unwrap(),
            "as robot, from --registry-auth quay.io"
        );
        assert!(!format!("{creds:?}").contains("s3cret"));
        assert!(Credentials::load(&[], Some(&dir.path().join("none"))).is_ok());
        for bad in ["quay.io", "quay.io=robot", "=u:f", "h=:f"] {
            assert!(Credentials::default().add_flag(bad).is_err(), "{bad}");
        }
    }
}
