//! A Docker token server on a loopback port, for a registry run with token
//! auth (distribution's `auth: token:`): `GET /token?service=…&scope=…` with
//! HTTP basic credentials returns a JWT that grants the asked-for `pull` and
//! `push` on the named repositories; wrong or missing credentials get a 401.
//!
//! Tokens are ES256, signed with a key whose certificate (issued by a CA of
//! the server's own, the registry's `rootcertbundle`) travels in the JWT
//! header's `x5c`. Every request is recorded for tests to check. It is test
//! code: one user, std threads, one request per connection.

use crate::conn_server::{read_head, ConnServer};
use anyhow::{anyhow, Context, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The `service` the registry names in its challenge and tokens are for.
pub const SERVICE: &str = "airgap-testbed-registry";
/// The `iss` of every token, which the registry must trust.
pub const ISSUER: &str = "airgap-testbed-token-server";
/// Seconds a token is valid.
pub const TOKEN_LIFETIME: u64 = 300;

/// One request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The basic-auth user presented, if any.
    pub user: Option<String>,
    pub service: Option<String>,
    /// Every `scope` parameter, as sent (`repository:NAME:pull`).
    pub scopes: Vec<String>,
    /// 200, or 401 for wrong or missing credentials (400 for a bad request).
    pub status: u16,
}

struct State {
    user: String,
    password: String,
    key: EcdsaKeyPair,
    /// The signing certificate, base64 DER, for `x5c`.
    x5c: String,
    rng: SystemRandom,
    /// The next token's `jti`.
    next_id: AtomicU64,
    requests: Mutex<Vec<TokenRequest>>,
}

/// A running token server. Stopped, and its files removed, on drop.
pub struct TokenServer {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    state: Arc<State>,
    server: ConnServer,
}

