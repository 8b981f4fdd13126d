//! A small HTTPS client for k3s-like servers, used by the k3s stand-in (a
//! test double) and by its tests. It trusts either a given CA bundle or, only
//! for fetching `/cacerts` whose hash the token then checks, any certificate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::pki::provider;

/// Which server certificates a request accepts.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// Any certificate: only for fetching `/cacerts`, which the token's CA
    /// hash then checks (as k3s agents do).
    AnyForCacerts,
    /// Certificates issued by this CA bundle (PEM).
    Ca(&'a str),
}

/// A response from [`request`], with the local address the connection used.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub local_addr: SocketAddr,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTPS request to a k3s-like server URL (`https://host:port`); `auth`
/// is a whole `Authorization` header value.
pub fn request(
    server: &str,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&[u8]>,
    trust: Trust<'_>,
) -> Result<Response> {
    let rest = server
        .strip_prefix("https://")
        .ok_or_else(|| anyhow!("server URL {server} is not https://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (
            h,
            p.parse::<u16>()
                .with_context(|| format!("port in {server}"))?,
        ),
        _ => (authority, 443),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name =
        ServerName::try_from(host.to_string()).with_context(|| format!("host in {server}"))?;
    let config = client_config(trust)?;
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .collect();
    let mut last = None;
    let tcp = addrs.iter().find_map(|a| {
        TcpStream::connect_timeout(a, Duration::from_secs(5))
            .map_err(|e| last = Some(e))
            .ok()
    });
    let tcp = match (tcp, last) {
        (Some(tcp), _) => tcp,
        (None, Some(e)) => return Err(e).with_context(|| format!("connecting to {server}")),
        (None, None) => bail!("{host} has no address"),
    };
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let local_addr = tcp.local_addr()?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let body = body.unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: k3s-standin\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if let Some(auth) = auth {
        head.push_str(&format!("Authorization: {auth}\r\n"));
    }
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str("\r\n");
    let mut raw = Vec::new();
    tls.write_all(head.as_bytes())
        .and_then(|()| tls.write_all(body))
        .and_then(|()| tls.flush())
        .and_then(|()| tls.read_to_end(&mut raw))
        .with_context(|| format!("{method} {server}{path}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed response from {server}"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    let status = status.ok_or_else(|| anyhow!("malformed status line from {server}"))?;
    Ok(Response {
        status,
        body: raw[split + 4..].to_vec(),
        local_addr,
    })
}

fn client_config(trust: Trust<'_>) -> Result<ClientConfig> {
    match trust {
        Trust::AnyForCacerts => Ok(ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider())))
            .with_no_client_auth()),
        Trust::Ca(pem) => crate::pki::trusting(pem).context("the cluster CA"),
    }
}

/// Accepts any server certificate but still checks the handshake signatures.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(msg, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(msg, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
