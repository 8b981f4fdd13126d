//! The whole rig as one long-running service, for scripts: a registry and a
//! release server with their content, described in `DIR/testbed.env` (shell)
//! and one JSON line on stdout, until SIGTERM, SIGINT or end of stdin.
//!
//! Everything it creates lives under DIR and is removed when it stops.

use crate::containerd::Containerd;
use crate::registry::{Registry, RegistryOptions};
use crate::release::ReleaseServer;
use crate::seed::{self, Seeded, DEMO_VERSION, K3S_STAND_IN};
use airgap_bundle::split::{self, MIN_PART_SIZE};
use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};

/// The file scripts source.
pub const ENV_FILE: &str = "testbed.env";
/// Every seeded digest, as JSON, for scripts that want to check them.
pub const SEEDED_FILE: &str = "seeded.json";

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct TestbedOptions {
    /// Where everything goes (created if missing).
    pub dir: PathBuf,
    /// Also seed the benchmark set with at least this many layer bytes.
    pub bench_bytes: Option<u64>,
    /// The amd64 k3s asset (default: [`K3S_STAND_IN`]).
    pub k3s: Option<PathBuf>,
    /// Also run a private containerd (for installing into).
    pub containerd: bool,
}

/// A running registry and release server with the demo content.
pub struct Testbed {
    // Field order is drop order: servers stop before their files go.
    pub containerd: Option<Containerd>,
    pub release: ReleaseServer,
    pub registry: Registry,
    pub seeded: Seeded,
    pub release_root: PathBuf,
    dir: PathBuf,
}

impl Testbed {
    /// Starts the servers, seeds the demo set (and the bench set when asked)
    /// and writes the demo release under `DIR/release`.
    pub fn start(options: &TestbedOptions) -> Result<Testbed> {
        let dir = &options.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let k3s = match &options.k3s {
            Some(path) => {
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
            }
            None => K3S_STAND_IN.as_bytes().to_vec(),
        };
        let release_root = dir.join("release");
        if release_root.exists() {
            std::fs::remove_dir_all(&release_root)
                .with_context(|| format!("removing stale {}", release_root.display()))?;
        }
        std::fs::create_dir_all(&release_root)?;
        seed::write_demo_release(&release_root, &k3s)?;
        let release = ReleaseServer::start(&release_root)?;
        let registry = Registry::start_with(RegistryOptions::new().in_dir(&dir))?;
        let mut seeded = seed::seed_demo(&registry)?;
        if let Some(bytes) = options.bench_bytes {
            seeded.extend(seed::seed_bench_in(&registry, bytes, &dir)?);
        }
        let containerd = if options.containerd {
            Some(Containerd::start_in(&dir)?)
        } else {
            None
        };
        Ok(Testbed {
            containerd,
            release,
            registry,
            seeded,
            release_root,
            dir,
        })
    }

    /// `REGISTRY`, `RELEASE_URL`, `K3S_VERSION`, and `CONTAINERD_SOCKET`
    /// when a containerd runs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("REGISTRY", self.registry.addr().to_string()),
            ("RELEASE_URL", self.release.url()),
            ("K3S_VERSION", DEMO_VERSION.to_string()),
        ];
        if let Some(c) = &self.containerd {
            env.push(("CONTAINERD_SOCKET", c.socket().display().to_string()));
        }
        env
    }

    /// `KEY=value` lines (the values need no shell quoting).
    pub fn env_text(&self) -> String {
        self.env()
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }

    /// The same as one JSON object.
    pub fn env_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        serde_json::Value::Object(map).to_string()
    }

    /// Writes `DIR/seeded.json`, then `DIR/testbed.env` (renamed into place
    /// last, so a script that sees it can use everything).
    pub fn write_files(&self) -> Result<()> {
        let seeded = serde_json::to_vec_pretty(&self.seeded)?;
        std::fs::write(self.dir.join(SEEDED_FILE), seeded)?;
        let tmp = self.dir.join(format!(".{ENV_FILE}.tmp"));
        std::fs::write(&tmp, self.env_text())?;
        std::fs::rename(&tmp, self.dir.join(ENV_FILE))?;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(ENV_FILE));
        let _ = std::fs::remove_file(self.dir.join(SEEDED_FILE));
        self.release.stop();
        self.registry.stop();
        let _ = std::fs::remove_dir_all(&self.release_root);
    }
}

/// Runs the rig until SIGTERM, SIGINT or (when stdin is a pipe or socket)
/// end of stdin. A background job's stdin is /dev/null, so that is not
/// watched.
pub fn run(options: &TestbedOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Install the handlers before starting, so a signal during seeding still
    // ends in an orderly clean-up.
    let (mut term, mut int) = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    let testbed = Testbed::start(options)?;
    testbed.write_files()?;
    println!("{}", testbed.env_json());
    eprintln!(
        "airgap-testbed: registry {} and release server {} ready; env in {}",
        testbed.registry.addr(),
        testbed.release.url(),
        testbed.dir.join(ENV_FILE).display()
    );
    let (eof_tx, mut eof_rx) = tokio::sync::mpsc::channel::<()>(1);
    if stdin_is_watchable() {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = eof_tx.blocking_send(());
        });
    } else {
        // Keep the sender alive so that recv() never returns.
        std::mem::forget(eof_tx);
    }
    let why = runtime.block_on(async {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = eof_rx.recv() => "end of stdin",
        }
    });
    eprintln!("airgap-testbed: {why}, stopping");
    drop(testbed);
    Ok(())
}

fn stdin_is_watchable() -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata("/dev/stdin")
        .map(|m| m.file_type().is_fifo() || m.file_type().is_socket())
        .unwrap_or(false)
}

/// Parses `--bench-bytes`, a byte count, in the bundle's size syntax
/// ([`split::parse_size`]: `1048576`, `512K`, `64M`, `2GiB`, binary units).
/// Two things it takes that the bundle's parser alone does not, as this
/// parser always did: `KB`, `Ki`, `kB` (and so on for M and G) for K, and a
/// count under the 4096 bytes that the bundle asks of a part.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits
        .parse()
        .with_context(|| format!("invalid size {text:?}"))?;
    let unit = unit.trim_end_matches(['i', 'B']);
    // The bundle's unit, asked for as 4096 of it: less is not a part size.
    let per_unit = split::parse_size(&format!("{MIN_PART_SIZE}{unit}"))
        .map_err(|_| anyhow!("invalid size unit in {text:?} (use K, M or G)"))?
        / MIN_PART_SIZE;
    n.checked_mul(per_unit)
        .with_context(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn testbed_writes_env_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let tb = Testbed::start(&TestbedOptions {
            dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .unwrap();
        tb.write_files().unwrap();
        let env = std::fs::read_to_string(dir.path().join(ENV_FILE)).unwrap();
        assert!(env.contains(&format!("REGISTRY={}\n", tb.registry.addr())));
        assert!(env.contains("K3S_VERSION=v1.20.6+k3s1\n"));
        let json: serde_json::Value = serde_json::from_str(&tb.env_json()).unwrap();
        assert_eq!(json["RELEASE_URL"], tb.release.url());
        let url = format!("{}/v1.20.6%2Bk3s1/k3s", tb.release.url());
        assert_eq!(
            crate::http::get(&url, &[]).unwrap().body,
            K3S_STAND_IN.as_bytes()
        );
        let mirror = format!("{}/k3s/v1.20.6-k3s1/k3s-images.txt", tb.release.url());
        assert_eq!(crate::http::get(&mirror, &[]).unwrap().status, 200);
        drop(tb);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}
