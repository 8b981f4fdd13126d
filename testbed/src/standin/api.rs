//! The HTTPS server of the k3s stand-in (a test double): `/cacerts`, `/ping`
//! and the `/v1-k3s/` JSON API. Unauthenticated callers get only the CA and
//! `pong`; everything else needs the cluster token.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::{ca_hash, log, Bootstrap, CriticalConfig, Node, Registration, Token};
use crate::pki::ClusterCa;

/// What a server knows: its CA, its password, the cluster's critical flags
/// and the nodes that registered with it (each server keeps its own list).
pub struct ServerState {
    pub ca: Arc<ClusterCa>,
    pub password: String,
    pub critical: CriticalConfig,
    pub nodes: Mutex<Vec<Node>>,
}

impl ServerState {
    pub fn ca_hash(&self) -> String {
        ca_hash(self.ca.ca_pem.as_bytes())
    }

    fn token_ok(&self, token: &Token) -> bool {
        token.password == self.password
            && token.ca_hash.as_ref().is_none_or(|h| *h == self.ca_hash())
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some(auth) = req.header("authorization") else {
            return false;
        };
        if let Some(bearer) = auth.strip_prefix("Bearer ") {
            return self.token_ok(&Token::parse(bearer));
        }
        let basic = auth.strip_prefix("Basic ").and_then(|b| {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()?;
            String::from_utf8(raw).ok()
        });
        basic.is_some_and(|b| b.strip_prefix("server:") == Some(self.password.as_str()))
    }
}

/// Accepts HTTPS connections until the listener fails, one thread each.
pub fn serve(listener: TcpListener, state: Arc<ServerState>) -> Result<()> {
    let configs: Mutex<HashMap<Option<IpAddr>, Arc<ServerConfig>>> = Mutex::default();
    for stream in listener.incoming() {
        let stream = stream.context("accepting a connection")?;
        let local = stream.local_addr().ok().map(|a| a.ip().to_canonical());
        let config = {
            let mut configs = configs.lock().unwrap_or_else(|e| e.into_inner());
            match configs.get(&local) {
                Some(c) => c.clone(),
                None => {
                    let resolver = Arc::new(Resolver {
                        ca: state.ca.clone(),
                        local,
                    });
                    let c = ServerConfig::builder_with_provider(crate::pki::provider())
                        .with_safe_default_protocol_versions()?
                        .with_no_client_auth()
                        .with_cert_resolver(resolver);
                    configs.entry(local).or_insert(Arc::new(c)).clone()
                }
            }
        };
        let state = state.clone();
        std::thread::spawn(move || {
            let peer = stream.peer_addr().map_or("?".into(), |a| a.to_string());
            if let Err(e) = handle(stream, config, &state) {
                log(format_args!("connection from {peer}: {e:#}"));
            }
        });
    }
    Ok(())
}

fn handle(tcp: TcpStream, config: Arc<ServerConfig>, state: &ServerState) -> Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let conn = rustls::ServerConnection::new(config)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let req = read_request(&mut BufReader::new(&mut tls))?;
    let (status, content_type, body) = route(&req, state);
    write!(
        tls,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    )?;
    tls.write_all(&body)?;
    tls.conn.send_close_notify();
    tls.flush()?;
    Ok(())
}

fn route(req: &Request, state: &ServerState) -> (u16, &'static str, Vec<u8>) {
    const TEXT: &str = "text/plain";
    const JSON: &str = "application/json";
    let json = |status, v: serde_json::Value| (status, JSON, v.to_string().into_bytes());
    let unauthorized = || {
        json(
            401,
            serde_json::json!({"ok": false, "error": "unauthorized"}),
        )
    };
    let path = req.path.split('?').next().unwrap_or_default();
    match (req.method.as_str(), path) {
        ("GET", "/ping") => (200, TEXT, b"pong".to_vec()),
        ("GET", "/cacerts") => (200, TEXT, state.ca.ca_pem.clone().into_bytes()),
        ("POST", "/v1-k3s/register") => {
            let reg: Registration = match serde_json::from_slice(&req.body) {
                Ok(r) => r,
                Err(e) => {
                    return json(
                        400,
                        serde_json::json!({"ok": false, "error": e.to_string()}),
                    )
                }
            };
            if !state.token_ok(&Token::parse(&reg.token)) {
                log(format_args!(
                    "rejected node {}: token does not match",
                    reg.node_name
                ));
                return unauthorized();
            }
            let mut nodes = state.nodes.lock().unwrap_or_else(|e| e.into_inner());
            // k3s keeps a password per node name: another host with the same
            // name is refused ("duplicate hostname").
            if let Some(old) = nodes.iter_mut().find(|n| n.name == reg.node_name) {
                if old.address != reg.address {
                    let error = format!(
                        "duplicate hostname {} (registered from {})",
                        old.name, old.address
                    );
                    log(format_args!("rejected node: {error}"));
                    return json(409, serde_json::json!({"ok": false, "error": error}));
                }
                old.role = reg.role.clone();
            } else {
                nodes.push(Node {
                    name: reg.node_name.clone(),
                    role: reg.role.clone(),
                    address: reg.address.clone(),
                    cluster_init: false,
                });
            }
            log(format_args!(
                "registered {} {} at {}",
                reg.role, reg.node_name, reg.address
            ));
            json(200, serde_json::json!({"ok": true}))
        }
        ("GET", "/v1-k3s/nodes") if state.authorized(req) => json(
            200,
            serde_json::to_value(&*state.nodes.lock().unwrap_or_else(|e| e.into_inner()))
                .unwrap_or_default(),
        ),
        ("GET", "/v1-k3s/critical-config") if state.authorized(req) => json(
            200,
            serde_json::to_value(&state.critical).unwrap_or_default(),
        ),
        ("GET", "/v1-k3s/server-bootstrap") if state.authorized(req) => json(
            200,
            serde_json::to_value(Bootstrap {
                server_ca_crt: state.ca.ca_pem.clone(),
                server_ca_key: state.ca.key_pem(),
            })
            .unwrap_or_default(),
        ),
        ("GET", "/v1-k3s/nodes" | "/v1-k3s/critical-config" | "/v1-k3s/server-bootstrap") => {
            unauthorized()
        }
        (
            _,
            "/ping"
            | "/cacerts"
            | "/v1-k3s/register"
            | "/v1-k3s/nodes"
            | "/v1-k3s/critical-config"
            | "/v1-k3s/server-bootstrap",
        ) => (405, TEXT, b"method not allowed".to_vec()),
        _ => (404, TEXT, b"404 page not found".to_vec()),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        _ => "Error",
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

const MAX_BODY: usize = 1 << 20;

fn read_request(r: &mut impl BufRead) -> Result<Request> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        bail!("malformed request line {line:?}");
    };
    let (method, path) = (method.to_string(), path.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        if headers.len() > 100 {
            bail!("too many headers");
        }
    }
    let mut req = Request {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    let len: usize = req
        .header("content-length")
        .map_or(Ok(0), str::parse)
        .context("content-length")?;
    if len > MAX_BODY {
        bail!("request body of {len} bytes is too large");
    }
    req.body.resize(len, 0);
    r.read_exact(&mut req.body)?;
    Ok(req)
}

/// Picks (issuing on first use) the certificate for one local address.
#[derive(Debug)]
struct Resolver {
    ca: Arc<ClusterCa>,
    local: Option<IpAddr>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.ca.for_connection(self.local, hello.server_name()) {
            Ok(key) => Some(key),
            Err(e) => {
                log(format_args!("{e:#}"));
                None
            }
        }
    }
}
