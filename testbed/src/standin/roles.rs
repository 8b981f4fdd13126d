//! What the k3s stand-in (a test double) does as `server` (first or joining)
//! and as `agent`. A joiner trusts the first server's `/cacerts` only once the
//! token's CA hash matches it, then verifies TLS against that CA.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;

use super::{
    ca_hash, log, random_password, request, write_file, Bootstrap, CriticalConfig, Node,
    Registration, Role, ServerState, Settings, Token, Trust,
};
use crate::pki::{ClusterCa, CA_CRT};

/// Runs `s.role` until it is up, calling `ready` then: a server keeps
/// serving (returns only on error), an agent returns once registered.
pub fn run(s: &Settings, ready: impl FnOnce()) -> Result<()> {
    match s.role {
        Role::Server => server(s, ready),
        Role::Agent => agent(s, ready),
    }
}

fn server(s: &Settings, ready: impl FnOnce()) -> Result<()> {
    let dir = s.data_dir.join("server");
    let tls = dir.join("tls");
    let (ca, password) = match (&s.server_url, &s.token) {
        (Some(url), Some(token)) => {
            let token = Token::parse(token);
            let boot = join(s, url, &token)?;
            let ca = ClusterCa::store(&tls, &boot.server_ca_crt, &boot.server_ca_key, s.sans())?;
            (ca, token.password)
        }
        (Some(_), None) => bail!("token is required to join a cluster"),
        (None, token) => {
            let ca = match ClusterCa::load(&tls, s.sans())? {
                Some(ca) => ca,
                None => {
                    let ca = ClusterCa::create(&tls, s.sans())?;
                    log(format_args!(
                        "created cluster CA {}",
                        tls.join(CA_CRT).display()
                    ));
                    ca
                }
            };
            let stored = std::fs::read_to_string(dir.join("token"))
                .ok()
                .map(|t| Token::parse(&t).password);
            let password = match (token, stored) {
                (Some(t), _) => Token::parse(t).password,
                (None, Some(stored)) => stored,
                (None, None) => random_password()?,
            };
            (ca, password)
        }
    };
    let hash = ca_hash(ca.ca_pem.as_bytes());
    let token = format!("{}\n", Token::full(&hash, &password));
    for name in ["token", "node-token"] {
        write_file(&dir.join(name), token.as_bytes(), 0o600)?;
    }
    let (crt, key, _) = ca.issue(&[])?;
    write_file(
        &tls.join("serving-kube-apiserver.crt"),
        crt.as_bytes(),
        0o644,
    )?;
    write_file(
        &tls.join("serving-kube-apiserver.key"),
        key.as_bytes(),
        0o600,
    )?;
    if let Some(path) = &s.write_kubeconfig {
        write_file(
            path,
            kubeconfig(&ca.ca_pem, s.port, &password).as_bytes(),
            s.kubeconfig_mode,
        )?;
    }
    let me = Node {
        name: s.node_name.clone(),
        role: "server".into(),
        address: s.address().map_or("127.0.0.1".into(), |a| a.to_string()),
        cluster_init: s.cluster_init,
    };
    let state = ServerState {
        ca: Arc::new(ca),
        password,
        critical: s.critical.clone(),
        nodes: Mutex::new(vec![me]),
    };
    let listener = TcpListener::bind((s.bind_address, s.port))
        .with_context(|| format!("listening on {}:{}", s.bind_address, s.port))?;
    log(format_args!(
        "server {} listening on {} (cluster CA sha256 {hash})",
        s.node_name,
        listener.local_addr()?
    ));
    ready();
    super::serve(listener, Arc::new(state))
}

/// A further server: check the token and the critical flags against the
/// first server, take the cluster CA from it, register as a server.
fn join(s: &Settings, url: &str, token: &Token) -> Result<Bootstrap> {
    let ca = fetch_ca(url, token)?;
    let auth = format!("Bearer {}", token.password);
    let get = |path: &str| -> Result<Vec<u8>> {
        let r = retry(url, || {
            request(url, "GET", path, Some(&auth), None, Trust::Ca(&ca))
        })?;
        if r.status != 200 {
            bail!("GET {url}{path}: {} {}", r.status, r.text());
        }
        Ok(r.body)
    };
    let theirs: CriticalConfig = serde_json::from_slice(&get("/v1-k3s/critical-config")?)?;
    if let Some(flag) = s.critical.first_mismatch(&theirs) {
        log(format_args!(
            "this server: {:?}; cluster at {url}: {theirs:?}",
            s.critical
        ));
        bail!("critical configuration value mismatch: {flag}");
    }
    let boot: Bootstrap = serde_json::from_slice(&get("/v1-k3s/server-bootstrap")?)?;
    register(s, url, token, &ca, "server")?;
    Ok(boot)
}

