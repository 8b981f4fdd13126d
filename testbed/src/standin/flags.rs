//! k3s's command line for the k3s stand-in (a test double): flags parsed
//! leniently (the installer passes extra k3s flags through; unknown ones are
//! accepted and recorded), `K3S_*` env and config.yaml, resolved as k3s does,
//! and the `standin.json` record of how it was started (never token values).
//! Parsed by hand, not with clap: unknown flags must be accepted.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::{log, CriticalConfig, Role, K3S_VERSION};

/// The flags this program acts on that take a value.
#[rustfmt::skip]
const USED_VALUED: &[&str] = &[
    "data-dir", "config", "token", "token-file", "server", "https-listen-port", "bind-address",
    "node-name", "node-ip", "tls-san", "cluster-cidr", "service-cidr", "cluster-dns",
    "cluster-domain", "disable", "container-runtime-endpoint", "write-kubeconfig",
    "write-kubeconfig-mode",
];
/// Other k3s flags that take a value even when it starts with `-`.
const OTHER_VALUED: &[&str] = &[
    "agent-token",
    "agent-token-file",
    "node-label",
    "node-taint",
];
/// Flags that never take a value (only matters when a positional follows).
const BOOLS: &[&str] = &[
    "cluster-init",
    "cluster-reset",
    "debug",
    "selinux",
    "rootless",
    "docker",
];

fn valued(name: &str) -> bool {
    USED_VALUED.contains(&name) || OTHER_VALUED.contains(&name)
}

/// Flags not acted on are listed as "unknown" in standin.json.
fn used(name: &str) -> bool {
    USED_VALUED.contains(&name) || name == "cluster-init"
}

/// The env variables k3s binds to flags.
const ENV: &[(&str, &str)] = &[
    ("K3S_TOKEN", "token"),
    ("K3S_TOKEN_FILE", "token-file"),
    ("K3S_URL", "server"),
    ("K3S_NODE_NAME", "node-name"),
    ("K3S_CONFIG_FILE", "config"),
    ("K3S_CLUSTER_INIT", "cluster-init"),
    ("K3S_KUBECONFIG_OUTPUT", "write-kubeconfig"),
    ("K3S_KUBECONFIG_MODE", "write-kubeconfig-mode"),
];

/// Flags in the order k3s applies them: config.yaml first, then the command
/// line, so for a single-valued flag the last one wins; env fills the gaps.
#[derive(Debug, Default)]
pub struct Flags {
    list: Vec<(String, Option<String>)>,
    env: Vec<(String, String)>,
}

impl Flags {
    fn get(&self, name: &str) -> Option<&str> {
        let flag = self
            .list
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref());
        match flag {
            Some(v) => Some(v.unwrap_or("true")),
            None => self
                .env
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str()),
        }
    }

    /// A repeatable flag: every value, comma lists split.
    fn all(&self, name: &str) -> Vec<String> {
        let values = self
            .list
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| v.as_deref());
        values
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(String::from)
            .collect()
    }

    fn bool(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v != "false")
    }
}

fn parse_cli(args: &[String]) -> Result<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    let mut args = args.iter().peekable();
    while let Some(arg) = args.next() {
        let Some(flag) = arg.strip_prefix('-').filter(|f| !f.is_empty() && *f != "-") else {
            log(format_args!("ignoring argument {arg:?}"));
            continue;
        };
        let flag = flag.strip_prefix('-').unwrap_or(flag);
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let name = match name {
            "t" => "token",
            "s" => "server",
            "d" => "data-dir",
            "c" => "config",
            "o" => "write-kubeconfig",
            n => n,
        };
        let value = match value {
            Some(v) => Some(v),
            None if BOOLS.contains(&name) => None,
            None if valued(name) => Some(
                args.next()
                    .cloned()
                    .ok_or_else(|| anyhow!("flag needs an argument: -{flag}"))?,
            ),
            None => args.next_if(|next| !next.starts_with('-')).cloned(),
        };
        out.push((name.to_string(), value));
    }
    Ok(out)
}

/// k3s's config.yaml: flag names without dashes; lists for repeatable flags.
fn parse_config(text: &str) -> Result<Vec<(String, Option<String>)>> {
    use yaml_rust2::Yaml;
    let docs = yaml_rust2::YamlLoader::load_from_str(text)?;
    let mut out = Vec::new();
    let Some(doc) = docs.into_iter().next() else {
        return Ok(out);
    };
    let Yaml::Hash(map) = doc else {
        bail!("config is not a mapping of flag names")
    };
    let scalar = |v: &Yaml| match v {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    };
    for (k, v) in map {
        let Yaml::String(name) = k else {
            bail!("config key {k:?} is not a flag name")
        };
        match &v {
            Yaml::Array(items) => out.extend(
                items
                    .iter()
                    .filter_map(scalar)
                    .map(|i| (name.clone(), Some(i))),
            ),
            Yaml::Null => {}
            v => out.push((
                name.clone(),
                Some(scalar(v).ok_or_else(|| anyhow!("config value of {name}"))?),
            )),
        }
    }
    Ok(out)
}

