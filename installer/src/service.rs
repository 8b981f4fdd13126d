//! The k3s service as the host's init system knows it, in the files
//! install.sh writes: the systemd unit `k3s.service` / `k3s-agent.service`
//! with its `.env` file (mode 0600: it holds `K3S_TOKEN`), or the openrc
//! script with `/etc/rancher/k3s/k3s.env`; and, for hosts without an init
//! system (containers, test hosts), k3s started detached with a pid file and
//! a log file. Secrets only ever go into the env file, never into a command
//! line or a log.

use crate::layout::{Role, DATA_DIR, K3S_BIN};
use crate::root::HostRoot;
use crate::run::Runner;
use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};

/// Which init system runs k3s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    Systemd,
    Openrc,
    /// No init system: start k3s detached (containers, test hosts).
    None,
}

impl Init {
    /// What this host runs, judged as install.sh does.
    pub fn detect() -> Init {
        if Path::new("/run/systemd/system").is_dir() {
            Init::Systemd
        } else if Path::new("/sbin/openrc-run").exists() {
            Init::Openrc
        } else {
            Init::None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Init::Systemd => "systemd",
            Init::Openrc => "openrc",
            Init::None => "none",
        }
    }
}

/// The host paths of the service files for a role and init system.
pub struct ServiceFiles {
    /// The unit or init script.
    pub unit: String,
    pub unit_mode: u32,
    /// The environment file (K3S_URL, K3S_TOKEN), mode 0600.
    pub env: String,
}

pub fn service_files(role: Role, init: Init) -> Option<ServiceFiles> {
    let name = role.service_name();
    match init {
        Init::Systemd => Some(ServiceFiles {
            unit: format!("/etc/systemd/system/{name}.service"),
            unit_mode: 0o644,
            env: format!("/etc/systemd/system/{name}.service.env"),
        }),
        Init::Openrc => Some(ServiceFiles {
            unit: format!("/etc/init.d/{name}"),
            unit_mode: 0o755,
            env: format!("/etc/rancher/k3s/{name}.env"),
        }),
        Init::None => None,
    }
}

/// The env file's content: `K3S_URL` and `K3S_TOKEN` for joins.
pub fn env_file(server_url: Option<&str>, token: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(url) = server_url {
        out.push_str(&format!("K3S_URL='{}'\n", url.replace('\'', "")));
    }
    if let Some(token) = token {
        out.push_str(&format!("K3S_TOKEN='{}'\n", token.replace('\'', "")));
    }
    out
}

/// Quotes one argument for a systemd ExecStart line or a shell.
fn quote_arg(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@".contains(&b))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// The k3s command line: `k3s server|agent` and the extra flags.
pub fn exec_args(role: Role, extra: &[String]) -> Vec<String> {
    let mut args = vec![role.as_str().to_string()];
    args.extend(extra.iter().cloned());
    args
}

/// The systemd unit, as install.sh writes it.
pub fn systemd_unit(role: Role, env_path: &str, args: &[String]) -> String {
    let (kind, wants) = match role {
        Role::Server => ("notify", ""),
        Role::Agent => ("exec", ""),
    };
    let exec = std::iter::once(K3S_BIN.to_string())
        .chain(args.iter().map(|a| quote_arg(a)))
        .collect::<Vec<_>>()
        .join(" \\\n    ");
    format!(
        "[Unit]\n\
         Description=Lightweight Kubernetes\n\
         Documentation=https://k3s.io\n\
         Wants=network-online.target{wants}\n\
         After=network-online.target\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n\
         \n\
         [Service]\n\
         Type={kind}\n\
         EnvironmentFile=-/etc/default/%N\n\
         EnvironmentFile=-/etc/sysconfig/%N\n\
         EnvironmentFile=-{env_path}\n\
         KillMode=process\n\
         Delegate=yes\n\
         # Having non-zero Limit*s causes performance problems due to accounting overhead\n\
         # in the kernel. We recommend using cgroups to do container-local accounting.\n\
         LimitNOFILE=1048576\n\
         LimitNPROC=infinity\n\
         LimitCORE=infinity\n\
         TasksMax=infinity\n\
         TimeoutStartSec=0\n\
         Restart=always\n\
         RestartSec=5s\n\
         ExecStartPre=-/sbin/modprobe br_netfilter\n\
         ExecStartPre=-/sbin/modprobe overlay\n\
         ExecStart={exec}\n"
    )
}

/// The openrc script, as install.sh writes it.
pub fn openrc_script(role: Role, env_path: &str, args: &[String]) -> String {
    let name = role.service_name();
    let args = args
        .iter()
        .map(|a| quote_arg(a))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "#!/sbin/openrc-run\n\
         \n\
         depend() {{\n\
         \x20   after network-online\n\
         \x20   want cgroups\n\
         }}\n\
         \n\
         start_pre() {{\n\
         \x20   rm -f /tmp/k3s.*\n\
         }}\n\
         \n\
         supervisor=supervise-daemon\n\
         name={name}\n\
         command=\"{K3S_BIN}\"\n\
         command_args=\"{args} >>/var/log/{name}.log 2>&1\"\n\
         \n\
         output_log=/var/log/{name}.log\n\
         error_log=/var/log/{name}.log\n\
         \n\
         pidfile=\"/var/run/{name}.pid\"\n\
         respawn_delay=5\n\
         respawn_max=0\n\
         \n\
         set -o allexport\n\
         if [ -f /etc/environment ]; then . /etc/environment; fi\n\
         if [ -f {env_path} ]; then . {env_path}; fi\n\
         set +o allexport\n"
    )
}

