//! `k3s-standin`: a TEST DOUBLE for the k3s binary, installed by tests as
//! /usr/local/bin/k3s. It takes k3s's command line (`server`/`agent`, flags,
//! `K3S_*` env, config.yaml) and runs until SIGTERM/SIGINT; the work is in
//! `airgap_testbed::standin`.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use airgap_testbed::standin::{flags, log, roles, Role, Settings, K3S_VERSION};
use anyhow::{bail, Result};

const HELP: &str = "\
k3s-standin: a TEST DOUBLE standing in for k3s in airgap's tests. It is not k3s
and runs no cluster: a server serves /cacerts, /ping and a small /v1-k3s/ API
over HTTPS and writes the join token; an agent checks the token against
/cacerts and registers.

USAGE:
    k3s server [flags]     --data-dir --config --token --token-file --server
                           --cluster-init --https-listen-port --bind-address
                           --node-name --node-ip --tls-san --cluster-cidr
                           --service-cidr --cluster-dns --cluster-domain
                           --disable --write-kubeconfig --write-kubeconfig-mode
    k3s agent [flags]      --server --token --token-file --data-dir --node-name
                           --node-ip --config
    k3s check-config       exits 0
    k3s --version

Other flags are accepted and recorded in <data-dir>/standin.json.
Env: K3S_TOKEN, K3S_TOKEN_FILE, K3S_URL, K3S_NODE_NAME, K3S_CONFIG_FILE.";

/// `READY=1` to systemd for `Type=notify` units (path or abstract socket).
fn notify_ready() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| match path.strip_prefix('@') {
        Some(name) => sock.send_to_addr(b"READY=1", &SocketAddr::from_abstract_name(name)?),
        None => sock.send_to(b"READY=1", &path),
    });
    if let Err(e) = sent {
        log(format_args!("notifying {path}: {e}"));
    }
}

async fn run_until_signal(s: Settings) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let (tx, mut done) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(roles::run(&s, notify_ready));
    });
    // An agent's worker finishes once registered; the process stays up.
    let mut running = true;
    let signal = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            result = &mut done, if running => match result {
                Ok(Ok(())) => running = false,
                Ok(Err(e)) => return Err(e),
                Err(_) => bail!("worker thread panicked"),
            },
        }
    };
    log(format_args!("received {signal}, exiting"));
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let tool = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned());
    let cmd = match tool.as_deref() {
        Some(t @ ("kubectl" | "crictl" | "ctr")) => t,
        _ => argv.get(1).map_or("--help", String::as_str),
    };
    let role = match cmd {
        "--version" | "-v" | "version" => {
            println!("k3s version {K3S_VERSION} (stand-in test double)");
            return ExitCode::SUCCESS;
        }
        "--help" | "-h" | "help" => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        "check-config" => {
            println!(
                "k3s-standin (test double): check-config: nothing to check, no containers run here"
            );
            return ExitCode::SUCCESS;
        }
        "server" => Role::Server,
        "agent" => Role::Agent,
        other => {
            log(format_args!(
                "{other} is not implemented by this test double"
            ));
            return ExitCode::FAILURE;
        }
    };
    let started = || -> Result<Settings> {
        let settings = flags::start(role, &argv[2..], &env)?;
        let dir = settings.data_dir.display();
        log(format_args!("starting {cmd} {K3S_VERSION}, data dir {dir}"));
        Ok(settings)
    };
    let result = started().and_then(|settings| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(run_until_signal(settings))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log(format_args!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}
