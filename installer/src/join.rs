//! Joining a cluster safely: the token format k3s uses
//! (`K10<sha256 of the cluster CA>::<user>:<password>`, or a bare password),
//! and the check an agent or joining server makes before it writes anything:
//! fetch `https://<server>/cacerts` (no redirects, at most 64 KiB) and
//! compare its sha256 with the token's, then fetch it again trusting only
//! that CA, so the server's own certificate must be one it issued, as k3s
//! itself does. A bare password cannot pin the CA: that is allowed, with a
//! warning.

use crate::layout::NODE_TOKEN;
use crate::root::HostRoot;
use airgap_bundle::digest::Digest;
use anyhow::{anyhow, bail, Context as _};
use std::fmt;
use std::time::Duration;

/// A parsed join token. `Display` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// Hex sha256 of the cluster CA bundle, when the token pins it.
    pub ca_hash: Option<String>,
    pub user: Option<String>,
    pub password: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Token {{ ca_hash: {:?}, user: {:?}, password: <redacted> }}",
            self.ca_hash, self.user
        )
    }
}

/// Parses a token as k3s accepts it.
pub fn parse_token(text: &str) -> anyhow::Result<Token> {
    let t = text.trim();
    if t.is_empty() {
        bail!("the join token is empty");
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!(
            "the join token contains spaces or control characters; copy it whole from {NODE_TOKEN}"
        );
    }
    let Some(rest) = t.strip_prefix("K10") else {
        return Ok(Token {
            ca_hash: None,
            user: None,
            password: t.to_string(),
        });
    };
    let (hash, creds) = rest.split_once("::").ok_or_else(|| {
        anyhow!("malformed join token: a K10 token reads K10<CA hash>::<user>:<password>")
    })?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("malformed join token: the CA hash after K10 must be 64 hex digits (found {} characters)", hash.len());
    }
    let (user, password) = creds.split_once(':').ok_or_else(|| {
        anyhow!("malformed join token: expected <user>:<password> after the CA hash")
    })?;
    if user.is_empty() || password.is_empty() {
        bail!("malformed join token: empty user or password");
    }
    Ok(Token {
        ca_hash: Some(hash.to_ascii_lowercase()),
        user: Some(user.to_string()),
        password: password.to_string(),
    })
}

/// What checking the server found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerCheck {
    pub url: String,
    pub ca_sha256: String,
    /// False for a bare password token: the CA was not pinned.
    pub ca_pinned: bool,
}

/// The most `/cacerts` may send: a CA bundle is a few KiB.
pub const MAX_CACERTS: usize = 64 << 10;

/// Fetches the server's CA and checks it against the token, then checks
/// that the server's own certificate was issued by that CA, as k3s's agent
/// does. The first fetch trusts no certificate yet (the token's hash is
/// what makes the CA trusted); the second trusts only that CA. Neither
/// follows a redirect, and each reads at most [`MAX_CACERTS`].
pub fn check_server(
    url: &str,
    token: &Token,
    timeout: Duration,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<ServerCheck> {
    let base = url.trim_end_matches('/');
    if !base.starts_with("https://") {
        bail!("--server {url}: expected https://<server>:6443");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cacerts_url = format!("{base}/cacerts");
    let builder = || {
        reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
    };
    let body = handle.block_on(async {
        let client = builder().tls_danger_accept_invalid_certs(true).build()?;
        fetch_cacerts(&client, &cacerts_url).await
    })?;
    let found = Digest::of(&body).hex();
    match &token.ca_hash {
        Some(expected) if *expected != found => bail!(
            "the server at {base} is not the one the token belongs to: its CA ({cacerts_url}) hashes to {found}, the token expects {expected}"
        ),
        Some(_) => {}
        None => tracing::warn!(
            "the join token is a bare password: the server's CA at {cacerts_url} cannot be checked (use the K10 token from the server's {NODE_TOKEN})"
        ),
    }
    // The CA matched; now the server must prove it holds a certificate
    // that CA issued, for the name or address in the URL.
    let ca = reqwest::Certificate::from_pem_bundle(&body)
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| anyhow!("{cacerts_url} did not send a PEM certificate bundle"))?;
    let again = handle.block_on(async {
        let client = builder().tls_certs_only(ca).build()?;
        fetch_cacerts(&client, &cacerts_url).await
    });
    match again {
        Ok(again) if again == body => {}
        Ok(_) => bail!("{cacerts_url} sent a different CA over a verified connection"),
        Err(e) => bail!(
            "the server at {base} presents a certificate its CA ({cacerts_url}) did not issue, or not for this address: {e:#}"
        ),
    }
    Ok(ServerCheck {
        url: base.to_string(),
        ca_sha256: found,
        ca_pinned: token.ca_hash.is_some(),
    })
}

/// GET `url` with `client`: a 2xx body of at most [`MAX_CACERTS`], read
/// as it streams; a redirect is refused, not followed.
async fn fetch_cacerts(client: &reqwest::Client, url: &str) -> anyhow::Result<Vec<u8>> {
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach the server at {url}: {}", root_cause(&e)))?;
    let status = resp.status();
    if status.is_redirection() {
        let to = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .unwrap_or("?");
        bail!("{url} answered {status}, a redirect to {to}: not followed, the CA must come from the server itself");
    }
    if !status.is_success() {
        bail!("{url} answered {status}: is this a k3s server?");
    }
    let too_big = || {
        anyhow!(
            "{url} sent more than {} KiB, the most a CA bundle may take",
            MAX_CACERTS >> 10
        )
    };
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_CACERTS as u64)
    {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| anyhow!("reading {url}: {}", root_cause(&e)))?
    {
        if body.len() + chunk.len() > MAX_CACERTS {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The server's join token from its token file.
pub fn server_token(root: &HostRoot) -> anyhow::Result<String> {
    let path = root.path(NODE_TOKEN);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is this a server, and has k3s started once?)",
            path.display()
        )
    })?;
    let token = text.trim().to_string();
    parse_token(&token).with_context(|| format!("in {}", path.display()))?;
    Ok(token)
}