/// Enables and starts the service with the host's init system.
pub fn enable_and_start(runner: &dyn Runner, role: Role, init: Init) -> anyhow::Result<()> {
    let name = role.service_name();
    match init {
        Init::Systemd => {
            runner.run("systemctl", &["daemon-reload"])?;
            runner.run("systemctl", &["enable", &format!("{name}.service")])?;
            runner.run("systemctl", &["restart", &format!("{name}.service")])?;
        }
        Init::Openrc => {
            runner.run("rc-update", &["add", name, "default"])?;
            runner.run(&format!("/etc/init.d/{name}"), &["restart"])?;
        }
        Init::None => bail!("no init system: k3s is started detached instead"),
    }
    Ok(())
}

/// Stops and disables the service (uninstall).
pub fn stop_and_disable(runner: &dyn Runner, role: Role, init: Init) -> anyhow::Result<()> {
    let name = role.service_name();
    match init {
        Init::Systemd => {
            runner.run(
                "systemctl",
                &["disable", "--now", &format!("{name}.service")],
            )?;
            runner.run("systemctl", &["daemon-reload"])?;
        }
        Init::Openrc => {
            runner.run(&format!("/etc/init.d/{name}"), &["stop"])?;
            runner.run("rc-update", &["del", name, "default"])?;
        }
        Init::None => {}
    }
    Ok(())
}

/// Where a detached k3s keeps its pid and log (under the root's /run and /var/log).
pub struct Detached {
    pub pid_file: PathBuf,
    pub log_file: PathBuf,
}

/// Starts `binary args` detached, in its own session, with `env` (the
/// K3S_* variables) and stdout/stderr to the log file; writes the pid file.
pub fn start_detached(
    binary: &Path,
    args: &[String],
    env: &[(String, String)],
    files: &Detached,
) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt as _;
    for p in [&files.pid_file, &files.log_file] {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&files.log_file)
        .with_context(|| format!("opening {}", files.log_file.display()))?;
    let mut cmd = std::process::Command::new(binary);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tracing::info!(command = %format!("{} {}", binary.display(), args.join(" ")), "starting k3s detached");
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id();
    std::fs::write(&files.pid_file, format!("{pid}\n"))
        .with_context(|| format!("writing {}", files.pid_file.display()))?;
    // Not waited for: the readiness check watches it through /proc, and it
    // outlives the installer (dropping a Child neither waits nor kills).
    drop(child);
    Ok(pid)
}

/// Whether a process is alive (and not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether `pid` runs this root's k3s: its executable is the root's k3s
/// binary (or was, until a reinstall replaced the file), or one that k3s
/// unpacked into its data dir and runs itself as. A pid file is only a
/// hint anyone with write access may edit; this is what makes it safe to
/// signal the pid it names.
pub fn is_k3s_of(pid: u32, root: &HostRoot) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let exe = exe.to_string_lossy();
    let exe = Path::new(exe.strip_suffix(" (deleted)").unwrap_or(&exe));
    let Ok(canonical) = std::fs::canonicalize(root.root()) else {
        return false;
    };
    let root = HostRoot::new(&canonical).expect("a canonical path is absolute");
    exe == root.path(K3S_BIN) || exe.starts_with(root.path(DATA_DIR).join("data"))
}

/// Stops a detached k3s by its pid file: SIGTERM, then SIGKILL after 10 s;
/// only when the pid is this root's k3s ([`is_k3s_of`]), else it is left
/// alone with a warning.
pub fn stop_detached(runner: &dyn Runner, pid_file: &Path, root: &HostRoot) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return Ok(());
    };
    if process_alive(pid) && !is_k3s_of(pid, root) {
        tracing::warn!(
            "{} names pid {pid}, which is not {}'s k3s: not signalled",
            pid_file.display(),
            root.root().display()
        );
    } else if process_alive(pid) {
        runner.run("kill", &["-TERM", &pid.to_string()])?;
        for _ in 0..100 {
            if !process_alive(pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if process_alive(pid) {
            runner.run("kill", &["-KILL", &pid.to_string()])?;
        }
    }
    let _ = std::fs::remove_file(pid_file);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_look_like_install_sh() {
        let args = exec_args(Role::Server, &["--disable".into(), "traefik".into()]);
        let unit = systemd_unit(Role::Server, "/etc/systemd/system/k3s.service.env", &args);
        assert!(unit.contains("Type=notify\n"));
        assert!(unit.contains("EnvironmentFile=-/etc/systemd/system/k3s.service.env\n"));
        assert!(unit.contains(
            "ExecStart=/usr/local/bin/k3s \\\n    server \\\n    --disable \\\n    traefik\n"
        ));
        let agent = systemd_unit(Role::Agent, "/x.env", &exec_args(Role::Agent, &[]));
        assert!(agent.contains("Type=exec\n"));
        let rc = openrc_script(
            Role::Agent,
            "/etc/rancher/k3s/k3s-agent.env",
            &exec_args(Role::Agent, &[]),
        );
        assert!(rc.starts_with("#!/sbin/openrc-run\n"));
        assert!(rc.contains("command_args=\"agent >>/var/log/k3s-agent.log 2>&1\""));
    }

    #[test]
    fn env_file_holds_join_settings() {
        let env = env_file(Some("https://10.0.0.1:6443"), Some("K10abc::server:pw"));
        assert_eq!(
            env,
            "K3S_URL='https://10.0.0.1:6443'\nK3S_TOKEN='K10abc::server:pw'\n"
        );
        assert_eq!(quote_arg("a b"), "'a b'");
    }
}