fn load_flags(args: &[String], env: &[(String, String)]) -> Result<(Flags, Option<PathBuf>)> {
    let cli = parse_cli(args)?;
    let env: Vec<(String, String)> = ENV
        .iter()
        .filter_map(|(var, flag)| {
            let value = env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone())?;
            Some((flag.to_string(), value))
        })
        .collect();
    let explicit = cli
        .iter()
        .rev()
        .find(|(n, _)| n == "config")
        .and_then(|(_, v)| v.clone());
    let explicit = explicit.or_else(|| {
        env.iter()
            .find(|(n, _)| n == "config")
            .map(|(_, v)| v.clone())
    });
    let path = PathBuf::from(
        explicit
            .as_deref()
            .unwrap_or("/etc/rancher/k3s/config.yaml"),
    );
    // As k3s: a missing default config is fine, a missing named one is not.
    let mut list = match std::fs::read_to_string(&path) {
        Ok(text) => parse_config(&text).with_context(|| format!("parsing {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
            return Ok((Flags { list: cli, env }, None));
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    list.extend(cli);
    Ok((Flags { list, env }, Some(path)))
}

/// What the server or agent acts on, resolved from [`Flags`].
#[derive(Debug)]
pub struct Settings {
    pub role: Role,
    pub data_dir: PathBuf,
    pub token: Option<String>,
    pub server_url: Option<String>,
    pub cluster_init: bool,
    pub port: u16,
    pub bind_address: IpAddr,
    pub node_name: String,
    pub node_ip: Option<IpAddr>,
    pub tls_sans: Vec<String>,
    pub critical: CriticalConfig,
    pub write_kubeconfig: Option<PathBuf>,
    pub kubeconfig_mode: u32,
}

impl Settings {
    pub fn new(role: Role, f: &Flags) -> Result<Settings> {
        let token = match (f.get("token"), f.get("token-file")) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading token file {path}"))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let node_name = match f.get("node-name") {
            Some(n) => n.to_string(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .context("reading the hostname for --node-name")?
                .trim()
                .to_string(),
        };
        let parse_ip = |name: &str| -> Result<Option<IpAddr>> {
            let first = f.get(name).and_then(|v| v.split(',').next());
            first
                .map(|v| {
                    v.trim()
                        .parse()
                        .with_context(|| format!("invalid --{name} {v}"))
                })
                .transpose()
        };
        let defaults = CriticalConfig::default();
        let or = |name: &str, default: String| f.get(name).map_or(default, String::from);
        let mode = f.get("write-kubeconfig-mode").unwrap_or("600");
        Ok(Settings {
            role,
            data_dir: PathBuf::from(f.get("data-dir").unwrap_or("/var/lib/rancher/k3s")),
            token: token.filter(|t| !t.is_empty()),
            server_url: f
                .get("server")
                .filter(|s| !s.is_empty())
                .map(|s| s.trim_end_matches('/').to_string()),
            cluster_init: f.bool("cluster-init"),
            port: f
                .get("https-listen-port")
                .unwrap_or("6443")
                .parse()
                .context("invalid --https-listen-port")?,
            bind_address: parse_ip("bind-address")?.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            node_ip: parse_ip("node-ip")?,
            node_name,
            tls_sans: f.all("tls-san"),
            critical: CriticalConfig {
                cluster_cidr: or("cluster-cidr", defaults.cluster_cidr),
                service_cidr: or("service-cidr", defaults.service_cidr),
                cluster_dns: or("cluster-dns", defaults.cluster_dns),
                cluster_domain: or("cluster-domain", defaults.cluster_domain),
                disable: f.all("disable"),
            },
            write_kubeconfig: f.get("write-kubeconfig").map(PathBuf::from),
            kubeconfig_mode: u32::from_str_radix(mode, 8)
                .with_context(|| format!("invalid --write-kubeconfig-mode {mode}"))?,
        })
    }

    /// Names for the serving certificate; each connection adds the local
    /// address it came in on and its SNI name.
    pub fn sans(&self) -> Vec<String> {
        let mut sans: Vec<String> = ["127.0.0.1", "::1", "localhost"].map(String::from).to_vec();
        sans.push(self.node_name.clone());
        sans.extend(
            self.node_ip
                .iter()
                .chain(Some(&self.bind_address).filter(|a| !a.is_unspecified()))
                .map(IpAddr::to_string),
        );
        sans.extend(self.tls_sans.iter().cloned());
        sans.sort();
        sans.dedup();
        sans
    }

    /// The address this node announces: `--node-ip`, else a specific
    /// `--bind-address`.
    pub fn address(&self) -> Option<IpAddr> {
        let bind = Some(self.bind_address).filter(|a| !a.is_unspecified());
        self.node_ip.or(bind)
    }
}

/// `<data-dir>/standin.json`: how this test double was started, for tests to
/// check what the installer passed. Token values never appear in it.
fn record(
    role: Role,
    args: &[String],
    env: &[(String, String)],
    f: &Flags,
    config: Option<&Path>,
) -> serde_json::Value {
    let secret = |name: &str| name == "t" || name.contains("token") && !name.ends_with("-file");
    let mut redact_next = false;
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            let name = a.trim_start_matches('-');
            let out = match name.split_once('=') {
                Some((n, _)) if secret(n) => {
                    format!("{}=<redacted>", &a[..a.len() - name.len() + n.len()])
                }
                _ if redact_next => "<redacted>".to_string(),
                _ => a.clone(),
            };
            redact_next = a.starts_with('-') && !a.contains('=') && secret(name);
            out
        })
        .collect();
    let mut flags: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
    for (name, value) in &f.list {
        let value = match value {
            _ if secret(name) => "<redacted>".into(),
            Some(v) => v.as_str().into(),
            None => true.into(),
        };
        flags.entry(name.as_str()).or_default().push(value);
    }
    let unknown: Vec<&str> = flags.keys().copied().filter(|n| !used(n)).collect();
    let env: Vec<&str> = env
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("K3S_"))
        .collect();
    serde_json::json!({
        "test_double": "k3s-standin, a test double standing in for k3s",
        "version": K3S_VERSION,
        "role": if role == Role::Server { "server" } else { "agent" },
        "pid": std::process::id(),
        "args": args,
        "env": env,
        "config_file": config,
        "flags": flags,
        "unknown_flags": unknown,
    })
}