impl TokenServer {
    /// Serves tokens to `user` with `password` on `127.0.0.1:<free port>`.
    pub fn start(user: &str, password: &str) -> Result<TokenServer> {
        let dir = tempfile::Builder::new()
            .prefix("airgap-token-")
            .tempdir()
            .context("creating the token server's temp dir")?;
        // The rig's own CA and a certificate it issued: the CA is the
        // registry's root bundle, the certificate signs the tokens.
        let tls = crate::pki::write_loopback_tls(dir.path())?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            tls.key_der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| anyhow!("reading the token signing key: {e}"))?;
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the token server")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            user: user.to_string(),
            password: password.to_string(),
            key,
            x5c: STANDARD.encode(&tls.cert_der),
            rng,
            next_id: AtomicU64::new(1),
            requests: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let server = ConnServer::start(listener, "token", move |stream| {
            let _ = serve(stream, &st);
        })?;
        Ok(TokenServer {
            addr,
            dir,
            state,
            server,
        })
    }

    /// `http://127.0.0.1:PORT/token`, the realm of the registry's challenge.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// PEM file of the CA that issued the signing certificate: the
    /// registry's `rootcertbundle`.
    pub fn root_cert_bundle(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Forgets the recorded requests.
    pub fn reset(&self) {
        self.state.requests.lock().unwrap().clear();
    }

    /// Stops accepting, closes open connections and joins every thread.
    /// Idempotent.
    pub fn stop(&mut self) {
        self.server.stop();
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Answers one request.
fn serve(stream: &TcpStream, state: &State) -> io::Result<()> {
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let head = read_head(stream)?;
    let (method, target) = (head.method.as_str(), head.target.as_str());
    let authorization = head.header("authorization").map(str::to_string);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = TokenRequest {
        user: None,
        service: None,
        scopes: Vec::new(),
        status: 400,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (decode_query(k).as_deref(), decode_query(v)) {
            (Some("service"), Some(v)) => request.service = Some(v),
            (Some("scope"), Some(v)) => request.scopes.extend(
                // Some clients join several scopes with spaces.
                v.split(' ').filter(|s| !s.is_empty()).map(str::to_string),
            ),
            _ => {}
        }
    }
    let credentials = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let (user, password) = match credentials.as_deref().and_then(|c| c.split_once(':')) {
        Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
        None => (None, None),
    };
    request.user = user.clone();
    let (status, body) = if method != "GET" || path != "/token" {
        (404, r#"{"details":"not found"}"#.to_string())
    } else if user.as_deref() != Some(state.user.as_str())
        || password.as_deref() != Some(state.password.as_str())
    {
        let details = "wrong user or password for the airgap-testbed token server";
        (401, serde_json::json!({ "details": details }).to_string())
    } else if request.service.as_deref() != Some(SERVICE) {
        (400, r#"{"details":"unknown service"}"#.to_string())
    } else {
        match issue(state, &state.user, &request.scopes) {
            Ok(token) => {
                let body = serde_json::json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": TOKEN_LIFETIME,
                });
                (200, body.to_string())
            }
            Err(e) => (
                500,
                serde_json::json!({ "details": format!("{e:#}") }).to_string(),
            ),
        }
    };
    // Recorded before the client has its answer, so a test sees it.
    request.status = status;
    state.requests.lock().unwrap().push(request);
    reply(stream, status, &body)
}

fn reply(mut stream: &TcpStream, status: u16, body: &str) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 401 {
        head.push_str("WWW-Authenticate: Basic realm=\"airgap-testbed token server\"\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

/// A signed JWT for `user` granting the `pull` and `push` asked for in
/// `scopes` (`repository:NAME:ACTIONS`); other scopes are granted nothing.
fn issue(state: &State, user: &str, scopes: &[String]) -> Result<String> {
    let mut access = Vec::new();
    for scope in scopes {
        let mut parts = scope.splitn(2, ':');
        let (Some("repository"), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        // The name may hold a registry port's ':'; the actions follow the last.
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        let granted: Vec<&str> = actions
            .split(',')
            .filter(|a| *a == "pull" || *a == "push")
            .collect();
        access.push(serde_json::json!({
            "type": "repository",
            "name": name,
            "actions": granted,
        }));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let id = state.next_id.fetch_add(1, Ordering::SeqCst);
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [state.x5c],
    });
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": user,
        "aud": SERVICE,
        "exp": now + TOKEN_LIFETIME,
        "nbf": now,
        "iat": now,
        "jti": format!("airgap-testbed-{now}-{id}"),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = state
        .key
        .sign(&state.rng, signing_input.as_bytes())
        .map_err(|e| anyhow!("signing a token: {e}"))?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    ))
}

/// Decodes a query component (`%XX`, `+` for space); `None` when malformed.
fn decode_query(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http;

    fn claims_of(token: &str) -> serde_json::Value {
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn issues_signed_tokens_to_its_user_only() {
        let server = TokenServer::start("tester", "s3cret").unwrap();
        let url = format!(
            "{}?service={SERVICE}&scope=repository%3Akubeguide%2Fredis-master%3Apull%2Cpush",
            server.realm()
        );
        let right = http::basic_auth("tester", "s3cret");
        let resp = http::get(&url, &[("Authorization", &right)]).unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        let body: serde_json::Value = serde_json::from_str(&resp.text()).unwrap();
        let token = body["token"].as_str().unwrap();
        assert_eq!(body["access_token"], token);
        assert_eq!(body["expires_in"], TOKEN_LIFETIME);
        let claims = claims_of(token);
        assert_eq!(claims["aud"], SERVICE);
        assert_eq!(claims["iss"], ISSUER);
        assert_eq!(claims["sub"], "tester");
        assert_eq!(
            claims["access"],
            serde_json::json!([{"type": "repository", "name": "kubeguide/redis-master",
                                "actions": ["pull", "push"]}])
        );

        // The signature verifies with the certificate in the header.
        let (input, sig) = token.rsplit_once('.').unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(input.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "ES256");
        let cert = STANDARD.decode(header["x5c"][0].as_str().unwrap()).unwrap();
        let key = ring::signature::KeyPair::public_key(&server.state.key);
        assert!(cert.windows(key.as_ref().len()).any(|w| w == key.as_ref()));
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, key)
            .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
            .unwrap();

        let wrong = http::basic_auth("tester", "nope");
        let resp = http::get(&url, &[("Authorization", &wrong)]).unwrap();
        assert_eq!(resp.status, 401);
        assert!(!resp.text().contains("token\""));
        assert_eq!(http::get(&url, &[]).unwrap().status, 401);

        let seen = server.requests();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[0].user.as_deref(), Some("tester"));
        assert_eq!(seen[0].service.as_deref(), Some(SERVICE));
        assert_eq!(
            seen[0].scopes,
            ["repository:kubeguide/redis-master:pull,push"]
        );
        assert_eq!(
            seen.iter().map(|r| r.status).collect::<Vec<_>>(),
            [200, 401, 401]
        );
        assert!(server.root_cert_bundle().is_file());
    }

    #[test]
    fn decodes_queries() {
        assert_eq!(
            decode_query("repository%3Aa%2Fb%3Apull+x").as_deref(),
            Some("repository:a/b:pull x")
        );
        assert!(decode_query("%zz").is_none());
    }
}