/// The command that joins an agent to a server, as printed to operators
/// (by `airgap install` on a server and by `airgap token`).
pub fn agent_command(bundle: &str, server_url: &str, token_arg: &str) -> String {
    format!(
        "airgap install --offline {bundle} --key <site.pub> --role agent --server {server_url} {token_arg}"
    )
}

/// Where `airgap token` put the server's join token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenExport {
    /// The token file (mode 0600); `None` when the token was only printed.
    pub token_file: Option<std::path::PathBuf>,
    /// The cluster's critical flags, beside the token file (HA servers).
    pub cluster_file: Option<std::path::PathBuf>,
    /// The command to run on each agent.
    pub agent_command: String,
}

impl std::fmt::Display for TokenExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(out) = &self.token_file {
            writeln!(
                f,
                "wrote the join token to {} (mode 0600); carry it to the agents",
                out.display()
            )?;
        }
        if let Some(path) = &self.cluster_file {
            writeln!(
                f,
                "wrote the cluster's critical flags to {} (joining servers check theirs against it)",
                path.display()
            )?;
        }
        write!(f, "on each agent:\n  {}", self.agent_command)
    }
}

/// Writes the server's join token to `out` (0600, replacing what is there,
/// never through a link) and, for a server that records its cluster flags,
/// the cluster file beside it.
pub fn export_token(
    root: &HostRoot,
    token: &str,
    out: &std::path::Path,
    server_url: &str,
) -> anyhow::Result<TokenExport> {
    airgap_bundle::atomic::write_private(out, format!("{token}\n").as_bytes())?;
    let record = crate::record::InstallRecord::load(root)?;
    let cluster_file = match record.and_then(|r| r.cluster) {
        Some(cluster) => {
            let path = crate::cluster::cluster_file_for(out);
            let text = serde_json::to_string_pretty(&cluster)?;
            airgap_bundle::atomic::write_whole(&path, text.as_bytes(), None)?;
            Some(path)
        }
        None => None,
    };
    Ok(TokenExport {
        token_file: Some(out.to_path_buf()),
        cluster_file,
        agent_command: agent_command(
            "<bundle>",
            server_url,
            &format!("--token-file {}", out.display()),
        ),
    })
}

/// The agent command for a token that was printed, not written.
pub fn printed_token(server_url: &str) -> TokenExport {
    TokenExport {
        token_file: None,
        cluster_file: None,
        agent_command: agent_command(
            "<bundle>",
            server_url,
            "--token-file <file holding the token above>",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_k3s_tokens() {
        let h = "a".repeat(64);
        let t = parse_token(&format!("K10{h}::server:secret\n")).unwrap();
        assert_eq!(t.ca_hash.as_deref(), Some(h.as_str()));
        assert_eq!(t.user.as_deref(), Some("server"));
        assert_eq!(t.password, "secret");
        assert!(!format!("{t:?}").contains("secret"));
        let bare = parse_token("just-a-password").unwrap();
        assert_eq!(bare.ca_hash, None);
        for bad in [
            "",
            "K10abc::server:pw",
            &format!("K10{h}:server:pw"),
            &format!("K10{h}::server"),
            &format!("K10{h}::server:"),
            "two words",
        ] {
            assert!(parse_token(bad).is_err(), "{bad:?} accepted");
        }
    }
}