/// Resolves the flags for `role` from `args` (after the command) and `env`,
/// and writes `<data-dir>/standin.json`.
pub fn start(role: Role, args: &[String], env: &[(String, String)]) -> Result<Settings> {
    let (flags, config) = load_flags(args, env)?;
    let settings = Settings::new(role, &flags)?;
    let record = record(role, args, env, &flags, config.as_deref());
    let path = settings.data_dir.join("standin.json");
    super::write_file(&path, format!("{record:#}\n").as_bytes(), 0o644)?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lenient_flags_and_precedence() {
        let cli = parse_cli(&strings(&[
            "--token=abc",
            "-s",
            "https://10.0.0.1:6443",
            "--cluster-init",
            "--kubelet-arg",
            "max-pods=50",
            "--disable",
            "traefik,servicelb",
            "--selinux",
            "--cluster-cidr",
            "10.50.0.0/16",
        ]))
        .unwrap();
        let mut list = parse_config("cluster-cidr: 10.99.0.0/16\ndisable: [metrics-server]\nnode-label:\n  - a=b\nhttps-listen-port: 7443\n").unwrap();
        list.extend(cli);
        let f = Flags {
            list,
            env: vec![
                ("token".into(), "fromenv".into()),
                ("node-name".into(), "n1".into()),
            ],
        };
        assert_eq!(f.get("token"), Some("abc"));
        assert_eq!(f.get("server"), Some("https://10.0.0.1:6443"));
        assert_eq!(f.get("kubelet-arg"), Some("max-pods=50"));
        assert_eq!(f.get("cluster-cidr"), Some("10.50.0.0/16"));
        assert_eq!(f.all("disable"), ["metrics-server", "traefik", "servicelb"]);
        assert!(f.bool("cluster-init") && f.bool("selinux"));
        let s = Settings::new(Role::Server, &f).unwrap();
        assert_eq!((s.port, s.node_name.as_str()), (7443, "n1"));
    }

    #[test]
    fn record_never_holds_tokens() {
        let args = strings(&[
            "server",
            "--token",
            "sekrit1",
            "-t",
            "sekrit2",
            "--agent-token=sekrit3",
            "-t=sekrit5",
            "--token-file",
            "/f",
        ]);
        let flags = Flags {
            list: parse_cli(&args[1..]).unwrap(),
            env: vec![],
        };
        let env = vec![("K3S_TOKEN".to_string(), "sekrit4".to_string())];
        let json = record(Role::Server, &args, &env, &flags, None).to_string();
        assert!(!json.contains("sekrit"), "{json}");
        assert!(
            json.contains("K3S_TOKEN") && json.contains("/f") && json.contains("agent-token"),
            "{json}"
        );
    }
}