fn agent(s: &Settings, ready: impl FnOnce()) -> Result<()> {
    let url = s
        .server_url
        .as_deref()
        .ok_or_else(|| anyhow!("--server is required"))?;
    let token = Token::parse(
        s.token
            .as_deref()
            .ok_or_else(|| anyhow!("--token is required"))?,
    );
    let ca = fetch_ca(url, &token)?;
    let dir = s.data_dir.join("agent");
    write_file(&dir.join(CA_CRT), ca.as_bytes(), 0o644)?;
    register(s, url, &token, &ca, "agent")?;
    write_file(
        &dir.join("registered"),
        format!("{url}\n").as_bytes(),
        0o644,
    )?;
    ready();
    Ok(())
}

/// `/cacerts` without verifying the server, then the token's CA hash decides.
fn fetch_ca(url: &str, token: &Token) -> Result<String> {
    let r = retry(url, || {
        request(url, "GET", "/cacerts", None, None, Trust::AnyForCacerts)
    })?;
    if r.status != 200 {
        bail!(
            "failed to get CA certs from {url}: {} {}",
            r.status,
            r.text()
        );
    }
    let ca = r.text();
    let found = ca_hash(ca.as_bytes());
    match &token.ca_hash {
        Some(expected) if *expected != found => {
            bail!("token CA hash does not match the Cluster CA certificate hash: {expected} != {found}")
        }
        _ => Ok(ca),
    }
}

fn register(s: &Settings, url: &str, token: &Token, ca: &str, role: &str) -> Result<()> {
    // Without --node-ip: the address this host reaches the server from.
    let probe = retry(url, || {
        request(url, "GET", "/ping", None, None, Trust::Ca(ca))
    })?;
    let address = s.address().unwrap_or(probe.local_addr.ip().to_canonical());
    let body = serde_json::to_vec(&Registration {
        node_name: s.node_name.clone(),
        role: role.into(),
        address: address.to_string(),
        token: token
            .ca_hash
            .as_ref()
            .map_or(token.password.clone(), |h| Token::full(h, &token.password)),
    })?;
    let r = retry(url, || {
        request(
            url,
            "POST",
            "/v1-k3s/register",
            None,
            Some(&body),
            Trust::Ca(ca),
        )
    })?;
    match r.status {
        200 => {
            log(format_args!(
                "registered {role} {} ({address}) with {url}",
                s.node_name
            ));
            Ok(())
        }
        401 => bail!("{url} rejected the token (401): {}", r.text()),
        409 => bail!(
            "node password rejected, duplicate hostname {}: {}",
            s.node_name,
            r.text()
        ),
        status => bail!("registering with {url}: {status} {}", r.text()),
    }
}

/// Retries while the server cannot be reached, as k3s agents do.
fn retry<T>(url: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    use std::io::ErrorKind::*;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) => {
                let io = e.chain().find_map(|c| c.downcast_ref::<std::io::Error>());
                let kind = io.map(std::io::Error::kind);
                let transient = [
                    ConnectionRefused,
                    ConnectionReset,
                    ConnectionAborted,
                    TimedOut,
                    WouldBlock,
                    HostUnreachable,
                    NetworkUnreachable,
                    AddrNotAvailable,
                    UnexpectedEof,
                ];
                if !kind.is_some_and(|k| transient.contains(&k)) {
                    return Err(e);
                }
                log(format_args!("waiting for the server at {url}: {e:#}"));
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn kubeconfig(ca_pem: &str, port: u16, password: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "# written by k3s-standin, a test double\napiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: https://127.0.0.1:{port}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nusers:\n- name: default\n  user:\n    token: {password}\n"
    )
}
